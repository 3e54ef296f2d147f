"""Fetch: images of a pool into webdataset shards with img2dataset.

img2dataset does the downloading, resizing and sharding (DataComp's own
tool and settings). This module adds what a reproduction needs around it:

* **Rounds.** ``results/{pool}/shards/round_K/`` holds one img2dataset run.
  Round 0 covers the whole metadata; every later run of the fetch job covers
  only the rows that have not succeeded yet (DataComp's standard remedy for
  transient failures), so nothing that succeeded is ever downloaded again.
  A round killed part-way is resumed shard by shard (img2dataset's
  ``incremental`` mode) before any new round starts.
* **Accounting.** Afterwards every uid of the metadata is either fetched (with
  its round, shard and key) or failed with a reason, in ``index.parquet``,
  and ``report.json`` counts reasons and the success rate.

* **Parts.** A pool's metadata parts are fetched by ``n`` jobs (``pools[].jobs.fetch``),
  job ``i`` taking a contiguous run of parts (:func:`chunk_parts`) into its own shards
  directory, ``results/{pool}/shards/chunk{i}of{n}/round_K/``, with its own index and report;
  a job that fails does not stop the others and is re-run alone. :func:`merge_fetch` joins
  their indexes (shard paths relative to ``results/{pool}/shards``) and reports, a job at a
  time, into the pool's: the same accounting as one job fetching everything. The pool's
  index is ordered by shard (a job's rows sorted by shard, those never attempted last; jobs
  in order) in row groups of at most :data:`INDEX_ROW_GROUP_ROWS`, with a shard table beside
  it (``shards.parquet``: shard, fetched rows, metadata parts), so that a caption or
  embedding job reads only its own shards' rows (capmix.shards.plan_tasks).

The shards directory is deliberately *not* a Snakemake output: Snakemake
deletes outputs before re-running a job, which would throw away every image
already fetched. The job's outputs are the index and the report.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from capmix.chunks import contiguous_run
from capmix.fetch_reasons import RETRYABLE_REASONS, failure_reason
from capmix.provenance import provenance_record, write_json
from capmix.sources import metadata_parts, read_manifest

log = logging.getLogger(__name__)

ROUND_PREFIX = "round_"
#: img2dataset's defaults per format (PNG's "quality" is a 0-9 compression level).
DEFAULT_QUALITY = {"jpg": 95, "webp": 95, "png": 9}
ROUND_DONE = "_capmix_round.json"
FACE_BOX_COLUMN = "face_bboxes"
#: The fetch index's columns (build_index).
INDEX_SCHEMA = pa.schema([
    ("uid", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("error_message", pa.string()), ("round", pa.int64()), ("shard", pa.string()),
    ("key", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("attempts", pa.int64()), ("part", pa.string()), ("row", pa.int64())])
#: Rows per row group of the pool's fetch index (fetch_merge). Parquet keeps each row group's
#: min/max ``shard``, so a reader filtering on its shards skips the others: a per-shard job
#: reads its rows plus at most this many on either side (each fetch job's rows start new row
#: groups, so no row group spans two jobs' shard prefixes).
INDEX_ROW_GROUP_ROWS = 2 ** 20
#: Failure examples a fetch report keeps per reason.
EXAMPLES_PER_REASON = 3

#: The smallest side, in pixels, an image must have unless the config says otherwise: 0 for
#: DataComp pools (DataComp's own download sets none, so its pools stay comparable), this
#: for every other source (a 1x1 "image" is a tracking pixel, not a picture).
DEFAULT_MIN_IMAGE_SIZE = 10
#: The largest decoded image, in pixels, unless the config says otherwise: PIL's decompression-
#: bomb warning limit (~89.5 MP, e.g. 9,459 x 9,459); one such image decodes to ~270 MB.
DEFAULT_MAX_IMAGE_AREA = 89_478_485
#: The largest body one URL may send: 50 MB, far above an ordinary web image and small enough
#: that 64 download threads holding one each stay within a worker's memory.
DEFAULT_MAX_BODY_BYTES = 50_000_000
#: Seconds one URL may take in all (connect, headers, body), on top of ``timeout`` per read.
DEFAULT_DEADLINE = 60.0


@dataclass(frozen=True)
class FetchSettings:
    """img2dataset settings; the defaults are DataComp's."""

    image_size: int = 512
    resize_mode: str = "keep_ratio_largest"
    resize_only_if_bigger: bool = True
    encode_format: str = "jpg"
    encode_quality: int | None = None
    samples_per_shard: int = 10000
    retries: int = 2
    timeout: int = 10
    threads_per_process: int = 64
    blur_faces: str | bool = "auto"
    min_image_size: int = 0
    max_image_area: int = DEFAULT_MAX_IMAGE_AREA
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    deadline: float = DEFAULT_DEADLINE
    retry_reasons: tuple[str, ...] = RETRYABLE_REASONS
    #: Whether URLs (and redirects) may reach loopback, private or link-local addresses and
    #: any local file: the source's ``allow_local_urls`` (capmix.sourcespec.allows_local_urls).
    allow_internal_addresses: bool = False
    #: Without that: the absolute folders whose files file:// URLs may still read (a
    #: CaptionNet ``imagenet_dir``, capmix.sourcespec.local_file_roots); http(s) URLs keep the
    #: private-address guard.
    local_file_roots: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, fetch: Mapping[str, Any], source_type: str = "table",
                    allow_local_urls: bool = False) -> FetchSettings:
        """The pool's ``fetch`` config; unset bounds take their defaults for the source type.
        Its ``local_file_roots`` (the key the workflow adds for a pool with an imagenet_dir)
        are resolved here (the job's working directory), so that the fetch's workers compare
        absolute paths."""
        defaults = {
            "min_image_size": 0 if source_type == "datacomp" else DEFAULT_MIN_IMAGE_SIZE,
            "max_image_area": DEFAULT_MAX_IMAGE_AREA, "max_body_bytes": DEFAULT_MAX_BODY_BYTES,
            "deadline": DEFAULT_DEADLINE,
        }
        values = dict(fetch)
        local_file_roots = values.pop("local_file_roots", ())
        for key, default in defaults.items():
            if values.get(key) is None:
                values[key] = default
        values["retry_reasons"] = tuple(values.get("retry_reasons") or RETRYABLE_REASONS)
        return cls(**values, allow_internal_addresses=allow_local_urls,
                   local_file_roots=tuple(str(Path(r).resolve()) for r in local_file_roots))

    @property
    def quality(self) -> int:
        """img2dataset's encode_quality: a JPEG/WebP quality, or a PNG compression level."""
        if self.encode_quality is not None:
            return self.encode_quality
        return DEFAULT_QUALITY[self.encode_format]


