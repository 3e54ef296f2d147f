"""ImageNet-1k-like image clusters: DataComp's ``image_based`` filter, for intersections.

DataComp's best raw-caption baseline (and the paper's "intersect IN1k" strategies) keeps the
pool images that lie in clusters close to ImageNet-1k's training images:

1. k-means over the pool's image embeddings (DataComp: faiss, 100,000 clusters for small and
   medium, 20 iterations, L2; precomputed centroids are published per scale);
2. each ImageNet-1k train image embedding picks its nearest centroid; the set of centroids
   picked are the *target* clusters;
3. a pool image is kept if its nearest centroid is a target cluster.

"Nearest" is the largest inner product, as DataComp's ``get_centroid_ids_gpu`` does (the
embeddings are L2-normalised; the centroids are not). Normalisation, as DataComp has it
(mlfoundations/datacomp ``baselines/``): k-means trains on the pool's ``l14_img`` rows as
shipped, cast to float32 (``image_based_clustering.py``), and those rows are unit norm
(dataset2metadata normalises them; see ``capmix.score.ShippedEmbeddings``); the pool rows
and the ImageNet-1k ``image_features`` are assigned as loaded (``apply_filter.py``), and the
centroids, trained or published, are never normalised. Here the pool rows are the stored
image embeddings, unit norm whether computed or shipped (``capmix.score``), so k-means sees
what DataComp's sees; the reference rows and centroids are used as given, as DataComp does.
A row's scale cannot change its assignment anyway (argmax of ``c * x . mu_j`` over j is the
same for every c > 0), so only the k-means input needs unit rows.

faiss is the library DataComp uses; its CPU build runs the toy world, and real scales either
pass DataComp's published centroids (``centroids:``) or train on a seeded sample of at most
``train_sample`` of the pool's embeddings (:func:`sample_rows`; a sample that holds the pool is
the pool, in order, so the centroids are those of k-means over every embedding).

No job holds the pool (issue 18): (a) ``image_cluster_centroids`` makes the centroids and the
target clusters (memory: the sample, the references, the centroids); (b) each
``image_clusters_part`` job assigns the images of a contiguous run of embed_images chunk
manifests (``pools[].jobs.image_clusters``), a shard at a time; (c) ``image_clusters``
streams the parts, in order, into the pool's clusters file and writes the summary.

DataComp's image-based baseline also drops samples whose raw caption fastText does not call
English or that has at most one fastText token or five characters: that is a strategy's
``text_filter`` (:mod:`capmix.textfilter`), separate from the clusters, so a strategy takes the
cluster intersection with or without it.

DataComp's published inputs (:mod:`capmix.assetspec`): the ImageNet-1k embeddings are torch
files holding ``{"image_features": tensor}``; the centroids are a numpy array saved with
``torch.save`` (DataComp loads them with ``torch.from_numpy(torch.load(path))``).
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from capmix.mix import CLUSTER_COLUMN

log = logging.getLogger(__name__)


#: The array types a torch embedding file may hold as numpy arrays (numbers only: an object
#: array would unpickle its items).
NUMERIC_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                  "uint16", "uint32", "uint64", "bool")


@dataclass(frozen=True)
class ClusterSettings:
    n_clusters: int = 100_000
    niter: int = 20
    seed: int = 0
    # faiss sub-samples to max_points_per_centroid * k points unless told otherwise;
    # DataComp sets it very high to cluster every point.
    max_points_per_centroid: int = 10_000_000
    # k-means trains on at most this many of the pool's embeddings, a seeded uniform sample
    # (sample_rows): 50M rows are 143 GiB as float32 at L/14's 768-d, what a 256 GB job
    # holds. DataComp clustered all of small's, and sampled 30% of large and 3% of xlarge
    # (384M rows each; baselines/image_based_clustering.md); it publishes every scale's
    # centroids, which the DataComp configs pass instead.
    train_sample: int = 50_000_000
    # Rows scored against the centroids at a time: 8,192 x 100,000 float32 is 3.3 GB.
    batch_size: int = 8_192


def cluster_settings(spec: Mapping[str, Any], seed: int) -> ClusterSettings:
    """``pools[].mix.image_clusters``' k-means settings; unset ones are the defaults above
    (the seed: the config's)."""
    defaults = ClusterSettings()
    return ClusterSettings(n_clusters=spec.get("n_clusters", defaults.n_clusters),
                           niter=spec.get("niter", defaults.niter),
                           seed=spec.get("seed", seed),
                           train_sample=spec.get("train_sample", defaults.train_sample))


def load_embedding_file(path: Path) -> np.ndarray:
    """Embeddings from ``.npy``/``.npz`` (key ``embedding``/``image_features``) or DataComp's
    ``.pt`` files (a tensor, an array, or a dict with ``image_features``)."""
    path = Path(path)
    if path.suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            key = next((k for k in ("embedding", "image_features", "centroids")
                        if k in data.files), None)
            if key is None:
                raise KeyError(f"{path}: no 'embedding', 'image_features' or 'centroids' array "
                               f"(has {sorted(data.files)})")
            array = data[key]
    elif path.suffix == ".pt":
        import torch

        # DataComp publishes these as torch files holding a tensor, a dict of tensors or a
        # numpy array: weights_only loads exactly those (numpy's array reconstruction allowed,
        # under numpy 2's name and numpy 1's, which files pickled in 2023 carry) and refuses
        # any other pickled object, which could run code on load.
        reconstruct = np._core.multiarray._reconstruct
        numpy_arrays = [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"),
                        np.ndarray, np.dtype, *(type(np.dtype(t)) for t in NUMERIC_DTYPES)]
        try:
            with torch.serialization.safe_globals(numpy_arrays):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - torch raises UnpicklingError/RuntimeError
            raise ValueError(f"{path}: not a plain tensor file (torch.load weights_only "
                             f"refused it: {error}); save the embeddings as .npy") from error
        if isinstance(obj, dict):
            if "image_features" not in obj:
                raise KeyError(f"{path}: no 'image_features' (has {sorted(obj)})")
            obj = obj["image_features"]
        array = obj.numpy() if hasattr(obj, "numpy") else np.asarray(obj)
    else:
        raise ValueError(f"{path}: unsupported embedding file (use .npy, .npz or .pt)")
    array = np.asarray(array, dtype="float32")
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(f"{path}: expected a non-empty 2-d array of embeddings, got shape "
                         f"{array.shape}")
    return array


def train_centroids(embeddings: np.ndarray, settings: ClusterSettings) -> np.ndarray:
    """k-means centroids (faiss, L2, as DataComp's image_based_clustering.py)."""
    import faiss

    embeddings = np.ascontiguousarray(embeddings, dtype="float32")
    k = settings.n_clusters
    if k > len(embeddings):
        raise ValueError(f"image clusters: {k} clusters asked for but k-means has only "
                         f"{len(embeddings)} embedded images (the pool's, or the sample of "
                         "them); lower mix.image_clusters.n_clusters or raise train_sample")
    kmeans = faiss.Kmeans(embeddings.shape[1], k, niter=settings.niter, seed=settings.seed,
                          max_points_per_centroid=settings.max_points_per_centroid,
                          verbose=False)
    kmeans.train(embeddings)
    return np.asarray(kmeans.centroids, dtype="float32")


def nearest_centroid(embeddings: np.ndarray, centroids: np.ndarray,
                     batch_size: int = 65_536) -> np.ndarray:
    """argmax inner product, batched (DataComp's assignment)."""
    out = np.empty(len(embeddings), dtype="int64")
    centroids = centroids.astype("float32")
    for start in range(0, len(embeddings), batch_size):
        block = embeddings[start:start + batch_size].astype("float32")
        out[start:start + batch_size] = np.argmax(block @ centroids.T, axis=1)
    return out


# ---- Reading embed_images shards, one at a time ------------------------------------------
def embedding_shards(manifests: Sequence[Path]) -> list[Path]:
    """The npz files embed_images chunk manifests list (``shards[].output``), in order."""
    files: list[Path] = []
    for path in manifests:
        try:
            entries = json.loads(Path(path).read_text())["shards"]
            files += [Path(path).parent / entry["output"] for entry in entries]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a readable embed_images chunk manifest "
                             f"({error!r})") from error
    return files


