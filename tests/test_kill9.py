"""kill -9 in the middle of a long stage, then the re-run: the outputs equal an uninterrupted
run's and nothing finished is redone.

Each stage runs in its own process (its own session, so img2dataset's and DataLoader's worker
processes die with it) on the fetched 12-image pool (4 shards of 3), slowed down per unit of
work so that the kill lands after the first unit is written and before the last one. The
re-run happens in this process, as Snakemake re-runs a job. Training under kill -9 is in
tests/test_train.py (test_killed_run_resumes_from_its_latest_checkpoint[kill_9]).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def kill_9_when(script: str, ready: Callable[[], bool], timeout: float = 240) -> None:
    """Run ``script`` in a new session; SIGKILL the whole session as soon as ``ready()``."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.02)
        assert proc.poll() is None, "the stage finished before the kill: slow it down more"
        assert ready(), "the stage did not start writing in time"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def mtimes(paths) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


def test_caption_killed_mid_pool(fetched_pool, tmp_path):
    from tests.test_caption import RecordingCaptioner, read_all, run

    reference = Path(__import__("shutil").copytree(fetched_pool, tmp_path / "reference"))
    run(reference, RecordingCaptioner())
    out = fetched_pool / "captions" / "c" / "0.75"
    kill_9_when(f"""
        import time
        from pathlib import Path
        from tests.test_caption import RecordingCaptioner, run

        class Slow(RecordingCaptioner):
            def generate(self, pixels, decoding, seed):
                time.sleep(0.5)
                return super().generate(pixels, decoding, seed)

        run(Path({str(fetched_pool)!r}), Slow())
        """, lambda: len(list(out.rglob("*.parquet"))) >= 1)
    done = sorted(out.rglob("*.parquet"))
    assert 1 <= len(done) < 4 and not (out / "chunk0of1.json").exists()
    kept = mtimes(done)
    captioner = RecordingCaptioner()
    run(fetched_pool, captioner)
    assert mtimes(done) == kept  # finished shards are not captioned again
    assert sum(call[0] for call in captioner.calls) == 3 * (4 - len(done))
    pd.testing.assert_frame_equal(read_all(fetched_pool).reset_index(drop=True),
                                  read_all(reference).reset_index(drop=True))


def test_embed_images_killed_mid_pool(fetched_pool, tmp_path):
    from capmix.score import read_embeddings
    from tests.test_score import SETTINGS, embed, embedding_files, spec_for
    from tests.tiny_models import make_tiny_clip

    clip_dir = make_tiny_clip(tmp_path / "clip")
    spec = spec_for(clip_dir)
    reference = Path(__import__("shutil").copytree(fetched_pool, tmp_path / "reference"))
    embed(reference, spec)
    out = fetched_pool / "scores" / "s" / "images"
    kill_9_when(f"""
        import time
        from pathlib import Path
        from capmix.score import load_scorer
        from tests.test_score import embed, spec_for

        spec = spec_for(Path({str(clip_dir)!r}))
        scorer = load_scorer("s", spec)
        encode = scorer.encode_images
        def slow(pixels):
            time.sleep(0.5)
            return encode(pixels)
        scorer.encode_images = slow
        embed(Path({str(fetched_pool)!r}), spec, scorer=scorer)
        """, lambda: len(list(out.rglob("*.npz"))) >= 1)
    done = sorted(out.rglob("*.npz"))
    assert 1 <= len(done) < 4
    kept = mtimes(done)
    embed(fetched_pool, spec)
    assert mtimes(done) == kept
    assert SETTINGS.batch_size >= 3  # one batch per shard: one encode call per shard above
    for ours, theirs in zip(embedding_files(fetched_pool), embedding_files(reference),
                            strict=True):
        (uids_a, emb_a), (uids_b, emb_b) = read_embeddings(ours), read_embeddings(theirs)
        assert list(uids_a) == list(uids_b)
        np.testing.assert_array_equal(emb_a, emb_b)


def test_train_shards_killed_mid_strategy(fetched_pool, tmp_path):
    from capmix.reshard import reshard

    index = pd.read_parquet(fetched_pool / "index.parquet")
    samples = pd.DataFrame({"uid": index["uid"], "caption": [f"c {u}" for u in index["uid"]],
                            "source": "raw", "part": 0})
    samples.to_parquet(tmp_path / "samples.parquet", index=False)

    def write(out: Path):
        return reshard(samples, fetched_pool / "index.parquet", fetched_pool / "shards", out,
                       tmp_path / f"{out.name}.json", samples_per_shard=3)

    write(tmp_path / "reference")
    out = tmp_path / "killed"
    kill_9_when(f"""
        import time
        from pathlib import Path
        import pandas as pd
        import capmix.reshard as rs

        write_shard = rs.write_shard
        def slow(job):
            time.sleep(0.5)
            return write_shard(job)
        rs.write_shard = slow
        rs.reshard(pd.read_parquet({str(tmp_path / "samples.parquet")!r}),
                   Path({str(fetched_pool / "index.parquet")!r}),
                   Path({str(fetched_pool / "shards")!r}), Path({str(out)!r}),
                   Path({str(tmp_path / "killed.json")!r}), samples_per_shard=3)
        """, lambda: len(list(out.glob("0*.tar"))) >= 1)
    done = sorted(out.glob("0*.tar"))
    assert 1 <= len(done) < 4 and not (tmp_path / "killed.json").exists()
    kept = mtimes(done)
    write(out)
    assert mtimes(done) == kept
    reference = sorted((tmp_path / "reference").glob("0*.tar"))
    assert [p.name for p in sorted(out.glob("0*.tar"))] == [p.name for p in reference]
    for ours in sorted(out.glob("0*.tar")):  # same plan: byte-identical shards
        assert ours.read_bytes() == (tmp_path / "reference" / ours.name).read_bytes()


