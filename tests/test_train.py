"""CLIP training per scale: DataComp's recipe as arguments, launch, CPU training, resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capmix import toymodels as tm
from capmix.config import ConfigError, pipeline_config
from capmix.modelrun import GpuUnavailableError
from capmix.scales import Scale, TrainConfigError, load_scale
from capmix.toykinds import SCORER
from capmix.toymodels import stage_toy_model
from capmix.toyworld import generate_world
from capmix.train import (
    RUN_NAME,
    checkpoint_dir,
    checkpoint_epoch,
    launch_plan,
    open_clip_argv,
    parse_train_log,
    process_main,
    rank_device_args,
    train_clip,
    train_data_spec,
)

REPO = Path(__file__).resolve().parents[1]

# DataComp's training table (../shared/notes/datacomp-and-peers-facts.md, from DataComp's
# scale_configs.py and train.py), written out by hand: model, global batch, lr, warmup,
# samples seen, beta2 (None = open_clip's ViT default 0.98), precision.
DATACOMP = {
    "small": ("ViT-B-32", 4096, 5e-4, 500, 12_800_000, 0.98, "amp"),
    "medium": ("ViT-B-32", 4096, 5e-4, 500, 128_000_000, 0.98, "amp"),
    "large": ("ViT-B-16", 8192, 5e-4, 500, 1_280_000_000, 0.98, "amp"),
    # The paper's 400M pool (Figure 8): DataComp large's settings, 400M samples seen.
    "large_400m": ("ViT-B-16", 8192, 5e-4, 500, 400_000_000, 0.98, "amp"),
    "xlarge": ("ViT-L-14", 90112, 1e-3, 10000, 12_800_000_000, 0.95, "amp_bfloat16"),
}


@pytest.fixture(scope="module")
def config() -> dict:
    return pipeline_config()


@pytest.mark.parametrize("name", sorted(DATACOMP))
def test_datacomp_scale_arguments_equal_the_datacomp_table(config: dict, name: str) -> None:
    from open_clip_train.params import parse_args

    scale = load_scale(config, name)
    argv = open_clip_argv(scale, model=scale.model, train_data="/data/{00000..00009}.tar",
                          logs_dir=Path("/logs"), seed=0)
    args = parse_args(argv)  # open_clip_train's own parser, defaults filled in as it runs
    model, batch, lr, warmup, seen, beta2, precision = DATACOMP[name]
    assert args.model == model
    assert args.batch_size * scale.world_size * args.accum_freq == batch
    assert (args.lr, args.warmup, args.beta2, args.wd, args.precision) == (
        lr, warmup, beta2, 0.2, precision)
    assert args.epochs == 5 and args.train_num_samples * args.epochs == seen
    assert args.dataset_resampled and args.dataset_type == "webdataset"
    assert args.save_most_recent and args.resume == "latest"
    # The flags DataComp's train.py always passes.
    assert args.ddp_static_graph and args.local_loss and args.gather_with_grad
    assert args.grad_checkpointing


def test_per_process_batch_follows_world_size_and_accumulation(config: dict) -> None:
    spec = dict(config["train_scales"]["small"])
    for nodes, gpus, accum, expected in [(1, 8, 1, 512), (2, 4, 2, 256), (4, 8, 1, 128),
                                         (1, 1, 4, 1024)]:
        scale = Scale.from_config("small", {**spec, "nodes": nodes, "gpus_per_node": gpus,
                                            "accum_freq": accum})
        assert scale.per_process_batch_size == expected
        assert scale.per_process_batch_size * scale.world_size * accum == 4096
    with pytest.raises(TrainConfigError, match=r"train_scales.small: global batch 4096 does "
                                                r"not divide by world size 12"):
        Scale.from_config("small", {**spec, "nodes": 3, "gpus_per_node": 4})


def test_bad_training_config_is_named_at_validation() -> None:
    with pytest.raises(ConfigError, match=r"train_scales.toy: global batch 128 does not divide"):
        pipeline_config(overrides={"train_scales": {"toy": {"processes_per_node": 3}}})
    pools = pipeline_config()["pools"]
    pools[0]["train"] = {"scale": "huge", "strategies": None}
    with pytest.raises(ConfigError, match=r"pools\[0\].train \(toy_default\): unknown scale "
                                          r"'huge'"):
        pipeline_config(overrides={"pools": pools})
    pools[0]["train"] = {"scale": "toy", "strategies": ["raw_top_31"]}
    with pytest.raises(ConfigError, match=r"unknown strategy 'raw_top_31'"):
        pipeline_config(overrides={"pools": pools})


def test_slurm_requests_per_scale(config: dict) -> None:
    small = load_scale(config, "small").slurm_resources()
    # One node: 8 GPUs, one srun task per GPU started by the rule itself (mpi job).
    assert small == {"nodes": 1, "mem_mb": 8 * 48000, "runtime": 720, "cpus_per_task": 8,
                     "gpu": 8, "gres": None, "mpi": "srun", "tasks_per_node": 8, "tasks": None}
    large = load_scale(config, "large").slurm_resources()
    assert (large["nodes"], large["gres"], large["gpu"], large["tasks_per_node"]) == (
        4, "gpu:8", None, 8)
    # The toy scale is an ordinary one-process CPU job: no GPU, no mpi.
    toy = load_scale(config, "toy").slurm_resources()
    assert toy["gpu"] is None and toy["gres"] is None and toy["mpi"] is None
    one_gpu = Scale.from_config("one", {**config["train_scales"]["small"], "gpus_per_node": 1})
    assert one_gpu.slurm_resources()["gpu"] == 1 and one_gpu.slurm_resources()["mpi"] is None


def _progress(epoch: int, seen: int, total: int, losses: tuple[float, float, float]) -> str:
    """A CoCa progress line as open_clip_train 3.3 logs it (current value, then average)."""
    contrastive, caption, loss = losses
    return (f"2026-01-01,00:00:00 | INFO | Train Epoch: {epoch} [{seen:>2}/{total} "
            f"({100 * seen / total:.0f}%)] Data (t): 0.010 Batch (t): 0.250, 16.0000/s, "
            f"16.0000/s/gpu LR: 0.001000 Logit Scale: 14.286 "
            f"Contrastive_loss: {contrastive:#.5g} ({contrastive + 1:#.5g}) "
            f"Caption_loss: {caption:#.5g} ({caption + 1:#.5g}) "
            f"Loss: {loss:#.5g} ({loss + 1:#.5g})")


def test_train_log_keeps_every_point_of_each_epochs_last_attempt(tmp_path: Path) -> None:
    # Batch 4, 5 steps (20 samples) per epoch, logged every 2nd step: steps 1, 3, 5.
    # Epoch 1's first attempt is killed after step 3; the resumed run logs it again.
    lines = [
        "2026-01-01,00:00:00 | INFO | Start epoch 0",
        _progress(0, 4, 20, (2.0, 5.0, 12.0)),
        _progress(0, 12, 20, (1.8, 4.5, 10.8)),
        _progress(0, 20, 20, (1.6, 4.25, 10.1)),
        _progress(1, 4, 20, (9.0, 9.0, 27.0)),  # the killed attempt: dropped
        _progress(1, 12, 20, (9.5, 9.5, 28.5)),
        "2026-01-01,00:01:00 | INFO | => resuming checkpoint '/x/epoch_latest.pt' (epoch 1)",
        _progress(1, 4, 20, (1.5, 4.0, 9.5)),
        _progress(1, 12, 20, (1.4, 3.75, 8.9)),
        _progress(1, 20, 20, (1.3, 3.5, 8.3)),
        _progress(2, 4, 20, (1.25, 3.25, 7.75)),
        _progress(2, 12, 20, (1.2, 3.0, 7.2)),
        _progress(2, 20, 20, (1.125, 2.875, 6.875)),
    ]
    log = tmp_path / "out.log"
    log.write_text("\n".join(lines) + "\n")
    kept = [(0, 4, (2.0, 5.0, 12.0)), (0, 12, (1.8, 4.5, 10.8)), (0, 20, (1.6, 4.25, 10.1)),
            (1, 4, (1.5, 4.0, 9.5)), (1, 12, (1.4, 3.75, 8.9)), (1, 20, (1.3, 3.5, 8.3)),
            (2, 4, (1.25, 3.25, 7.75)), (2, 12, (1.2, 3.0, 7.2)),
            (2, 20, (1.125, 2.875, 6.875))]
    expected = [{"epoch": epoch, "step": 5 * epoch + seen // 4, "samples_seen": 20 * epoch + seen,
                 "losses": {"contrastive_loss": c, "caption_loss": cap, "loss": total}}
                for epoch, seen, (c, cap, total) in kept]
    for given in (4, None):  # the global batch given, or read off each epoch's first line
        summary = parse_train_log(log, samples_per_step=given)
        assert summary["loss_curve"] == expected
        assert summary["samples_per_step"] == 4
        # The per-epoch summary is unchanged: the last line of each epoch wins.
        assert summary["epochs_logged"] == [0, 1, 2]
        assert summary["samples_seen"] == 60 == expected[-1]["samples_seen"]
        assert summary["first_loss"] == 10.1 and summary["final_loss"] == 7.875
        assert summary["final_losses"] == {"contrastive_loss": 2.125, "caption_loss": 3.875,
                                           "loss": 7.875}
        assert summary["resumed_from_epochs"] == [1]
    # An attempt killed after logging only its first step is replaced by the next one.
    log.write_text("\n".join([lines[1], _progress(0, 4, 20, (3.0, 6.0, 15.0))]) + "\n")
    assert [p["losses"]["loss"] for p in parse_train_log(log)["loss_curve"]] == [15.0]
    assert parse_train_log(tmp_path / "missing.log")["loss_curve"] == []


@pytest.mark.parametrize("name", ["toy", "toy_smoke"])
def test_toy_scales_log_a_loss_curve_of_at_least_ten_points(config: dict, name: str) -> None:
    from open_clip_train.params import parse_args

    scale = load_scale(config, name)
    args = parse_args(open_clip_argv(scale, model="local-dir:/m", train_data="/d/0.tar",
                                     logs_dir=Path("/logs"), seed=0))
    assert args.log_every_n_steps == scale.log_every
    # open_clip_train's rule: a resampled epoch is ceil(samples / global batch) steps; it logs
    # step i + 1 when i % log_every_n_steps == 0, and the epoch's last step.
    steps = math.ceil(args.train_num_samples / scale.global_batch_size)
    logged = {i + 1 for i in range(steps) if i % args.log_every_n_steps == 0} | {steps}
    assert len(logged) * args.epochs >= 10
    # Today's default where the scale sets none: 10 steps on the CPU, 100 on GPUs.
    assert load_scale(config, "small").log_every == 100


def test_launch_plans(config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toy = load_scale(config, "toy")
    assert launch_plan(toy, {}).kind == "in-process"
    two = Scale.from_config("two", {**config["train_scales"]["toy"], "processes_per_node": 2})
    plan = launch_plan(two, {})
    assert plan.kind == "torchrun" and "--nproc-per-node=2" in plan.prefix
    with pytest.raises(TrainConfigError, match="4 nodes need a SLURM allocation"):
        launch_plan(load_scale(config, "large"), {})
    # Inside an allocation: srun, one task per GPU, rendezvous on the allocation's first
    # host. `scontrol` is a stand-in here that expands the node list as SLURM would.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text('#!/bin/sh\n[ "$2" = hostnames ] && printf "gpu07\\n'
                                   'gpu08\\ngpu09\\ngpu10\\n"\n')
    (fake / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    plan = launch_plan(load_scale(config, "large"),
                       {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-10]"})
    assert plan.kind == "srun"
    assert plan.prefix[:6] == ["srun", "--nodes=4", "--ntasks=32", "--ntasks-per-node=8",
                               "--cpus-per-task=8", "--kill-on-bad-exit=1"]
    assert "--gres=gpu:8" in plan.prefix and plan.prefix[-2:] == ["-m", "capmix.train"]
    assert plan.env == {"MASTER_ADDR": "gpu07", "MASTER_PORT": str(20000 + 4242)}


def test_train_data_spec_is_brace_expanded(tmp_path: Path) -> None:
    shards = [tmp_path / f"shard-{i:05d}.tar" for i in range(3)]
    assert train_data_spec(shards) == f"{tmp_path}/shard-{{00000..00002}}.tar"
    assert train_data_spec(shards[:1]) == str(shards[0])
    gap = [shards[0], shards[2]]
    assert train_data_spec(gap) == "::".join(str(p) for p in gap)



# ------------------------------------------------------------------ GPUs


def test_a_gpu_scale_without_a_gpu_fails_before_reading_or_launching(
        config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """open_clip_train would fall back to the CPU with a warning; the job refuses first."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    one_gpu = Scale.from_config("one", {**config["train_scales"]["small"], "gpus_per_node": 1})
    work = tmp_path / "model"
    with pytest.raises(GpuUnavailableError,
                       match=r"train_scales\.one: 1 GPUs per node.*CUDA_VISIBLE_DEVICES=''"):
        train_clip(one_gpu, manifest_path=tmp_path / "no-manifest.json", work_dir=work,
                   final_path=work / "final.pt", summary_path=work / "training.json", seed=0)
    assert not work.exists()  # nothing read, nothing launched


