"""Running and reading ``open_clip_train`` runs: arguments, launch, resume, checkpoints, log.

Every model the pipeline trains goes through open_clip's own training loop
(``open_clip_train.main``), as the paper's CLIPs did through DataComp's: the CLIP per
(pool, strategy) at a training scale (:func:`train_clip`) and the toy world's small stand-ins
(:func:`train_cpu_epochs`, called by :mod:`capmix.toymodels`). This module is the one place
that knows how such a run is driven and what it leaves behind, as ``open_clip_train`` is
split from the ``open_clip`` library; what a scale asks for is :mod:`capmix.scales`.

* **Arguments** (:func:`open_clip_argv`) are DataComp's ``train.py`` ones: the per-process
  batch is ``global_batch_size / (world_size * accum_freq)``; ``--epochs`` is the number of
  checkpoints, each of ``samples_seen / checkpoints`` samples; ``--dataset-resampled``;
  ``--save-most-recent --resume latest`` under a fixed ``--name``. The stand-ins' runs
  (:func:`cpu_epochs_argv`) are whole epochs over fixed shards on the CPU.
* **Launch** (:func:`launch_plan`): one process runs ``open_clip_train.main`` in this
  process; several on one machine run under ``torchrun``; inside a SLURM allocation,
  ``srun`` starts one task per GPU across the allocation's nodes, with the rendezvous
  (``MASTER_ADDR``/``MASTER_PORT``) taken from the allocation. open_clip reads the rank and
  world size from SLURM's variables itself.
* **GPUs**: a GPU scale's job fails at once when it sees no GPU (:func:`train_clip`, through
  :func:`capmix.modelrun.resolve_device`), and so does each process torchrun/srun start.
  Each process takes the GPU it actually sees (:func:`rank_device_args`): ``cuda:{local
  rank}`` when it sees all its node's GPUs, ``cuda:0`` when SLURM binds one GPU per task.
* **Resume**: checkpoints live in ``work_dir/run/checkpoints`` (:func:`checkpoint_dir`; not a
  Snakemake output, so a failed or killed job keeps them); a re-run continues from
  ``epoch_latest.pt``. The final checkpoint is hard-linked to the rule's output once its
  stored epoch is the last one.
* **Reading**: a checkpoint's stored epoch (:func:`checkpoint_epoch`) and the run's
  ``out.log`` (:func:`parse_train_log`: samples seen, losses, resumes).

Nothing here imports torch or open_clip at module level, only the functions that run or read
a run do: the Snakemake job that launches torchrun/srun needs torch only to read a checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capmix.modelrun import (
    GPU_ENV_VARS,
    GpuUnavailableError,
    gpu_environment,
    resolve_device,
    torch_device_type,
)
from capmix.provenance import provenance_record, write_json
from capmix.scales import Scale, TrainConfigError

log = logging.getLogger(__name__)

RUN_NAME = "run"  # fixed --name, so that --resume latest finds the same run again
#: What torchrun/srun start per process: ``python -m capmix.train ARGV.json`` runs
#: ``open_clip_train.main.main(argv)`` (:func:`process_main`). The arguments travel in a file
#: because torchrun's own parser would otherwise claim open_clip's ``--logs`` as an
#: abbreviation of its ``--logs-specs`` ("ambiguous option"), and a file keeps long argument
#: lists off srun's command line.
ENTRY_MODULE = "capmix.train"
ARGV_NAME = "open_clip_argv.json"
FINAL_NAME = "final.pt"
SUMMARY_NAME = "training.json"
ATTEMPTS_NAME = "attempts.json"
#: Where a run started in a child process (torchrun, srun, isolated) writes its console.
CONSOLE_NAME = "open_clip_train.console.log"
#: How much of that console a failure quotes.
_CONSOLE_TAIL_CHARS = 3000

# open_clip's Adam defaults for ViT models (params.get_default_params): it picks them by the
# substring "vit" in the model name, which a local-dir path need not contain, so pass them.
_VIT_BETA1, _VIT_BETA2, _VIT_EPS = "0.9", "0.98", "1e-6"
# CoCa's own weighting (open_clip's CoCa recipes): captioning dominates, contrastive helps.
_COCA_LOSS_ARGS = ("--coca-contrastive-loss-weight", "1.0", "--coca-caption-loss-weight", "2.0")


# --------------------------------------------------------------------------------------------
# What a run leaves behind
# --------------------------------------------------------------------------------------------


def run_dir(work_dir: Path) -> Path:
    """Where open_clip_train writes a run started with ``--logs work_dir --name run``."""
    return Path(work_dir) / RUN_NAME


def checkpoint_dir(work_dir: Path) -> Path:
    """The run's checkpoints (``epoch_N.pt``, ``epoch_latest.pt``)."""
    return run_dir(work_dir) / "checkpoints"