def shard_shape(path: Path) -> tuple[int, int]:
    """(rows, dimension) of a shard's embeddings from the npy header alone: the sample is
    planned over the whole pool without reading its embeddings twice."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("embedding.npy") as member:
            version = np.lib.format.read_magic(member)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape = read(member)[0]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: cannot read the shape of its image embeddings "
                         f"({error!r})") from error
    if len(shape) != 2:
        raise ValueError(f"{path}: image embeddings of shape {shape}, expected 2-d")
    return int(shape[0]), int(shape[1])


def read_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uids, float32 embeddings) of one shard in embed_images' layout
    (``capmix.score.write_embeddings``, read without importing the model code): one uid per
    row, or a ValueError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            uids = data["uid"]
            embeddings = np.asarray(data["embedding"], dtype="float32")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: cannot read image embeddings ({error!r})") from error
    if embeddings.ndim != 2 or len(uids) != len(embeddings):
        raise ValueError(f"{path}: {len(uids)} uids but embeddings of shape {embeddings.shape}")
    return uids, embeddings


# ---- (a) The centroids: given, or k-means on a bounded sample; and the target clusters ----
def sample_rows(counts: Sequence[int], size: int, seed: int) -> list[np.ndarray] | None:
    """The rows k-means trains on: ``size`` of the pool's rows (shards of ``counts`` rows, in
    order) drawn uniformly without replacement with ``seed``, as sorted row numbers per shard;
    None when ``size`` holds the pool (every row, in order: what one job over the whole pool
    read). numpy draws them by Floyd's algorithm, or for a sample over a twentieth of the pool
    by shuffling the pool's row numbers (8 bytes a row, at most 20 per sampled row): memory
    follows the sample. DataComp (``image_based_clustering.py``) instead draws
    ``int(n * sample_ratio)`` rows per metadata file with replacement; a uniform draw without
    replacement has the same expected share per file and no row twice."""
    total = int(sum(counts))
    if size >= total:
        return None
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(total, size=size, replace=False, shuffle=False))
    bounds = np.concatenate([[0], np.cumsum(counts, dtype="int64")])
    cuts = np.searchsorted(picked, bounds)
    return [picked[cuts[i]:cuts[i + 1]] - bounds[i] for i in range(len(counts))]


def sample_embeddings(shards: Sequence[Path], size: int, seed: int) -> tuple[np.ndarray, int]:
    """The k-means input, read a shard at a time into one float32 matrix of at most ``size``
    rows (:func:`sample_rows`): the job holds the sample, never the pool. Returns the sample
    and the pool's rows."""
    shapes = [shard_shape(path) for path in shards]
    if not shapes:
        raise ValueError("image clusters: the pool has no embedded images to train k-means on")
    width = shapes[0][1]
    for path, (_, dim) in zip(shards, shapes, strict=True):
        if dim != width:
            raise ValueError(f"{path}: image embeddings of dimension {dim}, {shards[0]}'s "
                             f"{width}: a pool's embeddings come from one model")
    counts = [rows for rows, _ in shapes]
    plan = sample_rows(counts, size, seed)
    total = sum(counts)
    sample = np.empty((total if plan is None else size, width), dtype="float32")
    at = 0
    for i, path in enumerate(shards):
        if plan is not None and len(plan[i]) == 0:
            continue
        embeddings = read_shard(path)[1]
        if embeddings.shape != shapes[i]:
            raise ValueError(f"{path}: embeddings of shape {embeddings.shape}, its header said "
                             f"{shapes[i]} (was it rewritten while read?)")
        rows = embeddings if plan is None else embeddings[plan[i]]
        sample[at:at + len(rows)] = rows
        at += len(rows)
    return sample, total


