"""Resharding a strategy's samples into training shards, on real tiny webdataset tars."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from types import SimpleNamespace

import braceexpand
import pandas as pd
import pytest
import torch
import webdataset as wds
from PIL import Image

from capmix.reshard import reshard

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
