"""CLIP scoring with a tiny random open_clip CLIP saved locally (no hub)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from capmix.caption import RunSettings, caption_files, raw_caption_sets
from capmix.score import (
    CaptionFileError,
    clip_s,
    embed_pool_images,
    index_rows,
    load_scorer,
    read_embeddings,
    score_chunk,
    score_pool_caption_set,
)
from capmix.scoretables import merge_scores
from capmix.shards import plan_tasks, read_shard
from tests.tiny_models import make_tiny_clip

SETTINGS = RunSettings(batch_size=4, workers=1)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


def spec_for(clip_dir: Path, **extra) -> dict:
    return {"backend": "open_clip", "model": f"local-dir:{clip_dir}", "pretrained": None, **extra}


def embed(pool: Path, spec: dict, **kwargs):
    out = pool / "scores" / "s" / "images"
    return embed_pool_images("p", "s", spec, pool / "index.parquet", pool / "shards", out,
                             out / "chunk0of1.json", SETTINGS, metadata_dir=pool / "metadata",
                             **kwargs)


def embed_chunks(pool: Path, spec: dict, n_chunks: int, **kwargs) -> list[Path]:
    """Image embeddings in ``n_chunks`` embed_images jobs; their manifests."""
    out = pool / "scores" / "s" / "images"
    for chunk in range(n_chunks):
        embed_pool_images("p", "s", spec, pool / "index.parquet", pool / "shards", out,
                          out / f"chunk{chunk}of{n_chunks}.json", SETTINGS,
                          metadata_dir=pool / "metadata", chunk=chunk, n_chunks=n_chunks,
                          **kwargs)
    return [out / f"chunk{chunk}of{n_chunks}.json" for chunk in range(n_chunks)]


def score_in_chunks(pool: Path, spec: dict, caption_set: str, set_manifest: Path,
                    images: list[Path], **kwargs) -> tuple[pd.DataFrame, dict]:
    """Rule score per embed chunk, then rule score_merge: the set's table and summary."""
    out = pool / "chunked" / caption_set
    chunks = []
    for manifest in images:
        chunks.append(out / manifest.with_suffix(".parquet").name)
        score_chunk("p", "s", spec, caption_set, set_manifest, manifest, chunks[-1], SETTINGS,
                    index_path=pool / "index.parquet", metadata_dir=pool / "metadata", **kwargs)
    summary = merge_scores("p", "s", caption_set, chunks, set_manifest, out / "scores.parquet",
                           out / "scores.json")
    return pd.read_parquet(out / "scores.parquet"), summary


def raw(pool: Path) -> list[Path]:
    out = pool / "captions" / "raw"
    raw_caption_sets("p", pool / "index.parquet", pool / "shards", out, out / "manifest.json")
    return caption_files([out / "manifest.json"])


def embedding_files(pool: Path) -> list[Path]:
    return sorted((pool / "scores" / "s" / "images").rglob("*.npz"))


def test_scores_are_cosines_of_the_scorer_and_clip_s(fetched_pool, clip_dir):
    spec = spec_for(clip_dir)
    embed(fetched_pool, spec)
    frame = score_pool_caption_set("p", "s", spec, "raw", raw(fetched_pool),
                                   embedding_files(fetched_pool),
                                   fetched_pool / "raw.parquet", fetched_pool / "raw.json",
                                   SETTINGS)
    # recompute three rows by hand with the same model
    scorer = load_scorer("s", spec)
    task = plan_tasks(fetched_pool / "index.parquet", fetched_pool / "shards", Path("/x"), ".p")[0]
    samples = read_shard(task)[:3]
    pixels = torch.stack([scorer.preprocess(Image.open(io.BytesIO(s.image)).convert("RGB"))
                          for s in samples])
    image = scorer.encode_images(pixels)
    text = scorer.encode_texts([s.text for s in samples])
    expected = (image * text).sum(axis=1)
    got = frame.set_index("uid").loc[[s.uid for s in samples], "cos"].to_numpy()
    np.testing.assert_allclose(got, expected, atol=2e-3)  # embeddings are stored as float16
    np.testing.assert_allclose(frame["clip_s"], 2.5 * np.maximum(frame["cos"], 0))
    assert frame["cos"].notna().all() and len(frame) == 12
    summary = json.loads((fetched_pool / "raw.json").read_text())
    assert summary["n_scored"] == 12 and summary["mean_cos"] == pytest.approx(frame.cos.mean())


