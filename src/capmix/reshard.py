"""Resharding: the webdataset training shards of one filtering/mixing strategy.

A strategy (e.g. "top 30% by CLIP score with raw captions", or the paper's
"top % raw captions + top % BLIP2 captions") is a table of training samples:
one row per sample with its uid, the caption the strategy chose for it and
that caption's source. Training (open_clip_train) reads webdataset tars, so
the chosen samples must be copied out of the fetched pool into shards of their
own, each sample carrying its chosen caption in ``txt``.

DataComp's ``resharder.py`` does the copying from a file of uids only: it keeps
whatever text the source shard holds, and a uid can appear at most once. It
therefore cannot carry a per-sample chosen caption, nor repeat an image with
two captions (the same image once with its raw caption and once with a
synthetic one). This module does that, on top of webdataset's ``TarWriter``:

* **Plan.** Samples are grouped by the pool shard that holds their image
  (sorted shard order); walking those shards in order, an output group is
  closed once it holds >= ``samples_per_shard`` samples, so every pool shard is
  read by exactly one writer. Output shards are ``00000.tar``, ``00001.tar``,
  ... (more digits past 100,000 shards, so one brace range still names them);
  within one, samples are ordered by (pool shard, uid, occurrence).
* **Samples.** ``__key__`` is the uid for a uid's first occurrence in the samples
  table and ``{uid}_{n}`` for its n-th later one; the image keeps its original
  bytes and extension (``.jpeg`` is written as ``jpg``, which every webdataset
  reader of ``"jpg;png;webp"`` accepts); ``txt`` is the chosen caption; ``json``
  holds uid, caption_source, part and raw_text (the text stored in the pool shard).
* **Resume.** Each writer job keeps ``plans/chunk{i}of{n}.json`` in the output
  directory: the sha256 of its plan (its output shards and every sample in them)
  and its shards. A re-run with the same plan keeps the shards that are complete
  (the tar reads and holds the planned number of samples) and writes only the
  missing or partial ones; a changed plan rewrites all the job's shards. Every
  shard is written to a temporary name and renamed into place, with a fixed tar
  mtime, so the same plan always gives byte-identical shards, whatever the number
  of workers or jobs.
* **Outputs.** ``sizes.json`` next to the shards (open_clip_train's
  ``get_dataset_size`` reads it) and a manifest, written last, with counts,
  the ``--train-data`` brace pattern and provenance.

**Held in parts** (``pools[].jobs.train_shards`` = n > 1; issue 18: at DataComp large a
subset is up to ~400M samples with their captions, the fetch index 1.28B rows). No job
reads the fetch index: the mix table carries each image's pool shard (``shard``, from the
index, joined part by part in ``mix_table_part``) and a subset's ``samples.parquet`` keeps
it. Then a map and a reduce, each a Snakemake rule:

1. :func:`scatter_samples` (``train_shards_scatter``) reads ``samples.parquet`` a row group
   at a time (a row group is one part of the mix table): first only ``shard`` to count the
   samples per pool shard, from which it plans the output shards exactly as one job would
   (:func:`plan_layout`, the grouping above, global names), and cuts them into n contiguous
   runs of about equal samples, job i the i-th run (so a run of pool shards, in sorted
   order); then every row again, appended to its job's file, in the table's order (a uid's
   rows all lie in one pool shard, so its occurrence numbers are the one job's). Memory: a
   row group, and one count per pool shard.
2. :func:`run_reshard_job` (``train_shards_part``, one job per run, in parallel) reads its
   file only, orders and keys its samples, and writes its output shards, reading only its
   pool shards' tars. Memory: its samples (about 1/n of the subset). Resumable on its own.
3. :func:`finish_reshard` (``train_shards``) joins the jobs' reports: ``sizes.json`` of every
   shard, stale shards of older plans removed, the manifest. Training reads it unchanged.

The shards of n jobs are those one job writes, byte for byte and by name: the layout is the
one job's, and a shard's bytes depend only on its samples. With one job (the toy world, the
default) a single ``train_shards`` job does all three in memory (:func:`reshard`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import webdataset as wds

from capmix.chunks import chunk_name, chunk_names, parse_chunk
from capmix.parquetio import stream_batches
from capmix.provenance import write_json
from capmix.shards import IMAGE_SUFFIXES, ShardTask, fetched_by_shard, read_shard
from capmix.train import train_data_spec

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("uid", "caption", "source", "part")
#: The samples' column naming each image's pool shard (capmix.mix.SHARD_COLUMN).
SHARD = "shard"
SAMPLE_COLUMNS = (*REQUIRED_COLUMNS, SHARD)
PLANS_DIR = "plans"
SIZES_FILE = "sizes.json"
LAYOUT_FILE = "layout.json"
TMP_SUFFIX = ".tmp"
PLAN_FORMAT = 2
#: Fixed member mtime, so the same plan always writes byte-identical tars. An int: tarfile
#: writes a PAX header for every member whose mtime is a float, which doubles the headers
#: open_clip_train parses per sample (measured: half its data-loading time on the toy world).
TAR_MTIME = 0
#: Members per written sample: image, txt, json.
MEMBERS_PER_SAMPLE = 3
#: Output shard names have at least this many digits (``00000.tar``).
NAME_DIGITS = 5
#: Rows read from samples.parquet at a time while scattering (a row group is read whole by
#: pyarrow anyway: one part of the mix table).
BATCH_ROWS = 1 << 20
_HASH_CHUNK = 50_000


@dataclass(frozen=True)
class OutputShard:
    """One planned output shard: its name, the pool shards it draws from, its size."""

    name: str
    sources: tuple[str, ...]
    count: int

    def as_list(self) -> list[Any]:
        return [self.name, list(self.sources), self.count]

    @classmethod
    def from_list(cls, entry: Sequence[Any]) -> OutputShard:
        return cls(str(entry[0]), tuple(entry[1]), int(entry[2]))


@dataclass(frozen=True)
class Layout:
    """Every output shard of a strategy, and which writer job writes which: job i writes
    ``outputs[jobs[i][0]:jobs[i][1]]``, a contiguous run (so a run of pool shards)."""

    samples_per_shard: int
    outputs: tuple[OutputShard, ...]
    jobs: tuple[tuple[int, int], ...]

    @property
    def sha256(self) -> str:
        header = {"format": PLAN_FORMAT, "samples_per_shard": self.samples_per_shard,
                  "outputs": [o.as_list() for o in self.outputs],
                  "jobs": [list(j) for j in self.jobs]}
        return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()

    def job_outputs(self, job: int) -> tuple[OutputShard, ...]:
        first, stop = self.jobs[job]
        return self.outputs[first:stop]

    def job_of_shard(self) -> dict[str, int]:
        return {shard: job for job in range(len(self.jobs))
                for output in self.job_outputs(job) for shard in output.sources}


@dataclass(frozen=True)
class _Row:
    key: str
    uid: str
    caption: str
    source: str
    part: int


@dataclass(frozen=True)
class ShardJob:
    """What one writer needs for one output shard (picklable for spawn)."""

    path: Path
    # (pool shard path, uids wanted from it, its planned rows in output order)
    inputs: tuple[tuple[ShardTask, tuple[_Row, ...]], ...]


def _bad_rows_error(frame: pd.DataFrame, column: str, bad: pd.Series) -> ValueError:
    return ValueError(f"samples table: {int(bad.sum())} row(s) have a missing or non-text "
                      f"{column}, e.g. rows {frame.index[bad].tolist()[:3]}")


def _check_samples(samples: pd.DataFrame, columns: Sequence[str] = REQUIRED_COLUMNS
                   ) -> pd.DataFrame:
    """The samples table with ``columns``, typed; raises on bad rows."""
    if samples.empty:
        frame = pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
        frame["part"] = frame["part"].astype("int64")
        return frame
    missing = [c for c in columns if c not in samples.columns]
    if missing:
        raise ValueError(f"samples table lacks column(s) {missing}")
    frame = samples.loc[:, list(columns)].reset_index(drop=True)
    for column in ("uid", "caption", "source"):
        bad = ~frame[column].map(lambda v: isinstance(v, str))
        if bad.any():
            raise _bad_rows_error(frame, column, bad)
    try:
        frame["part"] = frame["part"].astype("int64")
    except (TypeError, ValueError) as error:
        raise ValueError(f"samples table: part must be an integer ({error})") from error
    return frame


def _unknown_uids_error(unknown: Sequence[str]) -> ValueError:
    return ValueError(f"{len(unknown)} uid(s) of the samples table are not fetched uids of "
                      f"the fetch index, e.g. {sorted(unknown)[:3]}")


def with_shards(samples: pd.DataFrame, index_path: Path | None) -> pd.DataFrame:
    """The samples (uid, caption, source, part, shard) with each image's pool shard: the
    samples' own ``shard`` column (a subset's, from the mix table), else looked up in the
    whole fetch index (small pools, tables from before the mix table carried the shard).
    Raises ValueError, before anything is written, if a uid has no fetched shard."""
    if samples.empty:
        return _check_samples(samples, SAMPLE_COLUMNS)
    has_shards = SHARD in samples.columns and bool(samples[SHARD].notna().any())
    if not has_shards and index_path is None:
        raise ValueError("samples table has no shard column (written before the mix table "
                         "carried each image's pool shard): re-run its subset")
    frame = _check_samples(samples)
    if has_shards:
        frame[SHARD] = samples[SHARD].to_numpy(dtype=object)
        missing = frame[SHARD].isna()
        if missing.any():
            raise _unknown_uids_error(frame.loc[missing, "uid"].unique().tolist())
        return frame
    assert index_path is not None
    fetched = fetched_by_shard(Path(index_path))
    shard_of = pd.Series({uid: shard for shard, uids in fetched.items() for uid in uids},
                         dtype=object)
    frame[SHARD] = frame["uid"].map(shard_of)
    unknown = frame.loc[frame[SHARD].isna(), "uid"].unique().tolist()
    if unknown:
        raise _unknown_uids_error(unknown)
    return frame


def plan_layout(shard_counts: Mapping[str, int], samples_per_shard: int,
                n_jobs: int = 1) -> Layout:
    """The output shards from the samples per pool shard, and their cut into ``n_jobs``
    contiguous runs of about equal samples (runs may be empty when there are fewer shards
    than jobs). The same counts always give the same layout."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs}")
    groups: list[tuple[tuple[str, ...], int]] = []
    group: list[str] = []
    size = 0
    for shard in sorted(shard_counts):
        count = int(shard_counts[shard])
        if count <= 0:
            continue
        group.append(shard)
        size += count
        if size >= samples_per_shard:
            groups.append((tuple(group), size))
            group, size = [], 0
    if group:
        groups.append((tuple(group), size))
    digits = max(NAME_DIGITS, len(str(len(groups) - 1)))
    outputs = tuple(OutputShard(f"{i:0{digits}d}.tar", sources, count)
                    for i, (sources, count) in enumerate(groups))
    counts = np.array([o.count for o in outputs], dtype=np.int64)
    total = int(counts.sum())
    starts = np.cumsum(counts) - counts
    job_of = (starts * n_jobs // total) if total else np.zeros(0, dtype=np.int64)
    bounds = np.searchsorted(job_of, np.arange(n_jobs + 1), side="left")
    jobs = tuple((int(bounds[j]), int(bounds[j + 1])) for j in range(n_jobs))
    return Layout(samples_per_shard, outputs, jobs)


def order_samples(frame: pd.DataFrame, outputs: Sequence[OutputShard]) -> pd.DataFrame:
    """One job's samples (uid, caption, source, part, shard; in the samples table's order)
    in write order, with key and output name: sorted by (pool shard, uid, occurrence), a
    uid's n-th later row keyed ``{uid}_{n}``. Raises if they are not the planned ones."""
    frame = frame.reset_index(drop=True)
    # occurrence numbers a repeated uid in the order of the samples table
    frame["occurrence"] = frame.groupby("uid", sort=False).cumcount().astype("int64")
    frame = frame.sort_values([SHARD, "uid", "occurrence"], kind="stable", ignore_index=True)
    repeat = frame["occurrence"] > 0
    frame["key"] = frame["uid"]
    frame.loc[repeat, "key"] = (frame.loc[repeat, "uid"] + "_"
                                + frame.loc[repeat, "occurrence"].astype(str))
    out_of = {shard: o.name for o in outputs for shard in o.sources}
    frame["out"] = frame[SHARD].map(out_of)
    planned = {o.name: o.count for o in outputs}
    found = frame.groupby("out", sort=True).size().to_dict() if len(frame) else {}
    if frame["out"].isna().any() or found != {n: c for n, c in planned.items() if c}:
        stray = sorted(set(frame.loc[frame["out"].isna(), SHARD]))[:3]
        raise ValueError(f"the job's samples are not its planned shards' (pool shards outside "
                         f"its range, e.g. {stray}; samples per output {found} vs planned "
                         f"{planned}): re-run the scatter")
    return frame


def plan_hash(frame: pd.DataFrame, outputs: Sequence[OutputShard],
              samples_per_shard: int) -> str:
    """sha256 of one job's plan: every sample as written, its outputs and samples_per_shard."""
    digest = hashlib.sha256()
    header = {"format": PLAN_FORMAT, "samples_per_shard": samples_per_shard,
              "outputs": [o.as_list() for o in outputs]}
    digest.update(json.dumps(header, sort_keys=True).encode())
    columns = ["out", SHARD, "key", "uid", "caption", "source", "part"]
    for start in range(0, len(frame), _HASH_CHUNK):
        chunk = frame.iloc[start:start + _HASH_CHUNK]
        rows = list(zip(*(chunk[c].tolist() for c in columns), strict=True))
        digest.update(b"\n" + json.dumps(rows, ensure_ascii=False).encode())
    return digest.hexdigest()


def shard_is_complete(path: Path, expected: int) -> bool:
    """The tar reads to its end and holds ``expected`` samples of 3 members each, followed by
    the end-of-archive blocks and padded to whole records, as ``tarfile`` closes every tar it
    writes: a file cut inside that padding still lists every member, so only its length shows
    that it was cut."""
    try:
        file_size = path.stat().st_size
        keys: set[str] = set()
        members = end = 0
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    return False
                members += 1
                keys.add(member.name.partition(".")[0])
                end = member.offset_data + member.size
    except (OSError, EOFError, tarfile.TarError):
        return False
    closed = file_size % tarfile.RECORDSIZE == 0 and file_size >= end + 2 * tarfile.BLOCKSIZE
    return len(keys) == expected and members == MEMBERS_PER_SAMPLE * expected and closed


def _image_extensions(tar_path: Path) -> dict[str, str]:
    """key -> image extension in the pool tar, picked as read_shard picks the image."""
    found: dict[str, set[str]] = {}
    with tarfile.open(tar_path) as tar:
        for name in tar.getnames():
            key, _, ext = name.rpartition(".")
            found.setdefault(key, set()).add("." + ext.lower())
    extensions = {}
    for key, exts in found.items():
        suffix = next((s for s in IMAGE_SUFFIXES if s in exts), None)
        if suffix is not None:
            extensions[key] = "jpg" if suffix == ".jpeg" else suffix[1:]
    return extensions


def write_shard(job: ShardJob) -> tuple[str, int, float]:
    """Write one output shard (temp file, then rename); returns (name, samples, seconds)."""
    start = time.perf_counter()
    tmp = job.path.with_name(job.path.name + TMP_SUFFIX)
    written = 0
    with open(tmp, "wb") as handle:
        with wds.TarWriter(handle, encoder=False, mtime=TAR_MTIME) as writer:
            for task, rows in job.inputs:
                by_uid: dict[str, Any] = {}
                for sample in read_shard(task):
                    by_uid.setdefault(sample.uid, sample)
                extensions = _image_extensions(task.tar)
                for row in rows:
                    sample = by_uid[row.uid]
                    meta = {"uid": row.uid, "caption_source": row.source, "part": row.part,
                            "raw_text": sample.text}
                    writer.write({
                        "__key__": row.key,
                        extensions[sample.key]: sample.image,
                        "txt": row.caption.encode("utf-8"),
                        "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode(),
                    })
                    written += 1
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, job.path)
    return job.path.name, written, time.perf_counter() - start


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) else None