def reference_embeddings(manifests: Sequence[Path], files: Sequence[Path]) -> np.ndarray:
    """The ImageNet-1k(-like) rows: another pool's embed_images shards, then files, in order
    (one dimension, or a ValueError naming the file that differs)."""
    shards = embedding_shards(manifests)
    arrays: list[np.ndarray] = []
    first: Path | None = None
    for i, source in enumerate([*shards, *files]):
        rows = read_shard(source)[1] if i < len(shards) else load_embedding_file(source)
        if not len(rows):
            continue
        if first is None:
            first = source
        elif rows.shape[1] != arrays[0].shape[1]:
            raise ValueError(f"{source}: reference embeddings of dimension {rows.shape[1]}, "
                             f"{first}'s {arrays[0].shape[1]}")
        arrays.append(rows)
    if not arrays:
        raise ValueError("no reference (ImageNet-like) image embeddings")
    return np.concatenate(arrays)


def write_centroids(path: Path, centroids: np.ndarray, targets: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, centroids=centroids.astype("float32"), targets=targets.astype("int64"))
    os.replace(tmp, path)


def load_centroids(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, target cluster ids) as :func:`run_cluster_centroids` wrote them."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return np.asarray(data["centroids"], "float32"), np.asarray(data["targets"], "int64")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not an image_cluster_centroids file ({error!r})") from error