def round_dirs(shards_dir: Path) -> list[Path]:
    rounds = [p for p in shards_dir.glob(f"{ROUND_PREFIX}*")
              if p.is_dir() and p.name[len(ROUND_PREFIX):].isdigit()]
    return sorted(rounds, key=lambda p: int(p.name[len(ROUND_PREFIX):]))


def round_is_complete(round_dir: Path) -> bool:
    return (round_dir / ROUND_DONE).exists()


def round_input(shards_dir: Path, k: int) -> Path:
    """Where a retry round's input (the rows not fetched yet) is written."""
    return shards_dir / "retry_inputs" / f"{ROUND_PREFIX}{k}"


def run_img2dataset(input_dir: Path, output_dir: Path, settings: FetchSettings, processes: int,
                    bbox_col: str | None) -> None:
    """One img2dataset run (resumes the shards of output_dir that are not finished).

    Each URL is downloaded under :class:`capmix.fetch_limits.UrlLimits` (body size, total
    deadline, header-checked image area): img2dataset builds its downloader from
    ``img2dataset.main.Downloader``, which is ours for the length of this call.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its update check needs the network
    from img2dataset import download

    # the module, not the function of the same name that img2dataset/__init__ exports
    img2dataset_main = importlib.import_module("img2dataset.main")

    from capmix.fetch_limits import GuardedDownloader, UrlLimits

    limits = UrlLimits(max_body_bytes=settings.max_body_bytes, deadline_s=settings.deadline,
                       max_image_area=settings.max_image_area,
                       allow_internal=settings.allow_internal_addresses,
                       local_roots=settings.local_file_roots)
    original = img2dataset_main.Downloader
    img2dataset_main.Downloader = functools.partial(GuardedDownloader, limits=limits)
    try:
        _download(download, input_dir, output_dir, settings, processes, bbox_col)
    finally:
        img2dataset_main.Downloader = original


def _download(download: Any, input_dir: Path, output_dir: Path, settings: FetchSettings,
              processes: int, bbox_col: str | None) -> None:
    download(
        url_list=str(input_dir),
        input_format="parquet",
        url_col="url",
        caption_col="text",
        save_additional_columns=["uid"],
        bbox_col=bbox_col,
        output_format="webdataset",
        output_folder=str(output_dir),
        processes_count=processes,
        thread_count=settings.threads_per_process,
        image_size=settings.image_size,
        resize_mode=settings.resize_mode,
        resize_only_if_bigger=settings.resize_only_if_bigger,
        encode_format=settings.encode_format,
        encode_quality=settings.quality,
        number_sample_per_shard=settings.samples_per_shard,
        retries=settings.retries,
        timeout=settings.timeout,
        enable_wandb=False,
        min_image_size=settings.min_image_size,
        max_image_area=settings.max_image_area,
        incremental_mode="incremental",
        distributor="multiprocessing",
    )


def read_round_status(round_dir: Path) -> pd.DataFrame:
    """All status rows of one round, with the shard each came from."""
    frames = []
    for status_file in sorted(round_dir.glob("*.parquet")):
        if not (round_dir / f"{status_file.stem}_stats.json").exists():
            continue  # shard still being written when the job was killed
        frame = pq.read_table(
            status_file, columns=["uid", "key", "status", "error_message", "width", "height"]
        ).to_pandas()
        frame["shard"] = f"{round_dir.name}/{status_file.stem}.tar"
        frames.append(frame)
    columns = ["uid", "key", "status", "error_message", "width", "height", "shard"]
    status = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    status["round"] = int(round_dir.name[len(ROUND_PREFIX):])
    return status


def shard_keys(tar_path: Path) -> set[str]:
    """Sample keys present in a webdataset tar (one per image file)."""
    with tarfile.open(tar_path) as tar:
        return {name.rsplit(".", 1)[0] for name in tar.getnames() if not name.endswith("/")}


def collect_attempts(shards_dir: Path) -> pd.DataFrame:
    """Every attempt of every finished shard, checked against the tar it names."""
    frames = [read_round_status(r) for r in round_dirs(shards_dir)]
    attempts = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["uid", "key", "status", "error_message", "width", "height", "shard", "round"])
    attempts["reason"] = [failure_reason(s, m) for s, m in
                          zip(attempts["status"], attempts["error_message"], strict=True)]
    for shard, rows in attempts[attempts["status"] == "success"].groupby("shard"):
        tar_path = shards_dir / shard
        keys = shard_keys(tar_path) if tar_path.exists() else set()
        lost = rows.index[~rows["key"].isin(keys)]
        attempts.loc[lost, ["status", "reason"]] = ["failed", "missing_in_shard"]
        attempts.loc[lost, "error_message"] = f"status says success but {shard} lacks the sample"
    return attempts


def chunk_parts(metadata_dir: Path, chunk: int, n_chunks: int) -> list[Path]:
    """The metadata parts fetch job ``chunk`` of ``n_chunks`` takes: the ``chunk``-th of
    ``n_chunks`` contiguous runs of the manifest's parts (none when there are more jobs than
    parts), so the jobs' indexes, joined in order, list the uids in metadata order."""
    return contiguous_run(metadata_parts(metadata_dir), chunk, n_chunks)


