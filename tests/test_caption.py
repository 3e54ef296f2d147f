"""The caption stage's sharding, resume and failure accounting (model-agnostic).

The captioner here is a small deterministic stand-in that satisfies the
Captioner protocol; the real backends are tested in test_captioners.py.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from capmix.caption import (
    RunSettings,
    caption_files,
    caption_pool,
    images_per_batch,
    raw_caption_sets,
)
from capmix.captioners import Decoding
from capmix.shards import (
    ShardError,
    SharedMemoryError,
    check_loader_fits,
    check_shared_memory,
    image_bytes,
    is_complete,
    loader_shared_bytes,
    plan_tasks,
)


class RecordingCaptioner:
    """Captions from pixel statistics and the seed; records every generate call."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple[int, Decoding, int]] = []

    def preprocess(self, image):
        return torch.from_numpy(np.asarray(image.resize((8, 8)), dtype="float32") / 255.0)

    def generate(self, pixels: torch.Tensor, decoding: Decoding, seed: int) -> list[list[str]]:
        self.calls.append((len(pixels), decoding, seed))
        out = []
        for image in pixels:
            digest = hashlib.md5(f"{float(image.mean()):.6f}:{seed}".encode()).hexdigest()[:6]
            out.append([f"caption {digest} {k} t={decoding.temperature}"
                        for k in range(decoding.num_captions)])
        return out


SETTINGS = RunSettings(batch_size=4, workers=2)


def run(pool_dir: Path, captioner, chunk=0, n_chunks=1, temperature=0.75, spec=None,
        settings=SETTINGS):
    out = pool_dir / "captions" / "c" / str(temperature)
    return caption_pool("p", "c", spec or {"backend": "fake", "decoding": {"num_captions": 2}},
                        temperature, pool_dir / "index.parquet", pool_dir / "shards", out,
                        out / f"chunk{chunk}of{n_chunks}.json", settings, seed=7, chunk=chunk,
                        n_chunks=n_chunks, captioner=captioner)


def read_all(pool_dir: Path, temperature=0.75) -> pd.DataFrame:
    files = sorted((pool_dir / "captions" / "c" / str(temperature)).rglob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True).sort_values("uid")


def test_every_fetched_image_gets_its_captions_with_the_configured_decoding(fetched_pool):
    captioner = RecordingCaptioner()
    manifest = run(fetched_pool, captioner)
    frame = read_all(fetched_pool)
    assert sorted(frame["uid"]) == [f"{i:032x}" for i in range(12)]
    assert (frame["status"] == "ok").all()
    assert frame["captions"].map(len).eq(2).all()
    assert manifest["n_images"] == 12 and manifest["n_captioned"] == 12
    decodings = {call[1] for call in captioner.calls}
    assert decodings == {Decoding(top_k=50, temperature=0.75, min_length=5, max_length=40,
                                  num_captions=2)}
    # batch_size counts sequences: 4 // num_captions 2 = 2 images per generate call
    assert max(call[0] for call in captioner.calls) == 2


def test_batch_size_counts_sequences_images_times_captions(fetched_pool):
    """The KV cache grows with every sequence a generate call samples: batch_size bounds
    images x num_captions, not images."""
    captioner = RecordingCaptioner()
    run(fetched_pool, captioner, spec={"backend": "fake", "decoding": {"num_captions": 4}},
        settings=RunSettings(batch_size=8, workers=0))
    sizes = [call[0] for call in captioner.calls]  # 4 shards of 3 images each
    assert sizes == [2, 1] * 4  # 2 images = 8 sequences per call, the rest of the shard
    assert read_all(fetched_pool)["captions"].map(len).eq(4).all()
    assert images_per_batch(8, 4) == 2 and images_per_batch(8, 1) == 8
    assert images_per_batch(3, 5) == 1  # never zero images