#: srun's variables for global rank 5: the second task of the second node, 4 tasks per node.
SRUN_RANK_5 = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
               "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_NTASKS_PER_NODE": "4",
               "SLURM_JOB_ID": "4242"}
ONE_GPU_PER_TASK = ["--device", "cuda:0", "--no-set-device-rank"]


@pytest.mark.parametrize(("env", "visible", "expected"), [
    (SRUN_RANK_5, 4, []),  # every task sees the node's GPUs: open_clip's cuda:{local rank}
    (SRUN_RANK_5, 8, []),
    (SRUN_RANK_5, 1, ONE_GPU_PER_TASK),  # --gpus-per-task=1 / --gpu-bind: its own, as cuda:0
    # An uneven step ("2(x3),1"): the last node runs one task, which may see one GPU.
    ({**SRUN_RANK_5, "SLURM_STEP_TASKS_PER_NODE": "2(x3),1", "SLURM_NODEID": "3",
      "SLURM_LOCALID": "0"}, 1, []),
    ({**SRUN_RANK_5, "SLURM_STEP_TASKS_PER_NODE": "2(x3),1", "SLURM_NODEID": "0"}, 2, []),
    # torchrun: every process sees the same GPUs.
    ({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "RANK": "1"}, 2, []),
    ({}, 1, []),  # one process, one GPU
], ids=["all", "more", "one_per_task", "uneven_one", "uneven_all", "torchrun", "single"])
def test_each_training_process_takes_the_gpu_it_sees(env: dict, visible: int,
                                                     expected: list[str]) -> None:
    assert rank_device_args("cuda", env, visible) == expected
    assert rank_device_args("cpu", env, 0) == []  # CPU training (gloo) is left alone