def metadata_uids(metadata_dir: Path, parts: Sequence[Path] | None = None) -> pd.DataFrame:
    """uid with its metadata part and row: where row-aligned extras (DataComp's npz) live
    (``parts``: these metadata parts only, default all)."""
    frames = [pd.DataFrame({"uid": pd.Series(dtype=object), "part": pd.Series(dtype=object),
                            "row": pd.Series(dtype="int64")})]
    for path in (metadata_parts(metadata_dir) if parts is None else parts):
        frame = pq.read_table(path, columns=["uid"]).to_pandas()
        frame["part"] = path.name
        frame["row"] = range(len(frame))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def build_index(uids: pd.DataFrame, attempts: pd.DataFrame) -> pd.DataFrame:
    """One row per metadata uid: fetched (first success) or failed (last failure)."""
    attempts = attempts.assign(ok=attempts["status"] == "success")
    ordered = attempts.sort_values(["uid", "ok", "round"], ascending=[True, False, False])
    best = ordered.drop_duplicates("uid", keep="first").set_index("uid")
    tries = attempts.groupby("uid").size()
    index = uids[["uid", "part", "row"]].join(best, on="uid")
    never = index["status"].isna()
    index.loc[never, "reason"] = "not_attempted"
    index["status"] = index["ok"].map({True: "fetched"}).fillna("failed")
    index["attempts"] = index["uid"].map(tries).fillna(0).astype("int64")
    index["round"] = index["round"].fillna(-1).astype("int64")
    columns = ["uid", "status", "reason", "error_message", "round", "shard", "key",
               "width", "height", "attempts", "part", "row"]
    return index[columns].reset_index(drop=True)


