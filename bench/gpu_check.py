"""One-shot check of the real-size GPU paths on a lent GPU node: PASS/FAIL table and figures.

A GPU node may be lent for minutes at a time. This script is the one prepared command for
such a node (``make gpu-check``: 192 s on one H200, measured, docs/gpu_check_h200.md; no
step starts after ``--budget-s``, 480 s). It runs, through the stage code and on
webdataset shards fetched with img2dataset (a toy pool of 2,048 images at 256 px, as
bench/caption_score.py):

* captioning (``capmix.caption.caption_pool``, the captioner passed in) with BLIP2-OPT-2.7B,
  BLIP-large (fp16 and bf16) and CoCa ViT-L/14, built at their real sizes with random
  weights (bench/random_models.py; never downloaded, nothing reaches the network);
* image embeddings and caption scores (``capmix.score.embed_pool_images``,
  ``score_pool_caption_set``) with the OpenAI-style ViT-L/14 scorer (QuickGELU), for every
  caption set above and the raw captions;
* ~20 steps of ``open_clip_train`` for ViT-B/32 with the ``small`` scale's recipe
  (config/train_scales.yaml) through ``capmix.train.train_clip`` on one GPU, at the per-GPU
  batch the recipe implies (global batch / its GPUs) unless ``--train-batch`` says otherwise.

Batch sizes, precision and DataLoader workers are config/datacomp_medium.yaml's ``caption:``
and ``score:`` settings (workers capped at the CPU count). It asserts dtypes (fp16/bf16 as
asked: at least 90% of the ``nn.Linear`` calls compute in that dtype, none in a third one),
devices (cuda), finite embeddings, scores and losses, caption lengths within the decoding's
min/max, QuickGELU in the scorer and the real-size parameter counts; prints per model
images/s (captioning, embedding), samples/s (training) and peak GPU memory
(``torch.cuda.max_memory_allocated``, reset between models), then a PASS/FAIL table. Every
check runs even when an earlier one failed; the exit status is 1 when any failed. The figures
go to ``--out`` as JSON (default ``$OUT/gpu_check.json`` when ``$OUT`` is set, else
``results/gpu_check/gpu_check.json``), rewritten after every step so that a run cut short
still leaves what it measured.

Without CUDA (or with ``--cpu-smoke``) the same code paths run with the tiny models of
tests/tiny_models.py on a few images in well under a minute, and the real-size architectures
are built on the ``meta`` device (no memory) to check their parameter counts; ``--require-gpu``
(what ``make gpu-check`` passes) refuses to fall back.

    make gpu-check                                   # on the GPU node, after `make setup`
    .venv/bin/python bench/gpu_check.py --require-gpu --out /tmp/gpu_check.json
    .venv/bin/python bench/gpu_check.py --cpu-smoke  # here: the same paths, tiny models

The environment comes from ``make setup`` (PyPI). A node without PyPI access needs the
environment present already (the same pins, CUDA torch); a missing package stops the script
at once, naming it. The paper's reference figures on one A100: BLIP2 75 images/s, ViT-L/14
490 images/s.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import NoReturn

# Nothing may reach the network: random weights only, tokenizers built here.
for _variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
                  "NO_ALBUMENTATIONS_UPDATE"):
    os.environ[_variable] = "1"
os.environ["WANDB_MODE"] = "disabled"
REPO = Path(__file__).resolve().parents[1]
# This checkout's code, whatever the environment was installed from; tests/ for tiny models.
for _path in (REPO / "src", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

#: What the checked code paths import (import name -> PyPI distribution).
REQUIRED_PACKAGES = {
    "torch": "torch", "torchvision": "torchvision", "transformers": "transformers",
    "tokenizers": "tokenizers", "open_clip": "open_clip_torch",
    "open_clip_train": "open_clip_torch (training extra)", "webdataset": "webdataset",
    "img2dataset": "img2dataset", "safetensors": "safetensors", "pandas": "pandas",
    "pyarrow": "pyarrow", "PIL": "pillow", "yaml": "PyYAML", "jsonschema": "jsonschema",
}


def stop(message: str) -> NoReturn:
    """Refuse to run (exit 2): the node's minutes are better spent on a fixed command."""
    print(f"gpu_check: {message}", file=sys.stderr)
    raise SystemExit(2)


