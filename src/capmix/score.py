"""Scoring stage: CLIP cosine similarity of every image with each of its captions.

Two steps, so that a new caption set costs only the text tower:

1. **Image embeddings, once per pool and scorer**, per fetched shard
   (``results/{pool}/scores/{scorer}/images/round_K/NNNNN.npz``: uid and the
   L2-normalised embedding, float16), resumable shard by shard. For a DataComp
   pool whose metadata ships ``l14_img`` (the OpenAI ViT-L/14 features the
   paper scored with), the shipped rows are gathered (L2-normalised, see
   :class:`ShippedEmbeddings`) instead of re-encoding.
2. **A caption set's scores** (``results/{pool}/scores/{scorer}/{set}.parquet``):
   text embeddings of the set's captions, cosine with the stored image
   embedding, and CLIP-S = 2.5 * max(cos, 0) (Hessel et al., 2021). For the raw
   captions of a DataComp pool the shipped ``clip_l14_similarity_score`` can be
   used as is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from capmix.caption import RunSettings
from capmix.modelrun import autocast, load_open_clip, low_precision_dtype
from capmix.provenance import provenance_record, write_json
from capmix.shards import (
    Progress,
    ShardTask,
    check_loader_fits,
    fetched_rows,
    listed_shard_files,
    plan_tasks,
    read_shard,
    shard_loader,
    write_parquet_atomic,
)
from capmix.weights import CACHE_KEY

log = logging.getLogger(__name__)

CLIP_S_WEIGHT = 2.5


class ScorerLoadError(ValueError):
    """A scorer model that does not load; names the scorer and the model."""


@dataclass
class Scorer:
    """An open_clip model with its image transform and tokenizer."""

    name: str
    model: Any
    preprocess: Any
    tokenizer: Any
    device: str
    autocast_dtype: torch.dtype | None = None

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        with autocast(self.device, self.autocast_dtype):
            features = self.model.encode_image(pixels.to(self.device), normalize=True)
        return features.float().cpu().numpy()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start:start + batch_size])).to(self.device)
            with autocast(self.device, self.autocast_dtype):
                chunks.append(self.model.encode_text(tokens, normalize=True).float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), "float32")


def load_scorer(name: str, spec: Mapping[str, Any], device: str = "cpu",
                precision: str = "fp32") -> Scorer:
    """Load an open_clip scorer (a built-in name + pretrained tag, or ``local-dir:``); a spec
    with a weights cache (``capmix.weights.CACHE_KEY``, set for GPU jobs) loads from it only."""
    model_name, pretrained = spec["model"], spec.get("pretrained")
    try:
        loaded = load_open_clip(model_name, pretrained, device, cache_dir=spec.get(CACHE_KEY))
    except Exception as error:  # noqa: BLE001 - any load failure becomes one clear message
        raise ScorerLoadError(f"scorer '{name}': cannot load model '{model_name}' "
                              f"(pretrained={pretrained!r}): {error}") from error
    dtype = low_precision_dtype(precision, device, f"scorer {name}")
    return Scorer(name, loaded.model, loaded.preprocess, loaded.tokenizer, device, dtype)


# ------------------------------------------------------------------ image embeddings


def read_embeddings(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return data["uid"], data["embedding"]


def embeddings_complete(path: Path, uids: Sequence[str]) -> bool:
    """Complete = every uid of the shard is either embedded or recorded as undecodable."""
    if not path.exists():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            done = data["uid"].tolist() + data["failed_uid"].tolist()
    except (OSError, ValueError, KeyError):
        return False
    return sorted(done) == sorted(uids)


def write_embeddings(path: Path, uids: Sequence[str], embeddings: np.ndarray,
                     failed_uids: Sequence[str] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, uid=np.asarray(uids, dtype="U32"), embedding=embeddings.astype("float16"),
             failed_uid=np.asarray(list(failed_uids), dtype="U32"))
    os.replace(tmp, path)


def embed_task(scorer: Scorer, task: ShardTask, settings: RunSettings) -> tuple[list[str],
                                                                               np.ndarray,
                                                                               dict[str, str]]:
    samples = read_shard(task)
    loader = shard_loader(samples, scorer.preprocess, settings.batch_size, settings.workers,
                          settings.prefetch_factor)
    uids, chunks, failed = [], [], {}
    for positions, pixels, errors in loader:
        failed.update({samples[i].uid: err for i, err in errors})
        if pixels is not None:
            chunks.append(scorer.encode_images(pixels))
            uids += [samples[i].uid for i in positions]
    width = chunks[0].shape[1] if chunks else 0
    return uids, (np.concatenate(chunks) if chunks else np.zeros((0, width), "float32")), failed


def unit_rows(rows: np.ndarray, what: str) -> np.ndarray:
    """Rows L2-normalised in float32; an all-zero row (no direction) stays zero, with a
    warning naming ``what``, rather than turning into NaNs."""
    rows = np.asarray(rows, dtype="float32")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    zero = int((norms == 0).sum())
    if zero:
        log.warning("%s: %d all-zero embedding row(s) kept as zeros (cosine 0)", what, zero)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


class ShippedEmbeddings:
    """Rows of a DataComp metadata npz (e.g. ``l14_img``), gathered by (part, row).

    img2dataset shards each metadata file in order, so consecutive shards read
    the same part: one part's array is kept in memory at a time, and :meth:`gather` reads
    each part a job needs once (a retry round's shard draws on several parts).

    The rows are returned L2-normalised in float32, so what is stored (and every
    score computed from it) is a cosine whatever the npz holds. What DataComp ships:
    the npz arrays were written by mlfoundations/dataset2metadata, which "implements
    the metadata processing for the DataComp project" (its README) and names the
    arrays with DataComp's keys (``registry.py``, ``d2m_to_datacomp_keys``:
    ``oai-clip-vit-l14-image`` -> ``l14_img``). Its ``models.py``
    (``OaiClipWrapper.forward``) divides OpenAI CLIP's image and text features by
    their norms before they are stored, and ``clip_l14_similarity_score`` is their
    plain dot product (``postprocessors.batched_dot_product``), a cosine only for unit
    vectors. So ``l14_img`` is unit norm, up to the rounding of OpenAI's ``clip.load``
    model (fp16 on a GPU). DataComp's own code never re-normalises it: its
    ``baselines/apply_filter.py`` (``image_filter_helper``) feeds the npz rows as
    loaded to ``get_centroid_ids_gpu`` (argmax of the inner product with the
    centroids), and ``baselines/image_based_clustering.py`` runs faiss L2 k-means on
    them cast to float32. Normalising here costs nothing for DataComp's rows (a change
    of ~1e-3) and keeps a table whose embeddings are not normalised from turning
    scores into unbounded dot products.
    """

    def __init__(self, metadata_dir: Path, key: str):
        self.metadata_dir, self.key = metadata_dir, key
        self._part: str | None = None
        self._array: np.ndarray | None = None

    def rows(self, part: str, rows: np.ndarray) -> np.ndarray:
        if part != self._part:
            path = self.metadata_dir / Path(part).with_suffix(".npz")
            if not path.exists():
                raise FileNotFoundError(f"{path}: no shipped embeddings for metadata part {part}")
            with np.load(path) as data:
                if self.key not in data:
                    raise KeyError(f"{path}: has no '{self.key}' (has {sorted(data.files)})")
                self._array = np.asarray(data[self.key])
            self._part = part
        assert self._array is not None
        return unit_rows(self._array[rows], f"{self.key} of metadata part {part}")

    def gather(self, tasks: Sequence[ShardTask],
               where: pd.DataFrame) -> Iterator[tuple[ShardTask, np.ndarray]]:
        """Each task's rows, in the order of its uids, reading each metadata part's npz once.

        ``where``: part and row by uid for (at least) the tasks' uids. Parts are read in the
        order the tasks first need them, and a task is yielded as soon as every part it draws
        on has been read, so only tasks waiting on a later part are held (a contiguous chunk's
        first-round shards each wait on none)."""
        located, users = [], {}
        for i, task in enumerate(tasks):
            uids = pd.Index(task.uids)
            position = where.index.get_indexer(uids)
            if (position < 0).any():
                raise KeyError(f"shard {task.shard}: uid(s) {list(uids[position < 0][:3])} "
                               "have no metadata part/row in the fetch index")
            parts = where["part"].to_numpy()[position]
            rows = where["row"].to_numpy()[position].astype("int64")
            located.append((parts, rows))
            for part in dict.fromkeys(parts):
                users.setdefault(part, []).append(i)
        for task, (parts, _) in zip(tasks, located, strict=True):
            if not len(parts):
                yield task, np.zeros((0, 0), "float32")
        left = {i: len(set(parts)) for i, (parts, _) in enumerate(located)}
        gathered: dict[int, np.ndarray] = {}
        for part, readers in users.items():
            for i in readers:
                parts, rows = located[i]
                mine = parts == part
                found = self.rows(part, rows[mine])
                if i not in gathered:
                    gathered[i] = np.zeros((len(parts), found.shape[1]), "float32")
                gathered[i][mine] = found
                left[i] -= 1
                if not left[i]:
                    yield tasks[i], gathered.pop(i)


def embed_pool_images(pool: str, scorer_name: str, spec: Mapping[str, Any], index_path: Path,
                      shards_dir: Path, out_dir: Path, manifest_path: Path,
                      settings: RunSettings, metadata_dir: Path | None = None, chunk: int = 0,
                      n_chunks: int = 1, scorer: Scorer | None = None) -> dict[str, Any]:
    """Image embeddings of every fetched image of one chunk, once per pool and scorer.

    A job that asked for a GPU and sees none fails first, before reading a shard."""
    device = settings.torch_device(f"embed_images {pool}/{scorer_name}")
    tasks = plan_tasks(index_path, shards_dir, out_dir, ".npz", chunk, n_chunks)
    todo = [t for t in tasks if not embeddings_complete(t.output, t.uids)]
    shipped_key = spec.get("shipped_image_embeddings")
    if shipped_key and not ships(metadata_dir, npz=True):
        log.info("%s: metadata ships no npz embeddings; encoding the images", pool)
        shipped_key = None
    shipped = None
    if shipped_key and metadata_dir is not None and todo:
        shipped = ShippedEmbeddings(metadata_dir, shipped_key)
    elif todo and scorer is None:
        scorer = load_scorer(scorer_name, spec, device, settings.precision)
    if todo and shipped is None:
        assert scorer is not None
        check_loader_fits(scorer.preprocess, settings.batch_size, settings.workers,
                          settings.prefetch_factor, "score")
    progress = Progress(f"image embeddings {scorer_name}", len(tasks),
                        sum(len(t.uids) for t in tasks))
    pending = {t.shard for t in todo}
    for task in tasks:
        if task.shard not in pending:
            progress.update(len(task.uids), skipped=True)
    failures: dict[str, str] = {}
    if shipped is not None:
        # uid -> metadata part and row, for the shards to do only (the index's rows of them)
        where = fetched_rows(index_path, [t.shard for t in todo],
                             ["uid", "part", "row"]).to_pandas().set_index("uid")
        for task, embeddings in shipped.gather(todo, where):
            write_embeddings(task.output, list(task.uids), embeddings)
            progress.update(len(task.uids))
    else:
        for task in todo:
            assert scorer is not None
            uids, embeddings, failed = embed_task(scorer, task, settings)
            failures.update(failed)
            write_embeddings(task.output, uids, embeddings,
                             [u for u in task.uids if u in failures])
            progress.update(len(uids))
    manifest = {
        "pool": pool, "scorer": scorer_name, "chunk": chunk, "n_chunks": n_chunks,
        "shipped": shipped_key if shipped is not None else None,
        "shards": [{"shard": t.shard, "output": str(t.output.relative_to(out_dir))}
                   for t in tasks],
        "failures": failures, "settings": asdict(settings),
        "provenance": provenance_record("embed_images", inputs=[index_path],
                                        params={"spec": dict(spec)},
                                        packages=("torch", "open_clip_torch")),
    }
    write_json(manifest_path, manifest)
    return manifest


# ------------------------------------------------------------------------ scoring


def embedding_files(manifest_paths: Sequence[Path]) -> list[Path]:
    """The per-shard embedding files listed by a pool's embed_images chunk manifests."""
    return listed_shard_files(manifest_paths)