def pending_rows(metadata_dir: Path, fetched: set[str],
                 parts: Sequence[Path] | None = None) -> pd.DataFrame:
    """Metadata rows (only what img2dataset reads) whose uid has not been fetched."""
    manifest = read_manifest(metadata_dir)
    wanted = ["uid", "url", "text"] + ([FACE_BOX_COLUMN] if FACE_BOX_COLUMN in
                                       manifest["columns"] else [])
    frames = [pd.DataFrame(columns=wanted)]
    for part in (metadata_parts(metadata_dir) if parts is None else parts):
        frame = pq.read_table(part, columns=wanted).to_pandas()
        frames.append(frame[~frame["uid"].isin(fetched)])
    return pd.concat(frames, ignore_index=True)


def face_box_column(metadata_dir: Path, settings: FetchSettings) -> str | None:
    present = FACE_BOX_COLUMN in read_manifest(metadata_dir)["columns"]
    if settings.blur_faces is True and not present:
        raise ValueError(f"fetch.blur_faces is true but {metadata_dir} has no "
                         f"'{FACE_BOX_COLUMN}' column")
    return FACE_BOX_COLUMN if present and settings.blur_faces is not False else None


def first_round_input(metadata_dir: Path, shards_dir: Path,
                      parts: Sequence[Path] | None) -> Path | None:
    """Round 0's input: the metadata folder, or (a job fetching some of its parts) a folder of
    links to those parts; None when the job has no parts."""
    if parts is None or list(parts) == metadata_parts(metadata_dir):
        return Path(metadata_dir)
    if not parts:
        return None
    folder = round_input(shards_dir, 0)
    folder.mkdir(parents=True, exist_ok=True)
    for part in parts:
        link = folder / part.name
        if not link.exists():
            link.symlink_to(Path(part).resolve())
    return folder


