"""DataComp's image-based filter: safe loading of reference embeddings and centroids, and the
clusters in parts (centroids from a bounded seeded sample or given, assignment jobs, reduce)
equal to the one-job stage."""

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from capmix.chunks import contiguous_run
from capmix.clusters import (
    ClusterSettings,
    embedding_shards,
    load_embedding_file,
    nearest_centroid,
    run_assign_clusters,
    run_cluster_centroids,
    run_merge_clusters,
    sample_embeddings,
    sample_rows,
    train_centroids,
)
from capmix.mix import CLUSTER_COLUMN
from capmix.score import write_embeddings


class _RunsCodeOnLoad:
    """A pickled object whose unpickling would create a file (as hostile code could)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_embedding_files_in_every_format(tmp_path):
    array = np.arange(12, dtype="float32").reshape(4, 3)
    np.save(tmp_path / "e.npy", array)
    np.savez(tmp_path / "e.npz", image_features=array)
    torch.save(torch.from_numpy(array), tmp_path / "t.pt")
    torch.save({"image_features": torch.from_numpy(array)}, tmp_path / "d.pt")
    for name in ("e.npy", "e.npz", "t.pt", "d.pt"):
        np.testing.assert_array_equal(load_embedding_file(tmp_path / name), array)


def test_a_torch_file_with_code_in_it_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"image_features": _RunsCodeOnLoad(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt: not a plain tensor file"):
        load_embedding_file(tmp_path / "evil.pt")
    assert not marker.exists()


def test_datacomps_centroid_files_load(tmp_path):
    """DataComp's published centroids are a numpy array saved with torch.save (its code:
    ``torch.from_numpy(torch.load(download(f"{scale}_centroids")))``), pickled in 2023 under
    numpy 1's module name ``numpy.core.multiarray``; both that name and numpy 2's load."""
    centroids = np.arange(12, dtype="float32").reshape(3, 4)
    torch.save(centroids, tmp_path / "zip.pt")
    # The legacy (non-zip) format writes the pickle as it is: protocol 2 names globals as
    # text lines, so the numpy-1 name can be written in place of numpy 2's.
    torch.save(centroids, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    legacy = (tmp_path / "legacy.pt").read_bytes()
    assert legacy.count(b"numpy._core.multiarray\n") == 1
    (tmp_path / "numpy1.pt").write_bytes(
        legacy.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    for name in ("zip.pt", "legacy.pt", "numpy1.pt"):
        np.testing.assert_array_equal(load_embedding_file(tmp_path / name), centroids)


def test_an_object_array_in_a_torch_file_is_refused(tmp_path):
    """numpy arrays are allowed as plain numbers only: an object array pickles its items."""
    marker = tmp_path / "ran"
    array = np.empty(1, dtype=object)
    array[0] = _RunsCodeOnLoad(marker)
    torch.save(array, tmp_path / "objects.pt")
    with pytest.raises(ValueError, match=r"objects\.pt: not a plain tensor file"):
        load_embedding_file(tmp_path / "objects.pt")
    assert not marker.exists()


# ---- Image clusters in parts: centroids (a), assignment jobs (b), reduce (c) --------------

DIM = 16


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    rows = rng.normal(size=(n, dim)).astype("float32")
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def write_pool(root: Path, shard_rows: list[list[int]], seed: int = 0,
               dim: int = DIM) -> list[Path]:
    """embed_images chunk manifests (one per inner list) in capmix.score's layout: per shard an
    npz of uids and float16 unit embeddings, listed by the chunk's manifest."""
    rng = np.random.default_rng(seed)
    manifests, n = [], 0
    for c, sizes in enumerate(shard_rows):
        chunk = f"chunk{c}of{len(shard_rows)}"
        entries = []
        for s, size in enumerate(sizes):
            out = root / chunk / f"round_0/{s:05d}.npz"
            write_embeddings(out, [f"{n + i:032x}" for i in range(size)], unit_rows(rng, size, dim))
            entries.append({"shard": f"round_0/{s:05d}.tar",
                            "output": str(out.relative_to(root))})
            n += size
        manifest = root / f"{chunk}.json"
        manifest.write_text(json.dumps({"shards": entries}))
        manifests.append(manifest)
    return manifests


def whole_pool(manifests: list[Path]) -> tuple[list[str], np.ndarray]:
    """Every uid and embedding, as the one-job stage loaded them (float16 -> float32)."""
    uids, rows = [], []
    for path in embedding_shards(manifests):
        with np.load(path) as data:
            uids += data["uid"].tolist()
            rows.append(np.asarray(data["embedding"], dtype="float32"))
    return uids, np.concatenate(rows)


