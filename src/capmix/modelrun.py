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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capmix.weights import cached_open_clip_file, pretrained_tag_config

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


#: The preprocessing a pretrained tag's record sets (open_clip merges these into the transform
#: when it loads the tag itself; create_model_and_transforms takes each as ``image_<key>``).
TAG_PREPROCESS = ("mean", "std", "interpolation", "resize_mode")


@dataclass(frozen=True)
class OpenClipParts:
    """An open_clip model in eval mode with the image transform and tokenizer made for it."""

    model: Any
    preprocess: Any
    tokenizer: Any


@dataclass(frozen=True)
class OpenClipBuild:
    """What capmix asks open_clip's ``create_model_and_transforms`` for, besides the model name
    and the device: the ``pretrained`` argument and the keyword arguments that make the built
    model the one its weights were trained as."""

    pretrained: str | None
    kwargs: dict[str, Any]


def open_clip_build(model_name: str, pretrained: str | None,
                    cache_dir: Path | str | None = None) -> OpenClipBuild:
    """How to build ``model_name`` with the weights ``pretrained`` (see :func:`load_open_clip`).

    The activation comes from the tag's own record: open_clip 3.3.0 builds a built-in model
    with its model config's activation (``ViT-L-14``: nn.GELU) and loads weights trained with
    QuickGELU (tag ``openai``: ``quick_gelu: True``) into it with only a warning, which moves
    every embedding. Separate from the load so that what would be built can be checked without
    fetching any weights (open_clip downloads a tag's file before it looks at ``load_weights``).

    With ``cache_dir`` (a GPU job, offline) a tag's weights are the file rule model_weights put
    in the cache (:func:`capmix.weights.cached_open_clip_file`; missing: WeightsNotCached),
    passed as a file; open_clip gives a file none of the tag's preprocessing, so the tag's
    (:data:`TAG_PREPROCESS`) is passed along.
    """
    tag = pretrained_tag_config(model_name, pretrained)
    kwargs: dict[str, Any] = {}
    if tag.get("quick_gelu"):
        kwargs["force_quick_gelu"] = True
    if not tag or cache_dir is None:
        return OpenClipBuild(pretrained, kwargs)
    assert pretrained is not None  # a tag
    # create_model_and_transforms' own overrides of the transform (every preprocessing key an
    # open_clip 3.3.0 tag record has); the image size comes from the model, as with a tag.
    kwargs.update({f"image_{key}": tag[key] for key in TAG_PREPROCESS if key in tag})
    return OpenClipBuild(cached_open_clip_file(model_name, pretrained, tag, cache_dir), kwargs)


def load_open_clip(model_name: str, pretrained: str | None, device: str,
                   cache_dir: Path | str | None = None) -> OpenClipParts:
    """open_clip's model ``model_name`` (a built-in name or ``local-dir:PATH``) with its
    validation transform and tokenizer, the weights of ``pretrained`` (a tag or a file; None
    for open_clip's initialisation) on ``device``, in eval mode; built as :func:`open_clip_build`
    says (a tag's activation; with ``cache_dir``, offline from that weights cache). The one
    open_clip loading path of the scorer, the evaluation and the CoCa captioner.

    Errors are open_clip's own (or WeightsNotCached); callers name what they were loading.
    """
    import open_clip

    build = open_clip_build(model_name, pretrained, cache_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=build.pretrained, device=device, **build.kwargs)
    tokenizer = open_clip.get_tokenizer(
        model_name, cache_dir=str(cache_dir) if cache_dir is not None else None)
    return OpenClipParts(model.eval(), preprocess, tokenizer)