def next_round(metadata_dir: Path, shards_dir: Path,
               retry_reasons: Sequence[str] = RETRYABLE_REASONS,
               parts: Sequence[Path] | None = None) -> tuple[int, Path] | None:
    """Which round to run now, and its input directory; None when nothing is left.

    An unfinished round is resumed; otherwise a new round covers the rows not fetched yet
    whose last failure is one of ``retry_reasons`` (all rows for round 0). The others keep
    their failure in the index. ``parts``: the metadata parts this job fetches (default all).
    """
    rounds = round_dirs(shards_dir)
    first = first_round_input(metadata_dir, shards_dir, parts)
    if first is None:
        return None
    if not rounds:
        return 0, first
    last = rounds[-1]
    k = int(last.name[len(ROUND_PREFIX):])
    if not round_is_complete(last):
        return k, (first if k == 0 else round_input(shards_dir, k))
    attempts = collect_attempts(shards_dir)
    fetched = set(attempts.loc[attempts["status"] == "success", "uid"])
    last = attempts[attempts["status"] != "success"].sort_values("round").drop_duplicates(
        "uid", keep="last")
    final = set(last.loc[~last["reason"].isin(retry_reasons), "uid"]) - fetched
    pending = pending_rows(metadata_dir, fetched | final, parts)
    if pending.empty:
        return None
    input_dir = round_input(shards_dir, k + 1)
    input_dir.mkdir(parents=True, exist_ok=True)
    tmp = input_dir / "pending.parquet.tmp"
    pending.to_parquet(tmp, index=False)
    os.replace(tmp, input_dir / "pending.parquet")
    return k + 1, input_dir


def fetch_pool(pool: str, metadata_dir: Path, shards_dir: Path, index_path: Path,
               report_path: Path, settings: FetchSettings, processes: int = 1,
               parts: Sequence[Path] | None = None) -> dict[str, Any]:
    """Run one fetch round (resume, first, or retry-the-failed) and account for every uid of
    the metadata ``parts`` (default all; :func:`chunk_parts` gives a fetch job's)."""
    metadata_dir, shards_dir = Path(metadata_dir), Path(shards_dir)
    shards_dir.mkdir(parents=True, exist_ok=True)
    bbox_col = face_box_column(metadata_dir, settings)
    step = next_round(metadata_dir, shards_dir, settings.retry_reasons, parts)
    if step is None:
        log.info("%s: nothing left to fetch (every uid is fetched, or failed for a reason "
                 "not in fetch.retry_reasons)", pool)
    else:
        k, input_dir = step
        round_dir = shards_dir / f"{ROUND_PREFIX}{k}"
        n_input = sum(pq.read_metadata(p).num_rows for p in sorted(input_dir.glob("*.parquet")))
        log.info("round %d: %d rows from %s -> %s", k, n_input, input_dir, round_dir)
        started = time.time()
        run_img2dataset(input_dir, round_dir, settings, processes, bbox_col)
        status = read_round_status(round_dir)
        write_json(round_dir / ROUND_DONE, {
            "round": k, "input": str(input_dir), "n_input": n_input,
            "n_success": int((status["status"] == "success").sum()),
            "seconds": round(time.time() - started, 2), "settings": asdict(settings),
        })

    attempts = collect_attempts(shards_dir)
    index = build_index(metadata_uids(metadata_dir, parts), attempts)
    index_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_name(index_path.name + ".tmp")
    # a fixed schema, so that the indexes of jobs with nothing fetched (or nothing at all)
    # join the others'
    pq.write_table(pa.Table.from_pandas(index, schema=INDEX_SCHEMA, preserve_index=False), tmp)
    os.replace(tmp, index_path)
    report = fetch_report(pool, metadata_dir, shards_dir, index, attempts, settings)
    report["metadata_parts"] = [p.name for p in (metadata_parts(metadata_dir)
                                                 if parts is None else parts)]
    write_json(report_path, report)
    log.info("%s: %d/%d fetched (%.1f%%); failures by reason: %s", pool, report["n_fetched"],
             report["n_total"], 100 * report["success_rate"], report["failures_by_reason"])
    return report


def shard_ordered(index: pa.Table) -> pa.Table:
    """A fetch job's index rows ordered by shard path (a failed row has the shard of its last
    attempt), the rows never attempted (no shard) last; a stable sort, so a shard's rows keep
    their metadata order."""
    import pyarrow.compute as pc

    order = pc.sort_indices(index, sort_keys=[("shard", "ascending", "at_end")])
    return index.take(order)