def one_job(uids, embeddings, reference, centroids):
    """The one-job stage's frame: nearest centroid of every image, and the target clusters."""
    targets = np.unique(nearest_centroid(reference, centroids, 65_536))
    assigned = nearest_centroid(embeddings, centroids, 65_536)
    return pd.DataFrame({"uid": np.asarray(uids, dtype=object), "cluster": assigned,
                         CLUSTER_COLUMN: np.isin(assigned, targets)}), targets


def run_in_parts(tmp: Path, manifests, reference_file, centroids_file, spec, n_jobs,
                 seed=0):
    out = tmp / f"jobs{n_jobs}"
    record = run_cluster_centroids("p", manifests, [], [reference_file], centroids_file, spec,
                                   seed, out / "centroids.npz", out / "centroids.json")
    parts = []
    for i in range(n_jobs):
        part = out / f"chunk{i}of{n_jobs}.parquet"
        run_assign_clusters("p", contiguous_run(manifests, i, n_jobs), out / "centroids.npz",
                            part)
        parts.append(part)
    summary = run_merge_clusters("p", parts, out / "centroids.json", spec,
                                 out / "clusters.parquet", out / "clusters.json")
    return record, summary, pd.read_parquet(out / "clusters.parquet")


@pytest.fixture
def pool(tmp_path):
    # 3 chunks of uneven shards (one chunk empty of rows), 330 images; 40 reference images
    manifests = write_pool(tmp_path / "pool", [[50, 70], [0, 90, 20], [100]])
    reference = tmp_path / "in1k.npy"
    np.save(reference, unit_rows(np.random.default_rng(9), 40))
    return manifests, reference


@pytest.mark.parametrize("n_jobs", [1, 2, 3, 5])
def test_parts_with_trained_centroids_equal_the_one_job_result(tmp_path, pool, n_jobs):
    """With the sample holding the whole pool, the centroids are k-means over every embedding
    (the one-job stage's), and the parts, merged, are its rows; 5 jobs over 3 chunks leave two
    jobs empty."""
    manifests, reference_file = pool
    spec = {"n_clusters": 8, "niter": 5}
    uids, embeddings = whole_pool(manifests)
    settings = ClusterSettings(n_clusters=8, niter=5, seed=0)
    centroids = train_centroids(embeddings, settings)
    expected, targets = one_job(uids, embeddings, np.load(reference_file), centroids)

    record, summary, frame = run_in_parts(tmp_path, manifests, reference_file, None, spec,
                                          n_jobs)
    with np.load(tmp_path / f"jobs{n_jobs}" / "centroids.npz") as saved:
        np.testing.assert_array_equal(saved["centroids"], centroids)
        np.testing.assert_array_equal(saved["targets"], targets)
    pd.testing.assert_frame_equal(frame, expected)
    assert record["centroids"] == "trained" and record["n_train_sample"] == len(uids) == 330
    assert record["n_pool_embedded"] == 330
    assert summary["n_pool"] == 330 and summary["n_reference"] == 40
    assert summary["n_clusters"] == 8 and summary["centroids"] == "trained"
    assert summary["n_target_clusters"] == len(targets)
    assert summary["n_in_target_clusters"] == int(expected[CLUSTER_COLUMN].sum())
    assert summary["share_in_target_clusters"] == float(expected[CLUSTER_COLUMN].mean())
    assert summary["n_train_sample"] == 330 and summary["settings"]["train_sample"] == 50_000_000
    assert summary["parts"] == n_jobs


@pytest.mark.parametrize("n_jobs", [1, 3])
def test_parts_with_given_centroids_equal_the_one_job_result(tmp_path, pool, n_jobs):
    manifests, reference_file = pool
    centroids = unit_rows(np.random.default_rng(5), 12) * 3  # as given: not normalised
    torch.save(centroids, tmp_path / "centroids.pt")
    uids, embeddings = whole_pool(manifests)
    expected, targets = one_job(uids, embeddings, np.load(reference_file), centroids)
    record, summary, frame = run_in_parts(tmp_path, manifests, reference_file,
                                          tmp_path / "centroids.pt", {}, n_jobs)
    pd.testing.assert_frame_equal(frame, expected)
    assert record["centroids"] == "given" and record["n_train_sample"] is None
    assert summary["centroids_file"] == str(tmp_path / "centroids.pt")
    assert summary["n_target_clusters"] == len(targets) and summary["n_pool"] == 330