def missing_packages(packages: dict[str, str]) -> list[str]:
    """The distributions of ``packages`` (import name -> distribution) that do not import."""
    return [dist for name, dist in packages.items() if importlib.util.find_spec(name) is None]


def require_packages(packages: dict[str, str] = REQUIRED_PACKAGES) -> None:
    """Stop (exit 2) before any work when a package the check needs is missing."""
    missing = missing_packages(packages)
    if missing:
        stop(f"missing package(s): {', '.join(missing)}. Install the environment with "
             "`make setup` (PyPI); on a machine without PyPI access the environment must be "
             "present already (requirements/lock.txt).")


require_packages()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterator, Mapping  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.random_models import (  # noqa: E402
    PARAMETER_TOLERANCE,
    PUBLISHED_PARAMETERS,
    make_pool,
    parameter_count,
    random_coca,
    random_scorer,
    real_size_blip,
    real_size_blip2,
    shard_files,
)
from capmix.caption import (  # noqa: E402
    RunSettings,
    caption_files,
    caption_pool,
    decoding_for,
    raw_caption_sets,
)
from capmix.captioners import load_captioner  # noqa: E402
from capmix.config import pipeline_config  # noqa: E402
from capmix.modelrun import low_precision_dtype  # noqa: E402
from capmix.provenance import provenance_record, write_json  # noqa: E402
from capmix.scales import Scale, TrainConfigError, load_scale  # noqa: E402
from capmix.score import (  # noqa: E402
    embed_pool_images,
    read_embeddings,
    score_pool_caption_set,
)
from capmix.train import (  # noqa: E402
    parse_train_log,
    run_params,
    train_clip,
    train_data_spec,
    train_log_path,
)

CONFIG_FILE = REPO / "config" / "datacomp_medium.yaml"
TRAIN_SCALE = "small"
TEMPERATURE = 0.75  # the paper's main temperature (Table 1)
POOL = "gpu_check"
#: Share of a model's nn.Linear calls that must compute in the requested dtype (the rest may
#: be fp32: modules the library keeps in fp32, e.g. BLIP2's Q-Former under fp16).
LOW_PRECISION_SHARE = 0.9


@dataclasses.dataclass(frozen=True)
class Mode:
    """What one run checks at: real models on CUDA, or tiny ones on the CPU (smoke)."""

    name: str  # "gpu" or "cpu-smoke"
    device: str
    images: int
    image_size: int
    train_steps: int
    train_batch: int | None  # None: the recipe's per-GPU batch

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")


@dataclasses.dataclass(frozen=True)
class CaptionerRun:
    """One captioner at one precision: how to build it, under which config name."""

    key: str  # the config's captioner name (its decoding comes from there)
    precision: str
    build: Callable[[], Any]
    word_level: bool  # every sampled token decodes to one word (length checks in words)
    published: str | None = None  # key of PUBLISHED_PARAMETERS for the real-size model
    tiny: bool = False  # a tests/tiny_models.py stand-in (CPU smoke)

    @property
    def name(self) -> str:
        return f"{'tiny:' if self.tiny else ''}{self.key}"


# --------------------------------------------------------------------------------- report


