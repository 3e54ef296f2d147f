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
  ...; within one, samples are ordered by (pool shard, uid, occurrence).
* **Samples.** ``__key__`` is the uid for a uid's first occurrence and
  ``{uid}_{n}`` for its n-th later one; the image keeps its original bytes and
  extension (``.jpeg`` is written as ``jpg``, which every webdataset reader of
  ``"jpg;png;webp"`` accepts); ``txt`` is the chosen caption; ``json`` holds
  uid, caption_source, part and raw_text (the text stored in the pool shard).
* **Resume.** ``plan.json`` in the output directory holds the sha256 of the plan
  and the planned sample count per shard. A re-run with the same plan keeps the
  shards that are complete (the tar reads and holds the planned number of
  samples) and writes only the missing or partial ones; a different plan (the
  strategy changed) deletes the old shards first. Every shard is written to a
  temporary name and renamed into place, with a fixed tar mtime, so the same
  plan always gives byte-identical shards, whatever the number of workers.
* **Outputs.** ``sizes.json`` next to the shards (open_clip_train's
  ``get_dataset_size`` reads it) and a manifest, written last, with counts,
  the ``--train-data`` brace pattern and provenance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import webdataset as wds

from capmix.provenance import write_json
from capmix.shards import IMAGE_SUFFIXES, ShardTask, fetched_by_shard, read_shard
from capmix.train import train_data_spec

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("uid", "caption", "source", "part")
PLAN_FILE = "plan.json"
SIZES_FILE = "sizes.json"
TMP_SUFFIX = ".tmp"
PLAN_FORMAT = 1
#: Fixed member mtime, so the same plan always writes byte-identical tars. An int: tarfile
#: writes a PAX header for every member whose mtime is a float, which doubles the headers
#: open_clip_train parses per sample (measured: half its data-loading time on the toy world).
TAR_MTIME = 0
#: Members per written sample: image, txt, json.
MEMBERS_PER_SAMPLE = 3
_HASH_CHUNK = 50_000


@dataclass(frozen=True)
class OutputShard:
    """One planned output shard: its name, the pool shards it draws from, its size."""

    name: str
    sources: tuple[str, ...]
    count: int


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
    # (pool shard path, fetched uids of it, its planned rows in output order)
    inputs: tuple[tuple[ShardTask, tuple[_Row, ...]], ...]


def _check_samples(samples: pd.DataFrame) -> pd.DataFrame:
    """The samples table with the required columns, typed; raises on bad rows."""
    if samples.empty:
        return pd.DataFrame({"uid": pd.Series(dtype=object), "caption": pd.Series(dtype=object),
                             "source": pd.Series(dtype=object), "part": pd.Series(dtype="int64")})
    missing = [c for c in REQUIRED_COLUMNS if c not in samples.columns]
    if missing:
        raise ValueError(f"samples table lacks column(s) {missing}")
    frame = samples.loc[:, list(REQUIRED_COLUMNS)].reset_index(drop=True)
    for column in ("uid", "caption", "source"):
        bad = ~frame[column].map(lambda v: isinstance(v, str))
        if bad.any():
            raise ValueError(f"samples table: {int(bad.sum())} row(s) have a missing or non-text "
                             f"{column}, e.g. rows {frame.index[bad].tolist()[:3]}")
    try:
        frame["part"] = frame["part"].astype("int64")
    except (TypeError, ValueError) as error:
        raise ValueError(f"samples table: part must be an integer ({error})") from error
    return frame