def epoch_checkpoint(work_dir: Path, epoch: int) -> Path:
    """The checkpoint saved after ``epoch`` epochs (``--save-frequency 1``)."""
    return checkpoint_dir(work_dir) / f"epoch_{epoch}.pt"


def latest_checkpoint(work_dir: Path) -> Path:
    """The resume point ``--save-most-recent`` keeps (written atomically by open_clip_train)."""
    return checkpoint_dir(work_dir) / "epoch_latest.pt"


def train_log_path(work_dir: Path) -> Path:
    """open_clip_train's ``out.log``, appended to by every (resumed) attempt."""
    return run_dir(work_dir) / "out.log"


def run_params(work_dir: Path) -> list[str]:
    """The ``name: value`` lines of the run's ``params.txt`` (the arguments as parsed)."""
    text = (run_dir(work_dir) / "params.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def checkpoint_epoch(path: Path) -> int | None:
    """The ``epoch`` stored in an open_clip_train checkpoint (None when it does not load)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a truncated/corrupt file counts as "no checkpoint"
        return None
    return int(ckpt["epoch"]) if isinstance(ckpt, dict) and "epoch" in ckpt else None


def reached_epoch(work_dir: Path) -> int | None:
    """The epoch the run's resume point holds (None: no usable checkpoint yet)."""
    latest = latest_checkpoint(work_dir)
    return checkpoint_epoch(latest) if latest.is_file() else None


_TRAIN_LINE = re.compile(
    r"Train Epoch: (?P<epoch>\d+) \[\s*(?P<seen>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\)\]"
    r".*?Batch \(t\): (?P<batch_t>[\d.]+), (?P<sps>[\d.eE+-]+)/s"
    r".*?Logit Scale: \S+ (?P<losses>.*)$"
)
_LOSS = re.compile(r"(\w+): ([-+\w.]+) \(([-+\w.]+)\)")


def parse_train_log(log_path: Path, *, samples_per_step: int | None = None) -> dict[str, Any]:
    """Summarise open_clip_train's ``out.log``: samples seen per epoch, losses, resumes, curve.

    The log is appended to across resumed runs; for each epoch the last attempt wins (a
    retried epoch restarts its count at its first step, so a progress line whose count does
    not exceed the one before it in the same epoch starts a new attempt, and the points of
    the earlier attempt are dropped). Losses are open_clip's per-epoch running averages over
    the logged steps (``Loss`` is the weighted total).

    ``loss_curve`` is every progress line of the kept attempts, in epoch order: ``epoch``;
    ``step``, the optimizer steps done when the line was logged, counted across epochs
    (open_clip's own 0-based ``step`` of that batch + 1); ``samples_seen``, cumulative across
    the logged epochs (so the last point's is ``samples_seen``); ``losses``, the line's
    current value (not the running average) of each loss by lower-cased name
    (``contrastive_loss``, ``caption_loss`` for CoCa, ``loss`` the weighted total).
    open_clip logs ``batch_count * batch_size * accum_freq * world_size`` samples at step
    ``batch_count`` of an epoch, so the step is samples / ``samples_per_step`` (the global
    batch); when not given, it is read off the log: every epoch's first line is its first
    step (open_clip logs step 1 and every ``--log-every-n-steps``-th after).
    """
    attempts: dict[int, list[dict[str, Any]]] = {}
    resumed: list[int] = []
    loaded_weights: list[str] = []
    rates: list[float] = []
    log_path = Path(log_path)
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.is_file() else ""
    for line in text.splitlines():
        match = _TRAIN_LINE.search(line)
        if match:
            epoch, seen = int(match.group("epoch")), int(match.group("seen"))
            losses = {
                name.lower(): {"last": float(val), "epoch_mean": float(avg)}
                for name, val, avg in _LOSS.findall(match.group("losses"))
            }
            point = {"samples": seen, "total": int(match.group("total")), "losses": losses}
            kept = attempts.get(epoch)
            if kept and seen > kept[-1]["samples"]:
                kept.append(point)
            else:  # the epoch's first line, or a retry of it restarting its count
                attempts[epoch] = [point]
            # samples/s as open_clip reports it (per logged step), averaged over the log.
            rates.append(float(match.group("sps")))
            continue
        found = re.search(r"=> resuming checkpoint '.*' \(epoch (\d+)\)", line)
        if found:
            resumed.append(int(found.group(1)))
        found = re.search(r"Loading full pretrained weights from: (.*)$", line)
        if found:
            loaded_weights.append(found.group(1).strip())
    per_epoch = {epoch: points[-1] for epoch, points in attempts.items()}
    per_step = samples_per_step or (
        min(points[0]["samples"] for points in attempts.values()) if attempts else None)
    curve: list[dict[str, Any]] = []
    samples_before = steps_before = 0
    for epoch in sorted(attempts) if per_step else ():  # no step size: no curve
        for point in attempts[epoch]:
            curve.append({
                "epoch": epoch,
                "step": steps_before + round(point["samples"] / per_step),
                "samples_seen": samples_before + point["samples"],
                "losses": {name: v["last"] for name, v in point["losses"].items()},
            })
        samples_before += per_epoch[epoch]["samples"]
        steps_before += round(per_epoch[epoch]["samples"] / per_step)
    last = per_epoch[max(per_epoch)] if per_epoch else None
    return {
        "epochs_logged": sorted(per_epoch),
        "samples_per_epoch": {str(e): per_epoch[e]["samples"] for e in sorted(per_epoch)},
        "samples_seen": sum(v["samples"] for v in per_epoch.values()),
        "final_losses": {k: v["epoch_mean"] for k, v in last["losses"].items()} if last else {},
        "final_loss": last["losses"].get("loss", {}).get("epoch_mean") if last else None,
        "first_loss": (
            per_epoch[min(per_epoch)]["losses"].get("loss", {}).get("last") if per_epoch else None
        ),
        "logged_step_samples_per_s": sum(rates) / len(rates) if rates else None,
        "resumed_from_epochs": resumed,
        "loaded_pretrained_weights": loaded_weights,
        "samples_per_step": per_step,
        "loss_curve": curve,
    }


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def train_data_spec(shards: Sequence[Path]) -> str:
    """``--train-data`` for a list of shard files.

    ``dir/shard-{00000..00007}.tar`` when the shards are one numbered run, else ``a::b``:
    brace notation is what webdataset (and DataComp's launch scripts) expect; ``::`` is
    open_clip_train's separator for lists that are not one brace range.
    """
    paths = [Path(s).resolve() for s in shards]
    if not paths:
        raise ValueError("no training shards")
    parsed = [re.fullmatch(r"(.*?)(\d+)(\.tar)", p.name) for p in paths]
    if all(parsed) and len({p.parent for p in paths}) == 1:
        matches = [m for m in parsed if m is not None]
        prefixes = {(m.group(1), m.group(3), len(m.group(2))) for m in matches}
        numbers = [int(m.group(2)) for m in matches]
        if len(prefixes) == 1 and numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            prefix, suffix, digits = prefixes.pop()
            if len(paths) == 1:
                return str(paths[0])
            first, last = matches[0].group(2), matches[-1].group(2)
            assert len(first) == len(last) == digits
            return f"{paths[0].parent}/{prefix}{{{first}..{last}}}{suffix}"
    return "::".join(str(p) for p in paths)


def open_clip_argv(scale: Scale, *, model: str, train_data: str, logs_dir: Path, seed: int,
                   dist_backend: str | None = None) -> list[str]:
    """``open_clip_train.main`` arguments for one run, as DataComp's train.py builds them.

    ``model`` is an open_clip model name or ``local-dir:PATH``. For local-dir models open_clip
    cannot pick its ViT defaults by name (it looks for "vit" in the name), so beta1/eps are
    passed too; ``beta2`` None leaves open_clip's default (DataComp passes it only at xlarge).
    """
    argv = [
        "--model", model,
        "--train-data", train_data,
        "--dataset-type", "webdataset",
        "--train-num-samples", str(scale.samples_per_checkpoint),
        "--epochs", str(scale.checkpoints),
        "--batch-size", str(scale.per_process_batch_size),
        "--accum-freq", str(scale.accum_freq),
        "--lr", repr(float(scale.lr)),
        "--warmup", str(scale.warmup),
        "--wd", repr(float(scale.weight_decay)),
        "--precision", scale.precision,
        "--workers", str(scale.workers),
        "--device", "cuda" if scale.on_gpu else "cpu",
        "--logs", str(logs_dir),
        "--name", RUN_NAME,
        "--seed", str(seed),
        "--save-frequency", "0",
        "--save-most-recent",
        "--resume", "latest",
        "--log-every-n-steps", str(scale.log_every),
    ]  # fmt: skip
    if scale.dataset_resampled:
        argv.append("--dataset-resampled")
    if scale.beta2 is not None:
        argv += ["--beta2", repr(float(scale.beta2))]
    if model.startswith("local-dir:"):
        argv += ["--beta1", _VIT_BETA1, "--eps", _VIT_EPS]
        if scale.beta2 is None:
            argv += ["--beta2", _VIT_BETA2]
    if dist_backend:
        argv += ["--dist-backend", dist_backend]
    return argv + list(scale.extra_args)


def require_loss_by_name(model: str, *, coca: bool) -> None:
    """Refuse a ``--model`` under which open_clip_train would pick the wrong loss.

    ``open_clip.create_loss`` picks the CoCa loss only when "coca" occurs in ``--model``, so a
    CoCa must be trained under such a name and a CLIP under one without it.
    """
    if ("coca" in model.lower()) != coca:
        raise ValueError(
            f"open_clip picks the CoCa loss by the substring 'coca' in --model; {model!r} "
            "would get the wrong loss: train this CLIP under a path without 'coca'"
        )


def cpu_epochs_argv(model: str, shards: Sequence[Path], logs_dir: Path, *, num_samples: int,
                    epochs: int, batch_size: int, lr: float, warmup: int, workers: int,
                    seed: int, coca: bool, extra_args: Sequence[str] = ()) -> list[str]:
    """``open_clip_train.main`` arguments for whole epochs over fixed shards on the CPU.

    How the toy stand-ins train: fp32, a checkpoint per epoch of which only the last is kept
    (``--delete-previous-checkpoint``) beside ``epoch_latest.pt``, resumable under the fixed
    ``--name``; ViT optimizer defaults for a local-dir ``model``, and CoCa's loss weights when
    ``coca``.
    """
    return [
        "--model", model,
        "--train-data", train_data_spec(shards),
        "--dataset-type", "webdataset",
        "--train-num-samples", str(num_samples),
        "--device", "cpu",
        "--precision", "fp32",
        "--logs", str(logs_dir),
        "--name", RUN_NAME,
        "--save-frequency", "1",
        "--save-most-recent",
        "--delete-previous-checkpoint",
        "--resume", "latest",
        "--epochs", str(epochs),
        "--batch-size", str(batch_size),
        "--lr", repr(float(lr)),
        "--warmup", str(warmup),
        "--workers", str(workers),
        "--seed", str(seed),
        "--log-every-n-steps", "10",
        "--beta1", _VIT_BETA1, "--beta2", _VIT_BETA2, "--eps", _VIT_EPS, "--wd", "0.1",
        *(_COCA_LOSS_ARGS if coca else ()),
        *extra_args,
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Launch
# --------------------------------------------------------------------------------------------


@dataclass
class Launch:
    """How the processes of one run start."""

    kind: str  # "in-process", "torchrun" or "srun"
    prefix: list[str] = field(default_factory=list)  # before the open_clip_train.main argv
    env: dict[str, str] = field(default_factory=dict)

    def command(self, argv_file: Path) -> list[str]:
        return [*self.prefix, str(argv_file)]


def _allocation_hosts(env: Mapping[str, str]) -> list[str]:
    """The hosts of the current SLURM allocation, first = batch host."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        # snakemake's jobstep executor strips SLURM_* (except the job id) before running us.
        shown = subprocess.run(["scontrol", "show", "job", "-o", env["SLURM_JOB_ID"]],
                               capture_output=True, text=True, check=True).stdout
        fields = dict(item.split("=", 1) for item in shown.split() if "=" in item)
        nodelist = fields.get("NodeList") or fields.get("BatchHost") or socket.gethostname()
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist],
                           capture_output=True, text=True, check=True).stdout.split()
    return hosts or [socket.gethostname()]


def launch_plan(scale: Scale, env: Mapping[str, str] | None = None) -> Launch:
    """Pick the launcher: in-process (one process), torchrun (one node), srun (SLURM)."""
    env = dict(os.environ if env is None else env)
    if scale.world_size == 1:
        return Launch("in-process")
    module = [sys.executable, "-u", "-m", ENTRY_MODULE]
    if env.get("SLURM_JOB_ID"):
        job_id = int(env["SLURM_JOB_ID"])
        hosts = _allocation_hosts(env)
        prefix = ["srun", f"--nodes={scale.nodes}", f"--ntasks={scale.world_size}",
                  f"--ntasks-per-node={scale.processes_per_node_total}",
                  f"--cpus-per-task={scale.cpus_per_process}", "--kill-on-bad-exit=1"]
        if scale.on_gpu:
            # The node's GPUs for the step. Each task sees all of them, or (per-task binding:
            # --gpus-per-task, --gpu-bind, a site default) only its own; each process picks
            # the device it actually sees before open_clip_train starts (rank_device_args).
            prefix.append(f"--gres=gpu:{scale.gpus_per_node}")
        # One rendezvous per job: the batch host, a port derived from the job id.
        rendezvous = {"MASTER_ADDR": hosts[0], "MASTER_PORT": str(20000 + job_id % 20000)}
        return Launch("srun", prefix + module, rendezvous)
    if scale.nodes > 1:
        raise TrainConfigError(f"train_scales.{scale.name}: {scale.nodes} nodes need a SLURM "
                               "allocation (run with --profile slurm)")
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
              f"--nproc-per-node={scale.processes_per_node_total}", "-m", ENTRY_MODULE]
    return Launch("torchrun", prefix, {"OMP_NUM_THREADS": str(scale.cpus_per_process)})


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global RNG states on exit.

    For code that must seed or draw (open_clip_train reseeds everything; building a model
    initialises weights) without changing what the caller draws afterwards.
    """
    import numpy as np
    import torch

    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])