def test_image_embeddings_are_computed_once_and_reused(fetched_pool, clip_dir, monkeypatch):
    spec = spec_for(clip_dir)
    embed(fetched_pool, spec)
    scorer = load_scorer("s", spec)
    calls = {"images": 0}
    original = scorer.encode_images

    def counting(pixels):
        calls["images"] += 1
        return original(pixels)

    monkeypatch.setattr(scorer, "encode_images", counting)
    files = raw(fetched_pool)
    for name in ("set_a", "set_b"):
        score_pool_caption_set("p", "s", spec, name, files, embedding_files(fetched_pool),
                               fetched_pool / f"{name}.parquet", fetched_pool / f"{name}.json",
                               SETTINGS, scorer=scorer)
    assert calls["images"] == 0  # only the text tower ran
    # and a re-run of the embedding job redoes only a missing shard
    first = embedding_files(fetched_pool)
    mtimes = {p: p.stat().st_mtime_ns for p in first[1:]}
    first[0].unlink()
    embed(fetched_pool, spec, scorer=scorer)
    assert calls["images"] == 1  # one batch of 3 images (batch size 4)
    assert {p: p.stat().st_mtime_ns for p in first[1:]} == mtimes


def test_image_embeddings_check_shared_memory_before_any_shard(fetched_pool, clip_dir,
                                                                monkeypatch):
    import shutil

    from capmix.shards import SharedMemoryError

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1_000))
    with pytest.raises(SharedMemoryError, match=r"score\.workers"):
        embed(fetched_pool, spec_for(clip_dir))
    assert embedding_files(fetched_pool) == []


def ship_l14_img(pool: Path, l14: np.ndarray) -> pd.DataFrame:
    """Make the pool DataComp-style: ``l14_img`` in an npz beside its metadata part."""
    metadata = pool / "metadata"
    part = metadata / "part-00000.parquet"
    np.savez(part.with_suffix(".npz"), l14_img=l14)
    manifest = json.loads((metadata / "manifest.json").read_text())
    manifest["parts"][0]["npz"] = "part-00000.npz"
    (metadata / "manifest.json").write_text(json.dumps(manifest))
    return pq.read_table(part).to_pandas()


def ship_raw_scores(pool: Path, table: pd.DataFrame, scores: np.ndarray,
                    row_group_size: int | None = None) -> None:
    """Add DataComp's shipped ``clip_l14_similarity_score`` to the pool's metadata part."""
    metadata = pool / "metadata"
    table["clip_l14_similarity_score"] = scores
    table.to_parquet(metadata / "part-00000.parquet", index=False, row_group_size=row_group_size)
    manifest = json.loads((metadata / "manifest.json").read_text())
    manifest["columns"].append("clip_l14_similarity_score")
    (metadata / "manifest.json").write_text(json.dumps(manifest))


#: A DataComp scorer with shipped embeddings and raw scores whose model cannot be loaded: proves
#: no image or caption goes through a model.
SHIPPED_SPEC = {"backend": "open_clip", "model": "does-not-exist", "pretrained": None,
                "shipped_image_embeddings": "l14_img",
                "shipped_raw_score": "clip_l14_similarity_score"}


