"""Resharding a strategy's samples into training shards, on real tiny webdataset tars."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import braceexpand
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from PIL import Image

from capmix.chunks import chunk_names
from capmix.reshard import (
    plan_layout,
    reshard,
    run_reshard_job,
    run_reshard_reduce,
    scatter_samples,
)

N_SHARDS, PER_SHARD = 4, 3
FAILED_UID = f"{0xfa11:032x}"
FORMATS = {0: ("png", "PNG"), 5: ("webp", "WEBP")}  # image number -> (extension, PIL format)


def uid_of(i: int) -> str:
    return f"{0xabc000 + i:032x}"


def image_bytes(i: int, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16 + i, 12), (20 * i, 100, 200 - 10 * i)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def pool(tmp_path: Path) -> SimpleNamespace:
    """4 img2dataset-style shards of 3 images (one png, one webp), an index with a failure."""
    shards_dir = tmp_path / "shards"
    (shards_dir / "round_0").mkdir(parents=True)
    rows, images, raw = [], {}, {}
    for s in range(N_SHARDS):
        shard = f"round_0/{s:05d}.tar"
        with wds.TarWriter(str(shards_dir / shard)) as writer:
            for j in range(PER_SHARD):
                i = s * PER_SHARD + j
                key = f"{s:05d}{j:04d}"
                ext, fmt = FORMATS.get(i, ("jpg", "JPEG"))
                images[uid_of(i)] = (ext, image_bytes(i, fmt))
                raw[uid_of(i)] = f"raw alt text {i}"
                writer.write({"__key__": key, ext: images[uid_of(i)][1], "txt": raw[uid_of(i)],
                              "json": {"uid": uid_of(i), "key": key, "status": "success"}})
                rows.append({"uid": uid_of(i), "status": "fetched", "shard": shard, "key": key})
    rows.append({"uid": FAILED_UID, "status": "not_found", "shard": None, "key": None})
    index = tmp_path / "index.parquet"
    pd.DataFrame(rows).to_parquet(index)
    return SimpleNamespace(index=index, shards_dir=shards_dir, images=images, raw=raw,
                           tmp=tmp_path)


def strategy(extra_caption: str = "a synthetic caption of image 1") -> pd.DataFrame:
    """11 of the 12 images with raw text, image 1 again with a synthetic caption.

    Per pool shard: 4, 3, 3, 2 samples (image 11 is left out, image 1 repeats).
    """
    rows = [{"uid": uid_of(i), "caption": f"raw alt text {i}", "source": "raw", "part": 0}
            for i in range(11)]
    rows.insert(3, {"uid": uid_of(1), "caption": extra_caption, "source": "toy_captioner/0.75",
                    "part": 1})
    # shuffled: the plan sorts samples itself; row order only numbers a uid's repeats
    return pd.DataFrame(rows).sample(frac=1.0, random_state=3)


def run(pool: SimpleNamespace, samples: pd.DataFrame, name: str = "out", **kwargs):
    out = pool.tmp / name
    manifest = reshard(samples, pool.index, pool.shards_dir, out, pool.tmp / f"{name}.json",
                       provenance={"stage": "test"}, **kwargs)
    return out, manifest


def read_tar(path: Path) -> list[dict[str, bytes | str]]:
    """The samples of a tar in order, as webdataset groups them."""
    return [{k: v for k, v in s.items() if k != "__url__"}
            for s in wds.WebDataset(str(path), shardshuffle=False)]


def tars(out: Path) -> list[Path]:
    return sorted(out.glob("*.tar"))


def test_every_sample_carries_its_caption_and_original_image(pool):
    out, manifest = run(pool, strategy(), samples_per_shard=4)
    samples = [s for path in tars(out) for s in read_tar(path)]
    assert len(samples) == manifest["num_samples"] == 12
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == 12
    assert keys.count(uid_of(1)) == 1 and keys.count(f"{uid_of(1)}_1") == 1
    by_caption = {}
    for sample in samples:
        meta = json.loads(sample["json"])
        uid = meta["uid"]
        ext, image = pool.images[uid]
        assert sample[ext] == image  # original bytes under the original extension
        assert {k for k in sample if k != "__key__"} == {ext, "txt", "json"}
        assert meta["raw_text"] == pool.raw[uid]
        assert meta["part"] == (1 if meta["caption_source"] != "raw" else 0)
        by_caption[sample["txt"].decode()] = (uid, meta["caption_source"])
    assert by_caption["a synthetic caption of image 1"] == (uid_of(1), "toy_captioner/0.75")
    assert by_caption["raw alt text 1"] == (uid_of(1), "raw")
    # the uid's first row in the samples table gets the bare key, the later one "_1"
    table = strategy()
    first_caption = table.loc[table["uid"] == uid_of(1), "caption"].iloc[0]
    bare = next(s for s in samples if s["__key__"] == uid_of(1))
    assert bare["txt"].decode() == first_caption
    assert {uid for uid, _ in by_caption.values()} == {uid_of(i) for i in range(11)}
    # order within a shard: pool shard, uid, occurrence
    first = [s["__key__"] for s in read_tar(out / "00000.tar")]
    assert first == [uid_of(0), uid_of(1), f"{uid_of(1)}_1", uid_of(2)]
    assert manifest["num_images"] == 11
    assert manifest["sources"] == {"raw": 11, "toy_captioner/0.75": 1}
    assert manifest["provenance"] == {"stage": "test"}
    assert json.loads((pool.tmp / "out.json").read_text()) == manifest


def test_shard_sizes_sizes_json_and_train_data(pool):
    from open_clip_train.data import get_dataset_size

    out, manifest = run(pool, strategy(), samples_per_shard=4)
    # pool shards hold 4, 3, 3, 2 samples: close a group once it holds >= 4
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {"00000.tar": 4, "00001.tar": 6, "00002.tar": 2}
    assert [len(read_tar(p)) for p in tars(out)] == [4, 6, 2]
    assert manifest["num_shards"] == 3 and manifest["shards"] == list(sizes)
    assert manifest["samples_per_shard"] == 4
    assert manifest["train_data"] == f"{out.resolve()}/{{00000..00002}}.tar"
    assert list(braceexpand.braceexpand(manifest["train_data"])) == [str(p) for p in tars(out)]
    assert get_dataset_size(manifest["train_data"]) == (12, 3)

    out, manifest = run(pool, strategy(), "big", samples_per_shard=100)
    assert manifest["train_data"] == str(out.resolve() / "00000.tar")
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 12}


def test_open_clip_reads_the_shards(pool):
    from open_clip_train.data import get_wds_dataset

    _, manifest = run(pool, strategy(), samples_per_shard=4)
    urls = list(braceexpand.braceexpand(manifest["train_data"]))
    pairs = list(wds.WebDataset(urls, shardshuffle=False).decode("pilrgb")
                 .to_tuple("jpg;png;webp", "txt"))
    assert len(pairs) == 12
    assert all(isinstance(image, Image.Image) and image.mode == "RGB" for image, _ in pairs)
    assert "a synthetic caption of image 1" in {text for _, text in pairs}

    # open_clip_train's own training pipeline (sizes.json gives the epoch length)
    args = SimpleNamespace(train_data=manifest["train_data"], train_num_samples=None,
                           dataset_resampled=False, train_data_upsampling_factors=None, seed=0,
                           batch_size=4, world_size=1, workers=0)

    def preprocess(image: Image.Image) -> torch.Tensor:
        return torch.tensor(list(image.resize((8, 8)).getdata()), dtype=torch.float32)

    data = get_wds_dataset(args, preprocess, is_train=True, tokenizer=lambda text: [text])
    batches = list(data.dataloader)
    assert data.dataloader.num_samples == 12 and len(batches) == 3
    images, texts = batches[0]
    assert images.shape == (4, 64, 3) and len(texts) == 4


@pytest.mark.parametrize("bad", [[FAILED_UID], [f"{0xdead + i:032x}" for i in range(4)]])
def test_unknown_uid_fails_before_writing(pool, bad):
    samples = pd.concat([strategy(), pd.DataFrame(
        [{"uid": uid, "caption": "x", "source": "raw", "part": 0} for uid in bad])])
    with pytest.raises(ValueError, match=rf"^{len(bad)} uid\(s\)") as error:
        run(pool, samples, samples_per_shard=4)
    assert sorted(bad)[0] in str(error.value)
    assert sum(uid in str(error.value) for uid in bad) == min(len(bad), 3)
    assert not list((pool.tmp / "out").glob("*.tar")) and not (pool.tmp / "out.json").exists()


def test_resume_rewrites_only_missing_or_partial_shards(pool):
    out, manifest = run(pool, strategy(), samples_per_shard=1)
    paths = tars(out)
    assert len(paths) == 4 and manifest["shards_written"] == 4
    first = {p.name: p.read_bytes() for p in paths}
    for path in paths:
        os.utime(path, ns=(10**9, 10**9))  # so a rewrite shows even within one clock tick
    paths[0].unlink()
    paths[1].write_bytes(first[paths[1].name][: len(first[paths[1].name]) // 2])  # truncated
    paths[2].write_bytes(b"garbage" * 100)
    os.utime(paths[1], ns=(10**9, 10**9))
    os.utime(paths[2], ns=(10**9, 10**9))

    _, again = run(pool, strategy(), samples_per_shard=1)
    assert again["shards_written"] == 3 and again["shards_skipped"] == 1
    assert paths[3].stat().st_mtime_ns == 10**9  # the intact shard was kept
    assert all(p.stat().st_mtime_ns != 10**9 for p in paths[:3])
    assert {p.name: p.read_bytes() for p in tars(out)} == first
    assert again["plan_sha256"] == manifest["plan_sha256"]
    assert not list(out.glob("*.tmp"))

    _, third = run(pool, strategy(), samples_per_shard=1)  # nothing left to do
    assert third["shards_written"] == 0 and third["shards_skipped"] == 4


def test_changed_strategy_rewrites_all_and_leaves_no_stale_shard(pool):
    out, manifest = run(pool, strategy(), samples_per_shard=1)
    for path in tars(out):
        os.utime(path, ns=(10**9, 10**9))
    _, changed = run(pool, strategy("another caption"), samples_per_shard=1)
    assert changed["plan_sha256"] != manifest["plan_sha256"]
    assert changed["shards_written"] == 4
    assert all(p.stat().st_mtime_ns != 10**9 for p in tars(out))
    captions = {s["txt"].decode() for p in tars(out) for s in read_tar(p)}
    assert "another caption" in captions and "a synthetic caption of image 1" not in captions

    _, fewer = run(pool, strategy("another caption"), samples_per_shard=100)
    assert [p.name for p in tars(out)] == ["00000.tar"] == fewer["shards"]
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 12}

    _, empty = run(pool, strategy().iloc[:0])
    assert empty["num_samples"] == empty["num_shards"] == 0
    assert empty["train_data"] is None and empty["shards"] == []
    assert not tars(out) and json.loads((out / "sizes.json").read_text()) == {}


def test_two_workers_write_identical_shards(pool):
    serial, one = run(pool, strategy(), "serial", samples_per_shard=1, workers=1)
    parallel, two = run(pool, strategy(), "parallel", samples_per_shard=1, workers=2)
    assert one["shards"] == two["shards"] and len(one["shards"]) == 4
    for name in one["shards"]:
        assert read_tar(serial / name) == read_tar(parallel / name)
        assert (serial / name).read_bytes() == (parallel / name).read_bytes()


def test_written_tar_members_are_plain_files(pool):
    out, _ = run(pool, strategy(), samples_per_shard=100)
    with tarfile.open(out / "00000.tar") as tar:
        names = tar.getnames()
    assert len(names) == 36 and len(set(names)) == 36
    assert f"{uid_of(0)}.png" in names and f"{uid_of(5)}.webp" in names
    assert f"{uid_of(1)}_1.txt" in names


def test_refuses_to_write_into_the_pool(pool):
    before = sorted((pool.shards_dir / "round_0").glob("*.tar"))
    with pytest.raises(ValueError, match="inside the pool's shards dir"):
        reshard(strategy(), pool.index, pool.shards_dir, pool.shards_dir / "round_0",
                pool.tmp / "m.json")
    assert sorted((pool.shards_dir / "round_0").glob("*.tar")) == before


# ------------------------------------------------------------------ held in parts


def samples_file(pool: SimpleNamespace, samples: pd.DataFrame, name: str = "samples") -> Path:
    """A subset's samples.parquet: the samples with each image's pool shard (as the mix table
    carries it), in two row groups (a subset writes one per part of the mix table)."""
    index = pd.read_parquet(pool.index).set_index("uid")["shard"]
    frame = samples.assign(shard=samples["uid"].map(index)).reset_index(drop=True)
    path = pool.tmp / f"{name}.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path,
                   row_group_size=max(1, len(frame) // 2 + 1))
    return path


def run_parts(pool: SimpleNamespace, samples_path: Path, n_jobs: int, name: str,
              samples_per_shard: int, jobs: Sequence[int] | None = None):
    """The three rules in turn: scatter, the part jobs (all, or ``jobs``), the reduce."""
    scatter = pool.tmp / f"{name}.scatter"
    if not scatter.exists():
        scatter_samples(samples_path, n_jobs, samples_per_shard, scatter)
    out = pool.tmp / name
    reports = [pool.tmp / f"{name}.jobs" / f"{c}.json" for c in chunk_names(n_jobs)]
    for job, chunk in enumerate(chunk_names(n_jobs)):
        if jobs is None or job in jobs:
            run_reshard_job(scatter, chunk, pool.shards_dir, out, reports[job])
    return out, run_reshard_reduce(reports, out, pool.tmp / f"{name}.json")


@pytest.mark.parametrize(("n_jobs", "samples_per_shard"), [(2, 4), (3, 1), (6, 1), (2, 100)])
def test_parts_write_the_one_job_shards(pool, n_jobs, samples_per_shard):
    samples = strategy()
    one, whole = run(pool, samples, samples_per_shard=samples_per_shard)
    out, parts = run_parts(pool, samples_file(pool, samples), n_jobs, "parts",
                           samples_per_shard)
    # the same shards by name and byte (so the same keys, captions, images and json)
    assert [p.name for p in tars(out)] == [p.name for p in tars(one)] == whole["shards"]
    for path in tars(one):
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    assert (out / "sizes.json").read_bytes() == (one / "sizes.json").read_bytes()
    same = ("num_samples", "num_images", "num_shards", "shards", "samples_per_shard",
            "sources")
    assert {k: parts[k] for k in same} == {k: whole[k] for k in same}
    assert parts["jobs"] == n_jobs and parts["train_data"] == whole["train_data"].replace(
        str(one.resolve()), str(out.resolve()))
    # each job wrote a contiguous run of them; more jobs than shards leave some with none
    written = [json.loads((pool.tmp / "parts.jobs" / f"{c}.json").read_text())["shards"]
               for c in chunk_names(n_jobs)]
    assert [n for shards in written for n in shards] == whole["shards"]
    assert sum(1 for shards in written if not shards) == max(0, n_jobs - whole["num_shards"])


def test_each_part_reads_only_its_pool_shards(pool):
    samples_path = samples_file(pool, strategy())
    scatter = pool.tmp / "parts.scatter"
    layout = scatter_samples(samples_path, 2, 4, scatter)
    # pool shard 0 -> 00000.tar (4 samples), 1 and 2 -> 00001.tar (6), 3 -> 00002.tar (2);
    # a job per half of the samples, by where each output starts (sample 0, 4, 10 of 12)
    assert [o.sources for o in layout.outputs] == [
        ("round_0/00000.tar",), ("round_0/00001.tar", "round_0/00002.tar"),
        ("round_0/00003.tar",)]
    assert layout.jobs == ((0, 2), (2, 3))
    for job, chunk in enumerate(chunk_names(2)):
        mine = {s for o in layout.job_outputs(job) for s in o.sources}
        held = set(pq.read_table(scatter / f"{chunk}.parquet").column("shard").to_pylist())
        assert held == mine  # its file holds its pool shards' samples, nothing else
        hidden = pool.tmp / f"hidden_{job}"
        hidden.mkdir()
        others = [p for p in (pool.shards_dir / "round_0").glob("*.tar")
                  if f"round_0/{p.name}" not in mine]
        for path in others:  # the other runs' pool shards are gone while it runs
            path.rename(hidden / path.name)
        pool.index.rename(pool.tmp / "index.hidden")  # and so is the fetch index
        try:
            report = run_reshard_job(scatter, chunk, pool.shards_dir, pool.tmp / "parts",
                                     pool.tmp / f"{chunk}.json")
        finally:
            (pool.tmp / "index.hidden").rename(pool.index)
            for path in others:
                (hidden / path.name).rename(path)
        assert list(report["shards"]) == [o.name for o in layout.job_outputs(job)]


def test_a_failed_part_resumes_alone(pool, monkeypatch):
    import capmix.reshard as rs

    samples = strategy()
    reference, _ = run(pool, samples, samples_per_shard=1)
    samples_path = samples_file(pool, samples)
    out, first = run_parts(pool, samples_path, 2, "parts", 1)
    assert first["shards_written"] == 4
    job_of = {name: job for job, c in enumerate(chunk_names(2)) for name in json.loads(
        (pool.tmp / "parts.jobs" / f"{c}.json").read_text())["shards"]}
    assert sorted(job_of.values()) == [0, 0, 1, 1]
    for path in tars(out):
        os.utime(path, ns=(10**9, 10**9))
    theirs = [p for p in tars(out) if job_of[p.name] == 1]
    ours = [p for p in tars(out) if job_of[p.name] == 0]
    theirs[0].write_bytes(theirs[0].read_bytes()[:700])  # cut short
    theirs[1].unlink()
    (out / (theirs[1].name + ".tmp")).write_bytes(b"half")  # a killed writer's temp file

    # job 1 fails after one shard: it keeps that one, and the next run writes the other
    write_shard, calls = rs.write_shard, []

    def fail_second(job):
        calls.append(job.path.name)
        if len(calls) == 2:
            raise OSError("node lost")
        return write_shard(job)

    monkeypatch.setattr(rs, "write_shard", fail_second)
    with pytest.raises(OSError, match="node lost"):
        run_reshard_job(pool.tmp / "parts.scatter", chunk_names(2)[1], pool.shards_dir, out,
                        pool.tmp / "failed.json")
    monkeypatch.setattr(rs, "write_shard", write_shard)
    done = [p for p in theirs if p.exists() and p.stat().st_mtime_ns != 10**9]
    assert len(done) == 1
    kept = done[0].stat().st_mtime_ns
    report = run_reshard_job(pool.tmp / "parts.scatter", chunk_names(2)[1], pool.shards_dir,
                             out, pool.tmp / "parts.jobs" / f"{chunk_names(2)[1]}.json")
    assert report["shards_written"] == 1 and report["shards_skipped"] == 1
    assert done[0].stat().st_mtime_ns == kept
    assert all(p.stat().st_mtime_ns == 10**9 for p in ours)  # job 0 is untouched
    _, again = run_parts(pool, samples_path, 2, "parts", 1, jobs=[])  # the reduce alone
    assert again["shards"] == first["shards"] and not list(out.glob("*.tmp"))
    for path in tars(reference):
        assert (out / path.name).read_bytes() == path.read_bytes()


def test_a_changed_layout_rewrites_and_drops_stale_shards(pool):
    samples = strategy()
    samples_path = samples_file(pool, samples)
    out, _ = run_parts(pool, samples_path, 2, "parts", 1)
    assert len(tars(out)) == 4 and len(list((out / "plans").glob("*.json"))) == 2
    shutil.rmtree(pool.tmp / "parts.scatter")
    # 3 jobs now, a changed caption: every job's plan changed, the names moved between jobs
    changed = samples_file(pool, strategy("another caption"), "changed")
    _, three = run_parts(pool, changed, 3, "parts", 1)
    assert three["shards_written"] == 4 and three["jobs"] == 3
    captions = {s["txt"].decode() for p in tars(out) for s in read_tar(p)}
    assert "another caption" in captions and "a synthetic caption of image 1" not in captions
    shutil.rmtree(pool.tmp / "parts.scatter")
    _, fewer = run_parts(pool, changed, 2, "parts", 100)
    assert [p.name for p in tars(out)] == ["00000.tar"] == fewer["shards"]
    assert sorted(p.stem for p in (out / "plans").glob("*.json")) == chunk_names(2)
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 12}


def test_plan_layout_names_and_balances_jobs():
    layout = plan_layout({f"s{i:06d}": 1 for i in range(100_001)}, 1, n_jobs=7)
    names = [o.name for o in layout.outputs]
    assert names[0] == "000000.tar" and names[-1] == "100000.tar"  # one brace range still
    assert layout.jobs[0][0] == 0 and layout.jobs[-1][1] == len(names)
    assert all(a[1] == b[0] for a, b in zip(layout.jobs, layout.jobs[1:], strict=False))
    sizes = [stop - first for first, stop in layout.jobs]
    assert max(sizes) - min(sizes) <= 1
    assert plan_layout({}, 10, n_jobs=3).jobs == ((0, 0), (0, 0), (0, 0))


def test_scatter_needs_each_samples_pool_shard(pool):
    samples = strategy()
    bare = pool.tmp / "bare.parquet"
    samples.to_parquet(bare, index=False)
    with pytest.raises(ValueError, match="no column.*shard.*re-run its subset"):
        scatter_samples(bare, 2, 4, pool.tmp / "s1")
    unknown = pd.concat([samples, pd.DataFrame(
        [{"uid": FAILED_UID, "caption": "x", "source": "raw", "part": 0}])])
    with pytest.raises(ValueError, match=rf"1 sample\(s\) have no pool shard.*{FAILED_UID}"):
        scatter_samples(samples_file(pool, unknown, "unknown"), 2, 4, pool.tmp / "s2")