@contextlib.contextmanager
def _contained_side_effects() -> Iterator[None]:
    """Undo what ``open_clip_train.main`` does to the process, for in-process runs.

    It adds stderr and ``out.log`` handlers to the root logger, sets *every* logger to INFO and
    reseeds Python's, NumPy's and torch's global RNGs. The caller's root handlers are detached
    meanwhile (open_clip_train's own stderr handler already reaches the same log, so lines are
    not doubled) and everything is restored afterwards.
    """
    root = logging.getLogger()
    handlers = list(root.handlers)
    root_level = root.level
    levels = {
        name: lg.level
        for name, lg in logging.root.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    for handler in handlers:
        root.removeHandler(handler)
    try:
        with preserved_rng():
            yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(root_level)
        for name, lg in logging.root.manager.loggerDict.items():
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(name, logging.NOTSET))


def _run_to_console(command: list[str], work_dir: Path,
                    env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run ``command`` with its output appended to the work dir's console log.

    Returns the exit status and, when it failed, the console's tail for the error message
    (open_clip_train's own out.log misses a crash before its logging starts).
    """
    console = Path(work_dir) / CONSOLE_NAME
    with console.open("ab") as sink:
        proc = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT,
                              env=None if env is None else dict(env), check=False)
    if proc.returncode == 0:
        return 0, ""
    tail = console.read_text(encoding="utf-8", errors="replace")[-_CONSOLE_TAIL_CHARS:]
    return proc.returncode, tail


def run_open_clip_train(argv: list[str], work_dir: Path, *, isolated: bool = False) -> None:
    """Run ``open_clip_train.main`` with ``argv`` once; raise when it fails.

    In-process by default: a subprocess would re-import torch, open_clip and transformers,
    ~7 s per run on 2 cores; the logging and RNG side effects of ``main`` are undone
    afterwards. ``isolated=True`` runs ``python -m open_clip_train.main`` instead (output to
    ``open_clip_train.console.log`` in ``work_dir``).
    """
    if isolated:
        status, tail = _run_to_console([sys.executable, "-m", "open_clip_train.main", *argv],
                                       work_dir)
        if status != 0:
            raise RuntimeError(f"open_clip_train failed (exit {status}):\n{tail}")
        return
    from open_clip_train.main import main as open_clip_train_main

    with _contained_side_effects():
        status = open_clip_train_main(argv)
    if status not in (None, 0):
        raise RuntimeError(f"open_clip_train returned {status}; see {train_log_path(work_dir)}")


def _launch(launch: Launch, argv: list[str], work_dir: Path) -> None:
    """Run ``argv`` as ``launch`` says: in this process, or through torchrun/srun."""
    if launch.kind == "in-process":
        run_open_clip_train(argv, work_dir, isolated=False)
        return
    argv_file = Path(work_dir) / ARGV_NAME
    write_json(argv_file, argv)
    command = launch.command(argv_file)
    log.info("launching (%s): %s", launch.kind, shlex.join(command))
    status, tail = _run_to_console(command, work_dir, {**os.environ, **launch.env})
    if status != 0:
        raise RuntimeError(f"open_clip_train ({launch.kind}) failed with exit "
                           f"{status}; {Path(work_dir) / CONSOLE_NAME}:\n{tail}")


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


def finished_checkpoint(work_dir: Path, epochs: int) -> Path | None:
    """The run's ``epoch_{epochs}.pt`` when it already holds that epoch, else None."""
    final = epoch_checkpoint(work_dir, epochs)
    if final.is_file() and checkpoint_epoch(final) == epochs:
        log.info("training in %s already reached epoch %d", work_dir, epochs)
        return final
    return None


def train_cpu_epochs(model: str, shards: Sequence[Path], work_dir: Path, *, num_samples: int,
                     epochs: int, batch_size: int, lr: float, warmup: int, workers: int,
                     seed: int, coca: bool, extra_args: Sequence[str] = (),
                     isolated: bool = False) -> Path:
    """Train (or resume) ``model`` for ``epochs`` whole epochs over ``shards`` on the CPU;
    return the final checkpoint (``work_dir/run/checkpoints/epoch_{epochs}.pt``).

    ``model`` is the ``--model`` value (a staged ``local-dir:``); ``num_samples`` the samples
    the shards hold. A batch larger than the data, or more workers than shards (open_clip_train
    asserts shards >= workers), is cut down with a warning. Arguments: :func:`cpu_epochs_argv`;
    a re-run on the same ``work_dir`` continues from the last finished epoch.
    """
    if num_samples < 1:
        raise ValueError("the training shards hold no samples")
    if batch_size > num_samples:
        log.warning("batch size %d > %d samples: using %d", batch_size, num_samples, num_samples)
        batch_size = num_samples
    if workers > len(shards):
        # open_clip_train asserts shards >= workers (each worker reads whole shards).
        log.warning("%d workers > %d shards: using %d", workers, len(shards), len(shards))
        workers = len(shards)
    argv = cpu_epochs_argv(model, shards, work_dir, num_samples=num_samples, epochs=epochs,
                           batch_size=batch_size, lr=lr, warmup=warmup, workers=workers,
                           seed=seed, coca=coca, extra_args=extra_args)
    log.info("open_clip_train %s", " ".join(argv))
    run_open_clip_train(argv, work_dir, isolated=isolated)
    final = epoch_checkpoint(work_dir, epochs)
    if not final.is_file():
        raise RuntimeError(
            f"open_clip_train finished without {final} (latest checkpoint: epoch "
            f"{reached_epoch(work_dir)}); see {train_log_path(work_dir)}"
        )
    return final


def _link_final(latest: Path, final: Path) -> None:
    """Hard-link the final checkpoint (no copy of a multi-GB file); copy across devices."""
    tmp = final.with_name(final.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(latest, tmp)
    except OSError:
        shutil.copyfile(latest, tmp)
    os.replace(tmp, final)


def train_clip(scale: Scale, *, manifest_path: Path, work_dir: Path, final_path: Path,
               summary_path: Path, seed: int, model: str | None = None,
               provenance_inputs: Sequence[Path] = (),
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume) one CLIP on a strategy's training shards; write the final
    checkpoint and the training summary. ``model`` overrides ``scale.model`` (toy scales
    pass their staged local-dir model). A GPU scale's job that sees no GPU fails first,
    before it reads the manifest or launches anything (open_clip_train would fall back to
    the CPU with a warning)."""
    if scale.on_gpu:
        resolve_device("cuda", scale.gpus_per_node,
                       f"train {work_dir} (train_scales.{scale.name}: "
                       f"{scale.gpus_per_node} GPUs per node)")
    manifest = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    if not manifest.get("num_samples"):
        raise ValueError(f"{manifest_path}: the training shards hold no samples")
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    model = model or scale.model
    assert model is not None
    launch = launch_plan(scale)
    argv = open_clip_argv(scale, model=model, train_data=manifest["train_data"],
                          logs_dir=work_dir, seed=seed)
    start_epoch = reached_epoch(work_dir)
    attempts_path = work_dir / ATTEMPTS_NAME
    attempts = (json.loads(attempts_path.read_text(encoding="utf-8"))
                if attempts_path.is_file() else [])
    started = time.time()
    if start_epoch != scale.checkpoints:
        log.info("%s: %s from %s, world size %d (%s), per-process batch %d", work_dir.name,
                 "resuming" if start_epoch else "training", f"epoch {start_epoch}"
                 if start_epoch else "scratch", scale.world_size, launch.kind,
                 scale.per_process_batch_size)
        attempt = {"started": started, "from_epoch": start_epoch or 0, "launch": launch.kind,
                   "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
        attempts.append(attempt)
        write_json(attempts_path, attempts)
        _launch(launch, argv, work_dir)
        attempt["wall_s"] = time.time() - started
        write_json(attempts_path, attempts)
    reached = reached_epoch(work_dir)
    if reached != scale.checkpoints:
        raise RuntimeError(f"open_clip_train stopped at epoch {reached} of {scale.checkpoints}"
                           f"; see {train_log_path(work_dir)}")
    _link_final(latest_checkpoint(work_dir), Path(final_path))
    trained = parse_train_log(train_log_path(work_dir), samples_per_step=scale.global_batch_size)
    summary = {
        "scale": scale.name, "model": model, "world_size": scale.world_size,
        "per_process_batch_size": scale.per_process_batch_size,
        "global_batch_size": scale.global_batch_size, "accum_freq": scale.accum_freq,
        "checkpoints": scale.checkpoints, "samples_seen": trained["samples_seen"],
        "samples_seen_planned": scale.samples_per_checkpoint * scale.checkpoints,
        "steps": trained["samples_seen"] // scale.global_batch_size,
        "final_loss": trained["final_loss"], "first_loss": trained["first_loss"],
        "resumed_from_epochs": trained["resumed_from_epochs"],
        # Every logged progress line of the kept attempts (parse_train_log): the curve the
        # training_loss figure draws; first_loss/final_loss stay as they were.
        "log_every_n_steps": scale.log_every, "loss_curve": trained["loss_curve"],
        "wall_s": sum(a.get("wall_s", 0.0) for a in attempts), "attempts": attempts,
        "train_data": manifest["train_data"], "n_training_samples": manifest["num_samples"],
        "open_clip_argv": argv, "launch": launch.kind, **dict(extra or {}),
    }
    provenance = provenance_record("train", inputs=[Path(manifest_path), *provenance_inputs],
                                   packages=("torch", "open_clip_torch", "webdataset"),
                                   params={"scale": scale.__dict__ | {"extra_args":
                                                                      list(scale.extra_args)},
                                           "seed": seed})
    write_json(summary_path, {**summary, "provenance": provenance})
    return summary


# --------------------------------------------------------------------------------------------
# One training process under torchrun/srun
# --------------------------------------------------------------------------------------------


def _allow_cpu_ddp() -> None:
    """Let open_clip_train wrap a CPU model in DistributedDataParallel.

    open_clip_train 3.3.0 always passes ``device_ids=[device]``; for a CPU module torch's DDP
    refuses that ("device_ids ... only work with ... GPU modules or CPU modules, but got
    device_ids [device(type='cpu')]"), so multi-process training on the CPU (gloo) would fail.
    DDP's own rule for CPU modules is ``device_ids=None``; only that case is changed.
    """
    import torch

    parallel = torch.nn.parallel
    if getattr(parallel.DistributedDataParallel, "_capmix_cpu_ok", False):
        return

    class DistributedDataParallel(parallel.DistributedDataParallel):
        _capmix_cpu_ok = True

        def __init__(self, module: Any, device_ids: Any = None, *args: Any, **kwargs: Any):
            if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    parallel.DistributedDataParallel = DistributedDataParallel


#: Where a process started by torchrun or srun learns its place on its node, in the order read
#: (torchrun's names first; srun's otherwise). Quoted, with :data:`GPU_ENV_VARS`, when a
#: process cannot be given a GPU.
LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID")
TASKS_ON_NODE_VARS = ("LOCAL_WORLD_SIZE", "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE")
RANK_VARS = ("RANK", "SLURM_PROCID", "SLURM_NODEID", *LOCAL_RANK_VARS, *TASKS_ON_NODE_VARS)
#: open_clip_train's own switch for one GPU per process: keep ``--device`` as given instead of
#: replacing its index by the local rank (open_clip_train.params).
_ONE_GPU_PER_TASK = ("--device", "cuda:0", "--no-set-device-rank")
_SLURM_TASK_COUNTS = re.compile(r"(\d+)(?:\(x(\d+)\))?")


def _tasks_on_node(name: str, value: str, node_id: int) -> int:
    """Tasks on node ``node_id`` from a tasks-per-node variable: ``8``, or SLURM's compressed
    per-node list (``4(x2)`` = 4 on each of two nodes, ``2(x3),1``). Hand-parsed: neither
    torch nor open_clip_train reads these lists, and they are plain text."""
    counts: list[int] = []
    for part in value.split(","):
        match = _SLURM_TASK_COUNTS.fullmatch(part.strip())
        if match is None:
            raise GpuUnavailableError(f"{name}={value!r}: not a tasks-per-node count")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts[node_id] if node_id < len(counts) else counts[-1]


def rank_device_args(device: str, env: Mapping[str, str], visible: int) -> list[str]:
    """Arguments appended to open_clip_train's argv so that this process (started by
    torchrun or srun) runs on a GPU it actually sees; ``[]`` when open_clip's own choice holds.

    open_clip_train puts a distributed process on ``cuda:{local rank}``, which exists only when
    the process sees all its node's GPUs. Under per-task GPU binding (srun's
    ``--gpus-per-task=1``, ``--gpu-bind``, site defaults) each task sees one, as ``cuda:0``.
    So, with ``visible`` = torch's device count here:

    * not a CUDA ``device``: nothing to do (CPU training, gloo);
    * ``visible`` >= the tasks on this node: ``[]`` (``cuda:{local rank}``, open_clip's);
    * exactly one, under srun: ``--device cuda:0 --no-set-device-rank`` (open_clip_train's
      own flag for that case). Under torchrun every process shares one environment, so one
      visible GPU means they would all share it: refused;
    * none, or some but neither all nor one: :class:`GpuUnavailableError` naming the rank,
      the counts and the variables read (:data:`RANK_VARS`, :data:`GPU_ENV_VARS`).
    """
    if torch_device_type(device) != "cuda":
        return []
    local_rank = next((int(env[v]) for v in LOCAL_RANK_VARS if v in env), 0)
    tasks_name = next((v for v in TASKS_ON_NODE_VARS if v in env), None)
    tasks = (_tasks_on_node(tasks_name, env[tasks_name], int(env.get("SLURM_NODEID", "0")))
             if tasks_name else 1)
    if visible >= tasks and local_rank < visible:
        return []
    if visible == 1 and "LOCAL_WORLD_SIZE" not in env:  # srun: one GPU bound to this task
        return list(_ONE_GPU_PER_TASK)
    rank = env.get("RANK", env.get("SLURM_PROCID", "?"))
    if visible == 0:
        why = "sees no GPU"
    elif visible == 1:
        why = f"sees one GPU, which all {tasks} processes torchrun started here would share"
    else:
        why = f"sees {visible} GPUs, neither one of its own nor all of the node's"
    seen = gpu_environment(env, (*RANK_VARS, *GPU_ENV_VARS), visible)
    raise GpuUnavailableError(f"training process rank {rank} (local rank {local_rank} of "
                              f"{tasks} tasks on this node, --device {device}) {why}: {seen}")


def process_main(argv: Sequence[str]) -> int:
    """One training process under torchrun/srun: ``python -m capmix.train ARGV.json``.

    Before open_clip_train's ``main`` runs, a CUDA run is put on the GPU this process sees
    (:func:`rank_device_args`); a process that cannot be fails here, saying why.
    """
    import torch
    from open_clip_train.main import main as open_clip_train_main
    from open_clip_train.params import parse_args

    _allow_cpu_ddp()
    if len(argv) != 1:
        print("usage: python -m capmix.train OPEN_CLIP_ARGV.json", file=sys.stderr)
        return 2
    run_argv = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    device = parse_args(run_argv).device  # open_clip_train's own reading of its argv
    # A CPU run (gloo) never probes CUDA, as open_clip_train does not.
    visible = torch.cuda.device_count() if torch_device_type(device) == "cuda" else 0
    try:
        extra = rank_device_args(device, os.environ, visible)
    except GpuUnavailableError as error:
        print(f"capmix.train: {error}", file=sys.stderr)
        return 1
    if extra:
        print(f"capmix.train: one GPU per task: {shlex.join(extra)}", file=sys.stderr)
    status = open_clip_train_main(run_argv + extra)
    return 0 if status in (None, 0) else 1


if __name__ == "__main__":
    sys.exit(process_main(sys.argv[1:]))
