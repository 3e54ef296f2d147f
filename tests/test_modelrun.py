"""The device and precision choices every model stage shares (capmix.modelrun)."""

from __future__ import annotations

import logging
import socket

import pytest
import torch

from capmix.modelrun import (
    GpuUnavailableError,
    autocast,
    low_precision_dtype,
    resolve_device,
    torch_device_type,
)


def see_gpus(monkeypatch, count: int) -> None:
    """Make torch see ``count`` CUDA devices (none: not available either)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)


def test_auto_device_is_cuda_only_when_torch_can_use_it(monkeypatch):
    see_gpus(monkeypatch, 2)
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("auto") == "cuda" and resolve_device("auto", gpus=1) == "cuda"
    see_gpus(monkeypatch, 0)
    # No GPU requested (a laptop): auto runs on the CPU, as does an explicit cpu on a GPU job
    # (the test cluster's fake GPU).
    assert resolve_device("auto") == "cpu" and resolve_device("auto", gpus=None) == "cpu"
    assert resolve_device("cpu", gpus=1) == "cpu"


@pytest.mark.parametrize(("device", "gpus", "visible"), [
    ("auto", 1, 0), ("cuda", 0, 0), ("cuda:0", None, 0), ("cuda:2", 1, 2),
])
def test_a_job_that_asked_for_a_gpu_and_sees_none_fails_saying_what_it_saw(
        monkeypatch, device, gpus, visible):
    see_gpus(monkeypatch, visible)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_GPUS", "0,1")
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(GpuUnavailableError) as failed:
        resolve_device(device, gpus, who="caption pool/blip2@0.75")
    message = str(failed.value)
    assert message.startswith(f"caption pool/blip2@0.75: device {device!r}")
    index = device.split(":")[1] if ":" in device else "0"
    assert f"needs CUDA device {index}, but this process sees {visible}" in message
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
    for shown in (f"host {socket.gethostname()}", "CUDA_VISIBLE_DEVICES=''",
                  "NVIDIA_VISIBLE_DEVICES unset", "SLURM_JOB_ID=4242", "SLURM_JOB_GPUS=0,1",
                  "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE", "GPU_DEVICE_ORDINAL",
                  f"built with {build}", f"torch.cuda.device_count() = {visible}"):
        assert shown in message


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
