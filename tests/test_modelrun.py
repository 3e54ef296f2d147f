"""The device and precision choices every model stage shares (capmix.modelrun)."""

from __future__ import annotations

import logging

import pytest
import torch

from capmix.modelrun import autocast, low_precision_dtype, resolve_device, torch_device_type


def test_auto_device_is_cuda_only_when_torch_can_use_it(monkeypatch):
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_device_type_drops_the_index():
    assert torch_device_type("cuda:1") == "cuda" and torch_device_type("cpu") == "cpu"


@pytest.mark.parametrize(("precision", "device", "expected"), [
    ("fp16", "cuda", torch.float16), ("bf16", "cuda:0", torch.bfloat16),
    ("fp32", "cuda", None), ("fp16", "cpu", None), ("bf16", "mps", None),
])
def test_low_precision_is_a_cuda_setting(precision, device, expected):
    assert low_precision_dtype(precision, device, "scorer s") is expected


def test_low_precision_off_cuda_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="capmix.modelrun"):
        assert low_precision_dtype("fp16", "cpu", "scorer s") is None
    assert "scorer s: precision fp16 requested on cpu; running fp32" in caplog.text


def test_fp32_runs_with_autocast_off_even_inside_an_autocast_region():
    a = torch.ones(2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16), autocast("cpu", None):
        assert (a @ a).dtype is torch.float32
    with autocast("cpu", torch.bfloat16):
        assert (a @ a).dtype is torch.bfloat16