def shard_table(index: pa.Table) -> pa.Table:
    """One row per shard of a shard-ordered index (:func:`shard_ordered`), in its order:
    shard, its fetched rows, the metadata parts they come from (sorted)."""
    import pyarrow.compute as pc

    from capmix.shards import SHARD_TABLE_SCHEMA

    fetched = index.filter(pc.equal(index.column("status"), "fetched"))
    grouped = fetched.group_by("shard", use_threads=False).aggregate(
        [("uid", "count"), ("part", "distinct")]).sort_by("shard")
    return pa.table({
        "shard": grouped.column("shard").cast(pa.string()),
        "n_fetched": grouped.column("uid_count").cast(pa.int64()),
        "parts": pa.array([sorted(p for p in parts if p is not None)
                           for parts in grouped.column("part_distinct").to_pylist()],
                          pa.list_(pa.string())),
    }, schema=SHARD_TABLE_SCHEMA)


def write_chunk_list(chunks: Sequence[str], index_paths: Sequence[str | Path],
                     report_paths: Sequence[str | Path], path: Path) -> None:
    """The fetch_gather rule: which index and report each fetch job wrote, in job order.

    Why a job of its own: fetch_merge's outputs are read by every caption, embed_images and
    score job, and Snakemake compares each file a job reads with every input of the job
    that makes it, so fetch_merge must have few inputs (this list) however many fetch jobs
    there are."""
    if not len(chunks) == len(index_paths) == len(report_paths):
        raise ValueError(f"fetch_gather: {len(chunks)} jobs but {len(index_paths)} indexes and "
                         f"{len(report_paths)} reports")
    write_json(path, {"chunks": [{"chunk": c, "index": str(i), "report": str(r)}
                                 for c, i, r in zip(chunks, index_paths, report_paths,
                                                    strict=True)]})


def read_chunk_list(path: Path) -> tuple[list[str], list[Path], list[Path]]:
    """The jobs, indexes and reports of a fetch_gather list; a missing file is named."""
    entries = json.loads(Path(path).read_text())["chunks"]
    for entry in entries:
        for key in ("index", "report"):
            if not Path(entry[key]).exists():
                raise FileNotFoundError(f"{path}: fetch job {entry['chunk']}'s {key} "
                                        f"{entry[key]} is missing; re-run that fetch job")
    return ([e["chunk"] for e in entries], [Path(e["index"]) for e in entries],
            [Path(e["report"]) for e in entries])