@pytest.mark.parametrize(("env", "visible", "why"), [
    (SRUN_RANK_5, 0, "sees no GPU"),
    (SRUN_RANK_5, 2, "sees 2 GPUs, neither one of its own nor all of the node's"),
    # Under torchrun one visible GPU would be every process's: refused, not shared.
    ({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "RANK": "1"}, 1,
     "sees one GPU, which all 2 processes torchrun started here would share"),
], ids=["none", "mismatched", "torchrun_shared"])
def test_a_training_process_without_its_gpu_fails_naming_rank_counts_and_variables(
        env: dict, visible: int, why: str) -> None:
    with pytest.raises(GpuUnavailableError) as failed:
        rank_device_args("cuda", env, visible)
    message = str(failed.value)
    rank, local, tasks = (("5", "1", "4") if "SLURM_PROCID" in env else ("1", "1", "2"))
    assert f"rank {rank} (local rank {local} of {tasks} tasks on this node" in message
    assert why in message
    for name, value in env.items():
        assert f"{name}={value}" in message or f"{name}='{value}'" in message
    assert "CUDA_VISIBLE_DEVICES unset" in message and "SLURM_STEP_GPUS unset" in message
    assert message.endswith(f"torch.cuda.device_count() = {visible}")


def test_a_process_started_by_srun_hands_open_clip_train_its_own_gpu(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m capmix.train ARGV.json`` under per-task binding: open_clip_train's main
    gets ``--device cuda:0 --no-set-device-rank`` after the run's own arguments."""
    import open_clip_train.main
    import torch
    from open_clip_train.params import parse_args

    # process_main patches DDP for CPU modules; the test process gets its own class back afterwards.
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel",
                        torch.nn.parallel.DistributedDataParallel)
    for name in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in SRUN_RANK_5.items():
        monkeypatch.setenv(name, value)
    calls: list[list[str]] = []
    monkeypatch.setattr(open_clip_train.main, "main", lambda argv: calls.append(argv) or 0)
    argv = ["--model", "ViT-B-32", "--train-data", "/d/{0..1}.tar", "--device", "cuda"]
    argv_file = tmp_path / "argv.json"
    argv_file.write_text(json.dumps(argv))

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert process_main([str(argv_file)]) == 0
    assert calls == [argv + ONE_GPU_PER_TASK]
    parsed = parse_args(calls[0])
    assert parsed.device == "cuda:0" and parsed.no_set_device_rank

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # sees the node's 4
    assert process_main([str(argv_file)]) == 0 and calls[-1] == argv

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert process_main([str(argv_file)]) == 1 and len(calls) == 2  # never started