def _claim(out_dir: Path, job_name: str, digest: str, outputs: Sequence[OutputShard]) -> None:
    """Make ``out_dir`` ready for this job's plan, touching only this job's shard names (jobs
    of one layout run at once: their names are disjoint). Drop its temp files; forget any
    other job's plan that names one of its shards (a plan of an older layout: that job must
    not trust those files again); on a changed plan, delete its shards."""
    plans = out_dir / PLANS_DIR
    plans.mkdir(parents=True, exist_ok=True)
    mine = {o.name for o in outputs}
    for name in mine:
        (out_dir / (name + TMP_SUFFIX)).unlink(missing_ok=True)
    for other in sorted(plans.glob("*.json")):
        if other.stem == job_name:
            continue
        theirs = _read_json(other) or {}
        if mine & set(theirs.get("shards", {})):
            other.unlink(missing_ok=True)
    old = _read_json(plans / f"{job_name}.json")
    if old is None or old.get("sha256") != digest:
        stale = [out_dir / n for n in sorted(mine) if (out_dir / n).exists()]
        if stale or old is not None:
            log.info("reshard %s: plan changed (%s -> %s): deleting %d old shard(s) in %s",
                     job_name, (old or {}).get("sha256", "none")[:12], digest[:12], len(stale),
                     out_dir)
        for path in stale:
            path.unlink()
    write_json(plans / f"{job_name}.json", {
        "sha256": digest, "format": PLAN_FORMAT, "shards": {o.name: o.count for o in outputs},
        "sources": {o.name: list(o.sources) for o in outputs}})


