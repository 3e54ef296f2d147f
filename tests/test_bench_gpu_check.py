"""bench/gpu_check.py, the one prepared command for a lent GPU node, exercised here.

Its CPU smoke runs the same code paths as the GPU run (toy pool fetched into shards, the
caption and score stages with captioners/scorer passed in, open_clip_train through
capmix.train) with tests/tiny_models.py's models, and builds the real-size models on the
meta device; a bug found on the node costs its scarce minutes, so it is found here first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from capmix.config import pipeline_config
from tests.conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"


def test_cpu_smoke_passes_every_check_and_writes_its_figures_under_OUT(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}  # the device tool returns files under $OUT
    result = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "PASS:" in result.stdout.splitlines()[-2]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["mode"] == "cpu-smoke" and report["passed"] is True
    assert [c for c in report["checks"] if not c["ok"]] == []
    checked = {(c["model"], c["check"]) for c in report["checks"]}
    # Every model ran its checks: captioners (both precisions of BLIP), scorer, training, and
    # the real-size builds (parameter counts against the published ones).
    for label in ("tiny:blip2_opt_2.7b fp16", "tiny:blip_large fp16", "tiny:blip_large bf16",
                  "tiny:coca_vit_l_14 fp16"):
        assert {(label, "caption lengths"), (label, "every image captioned"),
                (label, "device cpu")} <= checked
    assert ("tiny:clip_quickgelu fp16", "QuickGELU") in checked
    assert ("tiny:clip train", "finite loss") in checked
    for key in ("blip2_opt_2.7b", "blip_large", "coca_vit_l_14", "vit_l_14_quickgelu"):
        assert (f"{key} (meta)", "real-size parameters") in checked
    # Batch sizes and precision come from the medium config's caption/score settings.
    medium = pipeline_config(REPO / "config" / "datacomp_medium.yaml")
    for stage in ("caption", "score"):
        for key in ("batch_size", "precision"):
            assert report[f"{stage}_settings"][key] == medium[stage][key]
    stages = {row["stage"] for row in report["figures"]}
    assert stages == {"caption", "embed", "score", "train"}
    assert all(row["per_s"] > 0 for row in report["figures"])
    # Training reports each logged step's loss, not the pipeline's per-epoch first/final.
    (train,) = [row for row in report["figures"] if row["stage"] == "train"]
    assert {"first_step_loss", "last_step_loss", "epoch_mean_loss"} <= set(train)
    assert all(train[key] > 0 for key in ("first_step_loss", "last_step_loss"))
    assert report["images_fetched"] == report["images"] > 0


def test_a_missing_package_stops_the_check_at_once_naming_it(tmp_path):
    # find_spec is what the script asks; hide one package from it, as a node without it.
    hide = ("import importlib.util as u, runpy, sys; real = u.find_spec; "
            "u.find_spec = lambda name, *a: None if name == 'img2dataset' else real(name, *a); "
            f"sys.argv = [{str(SCRIPT)!r}]; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", hide], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "missing package(s): img2dataset" in result.stderr
    assert "make setup" in result.stderr
    assert result.stdout == ""  # stopped before any work


def test_require_gpu_refuses_the_cpu_fallback_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --require-gpu would start the real check")
    result = subprocess.run([sys.executable, str(SCRIPT), "--require-gpu",
                             "--out", str(tmp_path / "x.json")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--require-gpu, but torch" in result.stderr and "sees no CUDA" in result.stderr
    assert not (tmp_path / "x.json").exists()  # nothing ran