class Report:
    """Checks and figures, printed at the end and written as JSON after every step."""

    def __init__(self, out: Path, header: dict[str, Any], budget_s: float):
        self.out = out
        self.header = header
        self.figures: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.budget_s = budget_s

    def out_of_time(self, model: str) -> bool:
        """Past the time budget no new step starts (a FAIL), so that the tables and the JSON
        come out before the node's command limit kills the run."""
        spent = time.perf_counter() - self.started
        if spent <= self.budget_s:
            return False
        self.check(model, "ran", False, f"not started: {spent:.0f} s of the {self.budget_s:.0f} "
                   "s budget spent (--budget-s)")
        return True

    def check(self, model: str, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"model": model, "check": name, "ok": bool(ok), "detail": detail})
        print(f"  [{'PASS' if ok else 'FAIL'}] {model}: {name}  {detail}", flush=True)
        return bool(ok)

    def figure(self, row: dict[str, Any]) -> None:
        self.figures.append(row)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c["ok"] for c in self.checks)

    def save(self) -> None:
        write_json(self.out, {**self.header, "passed": self.passed, "figures": self.figures,
                              "checks": self.checks})

    def print_tables(self) -> None:
        print("\nfigures")
        print(f"{'model':<24} {'stage':<32} {'precision':<9} {'batch':>6} {'items':>6} "
              f"{'seconds':>8} {'per s':>9} {'peak GiB':>9}")
        for row in self.figures:
            peak = row.get("peak_gpu_gib")
            rate = row.get("per_s")
            stage = " ".join(str(row[k]) for k in ("stage", "caption_set") if k in row)
            print(f"{row['model']:<24} {stage:<32} {row.get('precision', ''):<9} "
                  f"{row.get('batch_size', ''):>6} {row.get('items', ''):>6} "
                  f"{row.get('seconds', float('nan')):>8.2f} "
                  f"{rate if rate is None else round(rate, 1)!s:>9} "
                  f"{'-' if peak is None else f'{peak:.2f}':>9}")
        print("\nchecks")
        width = max([len(c["model"]) for c in self.checks] + [5])
        for c in self.checks:
            print(f"{'PASS' if c['ok'] else 'FAIL'}  {c['model']:<{width}}  {c['check']:<22} "
                  f"{c['detail']}")
        failed = [c for c in self.checks if not c["ok"]]
        print(f"\n{'PASS' if self.passed else 'FAIL'}: {len(self.checks) - len(failed)} of "
              f"{len(self.checks)} checks passed; figures in {self.out}")


@contextmanager
def step(report: Report, model: str) -> Iterator[None]:
    """Run one model's step; an error is a FAIL of that model, and the run goes on."""
    start = time.perf_counter()
    print(f"\n== {model}", flush=True)
    try:
        yield
    except Exception as error:  # noqa: BLE001 - one failure must not hide the other checks
        traceback.print_exc()
        report.check(model, "ran", False, f"{type(error).__name__}: {error}"[:500])
    finally:
        print(f"   ({time.perf_counter() - start:.1f} s)", flush=True)
        report.save()
        release_memory()


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak(mode: Mode) -> None:
    if mode.gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(mode: Mode) -> float | None:
    if not mode.gpu:
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def synchronize(mode: Mode) -> None:
    if mode.gpu:
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------- checks


