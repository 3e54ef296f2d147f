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
pass DataComp's published centroids (``centroids:``) or run on a node where k-means over
millions of 768-d vectors fits.

DataComp's image-based baseline also drops samples whose raw caption fastText does not call
English or that has at most one fastText token or five characters: that is a strategy's
``text_filter`` (:mod:`capmix.textfilter`), separate from the clusters, so a strategy takes the
cluster intersection with or without it.

DataComp's published inputs (:mod:`capmix.assetspec`): the ImageNet-1k embeddings are torch
files holding ``{"image_features": tensor}``; the centroids are a numpy array saved with
``torch.save`` (DataComp loads them with ``torch.from_numpy(torch.load(path))``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
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
    batch_size: int = 65_536


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
        raise ValueError(f"image clusters: {k} clusters asked for but the pool has only "
                         f"{len(embeddings)} embedded images; lower mix.image_clusters."
                         "n_clusters")
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


def image_clusters(uids: Sequence[str], embeddings: np.ndarray, reference: np.ndarray,
                   settings: ClusterSettings,
                   centroids: np.ndarray | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per pool uid: its cluster and whether that cluster is a target (nearest to a reference
    image). Returns the frame and a summary."""
    if len(uids) != len(embeddings):
        raise ValueError(f"{len(uids)} uids but {len(embeddings)} embeddings")
    if reference.shape[1] != embeddings.shape[1]:
        raise ValueError(f"reference embeddings have dimension {reference.shape[1]}, the "
                         f"pool's {embeddings.shape[1]}: they must come from the same model")
    trained = centroids is None
    if centroids is None:
        centroids = train_centroids(embeddings, settings)
    elif centroids.shape[1] != embeddings.shape[1]:
        raise ValueError(f"centroids have dimension {centroids.shape[1]}, the pool's "
                         f"embeddings {embeddings.shape[1]}")
    targets = np.unique(nearest_centroid(reference, centroids, settings.batch_size))
    assigned = nearest_centroid(embeddings, centroids, settings.batch_size)
    in_target = np.isin(assigned, targets)
    frame = pd.DataFrame({"uid": np.asarray(uids, dtype=object), "cluster": assigned,
                          CLUSTER_COLUMN: in_target})
    summary = {
        "n_pool": int(len(frame)), "n_reference": int(len(reference)),
        "n_clusters": int(len(centroids)), "centroids": "trained" if trained else "given",
        "n_target_clusters": int(len(targets)),
        "n_in_target_clusters": int(in_target.sum()),
        "share_in_target_clusters": float(in_target.mean()) if len(frame) else None,
        "settings": settings.__dict__,
    }
    log.info("image clusters: %d of %d pool images in %d target clusters (of %d)",
             summary["n_in_target_clusters"], len(frame), len(targets), len(centroids))
    return frame, summary


def manifest_embeddings(manifests: Sequence[Path]) -> tuple[list[str], np.ndarray]:
    """Image embeddings (and uids) listed by embed_images chunk manifests."""
    import json

    uids: list[str] = []
    chunks: list[np.ndarray] = []
    for path in manifests:
        manifest = json.loads(Path(path).read_text())
        for shard in manifest["shards"]:
            # The embed_images layout (capmix.score.write_embeddings), read without importing
            # the model code.
            with np.load(Path(path).parent / shard["output"], allow_pickle=False) as data:
                uids += data["uid"].tolist()
                chunks.append(np.asarray(data["embedding"], dtype="float32"))
    width = chunks[0].shape[1] if chunks else 0
    return uids, np.concatenate(chunks) if chunks else np.zeros((0, width), "float32")


def run_image_clusters(pool: str, image_manifests: Sequence[Path],
                       reference_manifests: Sequence[Path], reference_files: Sequence[Path],
                       centroids_file: Path | None, spec: dict[str, Any], seed: int,
                       out_path: Path, summary_path: Path) -> dict[str, Any]:
    """The image_clusters rule: the pool's images in ImageNet-1k-like clusters."""
    from capmix.provenance import provenance_record, write_json
    from capmix.shards import write_parquet_atomic

    settings = ClusterSettings(n_clusters=spec.get("n_clusters", ClusterSettings.n_clusters),
                               niter=spec.get("niter", ClusterSettings.niter),
                               seed=spec.get("seed", seed))
    uids, embeddings = manifest_embeddings(image_manifests)
    references = []
    if reference_manifests:
        references.append(manifest_embeddings(reference_manifests)[1])
    references += [load_embedding_file(p) for p in reference_files]
    if not references or sum(len(r) for r in references) == 0:
        raise ValueError(f"{pool}: no reference (ImageNet-like) image embeddings")
    reference = np.concatenate(references)
    centroids = load_embedding_file(centroids_file) if centroids_file else None
    frame, summary = image_clusters(uids, embeddings, reference, settings, centroids)
    write_parquet_atomic(frame, out_path, {"pool": pool, "stage": "image_clusters"})
    inputs = [*image_manifests, *reference_manifests, *reference_files]
    if centroids_file:
        inputs.append(centroids_file)
    write_json(summary_path, {"pool": pool, **summary,
                              "provenance": provenance_record("image_clusters", inputs=inputs,
                                                              params=dict(spec),
                                                              packages=("numpy", "faiss-cpu"))})
    return summary