def load_image_embeddings(files: Sequence[Path]) -> tuple[pd.Index, np.ndarray]:
    uids, chunks = [], []
    for path in files:
        u, e = read_embeddings(path)
        uids.append(u)
        chunks.append(e)
    if not chunks:
        return pd.Index([], dtype=str), np.zeros((0, 0), "float16")
    return pd.Index(np.concatenate(uids)), np.concatenate(chunks)


def clip_s(cos: np.ndarray) -> np.ndarray:
    """CLIP-S (Hessel et al., 2021): 2.5 * max(cos, 0)."""
    return CLIP_S_WEIGHT * np.maximum(cos, 0.0)


def score_caption_set(scorer: Scorer | None, caption_files: Sequence[Path],
                      embedding_files: Sequence[Path], shipped_raw: pd.Series | None = None,
                      batch_size: int = 256) -> pd.DataFrame:
    """Cosine of each image with each of its captions in a caption set.

    Output: uid, n_captions, cos (of the first caption), cos_max, cos_mean, clip_s
    (of the first caption), cos_all (list). Rows whose image has no embedding or
    whose caption is missing get NaN and a reason, never a silent gap.
    """
    captions = pd.concat([pd.read_parquet(f, columns=["uid", "captions", "status"])
                          for f in caption_files], ignore_index=True)
    if shipped_raw is not None:
        cos = shipped_raw.reindex(captions["uid"]).to_numpy(dtype="float64")
        all_cos = [[c] for c in cos]
    else:
        assert scorer is not None
        index, embeddings = load_image_embeddings(embedding_files)
        position = index.get_indexer(captions["uid"])
        flat = [(row, text) for row, texts in enumerate(captions["captions"])
                if position[row] >= 0 for text in (texts if texts is not None else [])]
        text_emb = scorer.encode_texts([t for _, t in flat], batch_size)
        rows = np.array([r for r, _ in flat], dtype="int64")
        sims = np.einsum("ij,ij->i", text_emb,
                         embeddings[position[rows]].astype("float32")) if len(flat) else []
        all_cos = [[] for _ in range(len(captions))]
        for row, sim in zip(rows, sims, strict=True):
            all_cos[row].append(float(sim))
        cos = np.array([c[0] if c else np.nan for c in all_cos])
    frame = pd.DataFrame({
        "uid": captions["uid"],
        "n_captions": [len(c) for c in all_cos],
        "cos": cos,
        "cos_max": [max(c) if c else np.nan for c in all_cos],
        "cos_mean": [float(np.mean(c)) if c else np.nan for c in all_cos],
        "clip_s": clip_s(np.nan_to_num(cos, nan=-1.0, posinf=-1.0, neginf=-1.0)),
        "cos_all": all_cos,
    })
    frame.loc[~np.isfinite(frame["cos"].to_numpy(dtype="float64")), "clip_s"] = np.nan
    # Why a row has no usable score: its caption failed, the shipped score is absent (shipped
    # scores are not computed here, so no embedding is involved), the image has no embedding,
    # or the score is not finite.
    no_score = "no_shipped_score" if shipped_raw is not None else "no_image_embedding"
    frame["missing"] = np.where(
        captions["status"] != "ok", "caption_" + captions["status"],
        np.where(frame["cos"].isna(), no_score,
                 np.where(~np.isfinite(frame["cos"].to_numpy(dtype="float64")),
                          "non_finite_score", None)))
    return frame