def _shard_jobs(frame: pd.DataFrame, todo: Sequence[OutputShard], shards_dir: Path,
                out_dir: Path) -> Iterator[ShardJob]:
    """The writers' work, one output shard at a time (built as consumed: memory holds the
    job's frame, not a second copy of it as rows)."""
    by_out = dict(iter(frame.groupby("out", sort=True))) if len(frame) else {}
    for output in todo:
        rows = by_out[output.name]
        inputs = []
        for shard, part in rows.groupby(SHARD, sort=True):
            wanted = tuple(sorted(set(part["uid"])))
            task = ShardTask(str(shard), shards_dir / str(shard), out_dir / output.name, wanted)
            inputs.append((task, tuple(
                _Row(k, u, c, s, int(p)) for k, u, c, s, p in zip(
                    part["key"], part["uid"], part["caption"], part["source"], part["part"],
                    strict=True))))
        yield ShardJob(out_dir / output.name, tuple(inputs))


def write_job(samples: pd.DataFrame, outputs: Sequence[OutputShard], shards_dir: Path,
              out_dir: Path, *, job: int = 0, n_jobs: int = 1, layout_sha256: str = "",
              samples_per_shard: int = 10_000, workers: int = 1) -> dict[str, Any]:
    """Write (or resume) one job's output shards from its samples (uid, caption, source,
    part, shard, in the samples table's order); returns its report for :func:`finish_reshard`.
    Reads only the pool shards its outputs draw from."""
    started = time.perf_counter()
    shards_dir, out_dir = Path(shards_dir), Path(out_dir)
    job_name = chunk_name(job, n_jobs)
    frame = order_samples(samples, outputs)
    digest = plan_hash(frame, outputs, samples_per_shard)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim(out_dir, job_name, digest, outputs)
    todo = [o for o in outputs if not shard_is_complete(out_dir / o.name, o.count)]
    skipped = len(outputs) - len(todo)
    if skipped:
        log.info("reshard %s: %d/%d shard(s) already complete, %d to write", job_name,
                 skipped, len(outputs), len(todo))
    _run_jobs(_shard_jobs(frame, todo, shards_dir, out_dir), len(todo), workers,
              total=len(outputs), skipped=skipped)
    sources = frame["source"].value_counts().sort_index()
    return {
        "job": job, "n_jobs": n_jobs, "layout_sha256": layout_sha256, "plan_sha256": digest,
        "samples_per_shard": samples_per_shard,
        "shards": {o.name: o.count for o in outputs},
        "num_samples": int(len(frame)), "num_images": int(frame["uid"].nunique()),
        "sources": {str(k): int(v) for k, v in sources.items()},
        "shards_written": len(todo), "shards_skipped": skipped,
        "seconds": round(time.perf_counter() - started, 3),
    }