def test_the_sample_is_seeded_uniform_and_bounded(tmp_path):
    counts = [50, 0, 70, 90, 20, 100]
    plan = sample_rows(counts, 100, seed=3)
    assert sum(len(rows) for rows in plan) == 100
    for rows, count in zip(plan, counts, strict=True):
        assert (np.diff(rows) > 0).all() and (rows >= 0).all() and (rows < count).all()
    again = sample_rows(counts, 100, seed=3)
    assert all((a == b).all() for a, b in zip(plan, again, strict=True))
    other = sample_rows(counts, 100, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(plan, other, strict=True))
    assert sample_rows(counts, 330, seed=3) is None and sample_rows(counts, 10**9, 3) is None

    # The sample is pool rows, each at most once, in pool order.
    manifests = write_pool(tmp_path, [[50, 0, 70], [90, 20, 100]])
    _, embeddings = whole_pool(manifests)
    sample, n_pool = sample_embeddings(embedding_shards(manifests), 100, seed=3)
    assert n_pool == 330 and sample.shape == (100, DIM)
    picked = np.concatenate([rows + start for rows, start in
                             zip(plan, np.cumsum([0, *counts[:-1]]), strict=True)])
    np.testing.assert_array_equal(sample, embeddings[picked])


def test_the_sample_job_holds_the_sample_not_the_pool(tmp_path):
    """40 shards of 2,000 64-d rows (20 MB as float32): a 1,000-row sample is read a shard at a
    time, so the largest allocation alive at once is a shard's, not the pool's."""
    manifests = write_pool(tmp_path, [[2_000] * 20, [2_000] * 20], dim=64)
    shards = embedding_shards(manifests)
    tracemalloc.start()
    sample, n_pool = sample_embeddings(shards, 1_000, seed=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    pool_bytes = n_pool * 64 * 4
    assert n_pool == 80_000 and sample.shape == (1_000, 64)
    assert peak < pool_bytes / 10, (peak, pool_bytes)


def test_a_smaller_sample_trains_reproducible_centroids(tmp_path, pool):
    manifests, reference_file = pool
    spec = {"n_clusters": 8, "niter": 5, "train_sample": 120}
    first = run_cluster_centroids("p", manifests, [], [reference_file], None, spec, 0,
                                  tmp_path / "a.npz", tmp_path / "a.json")
    run_cluster_centroids("p", manifests, [], [reference_file], None, spec, 0,
                          tmp_path / "b.npz", tmp_path / "b.json")
    assert first["n_train_sample"] == 120 and first["n_pool_embedded"] == 330
    assert first["settings"]["train_sample"] == 120
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        np.testing.assert_array_equal(a["centroids"], b["centroids"])
    with pytest.raises(ValueError, match="8 clusters asked for but k-means has only 5"):
        run_cluster_centroids("p", manifests, [], [reference_file], None,
                              {**spec, "train_sample": 5}, 0, tmp_path / "c.npz",
                              tmp_path / "c.json")


def test_errors_name_the_chunk_or_file(tmp_path, pool):
    manifests, reference_file = pool
    spec = {"n_clusters": 4, "niter": 2}
    run_cluster_centroids("p", manifests, [], [reference_file], None, spec, 0,
                          tmp_path / "c.npz", tmp_path / "c.json")
    # a chunk manifest that is not one
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match=r"bad\.json: not a readable embed_images chunk"):
        run_assign_clusters("p", [bad], tmp_path / "c.npz", tmp_path / "part.parquet")
    # a shard its manifest lists but that is gone
    shard = embedding_shards(manifests[2:])[0]
    shard.rename(shard.with_suffix(".moved"))
    with pytest.raises(ValueError, match=str(shard)):
        run_assign_clusters("p", manifests[2:], tmp_path / "c.npz", tmp_path / "part.parquet")
    with pytest.raises(ValueError, match=str(shard)):
        sample_embeddings(embedding_shards(manifests), 10, 0)
    assert not (tmp_path / "part.parquet").exists()
    # embeddings of another model (another dimension) than the centroids'
    other = write_pool(tmp_path / "other", [[5]], dim=DIM + 1)
    with pytest.raises(ValueError, match=r"other/chunk0of1/round_0/00000\.npz: image "
                                         r"embeddings of dimension 17, the centroids' 16"):
        run_assign_clusters("p", other, tmp_path / "c.npz", tmp_path / "part.parquet")
    # uids and embeddings that disagree
    broken = embedding_shards(manifests[:1])[0]
    np.savez(broken, uid=np.array(["a"], dtype="U32"), embedding=np.zeros((2, DIM), "float16"))
    with pytest.raises(ValueError, match=rf"{broken}: 1 uids but embeddings of shape \(2, 16\)"):
        run_assign_clusters("p", manifests[:1], tmp_path / "c.npz", tmp_path / "part.parquet")
