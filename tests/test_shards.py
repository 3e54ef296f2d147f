"""Per-shard jobs over contiguous runs of the shard-ordered fetch index (issue 18).

fetch_merge writes the pool's index ordered by shard in bounded row groups, with a shard
table beside it; a caption/embedding job takes a contiguous, row-balanced run of shards and
reads only those shards' rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import capmix.fetch
from capmix.caption import RunSettings, raw_caption_sets
from capmix.fetch import INDEX_SCHEMA, merge_fetch
from capmix.score import embed_pool_images, read_embeddings
from capmix.shards import (
    SHARD_TABLE_NAME,
    ShardError,
    ShardTask,
    chunk_bounds,
    fetched_by_shard,
    plan_ranges,
    plan_tasks,
    read_shard_table,
    shard_table_path,
)

REPO = Path(__file__).resolve().parents[1]
N_JOBS = 12  # chunk10of12 sorts before chunk2of12: the jobs' names do not sort in job order


def old_plan(index_path: Path, shards_dir: Path, out_dir: Path, suffix: str,
             chunk: int = 0, n_chunks: int = 1) -> list[ShardTask]:
    """The plan before contiguous chunks: the whole index read, shard i to chunk i mod n."""
    return [ShardTask(shard, shards_dir / shard, out_dir / Path(shard).with_suffix(suffix),
                      tuple(uids))
            for i, (shard, uids) in enumerate(sorted(fetched_by_shard(index_path).items()))
            if i % n_chunks == chunk]


def job_index(job: int, rng: np.random.Generator) -> pd.DataFrame:
    """One fetch job's index as fetch_pool writes it: metadata order (two parts); fetched and
    failed rows with the shard of their attempt (a first-round shard per part, a retry round's
    shard drawing on both parts), rows never attempted without one; jobs 1 and 5 have none
    (jobs beyond the metadata's parts)."""
    rows = []
    if job in (1, 5):
        return pd.DataFrame(rows, columns=INDEX_SCHEMA.names)
    for p in range(2):
        part = f"part-{2 * job + p:05d}.parquet"
        for r in range(int(rng.integers(20, 60))):
            outcome = rng.choice(["fetched", "fetched", "fetched", "failed", "retried",
                                  "not_attempted"])
            shard = f"round_0/{p * 10 + r // 12:05d}.tar"
            if outcome == "retried":
                shard = "round_1/00000.tar"
            elif outcome == "not_attempted":
                shard = None
            status = "failed" if outcome in ("failed", "not_attempted") else "fetched"
            rows.append({"uid": f"{job:04x}{p:04x}{r:024x}", "status": status,
                         "reason": None if status == "fetched" else outcome,
                         "error_message": None, "round": -1 if shard is None else int(shard[6]),
                         "shard": shard, "key": None if shard is None else f"{p}{r:08d}",
                         "width": 8, "height": 8, "attempts": int(shard is not None),
                         "part": part, "row": r})
    return pd.DataFrame(rows, columns=INDEX_SCHEMA.names)


@pytest.fixture
def merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pool of 12 fetch jobs merged by fetch_merge, in row groups of 16 rows."""
    monkeypatch.setattr(capmix.fetch, "INDEX_ROW_GROUP_ROWS", 16)
    rng = np.random.default_rng(7)
    chunks = [f"chunk{i}of{N_JOBS}" for i in range(N_JOBS)]
    indexes, reports = [], []
    for i, chunk in enumerate(chunks):
        frame = job_index(i, rng)
        indexes.append(tmp_path / chunk / "index.parquet")
        indexes[-1].parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(frame, schema=INDEX_SCHEMA, preserve_index=False),
                       indexes[-1])
        fetched = frame[frame["status"] == "fetched"]
        reports.append(tmp_path / chunk / "report.json")
        reports[-1].write_text(json.dumps({
            "toy": True, "n_total": len(frame), "n_fetched": len(fetched),
            "n_failed": len(frame) - len(fetched), "failures_by_reason": {},
            "failure_examples": {}, "attempts": len(frame), "rounds": [],
            "shards": [{"path": s, "samples": int(n)}
                       for s, n in fetched.groupby("shard").size().items()],
            "settings": {}}))
    merge_fetch("p", chunks, indexes, reports, tmp_path / "index.parquet",
                tmp_path / "report.json")
    return tmp_path / "index.parquet"


def test_chunk_bounds_partition_the_shards_in_balanced_contiguous_runs():
    rng = np.random.default_rng(0)
    for n_shards in (0, 1, 5, 97):
        counts = rng.integers(1, 10_001, size=n_shards)
        for n_chunks in (1, 2, 7, 64, 200):
            bounds = chunk_bounds(counts, n_chunks)
            assert len(bounds) == n_chunks
            # contiguous, in order, every shard exactly once
            assert [b[0] for b in bounds[1:]] == [b[1] for b in bounds[:-1]]
            assert (bounds[0][0], bounds[-1][1]) == (0, n_shards)
            if n_shards:
                share = counts.sum() / n_chunks
                for start, stop in bounds:  # within one shard of an even share
                    assert abs(counts[start:stop].sum() - share) <= counts.max()
    assert sum(a == b for a, b in chunk_bounds([5, 5, 5], 5)) == 2  # more chunks than shards
    with pytest.raises(ValueError, match="n_chunks"):
        chunk_bounds([1], 0)


def test_fetch_merge_orders_the_index_by_shard_and_writes_the_shard_table(merged: Path):
    index = pq.read_table(merged)
    assert index.schema.equals(INDEX_SCHEMA)
    frame = index.to_pandas()
    # every uid once; per job, rows by shard (those never attempted last), jobs in order
    assert frame["uid"].is_unique and len(frame) == sum(len(pd.read_parquet(p)) for p in
                                                        merged.parent.glob("chunk*/index.parquet"))
    jobs = frame["uid"].str[:4].map(lambda h: int(h, 16))
    assert jobs.is_monotonic_increasing
    for _, rows in frame.groupby(jobs, sort=False):
        attempted = rows["shard"].notna().to_numpy()
        assert (np.diff(attempted.astype(int)) <= 0).all()  # no shard: last
        assert rows.loc[attempted, "shard"].is_monotonic_increasing
        for _, same in rows[attempted].groupby("shard"):
            order = list(zip(same["part"], same["row"], strict=True))
            assert order == sorted(order)  # metadata order within a shard
    # each row group covers one job's shards only, so its min/max bound them tightly
    metadata = pq.ParquetFile(merged).metadata
    assert metadata.num_row_groups > 20
    column = INDEX_SCHEMA.get_field_index("shard")
    for g in range(metadata.num_row_groups):
        stats = metadata.row_group(g).column(column).statistics
        assert metadata.row_group(g).num_rows <= 16
        assert stats is not None and stats.null_count in (0, metadata.row_group(g).num_rows)
        if stats.has_min_max:
            assert stats.min.split("/")[0] == stats.max.split("/")[0]
    # the shard table: shards in the index's order, their fetched rows and metadata parts
    table = pq.read_table(shard_table_path(merged)).to_pandas()
    assert shard_table_path(merged).name == SHARD_TABLE_NAME
    fetched = frame[frame["status"] == "fetched"]
    assert list(table["shard"]) == list(dict.fromkeys(fetched["shard"]))
    assert dict(zip(table["shard"], table["n_fetched"], strict=True)) == \
        fetched.groupby("shard").size().to_dict()
    parts = {s: sorted(set(g)) for s, g in fetched.groupby("shard")["part"]}
    assert {s: list(p) for s, p in zip(table["shard"], table["parts"], strict=True)} == parts
    assert any(len(p) == 2 for p in table["parts"])  # a retry round's shard spans parts
    # the workflow names the same file
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert re.search(r'FETCH_SHARD_TABLE = "results/\{pool\}/fetch/' + SHARD_TABLE_NAME, common)


def test_contiguous_chunks_cover_every_shard_once_with_the_old_plans_uids(merged: Path,
                                                                          tmp_path: Path):
    shards, out = tmp_path / "shards", tmp_path / "out"
    every = {t.shard: t for t in old_plan(merged, shards, out, ".parquet")}
    order = read_shard_table(merged).column("shard").to_pylist()
    assert sorted(order) == sorted(every) and len(every) > 30
    total = sum(len(t.uids) for t in every.values())
    for n_chunks in (1, 3, 7, len(every) + 5):
        plans = [plan_tasks(merged, shards, out, ".parquet", c, n_chunks)
                 for c in range(n_chunks)]
        planned = [t.shard for plan in plans for t in plan]
        assert planned == order  # each chunk a consecutive run, together every shard once
        for plan in plans:
            for task in plan:
                assert task == every[task.shard]  # same tar, output and uids as before
            largest = max(len(t.uids) for t in every.values())
            assert abs(sum(len(t.uids) for t in plan) - total / n_chunks) <= largest
        if n_chunks > len(every):
            assert sum(1 for plan in plans if not plan) >= n_chunks - len(every)
    with pytest.raises(ValueError, match="outside"):
        plan_tasks(merged, shards, out, ".parquet", 3, 3)


def unreadable_except(source: Path, target: Path, wanted: set[str]) -> tuple[int, int]:
    """A copy of an index whose row groups are garbage except those that may hold ``wanted``
    shards (by their statistics, which stay in the footer): (row groups, row groups kept)."""
    metadata = pq.ParquetFile(source).metadata
    data = bytearray(source.read_bytes())
    column = INDEX_SCHEMA.get_field_index("shard")
    kept = 0
    for g in range(metadata.num_row_groups):
        stats = metadata.row_group(g).column(column).statistics
        if stats.has_min_max and any(stats.min <= s <= stats.max for s in wanted):
            kept += 1
            continue
        for c in range(metadata.num_columns):
            chunk = metadata.row_group(g).column(c)
            start = chunk.dictionary_page_offset or chunk.data_page_offset
            data[start:start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bytes(data))
    return metadata.num_row_groups, kept


def test_a_job_reads_only_the_row_groups_of_its_shards(merged: Path, tmp_path: Path):
    shards, out = tmp_path / "shards", tmp_path / "out"
    n_chunks = 8
    for chunk in range(n_chunks):
        plan = plan_tasks(merged, shards, out, ".npz", chunk, n_chunks)
        broken = tmp_path / f"broken{chunk}" / "index.parquet"
        groups, kept = unreadable_except(merged, broken, {t.shard for t in plan})
        shard_table_path(broken).write_bytes(shard_table_path(merged).read_bytes())
        assert 0 < kept <= groups // 2
        with pytest.raises(OSError):  # the other row groups really are unreadable
            pq.read_table(broken)
        assert plan_tasks(broken, shards, out, ".npz", chunk, n_chunks) == plan


def test_an_index_that_disagrees_with_its_shard_table_is_an_error(merged: Path, tmp_path: Path):
    table = pq.read_table(shard_table_path(merged))
    counts = table.column("n_fetched").to_numpy().copy()
    counts[0] += 1
    pq.write_table(table.set_column(1, "n_fetched", pa.array(counts)), shard_table_path(merged))
    with pytest.raises(ShardError, match=r"shard chunk0of12/round_0/00000.tar has \d+ fetched.*"
                                         r"re-run fetch_merge"):
        plan_tasks(merged, tmp_path, tmp_path, ".p", 0, 4)


def test_an_index_without_a_shard_table_is_planned_by_path(merged: Path, tmp_path: Path):
    """A single fetch job's index (or one merged before the table): shards counted from the
    index a row group at a time, in path order, cut into the same contiguous runs."""
    shard_table_path(merged).unlink()
    order = sorted(fetched_by_shard(merged))
    plans = [plan_tasks(merged, tmp_path, tmp_path, ".p", c, 4) for c in range(4)]
    assert [t.shard for plan in plans for t in plan] == order
    every = {t.shard: t for t in old_plan(merged, tmp_path, tmp_path, ".p")}
    assert all(t == every[t.shard] for plan in plans for t in plan)


def test_raw_captions_walk_the_pool_range_by_range(fetched_pool: Path):
    """raw_captions holds one range of shards at a time; the result is the one-range one."""
    index = fetched_pool / "index.parquet"
    ranges = list(plan_ranges(index, fetched_pool / "shards", fetched_pool / "x", ".p", 5))
    assert [len(r) for r in ranges] == [1, 2, 1]  # 4 shards of 3 rows, ~5 rows a range
    assert [t for r in ranges for t in r] == plan_tasks(index, fetched_pool / "shards",
                                                        fetched_pool / "x", ".p")
    one = raw_caption_sets("p", index, fetched_pool / "shards", fetched_pool / "one",
                           fetched_pool / "one" / "manifest.json")
    ranged = raw_caption_sets("p", index, fetched_pool / "shards", fetched_pool / "ranged",
                              fetched_pool / "ranged" / "manifest.json", rows_per_range=4)
    for key in ("n_images", "n_captioned", "failures", "shards"):
        assert one[key] == ranged[key], key
    for entry in one["shards"]:
        pd.testing.assert_frame_equal(
            pd.read_parquet(fetched_pool / "one" / entry["output"]),
            pd.read_parquet(fetched_pool / "ranged" / entry["output"]))


def test_shipped_embeddings_of_a_job_spanning_two_parts_load_each_npz_once(
        merged: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Chunk 0 of 4 holds fetch job 0's shards (a first-round shard per metadata part, then a
    retry round's shard drawing on both) and some of job 2's: shard by shard, a part would be
    loaded again for the retry shard; gathered part by part, each npz is loaded once."""
    metadata = tmp_path / "metadata"
    metadata.mkdir()
    frame = pq.read_table(merged).to_pandas()
    parts = sorted(frame["part"].unique())
    rng = np.random.default_rng(3)
    l14 = {}
    for part in parts:
        n = int(frame.loc[frame["part"] == part, "row"].max()) + 1
        l14[part] = rng.normal(size=(n, 8)).astype("float16")
        np.savez(metadata / Path(part).with_suffix(".npz"), l14_img=l14[part])
    (metadata / "manifest.json").write_text(json.dumps(
        {"parts": [{"part": p, "npz": str(Path(p).with_suffix(".npz"))} for p in parts],
         "columns": ["uid", "url", "text"]}))
    loads: list[str] = []
    real_load = np.load

    def counting_load(path, *args, **kwargs):
        if Path(path).parent == metadata:
            loads.append(Path(path).name)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", counting_load)
    table = pq.read_table(shard_table_path(merged)).to_pandas().set_index("shard")
    n_chunks = 4
    job0 = plan_tasks(merged, tmp_path / "shards", tmp_path / "e", ".npz", 0, n_chunks)
    assert "chunk0of12/round_1/00000.tar" in {t.shard for t in job0}
    needed = {p for t in job0 for p in table.loc[t.shard, "parts"]}
    assert len(table.loc["chunk0of12/round_1/00000.tar", "parts"]) == 2 and len(needed) >= 2
    out = tmp_path / "emb"
    spec = {"backend": "open_clip", "model": "does-not-exist", "pretrained": None,
            "shipped_image_embeddings": "l14_img"}  # no model loads: shipped rows only
    manifest = embed_pool_images("p", "s", spec, merged, tmp_path / "shards", out,
                                 out / "chunk0of4.json", RunSettings(batch_size=4),
                                 metadata_dir=metadata, chunk=0, n_chunks=n_chunks)
    assert manifest["shipped"] == "l14_img"
    assert sorted(loads) == sorted(str(Path(p).with_suffix(".npz")) for p in needed)
    where = frame.set_index("uid")
    for task in job0:
        uids, embeddings = read_embeddings(out / Path(task.shard).with_suffix(".npz"))
        assert list(uids) == list(task.uids)
        for uid, embedding in zip(uids, embeddings, strict=True):
            row = l14[where.loc[uid, "part"]][where.loc[uid, "row"]].astype("float32")
            np.testing.assert_allclose(embedding, row / np.linalg.norm(row), atol=1e-3)