def unit(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype("float32")
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_shipped_datacomp_embeddings_and_scores_are_used(fetched_pool):
    """A DataComp-style pool: npz l14_img beside each metadata part, and the shipped score."""
    metadata = fetched_pool / "metadata"
    rng = np.random.default_rng(0)
    l14 = rng.normal(size=(12, 8)).astype("float16")
    table = ship_l14_img(fetched_pool, l14)
    shipped_scores = np.linspace(0.1, 0.3, len(table))
    shipped_scores[:2] = [np.nan, np.inf]  # a row without a shipped score, a corrupt one
    ship_raw_scores(fetched_pool, table, shipped_scores)
    spec = SHIPPED_SPEC
    manifest = embed(fetched_pool, spec)
    assert manifest["shipped"] == "l14_img"
    by_uid = dict(zip(table["uid"], unit(l14), strict=True))  # stored L2-normalised
    for path in embedding_files(fetched_pool):
        uids, embeddings = read_embeddings(path)
        for uid, embedding in zip(uids, embeddings, strict=True):
            np.testing.assert_allclose(embedding, by_uid[uid], atol=1e-3)
    frame = score_pool_caption_set("p", "s", spec, "raw", raw(fetched_pool),
                                   embedding_files(fetched_pool), fetched_pool / "r.parquet",
                                   fetched_pool / "r.json", SETTINGS, metadata_dir=metadata)
    shipped = dict(zip(table["uid"], table["clip_l14_similarity_score"], strict=True))
    assert np.allclose(frame["cos"], [shipped[u] for u in frame["uid"]], equal_nan=True)
    reasons = dict(zip(frame["uid"], frame["missing"], strict=True))
    assert reasons[table["uid"][0]] == "no_shipped_score"  # not "no_image_embedding"
    assert reasons[table["uid"][1]] == "non_finite_score"
    clip_s_of = dict(zip(frame["uid"], frame["clip_s"], strict=True))
    assert np.isnan(clip_s_of[table["uid"][0]]) and np.isnan(clip_s_of[table["uid"][1]])
    assert {reasons[u] for u in table["uid"][2:]} == {None}


def test_shipped_embeddings_are_normalised_so_scores_are_cosines(fetched_pool, clip_dir):
    """Shipped rows that are not unit norm (DataComp's are, up to fp16 rounding; a table
    from elsewhere need not be) are L2-normalised in float32 before they are stored, so a
    new caption set's scores are cosines, not dot products."""
    rng = np.random.default_rng(1)
    directions = unit(rng.normal(size=(12, 32)))  # the tiny CLIP's embedding width
    scales = rng.uniform(0.05, 20.0, size=(12, 1)).astype("float32")
    table = ship_l14_img(fetched_pool, (directions * scales).astype("float16"))
    spec = spec_for(clip_dir, shipped_image_embeddings="l14_img")
    assert embed(fetched_pool, spec)["shipped"] == "l14_img"
    for path in embedding_files(fetched_pool):
        _, embeddings = read_embeddings(path)
        np.testing.assert_allclose(np.linalg.norm(embeddings.astype("float32"), axis=1), 1.0,
                                   atol=1e-3)
    scorer = load_scorer("s", spec)
    frame = score_pool_caption_set("p", "s", spec, "raw_again", raw(fetched_pool),
                                   embedding_files(fetched_pool), fetched_pool / "r.parquet",
                                   fetched_pool / "r.json", SETTINGS, scorer=scorer)
    text = scorer.encode_texts(list(table["text"]))
    expected = dict(zip(table["uid"], (text * unit(directions)).sum(axis=1), strict=True))
    np.testing.assert_allclose(frame["cos"], [expected[u] for u in frame["uid"]], atol=2e-3)


def test_clip_s_definition():
    assert list(clip_s(np.array([-0.2, 0.0, 0.4]))) == [0.0, 0.0, pytest.approx(1.0)]


def test_unknown_scorer_model_is_a_clear_error():
    from capmix.score import ScorerLoadError

    with pytest.raises(ScorerLoadError, match="scorer 'x': cannot load model 'local-dir:/nope'"):
        load_scorer("x", {"model": "local-dir:/nope"})


def test_missing_captions_are_reported_not_dropped(fetched_pool, clip_dir):
    spec = spec_for(clip_dir)
    embed(fetched_pool, spec)
    files = raw(fetched_pool)
    frame = pd.read_parquet(files[0])
    frame.loc[0, ["status", "caption"]] = ["undecodable", None]
    frame.at[0, "captions"] = []
    frame.to_parquet(files[0], index=False)
    scores = score_pool_caption_set("p", "s", spec, "raw", files, embedding_files(fetched_pool),
                                    fetched_pool / "r.parquet", fetched_pool / "r.json", SETTINGS)
    assert len(scores) == 12
    assert scores["missing"].value_counts().to_dict() == {"caption_undecodable": 1}


def same_rows(chunked: pd.DataFrame, whole: pd.DataFrame) -> None:
    """Equal rows, by uid; floats to 1e-6 (the text tower's batches are formed per shard in
    a chunk, per set in one job, and a batch's composition can change the last bits)."""
    a = chunked.sort_values("uid").reset_index(drop=True)
    b = whole.sort_values("uid").reset_index(drop=True)
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a.drop(columns="cos_all"), b.drop(columns="cos_all"),
                                  check_exact=False, rtol=1e-6, atol=1e-6)
    for x, y in zip(a["cos_all"], b["cos_all"], strict=True):
        np.testing.assert_allclose(np.asarray(x, float), np.asarray(y, float), rtol=1e-6,
                                   atol=1e-6)


