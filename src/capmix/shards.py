"""Reading fetched webdataset shards, and per-shard outputs that resume safely.

Every per-image stage after the fetch (captioning, image embeddings) works shard
by shard: it reads one img2dataset tar, writes one output file per shard
atomically (temp file + rename), and on a re-run skips shards whose output is
complete. A shard's output counts as complete only if it holds exactly the
uids the fetch index lists for that shard, so a partial file can never pass.

A stage's job ``i`` of ``n`` takes the ``i``-th of ``n`` contiguous runs of the pool's
shards, balanced by fetched rows (:func:`chunk_bounds`), in the order of the shard table
``fetch_merge`` writes beside the index (:data:`SHARD_TABLE_NAME`). The index is ordered by
shard in bounded row groups, so a job reads the rows of its own shards only: a filter on
``shard`` skips every row group whose min/max statistics exclude them
(:func:`fetched_rows`). A job's memory follows its shards' rows, not the pool's.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from capmix.parquetio import stream_batches
from capmix.provenance import write_parquet_atomic  # noqa: F401 - re-exported

if TYPE_CHECKING:
    import pyarrow.dataset as ds

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

#: Where torch's DataLoader workers put the batches they hand over (POSIX shared memory).
SHM_DIR = Path("/dev/shm")
#: The largest image a fetch stores (DataComp's img2dataset image_size, keep_ratio_largest):
#: the blank image a transform's output size is measured on.
PROBE_IMAGE_SIZE = 512
#: The shard table's file name: beside the pool's fetch index (``results/{pool}/fetch/``),
#: written with it by fetch_merge (capmix.fetch.merge_fetch); the workflow's
#: ``FETCH_SHARD_TABLE`` names the same file.
SHARD_TABLE_NAME = "shards.parquet"
#: One row per shard with fetched images, in the index's row order: its path (relative to
#: the shards dir), how many fetched rows the index lists in it, and the metadata parts they
#: come from (one for a first round's shard; a retry round's may draw on several).
SHARD_TABLE_SCHEMA = pa.schema([("shard", pa.string()), ("n_fetched", pa.int64()),
                                ("parts", pa.list_(pa.string()))])
#: Fetched rows per range when one job walks a whole pool range by range (raw_captions).
ROWS_PER_RANGE = 1_000_000


class ShardError(ValueError):
    """A shard that does not match the fetch index (missing or empty); names the shard."""



def listed_shard_files(manifest_paths: Sequence[Path | str]) -> list[Path]:
    """The per-shard output files a stage's chunk manifests list (``shards[].output``, relative
    to the manifest): the caption parquets of a caption set, the npz of image embeddings."""
    files = []
    for path in manifest_paths:
        manifest = json.loads(Path(path).read_text())
        files += [Path(path).parent / entry["output"] for entry in manifest["shards"]]
    return files

def unified_schema(files: Sequence[Path], columns: Sequence[str] | None = None) -> pa.Schema:
    """One schema for ``columns`` (default: all) of per-shard or per-part parquet files that
    are to be concatenated: a column that is all null in one file takes its type from the
    others. A file without one of the columns is a KeyError naming it."""
    schemas = []
    for path in files:
        schema = pq.read_schema(path)
        wanted = list(columns) if columns is not None else schema.names
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            raise KeyError(f"{path}: no column(s) {missing}")
        schemas.append(pa.schema([schema.field(c) for c in wanted]).remove_metadata())
    if not schemas:
        raise FileNotFoundError("no files to read a schema from")
    return pa.unify_schemas(schemas, promote_options="default")


@dataclass(frozen=True)
class Sample:
    key: str
    uid: str
    image: bytes
    text: str


@dataclass(frozen=True)
class ShardTask:
    """One fetched shard and where its output goes."""

    shard: str  # relative to the shards dir, e.g. "round_0/00003.tar"
    tar: Path
    output: Path
    uids: tuple[str, ...]  # what the fetch index says the shard holds


def stable_seed(*keys: object) -> int:
    """A 63-bit seed from any keys; identical across runs, machines and Python versions."""
    digest = hashlib.sha256("\x1f".join(map(str, keys)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def fetched_by_shard(index_path: Path) -> dict[str, list[str]]:
    """shard -> uids fetched into it, from the whole fetch index (train_shards' reshard;
    per-shard stages plan with :func:`plan_tasks`, which reads their shards' rows only)."""
    index = pq.read_table(index_path, columns=["uid", "status", "shard"]).to_pandas()
    fetched = index[index["status"] == "fetched"].sort_values(["shard", "uid"])
    return {shard: rows["uid"].tolist() for shard, rows in fetched.groupby("shard", sort=True)}


def shard_table_path(index_path: Path) -> Path:
    """Where fetch_merge puts the shard table of ``index_path``: beside it."""
    return Path(index_path).with_name(SHARD_TABLE_NAME)


def read_shard_table(index_path: Path) -> pa.Table:
    """shard and n_fetched of every shard, in the index's row order (the order chunks are cut
    from). The table beside the index when there is one; otherwise (a single fetch job's
    index, or one merged before the table existed) counted from the index's ``status`` and
    ``shard`` columns a row group at a time (memory: one row group and the shard counts),
    sorted by path."""
    path = shard_table_path(index_path)
    if path.exists():
        table = pq.read_table(path, columns=["shard", "n_fetched"])
        missing = {"shard", "n_fetched"} - set(table.column_names)
        if missing:
            raise ShardError(f"{path}: shard table without column(s) {sorted(missing)}")
        return table
    log.info("%s: no shard table beside the index (fetch_merge writes %s); counting its "
             "shards", index_path, SHARD_TABLE_NAME)
    counts: Counter[str] = Counter()
    for batch in stream_batches(index_path, columns=["status", "shard"]):
        shards = batch.column("shard").filter(pc.equal(batch.column("status"), "fetched"))
        for entry in pc.value_counts(shards).to_pylist():
            counts[entry["values"]] += entry["counts"]
    ordered = sorted(counts)
    return pa.table({"shard": pa.array(ordered, pa.string()),
                     "n_fetched": pa.array([counts[s] for s in ordered], pa.int64())})


def chunk_bounds(n_fetched: Sequence[int], n_chunks: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each of ``n_chunks`` contiguous runs of shards whose fetched rows
    are ``n_fetched`` (in order). A shard goes to the chunk whose share of the rows holds its
    middle row, so every shard is in exactly one chunk and a chunk holds its ``1/n_chunks``
    of the rows within one shard's rows either way; with more chunks than shards some runs
    are empty."""
    if n_chunks < 1:
        raise ValueError(f"n_chunks must be at least 1, not {n_chunks}")
    counts = np.asarray(n_fetched, dtype="int64")
    if len(counts) and (counts < 0).any():
        raise ValueError("a shard's count of fetched rows is negative")
    if not len(counts):
        return [(0, 0)] * n_chunks
    weights = counts if counts.sum() > 0 else np.ones_like(counts)
    total = int(weights.sum())
    middle2 = 2 * np.cumsum(weights) - weights  # twice each shard's middle row
    owner = np.minimum(middle2 * n_chunks // (2 * total), n_chunks - 1)
    starts = np.searchsorted(owner, np.arange(n_chunks), side="left")
    stops = np.searchsorted(owner, np.arange(n_chunks), side="right")
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def chunk_shard_table(index_path: Path, chunk: int, n_chunks: int) -> pa.Table:
    """The rows of the shard table that chunk ``chunk`` of ``n_chunks`` takes."""
    if not 0 <= chunk < n_chunks:
        raise ValueError(f"chunk {chunk} is outside 0..{n_chunks - 1}")
    table = read_shard_table(index_path)
    start, stop = chunk_bounds(table.column("n_fetched").to_numpy(), n_chunks)[chunk]
    return table.slice(start, stop - start)


def fetched_rows(index_path: Path, shards: Sequence[str], columns: Sequence[str],
                 index: ds.Dataset | None = None) -> pa.Table:
    """``columns`` of the fetched rows of these shards, and of no others.

    A filter on ``shard``: parquet skips each row group whose min/max ``shard`` statistics
    hold none of them (fetch_merge writes the index ordered by shard in row groups of
    ``capmix.fetch.INDEX_ROW_GROUP_ROWS``), so a job reads its rows plus at most a row group
    at either end, never the whole index. On an index that is not ordered (a single fetch
    job's) the filter still keeps only these rows, a batch at a time. One thread and no
    read-ahead: what a job holds is its rows and the row group being decoded. ``index``: the
    index opened once by a caller that reads it range by range (its footer parsed once)."""
    import pyarrow.dataset as ds

    if not shards:
        return pq.read_schema(index_path).empty_table().select(list(columns))
    wanted = pc.field("shard").isin(list(shards)) & (pc.field("status") == "fetched")
    index = index if index is not None else ds.dataset(index_path, format="parquet")
    return index.to_table(
        columns=list(columns), filter=wanted, use_threads=False, batch_readahead=1,
        fragment_readahead=1)


def tasks_for(index_path: Path, shard_table: pa.Table, shards_dir: Path, out_dir: Path,
              suffix: str, index: ds.Dataset | None = None) -> list[ShardTask]:
    """The tasks of these shard-table rows, in their order, each with its uids sorted; the
    index must list as many fetched rows per shard as the table says (a stale or foreign
    table is an error naming both files)."""
    shards = shard_table.column("shard").to_pylist()
    expected = dict(zip(shards, shard_table.column("n_fetched").to_pylist(), strict=True))
    rows = fetched_rows(index_path, shards, ["uid", "shard"], index).sort_by(
        [("shard", "ascending"), ("uid", "ascending")])
    # the sorted rows sliced at the ends of the runs of equal shards, not grouped
    runs = pc.run_end_encode(rows.column("shard").combine_chunks())
    uids: dict[str, tuple[str, ...]] = {}
    start = 0
    for shard, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
        uids[shard] = tuple(rows.column("uid").slice(start, end - start).to_pylist())
        start = end
    for shard in shards:
        found = len(uids.get(shard, ()))
        if found != expected[shard]:
            raise ShardError(
                f"{index_path}: shard {shard} has {found} fetched row(s) but "
                f"{shard_table_path(index_path)} says {expected[shard]}; re-run fetch_merge "
                "(the shard table and the index are written together)")
    return [ShardTask(shard, shards_dir / shard, out_dir / Path(shard).with_suffix(suffix),
                      uids[shard]) for shard in shards]


def plan_tasks(index_path: Path, shards_dir: Path, out_dir: Path, suffix: str,
               chunk: int = 0, n_chunks: int = 1) -> list[ShardTask]:
    """The shards of one chunk: the ``chunk``-th of ``n_chunks`` contiguous runs of the
    shard table (balanced by fetched rows), read from the index's rows of those shards only.
    Their outputs do not depend on the chunk, so a re-run with any chunking resumes."""
    return tasks_for(index_path, chunk_shard_table(index_path, chunk, n_chunks), shards_dir,
                     out_dir, suffix)


def plan_ranges(index_path: Path, shards_dir: Path, out_dir: Path, suffix: str,
                rows_per_range: int = ROWS_PER_RANGE) -> Iterator[list[ShardTask]]:
    """Every shard of the pool, as consecutive ranges of about ``rows_per_range`` fetched
    rows: a job that walks the whole pool (raw_captions) holds one range's uids at a time."""
    import pyarrow.dataset as ds

    index = ds.dataset(index_path, format="parquet")
    table = read_shard_table(index_path)
    total = int(pc.sum(table.column("n_fetched")).as_py() or 0)
    n_ranges = max(1, -(-total // rows_per_range))
    for start, stop in chunk_bounds(table.column("n_fetched").to_numpy(), n_ranges):
        if stop > start:
            yield tasks_for(index_path, table.slice(start, stop - start), shards_dir, out_dir,
                            suffix, index)


def read_shard(task: ShardTask) -> list[Sample]:
    """The samples of a shard tar, checked against the fetch index."""
    if not task.tar.exists():
        raise ShardError(f"{task.tar}: shard listed in the fetch index is missing")
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(task.tar) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rpartition(".")
            handle = tar.extractfile(member)
            if handle is not None:
                members.setdefault(key, {})["." + ext.lower()] = handle.read()
    samples = []
    for key in sorted(members):
        files = members[key]
        image = next((files[s] for s in IMAGE_SUFFIXES if s in files), None)
        meta = json.loads(files[".json"]) if ".json" in files else {}
        if image is None or "uid" not in meta:
            continue
        text = files.get(".txt", b"").decode("utf-8", errors="replace")
        samples.append(Sample(key, meta["uid"], image, text))
    if not samples:
        raise ShardError(f"{task.tar}: shard is empty (the fetch index lists {len(task.uids)} "
                         "samples in it)")
    missing = set(task.uids) - {s.uid for s in samples}
    if missing:
        raise ShardError(f"{task.tar}: {len(missing)} uid(s) of the fetch index are not in the "
                         f"shard, e.g. {sorted(missing)[:3]}")
    wanted = set(task.uids)
    return [s for s in samples if s.uid in wanted]


class ShardImages:
    """Decode + preprocess one shard's images in DataLoader workers.

    A plain map-style dataset (``__len__``/``__getitem__`` is all torch's DataLoader needs):
    this module stays free of torch, so CPU-only stages (resharding) start fast.

    Returns (position, tensor, error); an image that does not decode yields
    ``None`` and its error, recorded per uid by the caller, never a crash.
    """

    def __init__(self, samples: Sequence[Sample], preprocess: Callable[[Image.Image], Any]):
        self.samples = samples
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        try:
            with Image.open(io.BytesIO(self.samples[i].image)) as image:
                return i, self.preprocess(image.convert("RGB")), None
        except Exception as error:  # noqa: BLE001 - any decode failure is recorded per uid
            return i, None, f"{type(error).__name__}: {error}"


def collate(
    batch: list[tuple[int, Any, str | None]],
) -> tuple[list[int], Any, list[tuple[int, str]]]:
    """Stack the decodable images; pass failures through with their positions."""
    good = [(i, x) for i, x, err in batch if err is None]
    failed = [(i, err) for i, _, err in batch if err is not None]
    import torch

    stacked = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], stacked, failed


def shard_loader(samples: Sequence[Sample], preprocess: Callable[[Image.Image], Any],
                 batch_size: int, workers: int, prefetch_factor: int) -> Any:
    """The DataLoader of one shard: decoding and preprocessing in ``workers`` processes."""
    from torch.utils.data import DataLoader

    # torch refuses a prefetch_factor without worker processes.
    return DataLoader(ShardImages(samples, preprocess), batch_size=batch_size,
                      num_workers=workers, collate_fn=collate, persistent_workers=False,
                      prefetch_factor=prefetch_factor if workers > 0 else None)


class SharedMemoryError(RuntimeError):
    """The DataLoader's batches in flight would not fit in /dev/shm; names the settings."""


def loader_shared_bytes(workers: int, prefetch_factor: int, batch_images: int,
                        image_bytes: int) -> int:
    """Bytes of pixel batches a DataLoader holds in shared memory at its peak.

    Each worker keeps ``prefetch_factor`` batches in flight, and each batch a worker
    hands over travels as a shared-memory tensor (torch moves it to /dev/shm to pass
    it between processes); the batch the model is working on is still there too,
    hence the ``+ 1``. Without workers nothing is shared.
    """
    if workers == 0:
        return 0
    return (workers * prefetch_factor + 1) * batch_images * image_bytes


def check_shared_memory(needed: int, free: int, section: str, shm_dir: Path = SHM_DIR) -> None:
    """Fail before the first batch when the DataLoader's batches will not fit in /dev/shm.

    Otherwise a worker dies mid-shard with a bus error (or "No space left on device")
    once /dev/shm fills up, hours into a job. ``section`` is the config section whose
    settings size the loader (``caption`` or ``score``).
    """
    if needed > free:
        gib = 2 ** 30
        raise SharedMemoryError(
            f"{section}: the DataLoader would hold {needed / gib:.1f} GiB of image batches in "
            f"shared memory ({shm_dir}) but only {free / gib:.1f} GiB is free; lower "
            f"{section}.workers, {section}.prefetch_factor or {section}.batch_size (or ask "
            f"for a node with a larger {shm_dir})")


def image_bytes(preprocess: Callable[[Image.Image], Any]) -> int:
    """Bytes of one preprocessed image: the transform's output for the largest fetched image
    (the model transforms here resize to a fixed size, so this is every image's size)."""
    pixels = preprocess(Image.new("RGB", (PROBE_IMAGE_SIZE, PROBE_IMAGE_SIZE)))
    return int(pixels.numel() * pixels.element_size())


def check_loader_fits(preprocess: Callable[[Image.Image], Any], batch_images: int, workers: int,
                      prefetch_factor: int, section: str, shm_dir: Path = SHM_DIR) -> int:
    """At job start: the loader's shared-memory need against /dev/shm's free space.

    Returns the bytes needed (0 without workers); raises :class:`SharedMemoryError`
    when they do not fit. Where there is no /dev/shm (macOS), nothing is checked.
    """
    needed = loader_shared_bytes(workers, prefetch_factor, batch_images, image_bytes(preprocess))
    if needed == 0:
        return 0
    try:
        free = shutil.disk_usage(shm_dir).free
    except FileNotFoundError:
        log.info("%s: no %s to check the DataLoader's %.2f GiB against", section, shm_dir,
                 needed / 2 ** 30)
        return needed
    check_shared_memory(needed, free, section, shm_dir)
    log.info("%s: DataLoader batches in shared memory: up to %.2f GiB of %.2f GiB free in %s",
             section, needed / 2 ** 30, free / 2 ** 30, shm_dir)
    return needed


def is_complete(path: Path, uids: Sequence[str]) -> bool:
    """A shard output is complete if it exists, reads, and holds exactly these uids."""
    if not path.exists():
        return False
    try:
        done = pq.read_table(path, columns=["uid"]).column("uid").to_pylist()
    except (OSError, pa.ArrowException):
        return False
    return sorted(done) == sorted(uids)


class Progress:
    """Shards done, items/s and ETA in the job log."""

    def __init__(self, what: str, total_shards: int, total_items: int):
        self.what, self.total_shards, self.total_items = what, total_shards, total_items
        self.start = time.perf_counter()
        self.shards = self.items = 0

    def update(self, items: int, skipped: bool = False) -> None:
        """Count a finished shard; a skipped (already complete) one only shortens the ETA."""
        self.shards += 1
        if skipped:
            self.total_items -= items
        else:
            self.items += items
        elapsed = time.perf_counter() - self.start
        rate = self.items / elapsed if elapsed > 0 else 0.0
        left = max(self.total_items - self.items, 0)
        eta = left / rate if rate > 0 else float("nan")
        log.info("%s: %d/%d shards, %d images, %.1f images/s, ETA %.0f s", self.what, self.shards,
                 self.total_shards, self.items, rate, eta)
