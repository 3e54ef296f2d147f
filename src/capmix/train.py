"""CLIP training per (pool, strategy) with ``open_clip_train``, at a scale defined as data.

The paper trains one CLIP per training set with DataComp's fixed recipe per scale. A scale
(config ``train_scales``) holds that recipe and what it asks of the cluster; this module turns
it into ``open_clip_train.main`` arguments, picks how to launch them, and makes the run
resumable:

* **Arguments** (:func:`open_clip_argv`) are DataComp's ``train.py`` ones: the per-process
  batch is ``global_batch_size / (world_size * accum_freq)``; ``--epochs`` is the number of
  checkpoints, each of ``samples_seen / checkpoints`` samples; ``--dataset-resampled``;
  ``--save-most-recent --resume latest`` under a fixed ``--name``.
* **Launch** (:func:`launch_plan`): one process runs ``open_clip_train.main`` in this
  process; several on one machine run under ``torchrun``; inside a SLURM allocation,
  ``srun`` starts one task per GPU across the allocation's nodes, with the rendezvous
  (``MASTER_ADDR``/``MASTER_PORT``) taken from the allocation. open_clip reads the rank and
  world size from SLURM's variables itself.
* **Resume**: checkpoints live in ``work_dir/run/checkpoints`` (not a Snakemake output, so a
  failed or killed job keeps them); a re-run continues from ``epoch_latest.pt``. The final
  checkpoint is hard-linked to the rule's output once its stored epoch is the last one.

Nothing here imports torch at module level: config checks run in Snakemake's process.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capmix.provenance import provenance_record, write_json

log = logging.getLogger(__name__)

RUN_NAME = "run"  # fixed --name, so that --resume latest finds the same run again
#: What torchrun/srun start per process: ``python -m capmix.train ARGV.json`` runs
#: ``open_clip_train.main.main(argv)``. The arguments travel in a file because torchrun's
#: own parser would otherwise claim open_clip's ``--logs`` as an abbreviation of its
#: ``--logs-specs`` ("ambiguous option"), and a file keeps long argument lists off srun's
#: command line.
ENTRY_MODULE = "capmix.train"
ARGV_NAME = "open_clip_argv.json"
FINAL_NAME = "final.pt"
SUMMARY_NAME = "training.json"
ATTEMPTS_NAME = "attempts.json"
#: The CLIP architecture a toy scale trains: the toy scorer's (config + tokenizer).
TOY_MODEL_KINDS = ("scorer",)


class TrainConfigError(ValueError):
    """A training scale that cannot run as configured; the message names the scale."""


@dataclass(frozen=True)
class Scale:
    """One training recipe and its cluster request (a ``train_scales`` entry)."""

    name: str
    global_batch_size: int
    lr: float
    warmup: int
    samples_seen: int
    beta2: float | None
    weight_decay: float
    precision: str
    checkpoints: int
    accum_freq: int
    workers: int
    dataset_resampled: bool
    nodes: int
    gpus_per_node: int
    cpus_per_process: int
    mem_mb_per_process: int
    runtime: int
    model: str | None = None
    toy_model: str | None = None
    processes_per_node: int = 1
    extra_args: tuple[str, ...] = ()
    description: str = ""

    @classmethod
    def from_config(cls, name: str, spec: Mapping[str, Any]) -> Scale:
        fields = {k: v for k, v in spec.items() if k in cls.__dataclass_fields__}
        fields["extra_args"] = tuple(spec.get("extra_args", ()))
        scale = cls(name=name, **fields)
        problem = scale.problem()
        if problem:
            raise TrainConfigError(f"train_scales.{name}: {problem}")
        return scale

    @property
    def on_gpu(self) -> bool:
        return self.gpus_per_node > 0

    @property
    def processes_per_node_total(self) -> int:
        """One process per GPU; on the CPU, ``processes_per_node``."""
        return self.gpus_per_node if self.on_gpu else self.processes_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node_total

    @property
    def per_process_batch_size(self) -> int:
        return self.global_batch_size // (self.world_size * self.accum_freq)

    @property
    def samples_per_checkpoint(self) -> int:
        return self.samples_seen // self.checkpoints

    def problem(self) -> str | None:
        """Why this scale cannot run as written (None when it can)."""
        if (self.model is None) == (self.toy_model is None):
            return "give exactly one of model and toy_model"
        if self.toy_model is not None and self.toy_model not in TOY_MODEL_KINDS:
            return f"toy_model must be one of {list(TOY_MODEL_KINDS)}"
        split = self.world_size * self.accum_freq
        if self.global_batch_size % split:
            return (f"global batch {self.global_batch_size} does not divide by world size "
                    f"{self.world_size} (nodes {self.nodes} x "
                    f"{'gpus_per_node' if self.on_gpu else 'processes_per_node'} "
                    f"{self.processes_per_node_total}) x accum_freq {self.accum_freq}")
        if self.samples_seen < self.checkpoints * self.global_batch_size:
            return (f"samples_seen {self.samples_seen} is less than one global batch "
                    f"({self.global_batch_size}) per checkpoint ({self.checkpoints})")
        if not self.on_gpu and self.precision not in ("fp32", "bf16"):
            return f"precision {self.precision} needs a GPU (gpus_per_node is 0): use fp32"
        return None

    def slurm_resources(self) -> dict[str, Any]:
        """What one training job asks SLURM for (snakemake-executor-plugin-slurm names).

        Several processes: an ``mpi`` job, so that the plugin runs the rule's command once
        on the allocation and the command itself starts one task per GPU with ``srun``
        (``tasks_per_node`` / ``tasks``); one process: an ordinary job that the plugin runs
        in a one-task step. GPUs: ``gpu`` (``--gpus``) on one node, ``gres`` per node on
        several. Memory is per node (``--mem``). Unset keys are None (Snakemake drops them).
        """
        per_node = self.processes_per_node_total
        distributed = self.world_size > 1
        return {
            "nodes": self.nodes,
            "mem_mb": self.mem_mb_per_process * per_node,
            "runtime": self.runtime,
            "cpus_per_task": self.cpus_per_process,
            "gpu": self.gpus_per_node if self.on_gpu and self.nodes == 1 else None,
            "gres": f"gpu:{self.gpus_per_node}" if self.on_gpu and self.nodes > 1 else None,
            "mpi": "srun" if distributed else None,
            "tasks_per_node": per_node if distributed and per_node > 1 else None,
            "tasks": self.world_size if distributed and per_node == 1 else None,
        }


def load_scale(config: Mapping[str, Any], name: str) -> Scale:
    scales = config.get("train_scales") or {}
    if name not in scales:
        raise TrainConfigError(f"unknown training scale {name!r} (defined: {sorted(scales)})")
    return Scale.from_config(name, scales[name])


def pool_train_strategies(config: Mapping[str, Any], pool: Mapping[str, Any]) -> list[str]:
    """The strategies a pool trains a CLIP on: ``train.strategies`` (families expand), or all."""
    from capmix.strategies import expand_strategies, pool_strategy_names

    available = pool_strategy_names(config, pool)
    wanted = (pool.get("train") or {}).get("strategies")
    if wanted is None:
        return available
    families = config.get("strategies") or {}
    expanded: list[str] = []
    for name in wanted:
        if name in families and "fractions" in families[name]:
            expanded += list(expand_strategies({name: families[name]}))
        else:
            expanded.append(name)
    return [name for name in available if name in set(expanded)]


def train_problems(config: Mapping[str, Any]) -> list[str]:
    """Config checks for training: every scale runs, every pool's scale and strategies exist."""
    from capmix.strategies import expand_strategies, pool_strategy_names

    problems = []
    scales = config.get("train_scales") or {}
    for name, spec in scales.items():
        try:
            Scale.from_config(name, spec)
        except TrainConfigError as error:
            problems.append(str(error))
    catalogue = set(expand_strategies(config.get("strategies") or {}))
    catalogue |= {n for n, s in (config.get("strategies") or {}).items() if "fractions" in s}
    for i, pool in enumerate(config.get("pools", [])):
        train = pool.get("train")
        if not train:
            if "models" in (pool.get("targets") or []):
                problems.append(f"pools[{i}] ({pool['name']}): target 'models' needs "
                                "pools[].train (a scale)")
            continue
        where = f"pools[{i}].train ({pool['name']})"
        if train["scale"] not in scales:
            problems.append(f"{where}: unknown scale {train['scale']!r} "
                            f"(train_scales: {sorted(scales)})")
        elif scales[train["scale"]].get("toy_model") and pool["source"]["type"] != "toy":
            problems.append(f"{where}: scale {train['scale']!r} trains the toy world's "
                            "architecture, but the pool is not a toy pool")
        running = set(pool_strategy_names(config, pool))
        for name in train.get("strategies") or []:
            if name not in catalogue:
                problems.append(f"{where}: unknown strategy {name!r}")
            elif name not in running and not any(s.startswith(f"{name}_") for s in running):
                problems.append(f"{where}: strategy {name!r} is not among the pool's "
                                "mix.strategies, so it has no training shards")
    return problems