def same_summary(chunked: dict, whole: dict) -> None:
    """Equal summaries but for provenance; the means to 1e-6 (the rows' own rounding, see
    same_rows, and sums in another order: chunk by chunk, then divided)."""
    a = {k: v for k, v in chunked.items() if k != "provenance"}
    b = {k: v for k, v in whole.items() if k != "provenance"}
    assert a.keys() == b.keys()
    for key in ("mean_cos", "mean_clip_s"):
        assert a.pop(key) == pytest.approx(b.pop(key), rel=1e-6, abs=1e-9), key
    assert a == b


def synthetic_set(pool: Path, n_chunks: int) -> Path:
    """A synthetic caption set with two captions per image, captioned in ``n_chunks`` caption
    jobs and listed in one manifest (rule caption_merge)."""
    from capmix.caption import merge_caption_chunks
    from tests.test_caption import RecordingCaptioner
    from tests.test_caption import run as caption_chunk

    out = pool / "captions" / "c" / "0.75"
    for chunk in range(n_chunks):
        caption_chunk(pool, RecordingCaptioner(), chunk=chunk, n_chunks=n_chunks)
    merge_caption_chunks("p", [out / f"chunk{c}of{n_chunks}.json" for c in range(n_chunks)],
                         out / "manifest.json")
    return out / "manifest.json"


def test_scoring_chunk_by_chunk_equals_one_job(fetched_pool, clip_dir):
    """Rule score per embed chunk (3 chunks of the 4 shards; a 5th-of-5 chunk with no shard
    at all), merged by score_merge: the rows, values and summary one job gives on the same
    pool, for the raw captions and a synthetic set of 2 captions per image captioned in 2 jobs
    (so a score chunk's shards come from both caption chunks)."""
    spec = spec_for(clip_dir)
    scorer = load_scorer("s", spec)
    raw_files = raw(fetched_pool)
    raw_manifest = fetched_pool / "captions" / "raw" / "manifest.json"
    synthetic = synthetic_set(fetched_pool, 2)
    for n_chunks in (3, 5):
        images = embed_chunks(fetched_pool, spec, n_chunks, scorer=scorer)
        files = embedding_files(fetched_pool)
        for name, manifest, captions in (("raw", raw_manifest, raw_files),
                                         ("c/0.75", synthetic, caption_files([synthetic]))):
            whole = score_pool_caption_set("p", "s", spec, name, captions, files,
                                           fetched_pool / "w.parquet", fetched_pool / "w.json",
                                           SETTINGS, scorer=scorer)
            chunked, summary = score_in_chunks(fetched_pool, spec, name, manifest, images,
                                               scorer=scorer)
            assert len(chunked) == 12 and chunked["cos"].notna().all()
            same_rows(chunked, whole)
            same_summary(summary, json.loads((fetched_pool / "w.json").read_text()))
            tags = pq.read_schema(fetched_pool / "chunked" / name / "scores.parquet").metadata
            assert json.loads(tags[b"capmix"]) == json.loads(
                pq.read_schema(fetched_pool / "w.parquet").metadata[b"capmix"])
            # a row group per chunk that has rows
            assert pq.ParquetFile(fetched_pool / "chunked" / name / "scores.parquet"
                                  ).metadata.num_row_groups == min(n_chunks, 4)
        if n_chunks == 3:
            assert (chunked["n_captions"] == 2).all()  # the synthetic set's two captions
            for path in files:
                path.unlink()
            for manifest in images:
                manifest.unlink()