def test_shared_memory_need_is_workers_x_prefetch_batches_of_pixels():
    blip2 = 3 * 224 * 224 * 4  # a BLIP2 / CLIP ViT-L/14 image as float32
    # 8 workers x 2 batches in flight + the one being captioned, 512 images each
    assert loader_shared_bytes(8, 2, 512, blip2) == 17 * 512 * blip2
    assert loader_shared_bytes(0, 2, 512, blip2) == 0  # no workers: nothing shared
    check_shared_memory(10, 10, "caption")
    with pytest.raises(SharedMemoryError, match=r"caption\.workers.*caption\.prefetch_factor"):
        check_shared_memory(11, 10, "caption")
    assert image_bytes(RecordingCaptioner().preprocess) == 8 * 8 * 3 * 4
    # measured on the transform, compared with what shm_dir has free
    need = check_loader_fits(RecordingCaptioner().preprocess, 2, 1, 2, "caption")
    assert need == 3 * 2 * 8 * 8 * 3 * 4


def test_a_loader_that_does_not_fit_in_shared_memory_fails_before_any_shard(fetched_pool,
                                                                           monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1_000))
    captioner = RecordingCaptioner()
    with pytest.raises(SharedMemoryError, match="caption.batch_size") as error:
        run(fetched_pool, captioner, settings=RunSettings(batch_size=4, workers=2))
    assert "/dev/shm" in str(error.value)
    assert captioner.calls == []
    assert not list((fetched_pool / "captions").rglob("*.parquet"))
    # without workers nothing goes through shared memory: the same job runs
    run(fetched_pool, captioner, settings=RunSettings(batch_size=4, workers=0))
    assert len(read_all(fetched_pool)) == 12


def test_resume_redoes_only_unfinished_shards_and_gives_identical_output(fetched_pool):
    run(fetched_pool, RecordingCaptioner())
    first = read_all(fetched_pool)
    out = fetched_pool / "captions" / "c" / "0.75"
    shards = sorted(out.rglob("*.parquet"))
    # simulate a kill: one shard never written, one left half-written
    shards[1].unlink()
    shards[2].write_bytes(shards[2].read_bytes()[:100])
    untouched = {p: p.stat().st_mtime_ns for p in (shards[0], shards[3])}
    captioner = RecordingCaptioner()
    run(fetched_pool, captioner)
    assert sum(call[0] for call in captioner.calls) == 6  # two shards of 3 images redone
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    pd.testing.assert_frame_equal(read_all(fetched_pool).reset_index(drop=True),
                                  first.reset_index(drop=True))


def test_chunks_split_the_shards_and_together_cover_the_pool(fetched_pool):
    for chunk in range(3):
        run(fetched_pool, RecordingCaptioner(), chunk=chunk, n_chunks=3)
    manifests = sorted((fetched_pool / "captions" / "c" / "0.75").glob("chunk*of3.json"))
    files = caption_files(manifests)
    assert len(files) == 4 and len(set(files)) == 4
    assert len(read_all(fetched_pool)) == 12


def test_undecodable_image_is_a_recorded_failure(fetched_pool):
    tasks = plan_tasks(fetched_pool / "index.parquet", fetched_pool / "shards", Path("/x"), ".p")
    # corrupt one image inside a shard after the fetch
    tar_path = tasks[0].tar
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    broken_key = members[0][0].name.rsplit(".", 1)[0]
    with tarfile.open(tar_path, "w") as tar:
        for member, data in members:
            if member.name == f"{broken_key}.png":
                data = b"not an image"
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    manifest = run(fetched_pool, RecordingCaptioner())
    frame = read_all(fetched_pool)
    bad = frame[frame["status"] != "ok"]
    assert len(bad) == 1 and bad["status"].iloc[0] == "undecodable"
    assert "UnidentifiedImageError" in bad["error"].iloc[0]
    assert manifest["failures"] == {"undecodable": 1}


def test_a_missing_shard_is_a_clear_error_and_finished_shards_are_kept(fetched_pool):
    run(fetched_pool, RecordingCaptioner())
    out = fetched_pool / "captions" / "c" / "0.75"
    kept = sorted(out.rglob("*.parquet"))
    (fetched_pool / "shards" / "round_0" / "00002.tar").unlink()
    (out / "round_0" / "00002.parquet").unlink()
    with pytest.raises(ShardError, match=r"00002\.tar: shard listed in the fetch index is missing"):
        run(fetched_pool, RecordingCaptioner())
    assert all(p.exists() for p in kept if p.name != "00002.parquet")


