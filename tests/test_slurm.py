"""A toy DAG through a real SLURM cluster with `snakemake --profile slurm`.

The test starts a single-node SLURM cluster itself (tests/slurm_cluster.py: Debian's
slurmctld, slurmd and munge, one fake GPU), runs a small toy DAG (the smoke world, fewer
strategies: SMALL_CONFIG) once locally and once through
the repository's own profile (`slurm/config.yaml`, used exactly as a user runs it from the
repository root), and checks that the SLURM run finishes with the same outputs, that rules
asking for a GPU were submitted with a GPU request and the others without. Everything runs
under `timeout`s, so a stuck scheduler fails the test with the daemons' logs instead of
hanging CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from capmix.caption import RunSettings
from capmix.config import pipeline_config
from tests.conftest import REPO, copy_workflow
from tests.slurm_cluster import slurm_cluster

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
# In the SLURM run the captioner and the scorer ask for one GPU (the fake one: gres
# File=/dev/null, no CUDA device behind it). A job that asks for a GPU and sees none fails
# (capmix.modelrun.resolve_device), so their stages say so: the toy models run on the CPU on
# purpose (device cpu), in the local run too. The stage settings each GPU rule reads:
GPU_RULE_SETTINGS = {"caption": "caption", "embed_images": "score", "score": "score"}
GPU_RULES = set(GPU_RULE_SETTINGS)
GPU_CONFIG = {"resources": {stage: {"threads": 1, "mem_mb": 2000, "runtime": 30, "gpus": 1}
                            for stage in GPU_RULES},
              **{settings: {"device": "cpu"} for settings in set(GPU_RULE_SETTINGS.values())}}
# A smaller DAG than the smoke one (the smoke test covers every stage locally): one pool,
# one captioner, three strategies, two models on the toy suite. Every kind of job still goes
# through the profile: CPU rules, GPU rules (caption, embed_images, score), multi-process
# training, evaluation. Without the analyses and figures (CPU jobs like the others, covered
# by the smoke test), so CI pays for the SLURM path once, not for the whole DAG twice more.
SMALL_CONFIG = {
    "targets": ["fetch", "captions", "scores", "quality", "subsets", "models", "eval"],
    "pools": [{
        "name": "toy_smoke",
        "source": {"type": "toy", "world": "smoke", "split": "pool"},
        "fetch": {"image_size": 64, "samples_per_shard": 128, "retries": 0,
                  "threads_per_process": 8},
        "captioners": ["toy_captioner"],
        "scorer": "toy_clip",
        "mix": {"sources": {"synthetic": "toy_captioner/0.75"},
                "strategies": ["raw_no_filter", "raw_top_30", "synthetic_top_50"],
                "samples_per_shard": 128},
        "train": {"scale": "toy_smoke", "strategies": ["raw_no_filter", "raw_top_30"]},
        "eval": {"suite": "toy"},
    }],
}
SMOKE_TIMEOUT = 1500
# Through SLURM a DAG takes about twice as long on a 2-core machine (the smoke DAG: 20 min
# 55 s with the profile's 20 s status polls): one job per rule, the one fake GPU in turn.
SLURM_TIMEOUT = 2400
# One more model, trained by two CPU processes: the job asks for 2 tasks and starts them with
# srun inside its allocation (the multi-GPU path, with gloo instead of NCCL).
DDP_MODEL = "results/toy_smoke/models/synthetic_top_50/training.json"
# Job records and their caches (capmix.lineage): compared by job, not file by file.
PROVENANCE = "results/provenance/"
DDP_CONFIG = {"train_scales": {"toy_smoke": {"processes_per_node": 2}}}
CONFIGS = ("config/smoke.yaml", "config/slurm_small.yaml", "config/slurm_gpus.yaml")
# The profile's first status poll comes 20 s after a submission and every quiet poll waits
# 10 s longer (the plugin's back-off, up to 180 s), sized for a shared cluster. A test cluster
# that runs short jobs one after another polls from 2 s: the plugin accepts squeue for status
# while MinJobAge >= 3 x this (the test cluster keeps jobs for an hour).
FAST_POLLS = ("--slurm-init-seconds-before-status-checks", "2")


def slurm_workflow(root: Path) -> Path:
    """The workflow and the SLURM profile, with the test configs beside the shipped ones."""
    copy_workflow(root, extra=("slurm",))
    (root / "config" / "slurm_small.yaml").write_text(json.dumps(SMALL_CONFIG))
    (root / "config" / "slurm_gpus.yaml").write_text(json.dumps(GPU_CONFIG))
    (root / "config" / "slurm_ddp.yaml").write_text(json.dumps(DDP_CONFIG))
    return root


def run(workdir: Path, *args: str, env: dict[str, str] | None = None,
        timeout: int = SMOKE_TIMEOUT) -> subprocess.CompletedProcess:
    """Snakemake in ``workdir``; bounded, so that a hang fails the test with its output."""
    environment = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", **(env or {})}
    return subprocess.run([SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout, env=environment)


def job_records(env: dict[str, str]) -> list[dict[str, str]]:
    """Every job slurmctld still knows (MinJobAge is an hour in the test cluster)."""
    shown = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True,
                           env={**os.environ, **env}, check=True).stdout
    return [dict(item.split("=", 1) for item in line.split() if "=" in item)
            for line in shown.splitlines() if line.strip()]


def test_the_gpu_rules_run_on_the_cpu_beside_the_fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test cluster's GPU is no CUDA device, and a job that asks for a GPU and sees none
    fails at once; the SLURM test's config must say that its GPU rules run on the CPU."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    config = pipeline_config(*(REPO / name for name in CONFIGS[:1]),
                             overrides={**SMALL_CONFIG, **GPU_CONFIG})
    for rule, settings in GPU_RULE_SETTINGS.items():
        gpus = config["resources"][rule]["gpus"]
        assert gpus == 1, rule
        assert RunSettings.from_config(config[settings], gpus).torch_device(rule) == "cpu"


@pytest.mark.integration
@pytest.mark.slurm
def test_toy_dag_through_slurm_matches_the_local_run(tmp_path: Path) -> None:
    local = slurm_workflow(tmp_path / "local")
    result = run(local, "--cores", "2", "--configfile", *CONFIGS)
    assert result.returncode == 0, result.stderr[-4000:]

    on_slurm = slurm_workflow(tmp_path / "slurm_run")
    # The daemons run as `slurm`, which cannot enter pytest's private tmp_path.
    cluster = Path(tempfile.mkdtemp(prefix="capmix-slurm-"))
    cluster.chmod(0o755)
    try:
        with slurm_cluster(cluster, gpus=1) as env:
            # As a user runs it from the repository root, polling sooner (FAST_POLLS).
            result = run(on_slurm, "--profile", "slurm", *FAST_POLLS, "--configfile", *CONFIGS,
                         env=env, timeout=SLURM_TIMEOUT)
            ddp = None
            if result.returncode == 0:
                ddp = run(on_slurm, DDP_MODEL, "--profile", "slurm", *FAST_POLLS,
                          "--configfile", *CONFIGS, "config/slurm_ddp.yaml", env=env)
            records = job_records(env)
        logs = "\n".join(p.read_text(errors="replace")[-1500:]
                         for p in sorted((cluster / "log").glob("*.log")))
    finally:
        shutil.rmtree(cluster, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-4000:] + logs
    assert ddp is not None and ddp.returncode == 0, ddp.stderr[-4000:] + logs

    # Every rule ran as its own SLURM job; GPU rules asked for a GPU, the others did not.
    by_rule: dict[str, list[dict[str, str]]] = {}
    for record in records:
        comment = record.get("Comment", "")
        assert comment.startswith("rule_"), record
        rule = comment[len("rule_"):].split("_wildcards_")[0]
        by_rule.setdefault(rule, []).append(record)
    assert {"toy_world", "fetch", "caption", "score", "subset", "train_shards",
            "train"} <= set(by_rule)
    for rule, jobs in by_rule.items():
        for job in jobs:
            assert job["JobState"] == "COMPLETED", (rule, job)
            asks_gpu = "gpu" in job.get("TresPerJob", "") + job.get("TresPerNode", "")
            assert asks_gpu == (rule in GPU_RULES), (rule, job)

    # The two-process training job: 2 tasks in its allocation, started with srun, and
    # open_clip_train saw a world of 2 (per-process batch 64 / 2).
    ddp_jobs = [j for j in by_rule["train"] if "synthetic_top_50" in j.get("Comment", "")]
    assert len(ddp_jobs) == 1 and ddp_jobs[0]["NumTasks"] == "2", ddp_jobs
    summary = json.loads((on_slurm / DDP_MODEL).read_text())
    assert summary["world_size"] == 2 and summary["launch"] == "srun"
    assert summary["attempts"][-1]["slurm_job_id"] == ddp_jobs[0]["JobId"]
    assert summary["per_process_batch_size"] == 32
    assert (summary["samples_seen"], summary["steps"]) == (1536, 24)

    # The DDP model (and its training shards) exist only in the SLURM run.
    compare_outputs(local, on_slurm, skip=(DDP_MODEL.rsplit("/", 1)[0],
                                           "results/toy_smoke/train_shards/synthetic_top_50/"))


def compare_outputs(local: Path, on_slurm: Path, skip: tuple[str, ...] = ()) -> None:
    """The same result files; equal content wherever the pipeline is deterministic.

    The toy models are not bit-reproducible from run to run, even between two local runs:
    open_clip_train's sample shuffle (webdataset ``shuffle``) seeds itself from the pid and
    the clock. So captions, scores and score-based subsets are compared by what the
    pipeline fixes (uids, sizes set by fractions, samples seen), not by value.
    """
    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in (root / "results").rglob("*")
                if p.is_file() and "/_work/" not in str(p) and "/run/" not in str(p)
                and not str(p.relative_to(root)).startswith((*skip, PROVENANCE))}

    def frame(root: Path, name: str) -> pd.DataFrame:
        # Error messages quote file paths, which differ only by the run directory.
        return pd.read_parquet(root / name).replace(str(root), "RUN", regex=True)

    assert files(local) == files(on_slurm)
    # Job records: the same jobs ran (a record is named by its job's outputs), plus the DDP
    # model's only on SLURM; the rest of results/provenance (hash cache, environments) is keyed
    # by absolute paths and interpreters, so differs by run.
    def records(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in (root / PROVENANCE / "jobs").rglob("*.json")}

    assert records(local) and records(local) <= records(on_slurm)
    deterministic = [n for n in files(local) if n.endswith(".parquet") and (
        n.startswith("results/toyworld/") or n.endswith("/fetch/index.parquet")
        or "/captions/raw/" in n or "/subsets/raw_no_filter/" in n)]
    assert len(deterministic) > 10
    for name in sorted(deterministic):
        left, right = frame(local, name), frame(on_slurm, name)
        if "/subsets/" in name:  # the same samples and captions; scores come from the model
            left, right = left.drop(columns="score"), right.drop(columns="score")
        pd.testing.assert_frame_equal(left, right, obj=name)
    for name in sorted(n for n in files(local) if n.endswith(".parquet") and "/scores/" in n):
        assert sorted(frame(local, name)["uid"]) == sorted(frame(on_slurm, name)["uid"]), name
    for name in sorted(n for n in files(local) if n.endswith("/summary.json")
                       and "/subsets/" in n):
        left = json.loads((local / name).read_text())
        right = json.loads((on_slurm / name).read_text())
        assert left["n_pool"] == right["n_pool"], name
        if left["family"] in ("raw_top", "synthetic_top", "raw_no_filter",
                              "synthetic_no_filter", "raw_top_synthetic_remaining"):
            # Sizes a fraction fixes (ties aside, which continuous scores do not have).
            assert left["n_samples"] == right["n_samples"], name
    for name in sorted(n for n in files(local) if n.endswith("/training.json")
                       and "/models/" in n):
        left = json.loads((local / name).read_text())
        right = json.loads((on_slurm / name).read_text())
        assert (left["samples_seen"], left["steps"]) == (right["samples_seen"], right["steps"])
    for name in sorted(n for n in files(local) if n.endswith("uids.npy")
                       and "/raw_no_filter/" in n):
        assert np.array_equal(np.load(local / name), np.load(on_slurm / name)), name