def run_cluster_centroids(pool: str, image_manifests: Sequence[Path],
                          reference_manifests: Sequence[Path],
                          reference_files: Sequence[Path], centroids_file: Path | None,
                          spec: dict[str, Any], seed: int, out_path: Path,
                          record_path: Path) -> dict[str, Any]:
    """The image_cluster_centroids rule: the centroids (given, or trained on a seeded sample of
    at most ``train_sample`` of the pool's embeddings) and the target clusters (nearest
    centroid of each reference embedding), for the assignment jobs. Memory: the sample, the
    references and the centroids."""
    from capmix.provenance import provenance_record, write_json

    settings = cluster_settings(spec, seed)
    reference = reference_embeddings(reference_manifests, reference_files)
    n_sample = n_pool = None
    if centroids_file is None:
        sample, n_pool = sample_embeddings(embedding_shards(image_manifests),
                                           settings.train_sample, settings.seed)
        if reference.shape[1] != sample.shape[1]:
            raise ValueError(f"reference embeddings have dimension {reference.shape[1]}, the "
                             f"pool's {sample.shape[1]}: they must come from the same model")
        n_sample = len(sample)
        log.info("%s: k-means (%d clusters) on %d of the pool's %d image embeddings", pool,
                 settings.n_clusters, n_sample, n_pool)
        centroids = train_centroids(sample, settings)
        del sample
    else:
        centroids = load_embedding_file(centroids_file)
        if centroids.shape[1] != reference.shape[1]:
            raise ValueError(f"{centroids_file}: centroids of dimension {centroids.shape[1]}, "
                             f"the reference embeddings' {reference.shape[1]}")
    targets = np.unique(nearest_centroid(reference, centroids, settings.batch_size))
    write_centroids(out_path, centroids, targets)
    inputs = [*reference_manifests, *reference_files]
    inputs += [centroids_file] if centroids_file else list(image_manifests)
    record = {
        "pool": pool, "centroids": "trained" if centroids_file is None else "given",
        "centroids_file": str(centroids_file) if centroids_file else None,
        "n_train_sample": n_sample, "n_pool_embedded": n_pool,
        "n_reference": int(len(reference)), "n_clusters": int(len(centroids)),
        "n_target_clusters": int(len(targets)), "settings": asdict(settings),
        "provenance": provenance_record("image_cluster_centroids", inputs=inputs,
                                        params=dict(spec), packages=("numpy", "faiss-cpu")),
    }
    write_json(record_path, record)
    return record


# ---- (b) Assignment, a run of embed_images chunks per job -----------------------------------
def cluster_schema() -> Any:
    """IMAGE_CLUSTERS' columns, for every part and the reduce (capmix.provenance.frame_schema)."""
    import pyarrow as pa

    from capmix.provenance import frame_schema

    frame = pd.DataFrame({"uid": pd.Series(dtype=object), "cluster": pd.Series(dtype="int64"),
                          CLUSTER_COLUMN: pd.Series(dtype=bool)})
    return frame_schema(frame, {"uid": pa.string(), "cluster": pa.int64(),
                                CLUSTER_COLUMN: pa.bool_()})