def test_a_chunk_whose_caption_file_is_missing_names_the_shard_and_set(fetched_pool, clip_dir):
    spec = spec_for(clip_dir)
    images = embed_chunks(fetched_pool, spec, 2)
    files = raw(fetched_pool)
    manifest = fetched_pool / "captions" / "raw" / "manifest.json"
    listed = json.loads(manifest.read_text())
    shard = json.loads(images[1].read_text())["shards"][0]["shard"]
    gone = next(f for f, e in zip(files, listed["shards"], strict=True) if e["shard"] == shard)
    gone.unlink()
    with pytest.raises(CaptionFileError, match=rf"caption set 'raw' \(.*manifest.json\): the "
                                               rf"caption file of shard {shard} is missing"):
        score_in_chunks(fetched_pool, spec, "raw", manifest, images)
    listed["shards"] = [e for e in listed["shards"] if e["shard"] != shard]
    manifest.write_text(json.dumps(listed))
    with pytest.raises(CaptionFileError, match=rf"caption set 'raw' \(.*\) lists no caption "
                                               rf"file for shard {shard}"):
        score_in_chunks(fetched_pool, spec, "raw", manifest, images)


def test_merge_stops_on_a_shard_no_chunk_scored(fetched_pool, clip_dir):
    spec = spec_for(clip_dir)
    images = embed_chunks(fetched_pool, spec, 2)
    raw(fetched_pool)
    manifest = fetched_pool / "captions" / "raw" / "manifest.json"
    out = fetched_pool / "chunked"
    score_chunk("p", "s", spec, "raw", manifest, images[0], out / "c0.parquet", SETTINGS)
    first = json.loads(images[1].read_text())["shards"][0]["shard"]
    with pytest.raises(ValueError, match=rf"score_merge p/s/raw \(.*manifest.json\): 2 "
                                         rf"shard\(s\) of the set no chunk scored, e.g. "
                                         rf"\['{first}'"):
        merge_scores("p", "s", "raw", [out / "c0.parquet"], manifest, out / "s.parquet",
                     out / "s.json")
    assert not (out / "s.parquet").exists() and not (out / "s.parquet.tmp").exists()
    with pytest.raises(ValueError, match=r"is scored by two chunks"):
        merge_scores("p", "s", "raw", [out / "c0.parquet"] * 2, manifest, out / "s.parquet",
                     out / "s.json")


def test_shipped_raw_scores_are_read_for_the_chunk_only(fetched_pool, monkeypatch):
    """DataComp's shipped raw score, per chunk: the chunk's uids (their part and row from the
    fetch index) and only those rows; equal to one job's reading of every part."""
    import capmix.score as score_module

    metadata = fetched_pool / "metadata"
    table = ship_l14_img(fetched_pool, np.random.default_rng(0).normal(size=(12, 8)))
    scores = np.linspace(0.1, 0.3, len(table))
    scores[0] = np.nan
    ship_raw_scores(fetched_pool, table, scores, row_group_size=5)  # rows in three row groups
    spec = SHIPPED_SPEC
    images = embed_chunks(fetched_pool, spec, 3)
    files = raw(fetched_pool)
    whole = score_pool_caption_set("p", "s", spec, "raw", files, embedding_files(fetched_pool),
                                   fetched_pool / "w.parquet", fetched_pool / "w.json", SETTINGS,
                                   metadata_dir=metadata)
    read = []
    real = score_module.read_rows
    monkeypatch.setattr(score_module, "shipped_scores", None)  # never every part
    monkeypatch.setattr(score_module, "read_rows",
                        lambda path, columns, rows: read.append(len(rows)) or real(
                            path, columns, rows))
    chunked, summary = score_in_chunks(fetched_pool, spec, "raw",
                                       fetched_pool / "captions" / "raw" / "manifest.json",
                                       images)
    same_rows(chunked, whole)
    same_summary(summary, json.loads((fetched_pool / "w.json").read_text()))
    assert summary["shipped_raw_score"] == "clip_l14_similarity_score"
    assert summary["missing"] == {"no_shipped_score": 1}
    assert sorted(read) == sorted(len(json.loads(m.read_text())["shards"]) * 3 for m in images)
    shards = [e["shard"] for e in json.loads(images[0].read_text())["shards"]]
    rows = index_rows(fetched_pool / "index.parquet", shards, ["uid", "part", "row"])
    assert len(rows) == 3 * len(shards) and list(rows.columns) == ["uid", "part", "row"]