class LinearProbe:
    """Counts every ``nn.Linear`` call of a model by the dtype and device of its output.

    The output of a Linear is what its matmul computed in: under autocast (open_clip models)
    the autocast dtype, with cast weights (Hugging Face models) the weights' dtype. So this
    shows what a forward pass really ran in, not what was asked for.
    """

    def __init__(self, model: torch.nn.Module):
        self.calls: Counter[tuple[str, str]] = Counter()
        self.handles = [module.register_forward_hook(self.record) for module in model.modules()
                        if isinstance(module, torch.nn.Linear)]

    def record(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            self.calls[(str(output.dtype).removeprefix("torch."), output.device.type)] += 1

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()

    def by_dtype(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for (dtype, _), n in self.calls.items():
            counts[dtype] += n
        return dict(counts)


def expected_dtype(precision: str, mode: Mode, who: str) -> str:
    """The dtype the pipeline computes in for ``precision`` here (fp16/bf16 on CUDA only)."""
    dtype = low_precision_dtype(precision, mode.device, who) or torch.float32
    return str(dtype).removeprefix("torch.")


def check_compute(report: Report, model: str, probe: LinearProbe, want: str,
                  mode: Mode) -> None:
    """dtype: >= LOW_PRECISION_SHARE of the Linear calls in ``want``, none in a third dtype;
    device: every call on the mode's device type."""
    counts = probe.by_dtype()
    total = sum(counts.values())
    share = counts.get(want, 0) / total if total else 0.0
    others = set(counts) - {want, "float32"}
    report.check(model, f"dtype {want}", total > 0 and share >= LOW_PRECISION_SHARE
                 and not others, f"Linear calls by output dtype: {counts}")
    devices = {device for _, device in probe.calls}
    want_device = torch.device(mode.device).type
    report.check(model, f"device {want_device}", devices == {want_device},
                 f"Linear outputs on: {sorted(devices)}")


def check_parameters(report: Report, model: str, module: torch.nn.Module,
                     published: str) -> int:
    count = parameter_count(module)
    want = PUBLISHED_PARAMETERS[published]
    report.check(model, "real-size parameters", abs(count - want) <= PARAMETER_TOLERANCE * want,
                 f"{count / 1e6:.2f}M (published {want / 1e6:.2f}M)")
    return count


def has_quick_gelu(model: torch.nn.Module) -> bool:
    import open_clip

    return any(isinstance(module, open_clip.transformer.QuickGELU) for module in model.modules())


# ------------------------------------------------------------------------------- captions


def run_captioner(report: Report, mode: Mode, run: CaptionerRun, root: Path,
                  settings: RunSettings, config: Mapping[str, Any], n_images: int) -> Path | None:
    """Caption the pool with one captioner; check and time it. Returns its chunk manifest."""
    label = f"{run.name} {run.precision}"
    spec = {"backend": config["captioners"][run.key]["backend"],
            "model": f"random-weights:{run.key}",
            "decoding": dict(config["captioners"][run.key].get("decoding") or {})}
    decoding = decoding_for(spec, TEMPERATURE)
    settings = dataclasses.replace(settings, precision=run.precision)
    start = time.perf_counter()
    captioner = run.build()
    build_s = time.perf_counter() - start
    reset_peak(mode)  # the peak while captioning (weights included), not while building
    parameters = None
    if run.published:
        parameters = check_parameters(report, label, captioner.model, run.published)
    probe = LinearProbe(captioner.model)
    out = root / "captions" / f"{run.key}_{run.precision}"
    manifest = out / "chunk0of1.json"
    try:
        start = time.perf_counter()
        caption_pool(POOL, run.key, spec, TEMPERATURE, root / "index.parquet", root / "shards",
                     out, manifest, settings, seed=0, captioner=captioner)
        synchronize(mode)
        seconds = time.perf_counter() - start
    finally:
        probe.close()
    report.figure({"model": run.name, "stage": "caption", "precision": run.precision,
                   "batch_size": settings.batch_size, "items": n_images, "seconds": seconds,
                   "per_s": n_images / seconds, "unit": "images/s", "build_s": build_s,
                   "peak_gpu_gib": peak_gib(mode), "parameters": parameters,
                   "linear_calls": probe.by_dtype()})
    print(f"   {n_images / seconds:.1f} images/s", flush=True)
    check_compute(report, label, probe, expected_dtype(run.precision, mode, label), mode)
    frame = pd.concat([pd.read_parquet(f) for f in caption_files([manifest])])
    report.check(label, "every image captioned",
                 len(frame) == n_images and bool((frame["status"] == "ok").all()),
                 f"{int((frame['status'] == 'ok').sum())}/{n_images} ok")
    per_image = frame["captions"].map(len)
    report.check(label, "captions per image", bool((per_image == decoding.num_captions).all()),
                 f"want {decoding.num_captions}, got {sorted(set(per_image))}")
    # Decoding lengths count the start and end tokens (capmix.captioners): text tokens are
    # within [min_length - 2, max_length - 1]. In words only where a token is a word.
    low = decoding.min_length - 2 if run.word_level else 1
    high = decoding.max_length - 1
    words = [len(text.split()) for texts in frame["captions"] for text in texts]
    report.check(label, "caption lengths", bool(words) and low <= min(words)
                 and max(words) <= high,
                 f"words {min(words, default=0)}-{max(words, default=0)}, allowed {low}-{high}"
                 f"{'' if run.word_level else ' (BPE: upper bound only)'}; "
                 f"e.g. {frame['caption'].iloc[0]!r:.80}")
    return manifest


# --------------------------------------------------------------------------------- scores


def run_scorer(report: Report, mode: Mode, name: str, model_name: str, published: str | None,
               root: Path, settings: RunSettings, caption_sets: Mapping[str, Path],
               n_images: int) -> None:
    """Image embeddings of the pool, then every caption set's scores; check and time them."""
    label = f"{name} {settings.precision}"
    spec = {"model": model_name, "pretrained": None}
    start = time.perf_counter()
    scorer = random_scorer(model_name, mode.device, settings.precision)
    build_s = time.perf_counter() - start
    reset_peak(mode)
    report.check(label, "QuickGELU", has_quick_gelu(scorer.model),
                 "open_clip QuickGELU activations (OpenAI's CLIPs were trained with them)")
    parameters = check_parameters(report, label, scorer.model, published) if published else None
    want = expected_dtype(settings.precision, mode, label)
    probe = LinearProbe(scorer.model)
    emb = root / "image_embeddings"
    try:
        start = time.perf_counter()
        embed_pool_images(POOL, "scorer", spec, root / "index.parquet", root / "shards", emb,
                          emb / "chunk0of1.json", settings, scorer=scorer)
        synchronize(mode)
        seconds = time.perf_counter() - start
    finally:
        probe.close()
    report.figure({"model": name, "stage": "embed",
                   "precision": settings.precision, "batch_size": settings.batch_size,
                   "items": n_images, "seconds": seconds, "per_s": n_images / seconds,
                   "unit": "images/s", "build_s": build_s, "peak_gpu_gib": peak_gib(mode),
                   "parameters": parameters, "linear_calls": probe.by_dtype()})
    print(f"   {n_images / seconds:.1f} images/s", flush=True)
    check_compute(report, label, probe, want, mode)
    files = sorted(emb.rglob("*.npz"))
    embeddings = np.concatenate([read_embeddings(f)[1] for f in files]).astype("float32")
    norms = np.linalg.norm(embeddings, axis=1)
    report.check(label, "image embeddings", len(embeddings) == n_images
                 and bool(np.isfinite(embeddings).all()) and bool(np.allclose(norms, 1, atol=1e-2)),
                 f"{embeddings.shape}, finite={bool(np.isfinite(embeddings).all())}, "
                 f"|e| {norms.min():.3f}-{norms.max():.3f}")
    for set_name, manifest in caption_sets.items():
        probe = LinearProbe(scorer.model)
        try:
            start = time.perf_counter()
            frame = score_pool_caption_set(
                POOL, "scorer", spec, set_name, caption_files([manifest]), files,
                root / "scores" / f"{set_name.replace('/', '_')}.parquet",
                root / "scores" / f"{set_name.replace('/', '_')}.json", settings, scorer=scorer)
            synchronize(mode)
            seconds = time.perf_counter() - start
        finally:
            probe.close()
        texts = int(frame["n_captions"].sum())
        report.figure({"model": name, "stage": "score",
                       "caption_set": set_name, "precision": settings.precision,
                       "batch_size": settings.batch_size, "items": texts, "seconds": seconds,
                       "per_s": texts / seconds, "unit": "captions/s",
                       "peak_gpu_gib": peak_gib(mode), "linear_calls": probe.by_dtype()})
        cos = frame["cos"].to_numpy(dtype="float64")
        check_compute(report, f"{label} text", probe, want, mode)
        report.check(label, f"scores {set_name}", len(frame) == n_images
                     and bool(np.isfinite(cos).all()) and bool(frame["missing"].isna().all()),
                     f"{int(np.isfinite(cos).sum())}/{len(frame)} finite, cos "
                     f"{np.nanmin(cos):.3f}..{np.nanmax(cos):.3f}")


# ------------------------------------------------------------------------------- training


def one_process_scale(recipe: Scale, mode: Mode) -> Scale:
    """The recipe on one process: the per-GPU batch it implies (or ``--train-batch``),
    ``train_steps`` steps as one checkpoint; on the CPU fp32 and one worker (smoke).

    ``--log-every-n-steps 1`` is appended (the last value wins) so that open_clip logs every
    step's samples/s.
    """
    batch = mode.train_batch or recipe.per_process_batch_size
    scale = dataclasses.replace(
        recipe, name=f"{recipe.name}_one_process", nodes=1,
        gpus_per_node=1 if mode.gpu else 0, processes_per_node=1,
        global_batch_size=batch * recipe.accum_freq,
        samples_seen=batch * recipe.accum_freq * mode.train_steps, checkpoints=1,
        precision=recipe.precision if mode.gpu else "fp32",
        workers=recipe.workers if mode.gpu else 1,
        extra_args=(*recipe.extra_args, "--log-every-n-steps", "1"))
    problem = scale.problem()
    if problem:
        raise TrainConfigError(f"train_scales.{recipe.name} on one process: {problem}")
    return scale


def run_training(report: Report, mode: Mode, config: Mapping[str, Any], root: Path,
                 name: str, model: str, n_images: int) -> None:
    """A few open_clip_train steps of ``model`` with the recipe's settings on one process."""
    recipe = load_scale(config, TRAIN_SCALE)
    scale = one_process_scale(recipe, mode)
    label = f"{name} train"
    batch_note = ("--train-batch" if mode.train_batch else
                  f"the recipe's per-GPU batch: {recipe.global_batch_size} / "
                  f"{recipe.world_size} GPUs")
    print(f"   train_scales.{TRAIN_SCALE}, one process, batch {scale.per_process_batch_size} "
          f"({batch_note}), {mode.train_steps} steps, precision {scale.precision}", flush=True)
    work = root / "train"
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / "manifest.json"
    manifest.write_text(json.dumps({"train_data": train_data_spec(shard_files(root)),
                                    "num_samples": n_images}))
    reset_peak(mode)
    summary = train_clip(scale, manifest_path=manifest, work_dir=work / "run_dir",
                         final_path=work / "final.pt", summary_path=work / "training.json",
                         seed=0, model=model)
    trained = parse_train_log(train_log_path(work / "run_dir"))
    samples = summary["samples_seen"]
    # Each logged step's own loss (every step is logged). The summary's first_loss/final_loss
    # are the pipeline's per-epoch figures (the first epoch's last step, the last epoch's
    # running mean): on one epoch they read as a loss going up while it went down (H200 run).
    losses = [point["losses"].get("loss") for point in summary["loss_curve"]]
    report.figure({"model": name, "stage": "train", "precision": scale.precision,
                   "batch_size": scale.per_process_batch_size, "batch_source": batch_note,
                   "items": samples, "seconds": summary["wall_s"],
                   "per_s": trained["logged_step_samples_per_s"],
                   "unit": "samples/s (mean of open_clip's per-step figures)",
                   "wall_samples_per_s": samples / summary["wall_s"],
                   "peak_gpu_gib": peak_gib(mode), "steps": mode.train_steps,
                   "first_step_loss": losses[0] if losses else None,
                   "last_step_loss": losses[-1] if losses else None,
                   "epoch_mean_loss": summary["final_loss"]})
    report.check(label, "steps", samples == scale.samples_seen,
                 f"{samples} samples seen, want {scale.samples_seen}")
    report.check(label, "finite loss", len(losses) == mode.train_steps
                 and all(x is not None and math.isfinite(x) for x in losses),
                 f"{len(losses)} steps logged, step 1 {losses[0] if losses else None}, step "
                 f"{len(losses)} {losses[-1] if losses else None} (epoch mean "
                 f"{summary['final_loss']})")
    params = dict(line.split(": ", 1) for line in run_params(work / "run_dir") if ": " in line)
    want_device = torch.device(mode.device).type
    report.check(label, f"device {want_device}", params.get("device", "").startswith(want_device),
                 f"open_clip_train device: {params.get('device')}")
    report.check(label, f"precision {scale.precision}", params.get("precision") == scale.precision,
                 f"open_clip_train precision: {params.get('precision')}")


# ------------------------------------------------------------------- real sizes, on meta


def check_real_sizes_on_meta(report: Report, root: Path) -> None:
    """Build every real-size model on the meta device (no memory, seconds): the builders the
    GPU run uses, their parameter counts, image sizes, tokenizers and the scorer's QuickGELU."""
    image = Image.new("RGB", (300, 200), (120, 30, 200))
    builds = [
        ("blip2_opt_2.7b", lambda: real_size_blip2("meta", "fp16"), 224),
        ("blip_large", lambda: real_size_blip(root / "blip_large_meta", "meta", "fp16"), 384),
        ("coca_vit_l_14", lambda: random_coca("coca_ViT-L-14", "meta", "fp16"), 224),
        ("vit_l_14_quickgelu", lambda: random_scorer("ViT-L-14-quickgelu", "meta", "fp16"), 224),
    ]
    for key, build, size in builds:
        with step(report, f"{key} (meta)"):
            built = build()
            label = f"{key} (meta)"
            check_parameters(report, label, built.model, key)
            pixels = built.preprocess(image)
            report.check(label, "image size", tuple(pixels.shape) == (3, size, size),
                         f"preprocess -> {tuple(pixels.shape)}")
            if key == "vit_l_14_quickgelu":
                report.check(label, "QuickGELU", has_quick_gelu(built.model))
            elif hasattr(built, "processor"):
                text = built.processor.batch_decode([[1000, 1001, 1002]],
                                                    skip_special_tokens=True)[0]
                report.check(label, "word-level tokenizer", text == "w1000 w1001 w1002",
                             repr(text))


# ----------------------------------------------------------------------------------- main


def default_out() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.json"
    return REPO / "results" / "gpu_check" / "gpu_check.json"


def captioner_runs(mode: Mode, root: Path, precision: str) -> list[CaptionerRun]:
    """The captioners to run: real sizes on CUDA; tests/tiny_models.py's on the CPU."""
    if mode.gpu:
        return [
            CaptionerRun("blip2_opt_2.7b", precision,
                         lambda: real_size_blip2(mode.device, precision), True,
                         "blip2_opt_2.7b"),
            CaptionerRun("blip_large", precision,
                         lambda: real_size_blip(root / "blip_large", mode.device, precision),
                         True, "blip_large"),
            # bf16 for one model: the other low precision the config allows.
            CaptionerRun("blip_large", "bf16",
                         lambda: real_size_blip(root / "blip_large", mode.device, "bf16"),
                         True, "blip_large"),
            CaptionerRun("coca_vit_l_14", precision,
                         lambda: random_coca("coca_ViT-L-14", mode.device, precision), False,
                         "coca_vit_l_14"),
        ]
    from tests.tiny_models import make_tiny_blip, make_tiny_blip2, make_tiny_coca

    tiny = root / "tiny"
    blip2, blip = make_tiny_blip2(tiny / "blip2"), make_tiny_blip(tiny / "blip")
    coca = make_tiny_coca(tiny / "coca")
    return [
        CaptionerRun("blip2_opt_2.7b", precision, lambda: load_captioner(
            {"backend": "hf_blip2", "model": str(blip2), "name": "tiny_blip2"}, mode.device,
            precision), True, tiny=True),
        CaptionerRun("blip_large", precision, lambda: load_captioner(
            {"backend": "hf_blip", "model": str(blip), "name": "tiny_blip"}, mode.device,
            precision), True, tiny=True),
        CaptionerRun("blip_large", "bf16", lambda: load_captioner(
            {"backend": "hf_blip", "model": str(blip), "name": "tiny_blip"}, mode.device,
            "bf16"), True, tiny=True),
        CaptionerRun("coca_vit_l_14", precision,
                     lambda: random_coca(f"local-dir:{coca}", mode.device, precision), True,
                     tiny=True),
    ]


def pick_mode(args: argparse.Namespace) -> Mode:
    cuda = torch.cuda.is_available()
    if args.require_gpu and (args.cpu_smoke or not cuda):
        why = ("--cpu-smoke given" if args.cpu_smoke else
               f"torch {torch.__version__} sees no CUDA device (built for CUDA "
               f"{torch.version.cuda or 'none: a CPU-only build'})")
        stop(f"--require-gpu, but {why}")
    if args.cpu_smoke or not cuda:
        if not args.cpu_smoke:
            print("gpu_check: no CUDA device: running the CPU smoke (tiny models) instead",
                  flush=True)
        return Mode("cpu-smoke", "cpu", args.images or 8, args.image_size or 64,
                    args.train_steps or 3, args.train_batch or 4)
    return Mode("gpu", "cuda", args.images or 2048, args.image_size or 256,
                args.train_steps or 20, args.train_batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny models on the CPU (automatic when there is no CUDA)")
    parser.add_argument("--require-gpu", action="store_true",
                        help="fail instead of falling back to the CPU smoke")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON figures (default $OUT/gpu_check.json, else "
                             "results/gpu_check/gpu_check.json)")
    parser.add_argument("--images", type=int, default=None,
                        help="pool images (default 2048 on GPU, 8 in the smoke)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="fetched image size, px (default 256; 64 in the smoke)")
    parser.add_argument("--train-steps", type=int, default=None,
                        help="training steps (default 20; 3 in the smoke)")
    parser.add_argument("--train-batch", type=int, default=None,
                        help="per-GPU training batch (default: the recipe's)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the pool and outputs here (default: a temporary dir)")
    parser.add_argument("--budget-s", type=float, default=480,
                        help="start no step after this many seconds (default 480)")
    args = parser.parse_args(argv)
    mode = pick_mode(args)
    config = pipeline_config(CONFIG_FILE)
    cpus = os.cpu_count() or 1
    caption_settings, score_settings = (
        dataclasses.replace(RunSettings.from_config(config[stage]), device=mode.device,
                            workers=min(config[stage]["workers"], cpus))
        for stage in ("caption", "score"))
    header = {
        "mode": mode.name, "device": mode.device,
        "gpu": torch.cuda.get_device_name() if mode.gpu else None,
        "torch": torch.__version__, "cuda": torch.version.cuda, "cpus": cpus,
        "config": str(CONFIG_FILE.relative_to(REPO)), "images": mode.images,
        "image_size": mode.image_size, "caption_settings": dataclasses.asdict(caption_settings),
        "score_settings": dataclasses.asdict(score_settings), "train_scale": TRAIN_SCALE,
        "reference_a100": {"blip2 captioning images/s": 75, "vit-l-14 embedding images/s": 490},
        "provenance": provenance_record(
            "gpu_check", params={"argv": sys.argv[1:] if argv is None else argv},
            packages=("torch", "transformers", "open_clip_torch", "webdataset", "img2dataset")),
    }
    report = Report(args.out or default_out(), header, args.budget_s)
    print(f"gpu_check: {mode.name} on {header['gpu'] or mode.device}; caption "
          f"{caption_settings}, score {score_settings}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        n_images = 0
        with step(report, "pool"):
            shard_size = max(caption_settings.batch_size, score_settings.batch_size)
            make_pool(root, mode.images, mode.image_size, samples_per_shard=shard_size)
            n_images = json.loads((root / "report.json").read_text())["n_fetched"]
            report.header["images_fetched"] = n_images
            report.check("pool", "fetched", n_images == mode.images,
                         f"{n_images}/{mode.images} images in {len(shard_files(root))} shards")
        if n_images:
            caption_sets: dict[str, Path] = {}
            with step(report, "raw captions"):
                raw = root / "captions" / "raw" / "chunk0of1.json"
                raw_caption_sets(POOL, root / "index.parquet", root / "shards", raw.parent, raw)
                caption_sets["raw"] = raw
            for run in captioner_runs(mode, root, caption_settings.precision):
                if report.out_of_time(f"{run.name} {run.precision}"):
                    continue
                with step(report, f"{run.name} {run.precision}"):
                    manifest = run_captioner(report, mode, run, root, caption_settings, config,
                                             n_images)
                    if manifest is not None:
                        caption_sets[f"{run.key}_{run.precision}/{TEMPERATURE}"] = manifest
            scorer_name = "vit_l_14_quickgelu" if mode.gpu else "tiny:clip_quickgelu"
            if not report.out_of_time(scorer_name):
                with step(report, f"{scorer_name} {score_settings.precision}"):
                    if mode.gpu:
                        run_scorer(report, mode, scorer_name, "ViT-L-14-quickgelu",
                                   "vit_l_14_quickgelu", root, score_settings, caption_sets,
                                   n_images)
                    else:
                        from tests.tiny_models import make_tiny_clip

                        tiny = make_tiny_clip(root / "tiny" / "clip", quick_gelu=True)
                        run_scorer(report, mode, scorer_name, f"local-dir:{tiny}", None, root,
                                   score_settings, caption_sets, n_images)
            train_name = (load_scale(config, TRAIN_SCALE).model or "") if mode.gpu else "tiny:clip"
            if not report.out_of_time(f"{train_name} train"):
                with step(report, f"{train_name} train"):
                    if mode.gpu:
                        run_training(report, mode, config, root, train_name, train_name,
                                     n_images)
                    else:
                        from tests.tiny_models import make_tiny_clip

                        tiny = make_tiny_clip(root / "tiny" / "train_clip")
                        run_training(report, mode, config, root, train_name,
                                     f"local-dir:{tiny}", n_images)
        if not mode.gpu:
            check_real_sizes_on_meta(report, root)
    report.header["wall_s"] = time.perf_counter() - report.started
    report.save()
    report.print_tables()
    print(f"wall time {report.header['wall_s']:.0f} s")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