def run_assign_clusters(pool: str, image_manifests: Sequence[Path], centroids_path: Path,
                        out_path: Path, batch_size: int = ClusterSettings.batch_size) -> int:
    """The image_clusters_part rule: each image of a contiguous run of embed_images chunk
    manifests, its nearest centroid and whether it is a target cluster, written as the shards
    are read (memory: a shard, its scores against the centroids, and up to 1M rows buffered).
    Returns the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    centroids, targets = load_centroids(centroids_path)
    schema = cluster_schema()
    schema = schema.with_metadata({**(schema.metadata or {}), b"capmix": json.dumps(
        {"pool": pool, "stage": "image_clusters_part"}, sort_keys=True).encode()})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    rows = 0
    buffered: list[pd.DataFrame] = []

    def flush(writer: pq.ParquetWriter) -> None:
        if buffered:
            frame = pd.concat(buffered, ignore_index=True)
            writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
            buffered.clear()

    with pq.ParquetWriter(tmp, schema) as writer:
        for path in embedding_shards(image_manifests):
            uids, embeddings = read_shard(path)
            if len(embeddings) and embeddings.shape[1] != centroids.shape[1]:
                raise ValueError(f"{path}: image embeddings of dimension {embeddings.shape[1]}, "
                                 f"the centroids' {centroids.shape[1]} ({centroids_path})")
            assigned = nearest_centroid(embeddings, centroids, batch_size)
            buffered.append(pd.DataFrame({"uid": np.asarray(uids, dtype=object),
                                          "cluster": assigned,
                                          CLUSTER_COLUMN: np.isin(assigned, targets)}))
            rows += len(uids)
            if sum(len(f) for f in buffered) >= 1 << 20:
                flush(writer)
        flush(writer)
    os.replace(tmp, out_path)
    log.info("%s: %d images assigned to %d centroids", pool, rows, len(centroids))
    return rows


# ---- (c) The reduce: the parts in order, and the summary ---------------------------------
def run_merge_clusters(pool: str, part_paths: Sequence[Path], centroids_record: Path,
                       spec: dict[str, Any], out_path: Path,
                       summary_path: Path) -> dict[str, Any]:
    """The image_clusters rule: the assignment parts streamed, in order, into the pool's
    clusters file (the rows one job over the whole pool wrote), and the summary: that job's
    fields, from the counts as they pass, plus how the centroids were made (given or trained,
    on how many sampled rows)."""
    import pyarrow.compute as pc

    from capmix.provenance import concat_parquet_atomic, provenance_record, write_json

    record = json.loads(Path(centroids_record).read_text())
    in_target = 0

    def count(table: Any, path: Path) -> None:
        nonlocal in_target
        in_target += int(pc.sum(table.column(CLUSTER_COLUMN)).as_py() or 0)

    n_pool = concat_parquet_atomic(part_paths, out_path, cluster_schema(),
                                   {"pool": pool, "stage": "image_clusters"}, count)
    summary = {
        "pool": pool, "n_pool": n_pool, "n_reference": record["n_reference"],
        "n_clusters": record["n_clusters"], "centroids": record["centroids"],
        "centroids_file": record["centroids_file"],
        "n_train_sample": record["n_train_sample"], "n_pool_embedded": record["n_pool_embedded"],
        "n_target_clusters": record["n_target_clusters"], "n_in_target_clusters": in_target,
        "share_in_target_clusters": in_target / n_pool if n_pool else None,
        "settings": record["settings"], "parts": len(part_paths),
        "provenance": provenance_record("image_clusters",
                                        inputs=[centroids_record, *part_paths],
                                        params=dict(spec), packages=("numpy", "pyarrow")),
    }
    log.info("image clusters: %d of %d pool images in %d target clusters (of %d)",
             in_target, n_pool, record["n_target_clusters"], record["n_clusters"])
    write_json(summary_path, summary)
    return summary