def finish_reshard(reports: Sequence[Mapping[str, Any]], out_dir: Path, manifest_path: Path,
                   provenance: Mapping[str, Any] | None = None,
                   started: float | None = None) -> dict[str, Any]:
    """The reduce: the jobs' reports (in job order) joined into ``sizes.json`` and the
    manifest; shards, plans and temp files no job of this layout names are removed (an
    older plan's). ``started``: when the one job that also wrote the shards began (else the
    jobs' seconds are added to the reduce's)."""
    in_process = started is not None
    started = time.perf_counter() if started is None else started
    out_dir, manifest_path = Path(out_dir).resolve(), Path(manifest_path)
    n_jobs = len(reports)
    layouts = {r["layout_sha256"] for r in reports}
    if [r["job"] for r in reports] != list(range(n_jobs)) or len(layouts) > 1 or any(
            r["n_jobs"] != n_jobs for r in reports):
        raise ValueError(f"{out_dir}: the reports are not one layout's jobs 0..{n_jobs - 1} "
                         f"(jobs {[r['job'] for r in reports]}, layouts {sorted(layouts)})")
    sizes = {name: int(count) for r in reports for name, count in r["shards"].items()}
    names = list(sizes)
    absent = [n for n in names if not (out_dir / n).is_file()]
    if absent:
        raise FileNotFoundError(f"{out_dir}: {len(absent)} planned shard(s) are missing, e.g. "
                                f"{absent[:3]} (re-run their train_shards_part job)")
    keep = set(names)
    for path in sorted(out_dir.glob("*.tar")) + sorted(out_dir.glob("*" + TMP_SUFFIX)):
        if path.name not in keep:
            path.unlink()
    jobs = set(chunk_names(n_jobs))
    for plan in sorted((out_dir / PLANS_DIR).glob("*.json")):
        if plan.stem not in jobs:
            plan.unlink()
    (out_dir / "plan.json").unlink(missing_ok=True)  # the one plan of resharding in one job
    write_json(out_dir / SIZES_FILE, sizes)
    sources: dict[str, int] = {}
    for report in reports:
        for source, count in report["sources"].items():
            sources[source] = sources.get(source, 0) + int(count)
    plan = hashlib.sha256(json.dumps([sorted(layouts), [r["plan_sha256"] for r in reports]])
                          .encode()).hexdigest()
    manifest = {
        "num_samples": sum(int(r["num_samples"]) for r in reports),
        # a uid's samples all lie in one pool shard, so in one job: the jobs' counts add up
        "num_images": sum(int(r["num_images"]) for r in reports),
        "num_shards": len(names),
        "shards": names,
        "out_dir": str(out_dir),
        "train_data": train_data_spec([out_dir / n for n in names]) if names else None,
        "samples_per_shard": reports[0]["samples_per_shard"] if reports else None,
        "sources": dict(sorted(sources.items())),
        "plan_sha256": plan,
        "jobs": n_jobs,
        "shards_written": sum(int(r["shards_written"]) for r in reports),
        "shards_skipped": sum(int(r["shards_skipped"]) for r in reports),
        "seconds": round(time.perf_counter() - started + (
            0.0 if in_process else sum(float(r["seconds"]) for r in reports)), 3),
        "provenance": dict(provenance or {}),
    }
    write_json(manifest_path, manifest)
    return manifest