def test_fetch_killed_mid_round(tmp_path):
    from capmix.fetch import FetchSettings, fetch_pool
    from capmix.sources import build_metadata, source_files
    from tests.fault_server import FaultServer

    settings = dict(image_size=16, samples_per_shard=3, retries=0, timeout=5,
                    threads_per_process=1, encode_format="png")
    with FaultServer(max_seconds=10) as server:
        rows = [{"uid": f"{i:032x}", "url": server.url("slow_png" if i % 4 else "not_found", i),
                 "text": str(i)} for i in range(12)]

        def pool(root: Path) -> Path:
            root.mkdir()
            pd.DataFrame(rows).to_parquet(root / "t.parquet", index=False)
            source = {"type": "table", "path": str(root / "t.parquet"), "format": "auto",
                      "allow_local_urls": True}
            build_metadata("p", source, source_files(source, [root / "t.parquet"]),
                           root / "metadata")
            return root

        def fetch(root: Path) -> dict:
            return fetch_pool("p", root / "metadata", root / "shards", root / "index.parquet",
                              root / "report.json",
                              FetchSettings.from_config(settings, "table", True))

        reference, killed = pool(tmp_path / "reference"), pool(tmp_path / "killed")
        fetch(reference)
        round0 = killed / "shards" / "round_0"
        kill_9_when(f"""
            from pathlib import Path
            from capmix.fetch import FetchSettings, fetch_pool

            root = Path({str(killed)!r})
            if __name__ == "__main__":
                fetch_pool("p", root / "metadata", root / "shards", root / "index.parquet",
                           root / "report.json",
                           FetchSettings.from_config({settings!r}, "table", True))
            """, lambda: len(list(round0.glob("*_stats.json"))) >= 1)
        done = sorted(round0.glob("*.tar"))
        finished = [p for p in done if (round0 / f"{p.stem}_stats.json").exists()]
        assert 1 <= len(finished) < 4 and not (killed / "index.parquet").exists()
        kept = mtimes(finished)
        before = server.requested("slow_png")
        report = fetch(killed)
        assert mtimes(finished) == kept  # finished shards are not downloaded again
        # only the unfinished shards' images were requested again (at most 3 per shard)
        assert 1 <= server.requested("slow_png") - before <= 3 * (4 - len(finished))
    index = pd.read_parquet(killed / "index.parquet").sort_values("uid")
    expected = pd.read_parquet(reference / "index.parquet").sort_values("uid")
    assert report["n_total"] == 12 and len(report["rounds"]) == 1
    for column in ("uid", "status", "reason"):
        assert index[column].tolist() == expected[column].tolist(), column


def test_evaluate_killed_between_tasks(tmp_path):
    import capmix.evaluate as evaluate
    from capmix.evaluate import EvalModel, evaluate_model
    from capmix.suites import read_results
    from tests.test_evaluate import OracleClip, oracle_preprocess, oracle_tokenizer, tiny_suite

    suite, data = tiny_suite(tmp_path)

    def paths(out: Path) -> dict[str, Path]:
        out.mkdir()
        return {"progress_path": out / "m.progress.jsonl", "results_path": out / "m.jsonl",
                "aggregate_path": out / "m.aggregate.json"}

    def model() -> EvalModel:
        return EvalModel(OracleClip(), oracle_preprocess, oracle_tokenizer, "cpu", "sha-a",
                         "oracle")

    reference, killed = paths(tmp_path / "reference"), paths(tmp_path / "killed")
    evaluate_model(suite, model(), data, **reference)
    kill_9_when(f"""
        import time
        from pathlib import Path
        import capmix.evaluate as evaluate
        from capmix.evaluate import EvalModel, evaluate_model
        from tests.test_evaluate import (OracleClip, oracle_preprocess, oracle_tokenizer,
                                         tiny_suite)

        suite, data = tiny_suite(Path({str(tmp_path / "sub")!r}))
        run_task = evaluate.run_task
        def slow(model, task, *args, **kwargs):
            if task.name == "B":
                time.sleep(120)  # killed here, with A's line written
            return run_task(model, task, *args, **kwargs)
        evaluate.run_task = slow
        out = Path({str(tmp_path / "killed")!r})
        evaluate_model(suite, EvalModel(OracleClip(), oracle_preprocess, oracle_tokenizer,
                                        "cpu", "sha-a", "oracle"), data,
                       progress_path=out / "m.progress.jsonl", results_path=out / "m.jsonl",
                       aggregate_path=out / "m.aggregate.json")
        """, lambda: killed["progress_path"].exists()
             and "A" in read_results(killed["progress_path"]))
    assert list(read_results(killed["progress_path"])) == ["A"]
    assert not killed["results_path"].exists()
    evaluated = []
    real_run_task = evaluate.run_task
    try:
        evaluate.run_task = lambda m, t, *a, **k: evaluated.append(t.name) or real_run_task(
            m, t, *a, **k)
        evaluate_model(suite, model(), data, **killed)
    finally:
        evaluate.run_task = real_run_task
    assert evaluated == ["B"]  # A is not evaluated again
    strip = [{k: v for k, v in json.loads(line).items() if k not in ("wall_s", "provenance")}
             for line in killed["results_path"].read_text().splitlines()]
    expect = [{k: v for k, v in json.loads(line).items() if k not in ("wall_s", "provenance")}
              for line in reference["results_path"].read_text().splitlines()]
    assert strip == expect
