"""The device and precision choices every model stage shares, and how open_clip models are
built (capmix.modelrun)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import torch

from capmix.modelrun import (
    GpuUnavailableError,
    autocast,
    low_precision_dtype,
    open_clip_build,
    resolve_device,
    torch_device_type,
)
from tests.tiny_models import make_tiny_clip, tiny_clip_builtin_config


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


# ------------------------------------------------------------------ open_clip activation


def activations(model: torch.nn.Module) -> set[str]:
    """The classes of the GELU-type activations a model runs (QuickGELU or nn.GELU)."""
    from open_clip.transformer import QuickGELU

    return {type(m).__name__ for m in model.modules() if isinstance(m, (torch.nn.GELU, QuickGELU))}


def configured_open_clip_models() -> dict[str, dict]:
    """Every open_clip scorer and captioner of the shipped configs (the embedded default and
    each DataComp scale), as name -> spec (one entry per distinct spec: the scales share the
    default's); toy stand-ins left out (their local-dir config rules)."""
    from capmix.config import REPO_ROOT, pipeline_config

    found: dict[str, dict] = {}
    for path in [None, *sorted((REPO_ROOT / "config").glob("datacomp_*.yaml"))]:
        config = pipeline_config(*([path] if path else []))
        for role in ("captioners", "scorers"):
            for name, spec in config[role].items():
                if spec["backend"] in ("open_clip", "open_clip_coca") and not spec["toy_model"]:
                    key = name if found.get(name, spec) == spec else f"{name}@{path.name}"
                    found[key] = spec
    return found


CONFIGURED = configured_open_clip_models()


def test_the_shipped_configs_name_open_clip_models_with_tags():
    assert {"openai_vit_l_14", "coca_vit_l_14", "coca_vit_l_14_coco"} <= set(CONFIGURED)


@pytest.mark.parametrize("where", sorted(CONFIGURED))
def test_every_configured_open_clip_model_is_built_with_its_tags_activation(where):
    """What capmix would build (open_clip_build's arguments), on the meta device: no weights
    are fetched, and the activation is the one the tag's weights were trained with."""
    import open_clip

    spec = CONFIGURED[where]
    build = open_clip_build(spec["model"], spec["pretrained"])
    tag = open_clip.get_pretrained_cfg(spec["model"], spec["pretrained"])
    assert tag, f"{where}: '{spec['pretrained']}' is no open_clip tag of {spec['model']}"
    with torch.device("meta"):
        model = open_clip.create_model(spec["model"], pretrained=None, device="meta",
                                       **build.kwargs)
    expected = {"QuickGELU"} if tag.get("quick_gelu") else {"GELU"}
    if where.split("@")[0] == "openai_vit_l_14":  # OpenAI trained its CLIPs with QuickGELU
        assert expected == {"QuickGELU"}
    assert activations(model) == expected


@pytest.fixture
def tiny_tagged_clip(tmp_path, monkeypatch) -> tuple[str, str, Path]:
    """A tiny CLIP registered as a built-in open_clip model, with a pretrained tag trained (its
    record says) with QuickGELU, whose weights are a local file: (model, tag, weights file)."""
    import open_clip

    directory = make_tiny_clip(tmp_path / "tiny")
    name, tag = "capmix-tiny-clip", "capmix_quickgelu"
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, name,
                        tiny_clip_builtin_config(directory))
    weights = directory / "open_clip_model.safetensors"
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name, {tag: {
        "file": str(weights), "quick_gelu": True, "mean": (0.1, 0.2, 0.3),
        "std": (0.4, 0.5, 0.6), "interpolation": "bicubic", "resize_mode": "shortest"}})
    return name, tag, weights


def test_a_tag_trained_with_quickgelu_loads_into_a_quickgelu_model(tiny_tagged_clip):
    """End to end through the scorer's loader: the tag's activation, its weights."""
    from safetensors.torch import load_file

    from capmix.score import load_scorer

    name, tag, weights = tiny_tagged_clip
    assert "quick_gelu" not in open_clip_model_config(name)  # the model config says GELU
    scorer = load_scorer("tiny", {"backend": "open_clip", "model": name, "pretrained": tag})
    assert activations(scorer.model) == {"QuickGELU"}
    saved = load_file(str(weights))
    state = scorer.model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in saved.items())
    # Without a tag (a file, or no weights) the model config's activation stands.
    plain = load_scorer("plain", {"backend": "open_clip", "model": name,
                                  "pretrained": str(weights)})
    assert activations(plain.model) == {"GELU"}


def open_clip_model_config(name: str) -> dict:
    import open_clip

    return open_clip.get_model_config(name)