def _check_out_dir(shards_dir: Path, out_dir: Path) -> None:
    out_dir = Path(out_dir).resolve()
    if out_dir == Path(shards_dir).resolve() or out_dir.is_relative_to(
            Path(shards_dir).resolve()):
        raise ValueError(f"out_dir {out_dir} lies inside the pool's shards dir {shards_dir}")


def reshard(samples: pd.DataFrame, index_path: Path | None, shards_dir: Path, out_dir: Path,
            manifest_path: Path, samples_per_shard: int = 10_000, workers: int = 1,
            provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the training shards of ``samples`` to ``out_dir`` in one job; returns the
    manifest.

    ``samples`` has one row per training sample (uid, caption, source, part, and the pool
    shard of its image; without one, ``index_path`` is looked up); a uid may repeat (the
    same image with another caption). Shards already complete under the same plan are kept;
    see the module docstring.
    """
    started = time.perf_counter()
    shards_dir, out_dir = Path(shards_dir), Path(out_dir).resolve()
    _check_out_dir(shards_dir, out_dir)
    frame = with_shards(samples, index_path)
    layout = plan_layout(frame[SHARD].value_counts().to_dict(), samples_per_shard)
    report = write_job(frame, layout.job_outputs(0), shards_dir, out_dir,
                       layout_sha256=layout.sha256, samples_per_shard=samples_per_shard,
                       workers=workers)
    return finish_reshard([report], out_dir, manifest_path, provenance, started)


# ------------------------------------------------------------------ held in parts


def _job_file(scatter_dir: Path, job: int, n_jobs: int, suffix: str) -> Path:
    return Path(scatter_dir) / f"{chunk_name(job, n_jobs)}{suffix}"


def job_files(scatter_dir: Path, chunk: str) -> list[Path]:
    """What job ``chunk`` reads of the scatter: its samples and its outputs' plan."""
    job, n_jobs = parse_chunk(chunk)
    return [_job_file(scatter_dir, job, n_jobs, s) for s in (".parquet", ".json")]


def _samples_schema(path: Path) -> pa.Schema:
    schema = pq.read_schema(path)
    missing = [c for c in SAMPLE_COLUMNS if c not in schema.names]
    if missing:
        hint = (" (written before the mix table carried each image's pool shard: re-run its "
                "subset)" if missing == [SHARD] else "")
        raise ValueError(f"{path}: no column(s) {missing}{hint}")
    return pa.schema([pa.field(c, pa.int64() if c == "part" else pa.string())
                      for c in SAMPLE_COLUMNS])


def count_by_shard(samples_path: Path) -> dict[str, int]:
    """Samples per pool shard, reading ``shard`` (and ``uid``, to name a bad row) a batch at
    a time. A sample without a pool shard, or with no uid, caption or source, is an error
    naming the file and examples."""
    counts: dict[str, int] = {}
    for batch in stream_batches(samples_path, BATCH_ROWS, ["uid", "caption", "source", SHARD]):
        for column in ("uid", "caption", "source"):
            if batch.column(column).null_count:
                raise ValueError(f"{samples_path}: {batch.column(column).null_count} row(s) "
                                 f"have no {column}")
        shards = batch.column(SHARD)
        if shards.null_count:
            uids = batch.column("uid").filter(pc.is_null(shards)).to_pylist()
            raise ValueError(f"{samples_path}: {len(uids)} sample(s) have no pool shard (not "
                             f"fetched uids of the fetch index?), e.g. {sorted(uids)[:3]}")
        for entry in pc.value_counts(shards).to_pylist():
            counts[entry["values"]] = counts.get(entry["values"], 0) + int(entry["counts"])
    return counts


def scatter_samples(samples_path: Path, n_jobs: int, samples_per_shard: int,
                    scatter_dir: Path) -> Layout:
    """The train_shards_scatter rule: plan the output shards from the samples per pool shard
    and write job i's samples to ``scatter_dir/chunk{i}of{n}.parquet`` (in the samples
    table's order) beside its outputs, ``chunk{i}of{n}.json``; ``layout.json`` records the
    layout. Reads ``samples_path`` a batch at a time, twice."""
    from capmix.mixparts import allow_open_files

    samples_path, scatter_dir = Path(samples_path), Path(scatter_dir)
    schema = _samples_schema(samples_path)
    layout = plan_layout(count_by_shard(samples_path), samples_per_shard, n_jobs)
    shutil.rmtree(scatter_dir, ignore_errors=True)
    scatter_dir.mkdir(parents=True)
    allow_open_files(n_jobs + 64)
    job_of = layout.job_of_shard()
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for batch in stream_batches(samples_path, BATCH_ROWS, SAMPLE_COLUMNS):
            table = pa.Table.from_batches([batch]).cast(schema)
            encoded = pc.dictionary_encode(table.column(SHARD).combine_chunks())
            lookup = np.array([job_of[s] for s in encoded.dictionary.to_pylist()],
                              dtype=np.int64)
            jobs = lookup[np.asarray(encoded.indices, dtype=np.int64)]
            order = np.argsort(jobs, kind="stable")
            bounds = np.searchsorted(jobs[order], np.arange(n_jobs + 1))
            ordered = table.take(pa.array(order))
            for job in np.flatnonzero(np.diff(bounds)):
                if job not in writers:
                    writers[job] = pq.ParquetWriter(
                        _job_file(scatter_dir, int(job), n_jobs, ".parquet"), schema)
                writers[job].write_table(ordered.slice(bounds[job],
                                                       bounds[job + 1] - bounds[job]))
    finally:
        for writer in writers.values():
            writer.close()
    for job in range(n_jobs):
        if job not in writers:
            pq.write_table(schema.empty_table(), _job_file(scatter_dir, job, n_jobs, ".parquet"))
        write_json(_job_file(scatter_dir, job, n_jobs, ".json"), {
            "job": job, "n_jobs": n_jobs, "layout_sha256": layout.sha256,
            "samples_per_shard": samples_per_shard,
            "outputs": [o.as_list() for o in layout.job_outputs(job)]})
    write_json(scatter_dir / LAYOUT_FILE, {
        "samples": str(samples_path), "sha256": layout.sha256, "n_jobs": n_jobs,
        "samples_per_shard": samples_per_shard, "num_shards": len(layout.outputs),
        "num_samples": sum(o.count for o in layout.outputs),
        "jobs": [{"outputs": list(j), "samples": sum(o.count for o in layout.job_outputs(i))}
                 for i, j in enumerate(layout.jobs)]})
    log.info("reshard scatter: %d samples into %d output shards, %d jobs (%s)",
             sum(o.count for o in layout.outputs), len(layout.outputs), n_jobs,
             ", ".join(str(sum(o.count for o in layout.job_outputs(i))) for i in range(n_jobs)))
    return layout


def run_reshard_job(scatter_dir: Path, chunk: str, shards_dir: Path, out_dir: Path,
                    report_path: Path, workers: int = 1,
                    provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The train_shards_part rule: job ``chunk`` (``chunk{i}of{n}``) writes its output shards
    from its scattered samples; its report goes to ``report_path``."""
    job, n_jobs = parse_chunk(chunk)
    _check_out_dir(shards_dir, out_dir)
    spec = json.loads(_job_file(scatter_dir, job, n_jobs, ".json").read_text())
    if (spec["job"], spec["n_jobs"]) != (job, n_jobs):
        raise ValueError(f"{scatter_dir}: holds job {spec['job']} of {spec['n_jobs']}, "
                         f"not {chunk}")
    samples = pq.read_table(_job_file(scatter_dir, job, n_jobs, ".parquet")).to_pandas()
    outputs = [OutputShard.from_list(o) for o in spec["outputs"]]
    report = write_job(samples, outputs, shards_dir, Path(out_dir).resolve(), job=job,
                       n_jobs=n_jobs, layout_sha256=spec["layout_sha256"],
                       samples_per_shard=spec["samples_per_shard"], workers=workers)
    write_json(report_path, {**report, "provenance": dict(provenance or {})})
    log.info("reshard %s: %d samples in %d shard(s), %d written", chunk,
             report["num_samples"], len(outputs), report["shards_written"])
    return report


def run_reshard_reduce(report_paths: Sequence[Path], out_dir: Path, manifest_path: Path,
                       provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The train_shards rule of a strategy resharded in parts: the jobs' reports (in job
    order) into sizes.json and the manifest."""
    reports = [json.loads(Path(p).read_text()) for p in report_paths]
    return finish_reshard(reports, out_dir, manifest_path, provenance)


def _run_jobs(jobs: Iterator[ShardJob], n_todo: int, workers: int, total: int,
              skipped: int) -> None:
    """Write the shards in-process (workers <= 1) or in a spawn pool; log progress."""
    if not n_todo:
        return
    start = time.perf_counter()
    done = samples = 0

    def report(name: str, count: int) -> None:
        nonlocal done, samples
        done += 1
        samples += count
        elapsed = time.perf_counter() - start
        rate = samples / elapsed if elapsed > 0 else 0.0
        log.info("reshard: %s written; %d/%d shards done, %d samples, %.1f samples/s", name,
                 skipped + done, total, samples, rate)

    if workers <= 1 or n_todo == 1:
        for job in jobs:
            name, count, _ = write_shard(job)
            report(name, count)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, n_todo)) as pool:
        for name, count, _ in pool.imap_unordered(write_shard, jobs, chunksize=1):
            report(name, count)
