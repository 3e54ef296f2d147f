"""Running an open_clip model: which device, which precision, and loading it with its tokenizer.

The scoring stage (:class:`capmix.score.Scorer`) and the evaluation stage
(:class:`capmix.evaluate.EvalModel`) both run an open_clip CLIP; they choose the device, the
low-precision dtype and the autocast context here, once, so that ``auto``, ``fp16`` and
``bf16`` mean the same in every stage. The captioning stage resolves ``auto`` here too, and
every GPU stage (training's processes too, :mod:`capmix.train`) checks here that a job which
asked for a GPU sees one (:func:`resolve_device`, :class:`GpuUnavailableError`).

torch and open_clip are imported inside the functions: the captioning module imports
:func:`resolve_device` at module level, and its file helpers are used by jobs that never load
a model (and would otherwise each pay torch's import time).
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


#: What a process's environment says about the GPUs it was given: CUDA's and the container
#: runtime's device lists, SLURM's job and its GPU allocation (job, step, node, per task), and
#: the ordinal some sites' prologs set. A job that asked for a GPU and sees none quotes them.
GPU_ENV_VARS: tuple[str, ...] = (
    "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
    "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS",
    "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_TASK", "GPU_DEVICE_ORDINAL",
)


class GpuUnavailableError(RuntimeError):
    """A job that asked for a GPU does not see the one it needs; the message says what it saw."""


def visible_gpus() -> int:
    """The CUDA devices this process sees (0 with a CPU-only torch or no driver)."""
    import torch

    return torch.cuda.device_count()


def gpu_environment(env: Mapping[str, str] | None = None,
                    names: Sequence[str] = GPU_ENV_VARS, visible: int | None = None) -> str:
    """What this process sees of GPUs, for an error message: the host, each of ``names`` as
    set (quoted) or unset in ``env`` (this process's), torch's CUDA build and the device
    count (``visible``, or torch's own count)."""
    import torch

    env = os.environ if env is None else env
    visible = visible_gpus() if visible is None else visible
    shown = ", ".join(f"{name}={shlex.quote(env[name])}" if name in env else f"{name} unset"
                      for name in names)
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU-only build)"
    return (f"host {socket.gethostname()}; {shown}; torch {torch.__version__} built with "
            f"{build}; torch.cuda.device_count() = {visible}")


def asks_for_gpu(device: str, gpus: int | None) -> bool:
    """Whether a job must run on a GPU: its device setting names CUDA (``cuda``, ``cuda:N``),
    or it is ``auto`` and the job's resources request GPUs (``gpus`` > 0)."""
    return torch_device_type(device) == "cuda" or (device == "auto" and bool(gpus))


def resolve_device(device: str, gpus: int | None = 0, who: str = "this job") -> str:
    """The torch device for a stage's ``device`` setting in a job that requested ``gpus``.

    ``auto``: CUDA when torch can use it, else the CPU (a laptop) -- unless the job requested
    GPUs: a GPU job must not fall back to the CPU silently (a misconfigured node, a wrong
    CUDA_VISIBLE_DEVICES would run it for weeks in fp32). A job that asks for a GPU
    (:func:`asks_for_gpu`) and does not see it (``cuda:N`` beyond the visible count included)
    raises :class:`GpuUnavailableError` naming ``who``, the setting and what it saw
    (:func:`gpu_environment`), before any model is loaded. CUDA_VISIBLE_DEVICES alone proves
    nothing (SLURM sets it for a fake GPU gres too): torch's device count decides.
    """
    if asks_for_gpu(device, gpus):
        index = int(device.split(":")[1]) if ":" in device else 0
        seen = visible_gpus()
        if index >= seen:
            request = f"device {device!r}" + (f" with {gpus} GPU(s) requested" if gpus else "")
            raise GpuUnavailableError(
                f"{who}: {request} needs CUDA device {index}, but this process sees "
                f"{seen}: {gpu_environment(visible=seen)}. Fix the node or the job's GPU "
                "request, or set the stage's device to cpu to run it there on purpose")
        return "cuda" if device == "auto" else device
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def torch_device_type(device: str) -> str:
    """The device type torch's autocast and clip_benchmark take: ``cuda:1`` -> ``cuda``."""
    return device.split(":")[0]


def low_precision_dtype(precision: str, device: str, who: str) -> torch.dtype | None:
    """The dtype to autocast to for ``precision`` (``fp16``, ``bf16``), or None for fp32.

    Low precision is a CUDA setting: on any other device (and for any other precision name)
    the model runs fp32, and a requested fp16/bf16 is logged as not applied, naming ``who``.
    """
    import torch

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    if dtype is not None and not device.startswith("cuda"):
        log.info("%s: precision %s requested on %s; running fp32", who, precision, device)
        dtype = None
    return dtype


def autocast(device: str, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """The context a forward pass runs in: autocast to ``dtype`` on ``device``, or, for None,
    autocast explicitly off (fp32 even inside a caller's autocast region)."""
    import torch

    if dtype is None:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast(torch_device_type(device), dtype=dtype)


@dataclass(frozen=True)
class OpenClipParts:
    """An open_clip model in eval mode with the image transform and tokenizer made for it."""

    model: Any
    preprocess: Any
    tokenizer: Any


def load_open_clip(model_name: str, pretrained: str | None, device: str) -> OpenClipParts:
    """open_clip's model ``model_name`` (a built-in name or ``local-dir:PATH``) with its
    validation transform and tokenizer, the weights of ``pretrained`` (a tag or a file; None
    for open_clip's initialisation) on ``device``, in eval mode.

    Errors are open_clip's own; callers name what they were loading.
    """
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=pretrained, device=device)
    tokenizer = open_clip.get_tokenizer(model_name)
    return OpenClipParts(model.eval(), preprocess, tokenizer)