# --------------------------------------------------------------------------------------------
# Arguments and launch
# --------------------------------------------------------------------------------------------


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
        "--log-every-n-steps", "10" if not scale.on_gpu else "100",
    ]  # fmt: skip
    if scale.dataset_resampled:
        argv.append("--dataset-resampled")
    if scale.beta2 is not None:
        argv += ["--beta2", repr(float(scale.beta2))]
    if model.startswith("local-dir:"):
        argv += ["--beta1", "0.9", "--eps", "1e-6"]
        if scale.beta2 is None:
            argv += ["--beta2", "0.98"]
    if dist_backend:
        argv += ["--dist-backend", dist_backend]
    return argv + list(scale.extra_args)


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
            # Every task sees its node's GPUs; open_clip_train takes cuda:{local rank}.
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


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------


def checkpoint_dir(work_dir: Path) -> Path:
    return Path(work_dir) / RUN_NAME / "checkpoints"


def checkpoint_epoch(path: Path) -> int | None:
    """The ``epoch`` stored in an open_clip_train checkpoint (None when it does not load)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a truncated/corrupt file counts as "no checkpoint"
        return None
    return int(ckpt["epoch"]) if isinstance(ckpt, dict) and "epoch" in ckpt else None


def stage_toy_model(toy_model_dir: Path, work_dir: Path) -> str:
    """The toy architecture as a weightless local-dir model; returns the ``--model`` value.

    Only the config and tokenizer are copied, so open_clip initialises the weights from
    scratch (as DataComp trains from scratch). The directory name avoids "coca": open_clip
    picks its loss by that substring in ``--model``.
    """
    from capmix.toymodels import CONFIG_NAME, TOKENIZER_FILES

    staged = Path(work_dir) / "clip_model"
    staged.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_NAME, *TOKENIZER_FILES):
        source = Path(toy_model_dir) / name
        if source.is_file():
            shutil.copyfile(source, staged / name)
    if not (staged / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in the toy model {toy_model_dir}")
    return f"local-dir:{staged.resolve()}"


def _run(launch: Launch, argv: list[str], work_dir: Path) -> None:
    if launch.kind == "in-process":
        from capmix.toymodels import _run_open_clip_train

        _run_open_clip_train(argv, work_dir, isolated=False)
        return
    console = Path(work_dir) / "open_clip_train.console.log"
    argv_file = Path(work_dir) / ARGV_NAME
    write_json(argv_file, argv)
    command = launch.command(argv_file)
    log.info("launching (%s): %s", launch.kind, shlex.join(command))
    with console.open("ab") as sink:
        proc = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT,
                              env={**os.environ, **launch.env}, check=False)
    if proc.returncode != 0:
        tail = console.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"open_clip_train ({launch.kind}) failed with exit "
                           f"{proc.returncode}; {console}:\n{tail}")


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
    pass their staged local-dir model)."""
    from capmix.toymodels import parse_train_log

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
    latest = checkpoint_dir(work_dir) / "epoch_latest.pt"
    start_epoch = checkpoint_epoch(latest) if latest.is_file() else None
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
        _run(launch, argv, work_dir)
        attempt["wall_s"] = time.time() - started
        write_json(attempts_path, attempts)
    reached = checkpoint_epoch(latest) if latest.is_file() else None
    if reached != scale.checkpoints:
        raise RuntimeError(f"open_clip_train stopped at epoch {reached} of {scale.checkpoints}"
                           f"; see {work_dir / RUN_NAME / 'out.log'}")
    _link_final(latest, Path(final_path))
    trained = parse_train_log(work_dir / RUN_NAME / "out.log")
    summary = {
        "scale": scale.name, "model": model, "world_size": scale.world_size,
        "per_process_batch_size": scale.per_process_batch_size,
        "global_batch_size": scale.global_batch_size, "accum_freq": scale.accum_freq,
        "checkpoints": scale.checkpoints, "samples_seen": trained["samples_seen"],
        "samples_seen_planned": scale.samples_per_checkpoint * scale.checkpoints,
        "steps": trained["samples_seen"] // scale.global_batch_size,
        "final_loss": trained["final_loss"], "first_loss": trained["first_loss"],
        "resumed_from_epochs": trained["resumed_from_epochs"],
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


def _main(argv: Sequence[str]) -> int:
    """One training process under torchrun/srun: ``python -m capmix.train ARGV.json``."""
    from open_clip_train.main import main

    _allow_cpu_ddp()
    if len(argv) != 1:
        print("usage: python -m capmix.train OPEN_CLIP_ARGV.json", file=sys.stderr)
        return 2
    status = main(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    return 0 if status in (None, 0) else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
