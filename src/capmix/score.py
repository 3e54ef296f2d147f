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
   used as is. One job per embed_images chunk scores that chunk's shards
   (:func:`score_chunk`, memory bounded by the chunk, not the set); a small reduce
   streams the chunks into the set's table and summary (:func:`merge_scores`).
"""

from __future__ import annotations

import json
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
from capmix.parquetio import open_streaming, stream_batches
from capmix.provenance import provenance_record, write_json
from capmix.scoretables import (
    ScoreTally,
    caption_set_shards,
    set_tags,
)
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


#: The columns of a scores table (score_caption_set), in order.
#: Rows of the fetch index read at a time when looking up a chunk's uids.
INDEX_BATCH_ROWS = 1_000_000


class CaptionFileError(FileNotFoundError):
    """A shard a score chunk scores whose caption file its caption set lacks; names both."""


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


def read_captions(caption_files: Sequence[Path]) -> pd.DataFrame:
    """uid, captions, status of the given per-shard caption parquets (none: no rows)."""
    columns = ["uid", "captions", "status"]
    if not caption_files:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    return pd.concat([pd.read_parquet(f, columns=columns) for f in caption_files],
                     ignore_index=True)


def score_caption_set(scorer: Scorer | None, caption_files: Sequence[Path],
                      embedding_files: Sequence[Path], shipped_raw: pd.Series | None = None,
                      batch_size: int = 256) -> pd.DataFrame:
    """Cosine of each image with each of its captions in a caption set.

    Output: uid, n_captions, cos (of the first caption), cos_max, cos_mean, clip_s
    (of the first caption), cos_all (list). Rows whose image has no embedding or
    whose caption is missing get NaN and a reason, never a silent gap.
    """
    captions = read_captions(caption_files)
    if shipped_raw is not None:
        cos = shipped_raw.reindex(captions["uid"]).to_numpy(dtype="float64")
        all_cos = [[c] for c in cos]
    else:
        index, embeddings = load_image_embeddings(embedding_files)
        position = index.get_indexer(captions["uid"])
        flat = [(row, text) for row, texts in enumerate(captions["captions"])
                if position[row] >= 0 for text in (texts if texts is not None else [])]
        if flat:
            assert scorer is not None
            text_emb = scorer.encode_texts([t for _, t in flat], batch_size)
        rows = np.array([r for r, _ in flat], dtype="int64")
        sims = np.einsum("ij,ij->i", text_emb,
                         embeddings[position[rows]].astype("float32")) if len(flat) else []
        all_cos = [[] for _ in range(len(captions))]
        for row, sim in zip(rows, sims, strict=True):
            all_cos[row].append(float(sim))
        cos = np.array([c[0] if c else np.nan for c in all_cos], dtype="float64")
    frame = pd.DataFrame({
        "uid": captions["uid"],
        "n_captions": np.array([len(c) for c in all_cos], dtype="int64"),
        "cos": cos,
        "cos_max": np.array([max(c) if c else np.nan for c in all_cos], dtype="float64"),
        "cos_mean": np.array([float(np.mean(c)) if c else np.nan for c in all_cos],
                             dtype="float64"),
        "clip_s": clip_s(np.nan_to_num(cos, nan=-1.0, posinf=-1.0, neginf=-1.0)),
        "cos_all": pd.Series(all_cos, dtype=object),  # lists, even with no rows
    })
    frame.loc[~np.isfinite(frame["cos"].to_numpy(dtype="float64")), "clip_s"] = np.nan
    # Why a row has no usable score: its caption failed, the shipped score is absent (shipped
    # scores are not computed here, so no embedding is involved), the image has no embedding,
    # or the score is not finite.
    no_score = "no_shipped_score" if shipped_raw is not None else "no_image_embedding"
    frame["missing"] = pd.Series(np.where(
        captions["status"] != "ok", "caption_" + captions["status"],
        np.where(frame["cos"].isna(), no_score,
                 np.where(~np.isfinite(frame["cos"].to_numpy(dtype="float64")),
                          "non_finite_score", None))), index=frame.index, dtype=object)
    return frame


def shipped_raw_column(spec: Mapping[str, Any], caption_set: str,
                       metadata_dir: Path | None) -> str | None:
    """The metadata column whose shipped score stands for the scorer's on the raw captions
    (DataComp's ``clip_l14_similarity_score``), if the scorer names one and the pool ships it."""
    column = spec.get("shipped_raw_score") if caption_set == "raw" else None
    if column and not ships(metadata_dir, column=column):
        log.info("metadata %s has no '%s'; scoring raw captions with the model", metadata_dir,
                 column)
        return None
    return column


def score_pool_caption_set(pool: str, scorer_name: str, spec: Mapping[str, Any], caption_set: str,
                           caption_files: Sequence[Path], embedding_files: Sequence[Path],
                           out_path: Path, summary_path: Path, settings: RunSettings,
                           metadata_dir: Path | None = None,
                           scorer: Scorer | None = None) -> pd.DataFrame:
    """One caption set of one pool in one call, the whole set in memory (tests, benches and
    small pools; the workflow scores a set chunk by chunk: :func:`score_chunk` then
    :func:`merge_scores`, same table and summary). A call that asked for a GPU and sees none
    fails first."""
    device = settings.torch_device(f"score {pool}/{scorer_name}/{caption_set}")
    shipped_column = shipped_raw_column(spec, caption_set, metadata_dir)
    shipped = None
    if shipped_column and metadata_dir is not None:
        shipped = shipped_scores(metadata_dir, shipped_column)
    elif scorer is None:
        scorer = load_scorer(scorer_name, spec, device, settings.precision)
    frame = score_caption_set(scorer, caption_files, embedding_files, shipped,
                              batch_size=settings.batch_size)
    write_parquet_atomic(frame, out_path, set_tags(pool, scorer_name, caption_set, spec))
    tally = ScoreTally()
    tally.add(frame)
    write_json(summary_path, {
        "pool": pool, "scorer": scorer_name, "caption_set": caption_set, **tally.summary(),
        "shipped_raw_score": shipped_column if shipped is not None else None,
        "provenance": provenance_record("score", inputs=list(caption_files),
                                        params={"spec": dict(spec)},
                                        packages=("torch", "open_clip_torch")),
    })
    return frame


# ------------------------------------------------------- scoring a chunk, then merging


def chunk_caption_files(caption_set: str, set_manifest: Path,
                        shards: Sequence[str]) -> list[Path]:
    """The caption parquet of each of ``shards``, looked up in the set's manifest; a shard the
    set does not list, or whose file is gone, is a :class:`CaptionFileError` naming both."""
    listed = caption_set_shards(caption_set, set_manifest)
    files = []
    for shard in shards:
        if shard not in listed:
            raise CaptionFileError(f"caption set '{caption_set}' ({set_manifest}) lists no "
                                   f"caption file for shard {shard}")
        if not listed[shard].exists():
            raise CaptionFileError(f"caption set '{caption_set}' ({set_manifest}): the caption "
                                   f"file of shard {shard} is missing: {listed[shard]}")
        files.append(listed[shard])
    return files


def index_rows(index_path: Path, shards: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """``columns`` of the fetch index's fetched rows in ``shards``, read a batch at a time.

    Memory follows the rows returned, not the index: row groups whose shard range (parquet
    statistics; fetch_merge writes one run of groups per fetch job, whose shards share the
    job's prefix) holds none of the shards are skipped, the rest read INDEX_BATCH_ROWS rows at
    a time and filtered."""
    import bisect

    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = sorted(set(shards))
    file = open_streaming(index_path)
    position = file.schema_arrow.get_field_index("shard")
    groups = []
    for group in range(file.metadata.num_row_groups):
        stats = file.metadata.row_group(group).column(position).statistics
        if stats is not None and stats.has_min_max:
            first = bisect.bisect_left(wanted, stats.min)
            if first == len(wanted) or wanted[first] > stats.max:
                continue
        groups.append(group)
    read = list(dict.fromkeys([*columns, "shard", "status"]))
    value_set = pa.array(wanted, pa.string())
    batches = []
    if wanted and groups:
        for batch in stream_batches(file, INDEX_BATCH_ROWS, read, row_groups=groups):
            keep = pc.and_(pc.is_in(batch.column("shard"), value_set=value_set),
                           pc.equal(batch.column("status"), "fetched"))
            batches.append(batch.filter(pc.fill_null(keep, False)).select(list(columns)))
    if not batches:
        return file.schema_arrow.empty_table().select(list(columns)).to_pandas()
    return pa.Table.from_batches(batches).to_pandas()


def read_rows(path: Path, columns: Sequence[str], rows: np.ndarray) -> pd.DataFrame:
    """``columns`` of the given rows of a parquet file, in the order given, reading only the
    row groups that hold them (one at a time)."""
    file = pq.ParquetFile(path)
    rows = np.asarray(rows, dtype="int64")
    sizes = [file.metadata.row_group(g).num_rows for g in range(file.metadata.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype("int64")
    if len(rows) and (rows.min() < 0 or rows.max() >= starts[-1]):
        raise IndexError(f"{path}: rows outside 0..{starts[-1] - 1} asked for")
    group_of = np.searchsorted(starts, rows, side="right") - 1
    parts, order = [], []
    for group in np.unique(group_of):
        mine = np.flatnonzero(group_of == group)
        table = file.read_row_group(int(group), columns=list(columns))
        parts.append(table.take(rows[mine] - starts[group]).to_pandas())
        order.append(mine)
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    frame = pd.concat(parts, ignore_index=True)
    return frame.iloc[np.argsort(np.concatenate(order), kind="stable")].reset_index(drop=True)


def shipped_chunk_scores(index_path: Path, metadata_dir: Path, column: str,
                         shards: Sequence[str]) -> pd.Series:
    """uid -> the shipped score (``column``) of the fetched uids of ``shards`` only: their
    metadata part and row from the fetch index, then those rows of each part (not every
    part's uids and scores, as :func:`shipped_scores` reads)."""
    where = index_rows(index_path, shards, ["uid", "part", "row"])
    scores = []
    for part, rows in where.groupby("part", sort=True):
        path = Path(metadata_dir) / str(part)
        if column not in pq.read_schema(path).names:
            raise KeyError(f"{path}: no column '{column}' to take shipped scores from")
        found = read_rows(path, ["uid", column], rows["row"].to_numpy())
        wrong = found["uid"].to_numpy() != rows["uid"].to_numpy()
        if wrong.any():
            at = int(np.flatnonzero(wrong)[0])
            raise ValueError(f"{path}: row {int(rows['row'].iloc[at])} holds uid "
                             f"{found['uid'].iloc[at]}, the fetch index {index_path} says "
                             f"{rows['uid'].iloc[at]}")
        scores.append(pd.Series(found[column].to_numpy(dtype="float64"),
                                index=rows["uid"].to_numpy()))
    if not scores:
        return pd.Series(dtype="float64")
    return pd.concat(scores)


def score_chunk(pool: str, scorer_name: str, spec: Mapping[str, Any], caption_set: str,
                set_manifest: Path, images_manifest: Path, out_path: Path,
                settings: RunSettings, index_path: Path | None = None,
                metadata_dir: Path | None = None, scorer: Scorer | None = None) -> pd.DataFrame:
    """The score rule: one caption set on the shards of one embed_images chunk (those its
    manifest lists), shard by shard.

    Each shard's captions (found by shard in the set's manifest) are scored against that
    shard's image embeddings, so a job holds the scorer, one shard's text embeddings and the
    chunk's result rows, never the set. The raw captions' shipped score is read for the
    chunk's uids only (:func:`shipped_chunk_scores`). The parquet's metadata names the shards
    (score_merge checks they cover the set). A job that asked for a GPU and sees none fails
    first."""
    device = settings.torch_device(f"score {pool}/{scorer_name}/{caption_set}")
    images = json.loads(Path(images_manifest).read_text())
    shards = [entry["shard"] for entry in images["shards"]]
    embeddings = [Path(images_manifest).parent / entry["output"] for entry in images["shards"]]
    captions = chunk_caption_files(caption_set, set_manifest, shards)
    shipped_column = shipped_raw_column(spec, caption_set, metadata_dir)
    shipped = None
    if shipped_column and metadata_dir is not None:
        if index_path is None:
            raise ValueError(f"score {pool}/{scorer_name}/{caption_set}: the shipped "
                             f"'{shipped_column}' is looked up in the fetch index; none given")
        shipped = shipped_chunk_scores(index_path, metadata_dir, shipped_column, shards)
    elif scorer is None and shards:
        scorer = load_scorer(scorer_name, spec, device, settings.precision)
    progress = Progress(f"score {scorer_name} {caption_set}", len(shards),
                        sum(pq.read_metadata(f).num_rows for f in captions))
    frames = []
    for caption_file, embedding_file in zip(captions, embeddings, strict=True):
        frames.append(score_caption_set(scorer, [caption_file], [embedding_file], shipped,
                                        batch_size=settings.batch_size))
        progress.update(len(frames[-1]))
    frame = (pd.concat(frames, ignore_index=True) if frames else
             score_caption_set(scorer, [], [], shipped, batch_size=settings.batch_size))
    write_parquet_atomic(frame, out_path, {
        **set_tags(pool, scorer_name, caption_set, spec),
        "chunk": images.get("chunk"), "n_chunks": images.get("n_chunks"), "shards": shards,
        "shipped_raw_score": shipped_column if shipped is not None else None})
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