def test_raw_captions_use_the_same_layout(fetched_pool):
    out = fetched_pool / "captions" / "raw"
    manifest = raw_caption_sets("p", fetched_pool / "index.parquet", fetched_pool / "shards", out,
                                out / "manifest.json")
    frame = pd.concat([pd.read_parquet(f) for f in caption_files([out / "manifest.json"])])
    assert manifest["n_captioned"] == 12
    assert dict(zip(frame.uid, frame.caption, strict=True))[f"{5:032x}"] == "raw caption 5"
    assert all(is_complete(p, pd.read_parquet(p).uid.tolist()) for p in out.rglob("*.parquet"))


def test_released_captions_join_by_uid_into_the_same_layout(fetched_pool):
    """The paper's released captions, through a stand-in hub (no network)."""
    from capmix.caption import caption_released

    csv = "uid,text\n" + "".join(f"{i:032x},released caption {i}\n" for i in range(0, 12, 2))
    csv += f"{'e' * 32},caption of an image not in the pool\n"

    class Hub:
        def list_repo_files(self, repo, repo_type, revision):
            assert (repo, repo_type) == ("thaottn/DataComp_medium_pool_BLIP2_captions", "dataset")
            return ["temp_0.75/part0.csv", "temp_1.0/part0.csv"]

        def hf_hub_download(self, repo_id, filename, repo_type, revision, local_dir):
            path = Path(local_dir) / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(csv)
            return str(path)

    out = fetched_pool / "captions" / "blip2_released" / "0.75"
    spec = {"backend": "released", "repo": "thaottn/DataComp_medium_pool_BLIP2_captions",
            "columns": {"uid": "uid", "caption": "text"}}
    manifest = caption_released("p", "blip2_released", spec, 0.75, fetched_pool / "index.parquet",
                                fetched_pool / "shards", out, out / "chunk0of1.json",
                                fetched_pool / "dl", hub=Hub())
    frame = pd.concat([pd.read_parquet(f) for f in caption_files([out / "chunk0of1.json"])])
    frame = frame.set_index("uid")
    assert len(frame) == 12  # every fetched uid, joined or not
    assert frame.loc[f"{4:032x}", "caption"] == "released caption 4"
    assert frame.loc[f"{5:032x}", "status"] == "no_released_caption"
    assert manifest["failures"] == {"no_released_caption": 6}
    assert manifest["join"]["n_joined"] == 6
    assert manifest["join"]["n_released_not_in_pool"] == 1


def test_a_caption_set_is_one_manifest_in_the_raw_captions_format(fetched_pool):
    """caption_merge: the chunks' manifests as one, with the raw captions' keys, outputs
    relative to it (the same files), shards sorted and counts summed."""
    import json

    from capmix.caption import merge_caption_chunks

    out = fetched_pool / "captions" / "c" / "0.75"
    chunks = [run(fetched_pool, RecordingCaptioner(), chunk=c, n_chunks=3) for c in range(3)]
    paths = [out / f"chunk{c}of3.json" for c in range(3)]
    merged = merge_caption_chunks("p", paths, out / "manifest.json")
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(merged))
    raw_dir = fetched_pool / "captions" / "raw"
    raw = raw_caption_sets("p", fetched_pool / "index.parquet", fetched_pool / "shards",
                           raw_dir, raw_dir / "manifest.json")
    assert set(raw) <= set(merged)
    assert [set(e) for e in merged["shards"]] == [set(e) for e in raw["shards"]]
    assert [e["shard"] for e in merged["shards"]] == [e["shard"] for e in raw["shards"]]
    assert sorted(caption_files([out / "manifest.json"])) == sorted(caption_files(paths))
    assert merged["n_images"] == sum(c["n_images"] for c in chunks) == 12
    assert merged["n_captioned"] == 12 and merged["temperature"] == 0.75
    assert merged["decoding"] == chunks[0]["decoding"]
    assert merged["chunks"] == [p.name for p in paths]
    with pytest.raises(ValueError, match=r"shard round_0/\d+\.tar is listed by two caption "
                                         r"chunks, .*chunk0of3.json and .*chunk0of3.json"):
        merge_caption_chunks("p", [paths[0], paths[0]], out / "manifest.json")
