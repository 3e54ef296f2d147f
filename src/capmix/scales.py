"""Training scales as data: the config-facing half of CLIP training (no torch here).

The paper trains one CLIP per training set with DataComp's fixed recipe per scale. A scale
(config ``train_scales``) holds that recipe and what it asks of the cluster: :class:`Scale`
derives the world size, the per-process batch and the SLURM request from it, and says why a
scale cannot run. The config checks (:func:`train_problems`, run by ``capmix.config``) and the
Snakefile's rules (:func:`load_scale`, :func:`pool_train_strategies`) import this module in
Snakemake's own process, so it must not import torch, open_clip or PIL, not even indirectly at
module level; running and reading ``open_clip_train`` is :mod:`capmix.train`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from capmix.toykinds import TOY_CLIP_KINDS

__all__ = ["Scale", "TrainConfigError", "load_scale", "pool_train_strategies", "train_problems"]


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
    #: ``--log-every-n-steps``: open_clip logs a progress line (the loss curve's points in
    #: ``training.json``) every this many optimizer steps and at each epoch's last step.
    #: None = 100 on GPUs, 10 on the CPU.
    log_every_n_steps: int | None = None
    extra_args: tuple[str, ...] = ()
    description: str = ""

    @classmethod
    def from_config(cls, name: str, spec: Mapping[str, Any]) -> Scale:
        """The scale ``train_scales.<name>`` describes; refused (:class:`TrainConfigError`,
        naming the scale) when it could not run, so a bad scale fails at config check time
        rather than hours into a cluster job. Keys that are not fields are ignored."""
        fields = {k: v for k, v in spec.items() if k in cls.__dataclass_fields__}
        fields["extra_args"] = tuple(spec.get("extra_args", ()))
        scale = cls(name=name, **fields)
        problem = scale.problem()
        if problem:
            raise TrainConfigError(f"train_scales.{name}: {problem}")
        return scale

    @property
    def on_gpu(self) -> bool:
        """Whether it trains on GPUs (``gpus_per_node`` 0 trains on the CPU)."""
        return self.gpus_per_node > 0

    @property
    def processes_per_node_total(self) -> int:
        """One process per GPU; on the CPU, ``processes_per_node``."""
        return self.gpus_per_node if self.on_gpu else self.processes_per_node

    @property
    def world_size(self) -> int:
        """Training processes in all: the global batch is split among them."""
        return self.nodes * self.processes_per_node_total

    @property
    def per_process_batch_size(self) -> int:
        """``--batch-size``: DataComp's global batch / (world size x accum_freq)."""
        return self.global_batch_size // (self.world_size * self.accum_freq)

    @property
    def log_every(self) -> int:
        """``--log-every-n-steps``: the scale's ``log_every_n_steps``, else 100 (GPU) / 10."""
        if self.log_every_n_steps is not None:
            return self.log_every_n_steps
        return 100 if self.on_gpu else 10

    @property
    def samples_per_checkpoint(self) -> int:
        """``--train-num-samples``: one open_clip "epoch" per checkpoint, as DataComp."""
        return self.samples_seen // self.checkpoints

    def problem(self) -> str | None:
        """Why this scale cannot run as written (None when it can)."""
        if (self.model is None) == (self.toy_model is None):
            return "give exactly one of model and toy_model"
        if self.toy_model is not None and self.toy_model not in TOY_CLIP_KINDS:
            return f"toy_model must be one of {list(TOY_CLIP_KINDS)}"
        split = self.world_size * self.accum_freq
        if self.global_batch_size % split:
            return (f"global batch {self.global_batch_size} does not divide by world size "
                    f"{self.world_size} (nodes {self.nodes} x "
                    f"{'gpus_per_node' if self.on_gpu else 'processes_per_node'} "
                    f"{self.processes_per_node_total}) x accum_freq {self.accum_freq}")
        if self.samples_seen < self.checkpoints * self.global_batch_size:
            return (f"samples_seen {self.samples_seen} is less than one global batch "
                    f"({self.global_batch_size}) per checkpoint ({self.checkpoints})")
        if self.log_every_n_steps is not None and self.log_every_n_steps < 1:
            return f"log_every_n_steps must be at least 1 (got {self.log_every_n_steps})"
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
    """The scale called ``name`` in config ``train_scales``; an unknown name lists the known."""
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
        elif scales[train["scale"]].get("toy_model") and not pool["source"].get("world"):
            problems.append(f"{where}: scale {train['scale']!r} trains the toy world's "
                            "architecture, but the pool is not a toy pool (no source.world)")
        running = set(pool_strategy_names(config, pool))
        for name in train.get("strategies") or []:
            if name not in catalogue:
                problems.append(f"{where}: unknown strategy {name!r}")
            elif name not in running and not any(s.startswith(f"{name}_") for s in running):
                problems.append(f"{where}: strategy {name!r} is not among the pool's "
                                "mix.strategies, so it has no training shards")
    return problems