def score_pool_caption_set(pool: str, scorer_name: str, spec: Mapping[str, Any], caption_set: str,
                           caption_files: Sequence[Path], embedding_files: Sequence[Path],
                           out_path: Path, summary_path: Path, settings: RunSettings,
                           metadata_dir: Path | None = None,
                           scorer: Scorer | None = None) -> pd.DataFrame:
    """The score rule: one caption set of one pool, with one scorer (a job that asked for a
    GPU and sees none fails first)."""
    device = settings.torch_device(f"score {pool}/{scorer_name}/{caption_set}")
    shipped_column = spec.get("shipped_raw_score") if caption_set == "raw" else None
    if shipped_column and not ships(metadata_dir, column=shipped_column):
        log.info("%s: metadata has no '%s'; scoring raw captions with the model", pool,
                 shipped_column)
        shipped_column = None
    shipped = None
    if shipped_column and metadata_dir is not None:
        shipped = shipped_scores(metadata_dir, shipped_column)
    elif scorer is None:
        scorer = load_scorer(scorer_name, spec, device, settings.precision)
    frame = score_caption_set(scorer, caption_files, embedding_files, shipped,
                              batch_size=settings.batch_size)
    write_parquet_atomic(frame, out_path, {"pool": pool, "scorer": scorer_name,
                                           "caption_set": caption_set, "spec": dict(spec)})
    scored = frame.dropna(subset=["cos"])
    write_json(summary_path, {
        "pool": pool, "scorer": scorer_name, "caption_set": caption_set,
        "n": int(len(frame)), "n_scored": int(len(scored)),
        "missing": {k: int(v) for k, v in frame["missing"].value_counts().items()},
        "mean_cos": float(scored["cos"].mean()) if len(scored) else None,
        "mean_clip_s": float(scored["clip_s"].mean()) if len(scored) else None,
        "shipped_raw_score": shipped_column if shipped is not None else None,
        "provenance": provenance_record("score", inputs=list(caption_files),
                                        params={"spec": dict(spec)},
                                        packages=("torch", "open_clip_torch")),
    })
    return frame


def ships(metadata_dir: Path | None, npz: bool = False, column: str | None = None) -> bool:
    """Whether a pool's metadata ships DataComp's npz embeddings / a precomputed column.

    Lets one scorer definition (e.g. OpenAI ViT-L/14 with shipped features) serve
    DataComp pools and pools of other sources alike.
    """
    if metadata_dir is None or not (Path(metadata_dir) / "manifest.json").exists():
        return False
    from capmix.sources import read_manifest

    manifest = read_manifest(Path(metadata_dir))
    if npz:
        return bool(manifest["parts"]) and all("npz" in part for part in manifest["parts"])
    return column in manifest["columns"]


def shipped_scores(metadata_dir: Path, column: str) -> pd.Series:
    from capmix.sources import metadata_parts

    frames = []
    for part in metadata_parts(metadata_dir):
        names = pq.read_schema(part).names
        if column not in names:
            raise KeyError(f"{part}: no column '{column}' to take shipped scores from")
        frames.append(pq.read_table(part, columns=["uid", column]).to_pandas())
    table = pd.concat(frames, ignore_index=True)
    return table.set_index("uid")[column].astype("float64")