# ------------------------------------------------------------------ training on the CPU

SEED = 0
WORLD = {
    "image_size": 32,
    "splits": {"pretrain": 64, "coco": 8, "pool": 0},
    "pool_caption_modes": {"right": 0.3, "partial": 0.2, "other_image": 0.15,
                           "non_visual": 0.2, "boilerplate": 0.15},
    "junk_image_fraction": 0.0, "dead_url_fraction": 0.0, "corrupt_file_fraction": 0.0,
    "captions_per_retrieval_image": 2,
}
SIZES = {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2,
         "embed_dim": 32, "context_length": 36}
TINY = {"toy_model": "scorer", "global_batch_size": 16, "lr": 1e-3, "warmup": 2,
        "samples_seen": 96, "beta2": 0.98, "weight_decay": 0.1, "precision": "fp32",
        "checkpoints": 3, "accum_freq": 1, "workers": 1, "dataset_resampled": True,
        "extra_args": [], "nodes": 1, "gpus_per_node": 0, "cpus_per_process": 1,
        "mem_mb_per_process": 1000, "runtime": 5}


@pytest.fixture(scope="module")
def toy_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A toy scorer architecture (config + tokenizer) and a training-shard manifest."""
    root = tmp_path_factory.mktemp("train")
    generate_world(root / "world", WORLD, SEED)
    train = {"epochs": 1, "batch_size": 16, "lr": 1e-3, "warmup": 2, "workers": 1,
             "sizes": SIZES}
    scorer = tm.train_toy_model(SCORER, root / "world", root / "scorer", train, SEED,
                                root / "work")
    shards = sorted((root / "work" / "shards_pretrain").glob("shard-*.tar"))
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"num_samples": 64,
                                    "train_data": train_data_spec(shards)}))
    return scorer, manifest


def _train(scale: Scale, toy_inputs: tuple[Path, Path], out: Path) -> dict:
    scorer, manifest = toy_inputs
    model = stage_toy_model(scorer, out)
    return train_clip(scale, manifest_path=manifest, work_dir=out, final_path=out / "final.pt",
                      summary_path=out / "training.json", seed=SEED, model=model)


def test_toy_scale_trains_from_scratch_on_the_cpu(toy_inputs, tmp_path: Path) -> None:
    scale = Scale.from_config("tiny", TINY)
    summary = _train(scale, toy_inputs, tmp_path / "model")
    assert checkpoint_epoch(tmp_path / "model" / "final.pt") == 3
    # 3 checkpoints x 32 samples (resampled), batch 16: 6 steps, on one CPU process.
    assert (summary["samples_seen"], summary["steps"], summary["world_size"]) == (96, 6, 1)
    assert summary["launch"] == "in-process" and summary["resumed_from_epochs"] == []
    assert summary["final_loss"] > 0 and summary["wall_s"] > 0
    # 2 steps per epoch, both logged (the first and the last): the whole curve is kept.
    assert [(p["epoch"], p["step"], p["samples_seen"]) for p in summary["loss_curve"]] == [
        (0, 1, 16), (0, 2, 32), (1, 3, 48), (1, 4, 64), (2, 5, 80), (2, 6, 96)]
    assert all(set(p["losses"]) == {"contrastive_loss", "loss"} for p in summary["loss_curve"])
    on_disk = json.loads((tmp_path / "model" / "training.json").read_text())
    assert on_disk["provenance"]["stage"] == "train"
    assert "--dataset-resampled" in on_disk["open_clip_argv"]
    # From scratch: the staged model holds no weights, so none were loaded.
    assert not list((tmp_path / "model" / "clip_model").glob("*.safetensors"))
    out_log = (tmp_path / "model" / RUN_NAME / "out.log").read_text()
    assert "Loading full pretrained weights" not in out_log
    # A finished run is not trained again.
    again = _train(scale, toy_inputs, tmp_path / "model")
    assert len(again["attempts"]) == 1


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill_9"])
def test_killed_run_resumes_from_its_latest_checkpoint(toy_inputs, tmp_path: Path,
                                                       stop: signal.Signals) -> None:
    # Epochs of 1,024 samples take a few seconds, so the stop lands in epoch 2.
    spec = {**TINY, "samples_seen": 3 * 1024}
    out = tmp_path / "model"
    script = (
        "import sys, json\nfrom pathlib import Path\n"
        "from capmix.scales import Scale\nfrom capmix.toymodels import stage_toy_model\n"
        "from capmix.train import train_clip\n"
        f"scale = Scale.from_config('tiny', json.loads({json.dumps(json.dumps(spec))}))\n"
        f"out = Path({str(out)!r})\n"
        f"model = stage_toy_model(Path({str(toy_inputs[0])!r}), out)\n"
        f"train_clip(scale, manifest_path=Path({str(toy_inputs[1])!r}), work_dir=out, "
        "final_path=out / 'final.pt', summary_path=out / 'training.json', seed=0, model=model)\n"
    )
    # The first job: stopped like SLURM stops a job at its time limit (SIGTERM), or killed
    # outright (SIGKILL: no handler runs), as soon as the first checkpoint exists.
    # open_clip_train writes epoch_latest.pt to a temporary name and renames it, so a kill
    # during the save leaves the previous checkpoint whole.
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    latest = checkpoint_dir(out) / "epoch_latest.pt"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if latest.is_file() and checkpoint_epoch(latest) == 1:
                os.killpg(proc.pid, stop)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert checkpoint_epoch(latest) == 1, "the first job was not stopped after epoch 1"
    assert not (out / "final.pt").exists()

    # The re-run (what Snakemake does when the job is submitted again).
    summary = train_clip(Scale.from_config("tiny", spec),
                         manifest_path=toy_inputs[1], work_dir=out, final_path=out / "final.pt",
                         summary_path=out / "training.json", seed=SEED,
                         model=stage_toy_model(toy_inputs[0], out))
    assert checkpoint_epoch(out / "final.pt") == 3
    assert summary["resumed_from_epochs"] == [1]
    assert [a["from_epoch"] for a in summary["attempts"]] == [0, 1]
    # open_clip logs epochs from 0: epoch 0 ran in the first job only; the re-run trained
    # epochs 1 and 2 after resuming, so the total is what the scale asks for.
    out_log = (out / RUN_NAME / "out.log").read_text().splitlines()
    resumed_at = next(i for i, line in enumerate(out_log) if "=> resuming checkpoint" in line)
    assert not any("Train Epoch: 0 " in line for line in out_log[resumed_at:])
    assert any("Train Epoch: 0 " in line for line in out_log[:resumed_at])
    assert summary["samples_seen"] == 3 * 1024


def test_two_processes_on_one_machine_train_under_torchrun(toy_inputs, tmp_path: Path) -> None:
    # World size 2 on the CPU (gloo): torchrun starts both, each takes half the global batch.
    scale = Scale.from_config("tiny2", {**TINY, "processes_per_node": 2, "checkpoints": 1,
                                        "samples_seen": 64})
    assert scale.per_process_batch_size == 8
    summary = _train(scale, toy_inputs, tmp_path / "model")
    assert summary["launch"] == "torchrun" and summary["world_size"] == 2
    assert checkpoint_epoch(tmp_path / "model" / "final.pt") == 1
    out_log = (tmp_path / "model" / RUN_NAME / "out.log").read_text()
    assert "Running in distributed mode with multiple processes" in out_log
    assert "world size: 2" in out_log.lower() or "world_size: 2" in out_log


def test_a_toy_clip_is_not_staged_under_a_path_that_says_coca(toy_inputs, tmp_path: Path) -> None:
    """open_clip picks the CoCa loss by the substring "coca" in --model: a strategy named
    e.g. coca_captions would train the CLIP with the captioning loss; refused before."""
    with pytest.raises(ValueError, match="substring 'coca'"):
        stage_toy_model(toy_inputs[0], tmp_path / "models" / "raw_vs_coca_captions")