def merge_fetch(pool: str, chunks: Sequence[str], index_paths: Sequence[Path],
                report_paths: Sequence[Path], index_path: Path,
                report_path: Path) -> dict[str, Any]:
    """The fetch_merge rule: the fetch jobs' indexes joined, a job at a time, into the pool's
    (each shard path prefixed with the job's folder, so that it is relative to
    ``results/{pool}/shards``), and their reports into one that counts as a single job would.

    The index is written ordered by shard: each job's rows sorted by shard (one job's index
    is in memory anyway), the jobs in order (their shard paths are prefixed with the job's
    name, so whatever the jobs' names sort like, each row group, never spanning two jobs,
    covers a tight range of paths), in row groups of :data:`INDEX_ROW_GROUP_ROWS`; the shard
    table beside it (capmix.shards.SHARD_TABLE_NAME) lists the shards in that order."""
    import pyarrow.compute as pc

    from capmix.shards import SHARD_TABLE_SCHEMA, shard_table_path, unified_schema

    schema = unified_schema(index_paths)
    tmp = index_path.with_name(index_path.name + ".tmp")
    index_path.parent.mkdir(parents=True, exist_ok=True)
    tables = []
    with pq.ParquetWriter(tmp, schema) as writer:
        for chunk, path in zip(chunks, index_paths, strict=True):
            table = pq.read_table(path).cast(schema)
            shard = table.column("shard").cast(pa.string())
            prefixed = pc.binary_join_element_wise(pa.scalar(chunk), shard, "/")
            table = shard_ordered(table.set_column(table.schema.get_field_index("shard"),
                                                   "shard", prefixed))
            # Rows with a shard, then those without (never attempted), in row groups of their
            # own: a row group mixing paths and nulls could not be skipped by a filter on its
            # paths (pyarrow cannot rule out `shard in (...)` when statistics allow nulls).
            # A job without parts adds no (empty, statistics-free) row group.
            with_shard = table.num_rows - table.column("shard").null_count
            for rows in (table.slice(0, with_shard), table.slice(with_shard)):
                if rows.num_rows:
                    writer.write_table(rows, row_group_size=INDEX_ROW_GROUP_ROWS)
            tables.append(shard_table(table))
    shards_path = shard_table_path(index_path)
    shards_tmp = shards_path.with_name(shards_path.name + ".tmp")
    pq.write_table(pa.concat_tables(tables) if tables else SHARD_TABLE_SCHEMA.empty_table(),
                   shards_tmp)
    os.replace(shards_tmp, shards_path)
    os.replace(tmp, index_path)
    reports = [json.loads(Path(p).read_text()) for p in report_paths]
    n_total = sum(r["n_total"] for r in reports)
    n_fetched = sum(r["n_fetched"] for r in reports)
    reasons: dict[str, int] = {}
    examples: dict[str, list[dict[str, Any]]] = {}
    for report in reports:  # in metadata order: the first examples are a single job's
        for reason, count in report["failures_by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + count
        for reason, rows in report["failure_examples"].items():
            kept = examples.setdefault(reason, [])
            kept += rows[:EXAMPLES_PER_REASON - len(kept)]
    merged = {
        "pool": pool,
        "toy": any(r["toy"] for r in reports),
        "n_total": n_total, "n_fetched": n_fetched,
        "n_failed": sum(r["n_failed"] for r in reports),
        "success_rate": n_fetched / n_total if n_total else 0.0,
        "failures_by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "failure_examples": examples,
        "attempts": sum(r["attempts"] for r in reports),
        "rounds": {chunk: r["rounds"] for chunk, r in zip(chunks, reports, strict=True)},
        "shards": [{**s, "path": f"{chunk}/{s['path']}"}
                   for chunk, r in zip(chunks, reports, strict=True) for s in r["shards"]],
        "jobs": [{"job": chunk, "metadata_parts": r.get("metadata_parts", []),
                  "n_total": r["n_total"], "n_fetched": r["n_fetched"]}
                 for chunk, r in zip(chunks, reports, strict=True)],
        "settings": reports[0]["settings"] if reports else {},
        "provenance": provenance_record("fetch_merge", inputs=[*index_paths, *report_paths],
                                        params={"jobs": list(chunks)}),
    }
    write_json(report_path, merged)
    log.info("%s: %d/%d fetched by %d job(s)", pool, n_fetched, n_total, len(chunks))
    return merged


def fetch_report(pool: str, metadata_dir: Path, shards_dir: Path, index: pd.DataFrame,
                 attempts: pd.DataFrame, settings: FetchSettings) -> dict[str, Any]:
    failed = index[index["status"] == "failed"]
    examples = {
        reason: rows.head(EXAMPLES_PER_REASON)[["uid", "error_message"]].to_dict("records")
        for reason, rows in failed.groupby("reason")
    }
    rounds = []
    for round_dir in round_dirs(shards_dir):
        done = round_dir / ROUND_DONE
        rounds.append(json.loads(done.read_text()) if done.exists()
                      else {"round": int(round_dir.name[len(ROUND_PREFIX):]), "complete": False})
    fetched = index[index["status"] == "fetched"]
    shards = fetched.groupby("shard").size().sort_index()
    manifest = read_manifest(metadata_dir)
    return {
        "pool": pool,
        "toy": bool(manifest.get("toy", False)),
        "n_total": int(len(index)),
        "n_fetched": int(len(fetched)),
        "n_failed": int(len(failed)),
        "success_rate": float(len(fetched) / len(index)) if len(index) else 0.0,
        "failures_by_reason": {k: int(v) for k, v in failed["reason"].value_counts().items()},
        "failure_examples": examples,
        "attempts": int(len(attempts)),
        "rounds": rounds,
        "shards": [{"path": s, "samples": int(n)} for s, n in shards.items()],
        "settings": asdict(settings),
        "provenance": provenance_record(
            "fetch", inputs=[Path(metadata_dir) / "manifest.json"],
            params={"settings": asdict(settings)}, packages=("img2dataset", "webdataset")),
    }