def plan_samples(samples: pd.DataFrame, fetched: dict[str, list[str]],
                 samples_per_shard: int) -> tuple[pd.DataFrame, list[OutputShard]]:
    """The samples in write order (with shard, key, output index), and the output shards.

    Raises ValueError, before anything is written, if a uid is not fetched.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    frame = _check_samples(samples)
    shard_of = pd.Series({uid: shard for shard, uids in fetched.items() for uid in uids},
                         dtype=object)
    frame["shard"] = frame["uid"].map(shard_of)
    unknown = sorted(frame.loc[frame["shard"].isna(), "uid"].unique())
    if unknown:
        raise ValueError(f"{len(unknown)} uid(s) of the samples table are not fetched uids of "
                         f"the fetch index, e.g. {unknown[:3]}")
    # occurrence numbers a repeated uid in the order of the samples table
    frame["occurrence"] = frame.groupby("uid", sort=False).cumcount().astype("int64")
    frame = frame.sort_values(["shard", "uid", "occurrence"], kind="stable",
                              ignore_index=True)
    repeat = frame["occurrence"] > 0
    frame["key"] = frame["uid"]
    frame.loc[repeat, "key"] = (frame.loc[repeat, "uid"] + "_"
                                + frame.loc[repeat, "occurrence"].astype(str))

    outputs: list[OutputShard] = []
    group: list[str] = []
    size = 0
    out_of: dict[str, int] = {}
    for shard, count in frame.groupby("shard", sort=True).size().items():
        group.append(str(shard))
        out_of[str(shard)] = len(outputs)
        size += int(count)
        if size >= samples_per_shard:
            outputs.append(OutputShard(f"{len(outputs):05d}.tar", tuple(group), size))
            group, size = [], 0
    if group:
        outputs.append(OutputShard(f"{len(outputs):05d}.tar", tuple(group), size))
    frame["out"] = frame["shard"].map(out_of).astype("int64")
    return frame, outputs


def plan_hash(frame: pd.DataFrame, outputs: list[OutputShard], samples_per_shard: int) -> str:
    """sha256 of the plan: every sample as written, the grouping and samples_per_shard."""
    digest = hashlib.sha256()
    header = {"format": PLAN_FORMAT, "samples_per_shard": samples_per_shard,
              "outputs": [[o.name, list(o.sources), o.count] for o in outputs]}
    digest.update(json.dumps(header, sort_keys=True).encode())
    columns = ["out", "shard", "key", "uid", "caption", "source", "part"]
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


def _read_plan(path: Path) -> dict[str, Any] | None:
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) else None


def _prepare_out_dir(out_dir: Path, digest: str, outputs: list[OutputShard]) -> None:
    """Drop temp files; on a changed plan drop every old shard, the plan and sizes.json."""
    for tmp in out_dir.glob("*.tar" + TMP_SUFFIX):
        tmp.unlink()
    old = _read_plan(out_dir / PLAN_FILE)
    planned = {o.name for o in outputs}
    if old is None or old.get("sha256") != digest:
        stale = sorted(out_dir.glob("*.tar"))
        if stale or old is not None:
            log.info("reshard: plan changed (%s -> %s): deleting %d old shard(s) in %s",
                     (old or {}).get("sha256", "none")[:12], digest[:12], len(stale), out_dir)
        for path in stale:
            path.unlink()
        for name in (PLAN_FILE, SIZES_FILE):
            (out_dir / name).unlink(missing_ok=True)
    else:
        for path in out_dir.glob("*.tar"):
            if path.name not in planned:
                path.unlink()


def reshard(samples: pd.DataFrame, index_path: Path, shards_dir: Path, out_dir: Path,
            manifest_path: Path, samples_per_shard: int = 10_000, workers: int = 1,
            provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the training shards of ``samples`` to ``out_dir``; returns the manifest.

    ``samples`` has one row per training sample (uid, caption, source, part); a
    uid may repeat (the same image with another caption). Shards already
    complete under the same plan are kept; see the module docstring.
    """
    started = time.perf_counter()
    index_path, shards_dir = Path(index_path), Path(shards_dir)
    out_dir, manifest_path = Path(out_dir).resolve(), Path(manifest_path)
    if out_dir == shards_dir.resolve() or out_dir.is_relative_to(shards_dir.resolve()):
        raise ValueError(f"out_dir {out_dir} lies inside the pool's shards dir {shards_dir}")

    fetched = fetched_by_shard(index_path)
    frame, outputs = plan_samples(samples, fetched, samples_per_shard)
    digest = plan_hash(frame, outputs, samples_per_shard)

    out_dir.mkdir(parents=True, exist_ok=True)
    _prepare_out_dir(out_dir, digest, outputs)
    write_json(out_dir / PLAN_FILE, {
        "sha256": digest, "format": PLAN_FORMAT, "samples_per_shard": samples_per_shard,
        "num_samples": len(frame),
        "shards": {o.name: o.count for o in outputs},
        "sources": {o.name: list(o.sources) for o in outputs},
    })

    todo = [o for o in outputs if not shard_is_complete(out_dir / o.name, o.count)]
    skipped = len(outputs) - len(todo)
    if skipped:
        log.info("reshard: %d/%d shard(s) already complete, %d to write", skipped, len(outputs),
                 len(todo))
    by_out = {int(k): g for k, g in frame.groupby("out", sort=True)} if len(frame) else {}
    jobs = []
    for output in todo:
        rows = by_out[int(output.name[:-4])]
        inputs = []
        for shard, part in rows.groupby("shard", sort=True):
            task = ShardTask(str(shard), shards_dir / str(shard), out_dir / output.name,
                             tuple(fetched[str(shard)]))
            inputs.append((task, tuple(
                _Row(k, u, c, s, int(p)) for k, u, c, s, p in zip(
                    part["key"], part["uid"], part["caption"], part["source"], part["part"],
                    strict=True))))
        jobs.append(ShardJob(out_dir / output.name, tuple(inputs)))

    _run_jobs(jobs, workers, total=len(outputs), skipped=skipped)

    names = [o.name for o in outputs]
    write_json(out_dir / SIZES_FILE, {o.name: o.count for o in outputs})
    sources = frame["source"].value_counts().sort_index()
    manifest = {
        "num_samples": len(frame),
        "num_images": int(frame["uid"].nunique()),
        "num_shards": len(outputs),
        "shards": names,
        "out_dir": str(out_dir),
        "train_data": train_data_spec([out_dir / n for n in names]) if names else None,
        "samples_per_shard": samples_per_shard,
        "sources": {str(k): int(v) for k, v in sources.items()},
        "plan_sha256": digest,
        "shards_written": len(todo),
        "shards_skipped": skipped,
        "seconds": round(time.perf_counter() - started, 3),
        "provenance": provenance or {},
    }
    write_json(manifest_path, manifest)
    return manifest


def _run_jobs(jobs: list[ShardJob], workers: int, total: int, skipped: int) -> None:
    """Write the shards in-process (workers <= 1) or in a spawn pool; log progress."""
    if not jobs:
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

    if workers <= 1 or len(jobs) == 1:
        for job in jobs:
            name, count, _ = write_shard(job)
            report(name, count)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(jobs))) as pool:
        for name, count, _ in pool.imap_unordered(write_shard, jobs, chunksize=1):
            report(name, count)
