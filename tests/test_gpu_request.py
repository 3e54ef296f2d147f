"""A GPU job that sees no GPU fails at once, through each GPU stage's entry script.

Each script (caption, embed_images, score, evaluate) runs here as Snakemake runs it, with a
stand-in ``snakemake`` object whose inputs do not exist: a job whose resources request a GPU
(device ``auto``) must fail with :class:`GpuUnavailableError` before it reads any of them or
loads a model; the same job without the request runs on the CPU and gets as far as its
inputs. So the test pins both the check and that the scripts pass the job's request on.
"""

from __future__ import annotations

import contextlib
import json
import runpy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import capmix.lineage
import capmix.logs
from capmix.config import pipeline_config
from capmix.modelrun import GpuUnavailableError
from capmix.score import ScorerLoadError
from tests.conftest import REPO

SCRIPTS = REPO / "workflow" / "scripts"
RUN_SETTINGS = {"batch_size": 2, "device": "auto", "precision": "fp32", "workers": 0}


class Job(SimpleNamespace):
    """What a script reads of Snakemake's object: attributes, and ``get`` as its named lists."""

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


def job(script: str, tmp_path: Path, gpu: int | None) -> Job:
    """A ``snakemake`` object for one job of ``script`` whose inputs are all missing."""
    missing = tmp_path / "missing"
    out = tmp_path / "out"
    model = {"backend": "open_clip", "model": f"local-dir:{missing}/model"}
    common = {"log": [str(tmp_path / "job.log")], "resources": Job(gpu=gpu)}
    if script == "caption":
        return Job(**common,
                   wildcards=Job(pool="p", captioner="c", temperature="0.75", chunk="chunk0of1"),
                   input=Job(index=str(missing / "index.parquet")),
                   output=Job(manifest=str(out / "chunk0of1.json")),
                   params=Job(spec={"backend": "open_clip_coca", "model": model["model"]},
                              settings=RUN_SETTINGS, shards=str(missing), seed=0))
    if script == "embed_images":
        return Job(**common, wildcards=Job(pool="p", scorer="s", chunk="chunk0of1"),
                   input=Job(index=str(missing / "index.parquet"), metadata=str(missing)),
                   output=Job(manifest=str(out / "chunk0of1.json")),
                   params=Job(spec=model, settings=RUN_SETTINGS, shards=str(missing)))
    if script == "score":
        return Job(**common,
                   wildcards=Job(pool="p", scorer="s", caption_set="raw", chunk="chunk0of1"),
                   input=Job(images=str(missing / "chunk0of1.json"),
                             captions=str(missing / "manifest.json"),
                             index=str(missing / "index.parquet"), metadata=str(missing)),
                   output=Job(scores=str(out / "raw" / "chunk0of1.parquet")),
                   params=Job(spec=model, settings=RUN_SETTINGS))
    training = tmp_path / "training.json"
    training.write_text(json.dumps({"model": model["model"]}))
    config = pipeline_config()
    return Job(**common, config=config, wildcards=Job(pool="p", strategy="s"),
               input=Job(training=str(training), checkpoint=str(missing / "final.pt"), tasks=[]),
               output=Job(results=str(out / "s.jsonl"), aggregate=str(out / "s.json")),
               params=Job(suite="toy", data_dir=str(missing), progress=str(out / "p.jsonl"),
                          settings=config["eval"]))


@pytest.mark.parametrize("script", ["caption", "embed_images", "score", "evaluate"])
def test_a_gpu_job_without_a_gpu_fails_before_reading_its_inputs(
        script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # The scripts point the process's stdout/stderr at the job's log; not pytest's.
    monkeypatch.setattr(capmix.logs, "setup_logging", lambda *args, **kwargs: None)
    # The job record hashes the job's inputs when it starts (tests/test_lineage.py); these
    # jobs' inputs are missing on purpose, so the record is left out here.
    no_record = SimpleNamespace(produced=lambda *paths, **kwargs: None,
                                consumed=lambda *paths: None)
    monkeypatch.setattr(capmix.lineage, "job_provenance",
                        lambda sm: contextlib.nullcontext(no_record))
    path = str(SCRIPTS / f"{script}.py")

    with pytest.raises(GpuUnavailableError, match="with 1 GPU.* requested.* sees 0"):
        runpy.run_path(path, {"snakemake": job(script, tmp_path, gpu=1)}, run_name="__main__")

    # Without the request (a laptop), the same job runs on the CPU and gets as far as its
    # missing inputs.
    for gpu in (0, None):
        with pytest.raises((FileNotFoundError, ScorerLoadError), match=str(tmp_path)):
            runpy.run_path(path, {"snakemake": job(script, tmp_path, gpu)}, run_name="__main__")
