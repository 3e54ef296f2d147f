"""The mix jobs over a pool held in parts: the mix table in uid ranges, a strategy part by part.

A pool's mix table (every source's score and caption per fetched image, :func:`capmix.mix.
build_mix_table`) is too big for one process beyond DataComp medium: at small the old
whole-pool table peaked at 10.1 GiB, at large it extrapolates to 0.4-0.8 TB. So the table is
written as ``n`` parts (``pools[].mix.table_parts``), part ``p`` holding the uids whose first 32
bits fall in the ``p``-th of ``n`` equal ranges (:func:`uid_parts`). Uids are hashes, so the
parts are of even size; and because a part is a uid *range*, each part's uid-sorted rows
concatenated in part order are the pool sorted by uid: a subset's DataComp uid file is the
parts' uid files appended, bit for bit the whole-pool file, with no merge.

* :func:`run_mix_table` (rule ``mix_table``) reads its inputs a batch at a time and scatters
  their rows into per-part files (:class:`Scatter`), then builds and checks each part's table
  alone. Memory: one input batch, then one part's inputs. With one part (the toy world) the
  inputs are read as they are, nothing is scattered.
* :func:`run_subset` (rule ``subset``) finds the strategy's thresholds over every part in
  bounded memory (:func:`capmix.mix.pool_thresholds`: an exact radix select, equal to
  DataComp's formula on the whole pool), then selects part by part with them and appends each
  part's selection to the subset's files (:class:`capmix.mix.SubsetWriter`). Memory: one part.

Readers that want the whole table (the analyses, the image grid) read every part with
:func:`read_table`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from capmix.mix import (
    CAPTION_TEXT_COLUMNS,
    CLUSTER_COLUMN,
    CaptionSet,
    ScoreTableError,
    SubsetWriter,
    build_mix_table,
    pool_thresholds,
    score_column,
    select,
    strategy_columns,
    threshold_needs,
)
from capmix.provenance import provenance_record, write_json, write_parquet_atomic
from capmix.strategies import parse_strategy, pool_mix, resolve_source
from capmix.uids import arrow_uids_to_pairs

log = logging.getLogger(__name__)

#: A part's file name in the table directory (sorted names are uid order).
PART_NAME = "part-{:05d}.parquet"
#: Rows read from an input at a time while scattering.
BATCH_ROWS = 1 << 20


# ------------------------------------------------------------------ which part a uid is in


def uid_parts(uids: pa.Array | pa.ChunkedArray | Sequence[str], n_parts: int) -> np.ndarray:
    """The part (0 .. n_parts - 1) of each uid: ``floor(prefix * n / 2**32)``, so part p is
    the p-th of n equal ranges of uids and parts follow uid order."""
    if n_parts == 1:
        return np.zeros(len(uids), dtype=np.int64)
    if not isinstance(uids, pa.Array | pa.ChunkedArray):
        uids = pa.array(list(uids), type=pa.string())
    prefixes = arrow_uids_to_pairs(uids)["f0"] >> np.uint64(32)
    return ((prefixes * np.uint64(n_parts)) >> np.uint64(32)).astype(np.int64)


# ------------------------------------------------------------------ the table's parts


def part_files(table_dir: Path) -> list[Path]:
    """The parts of a mix table directory, in uid order."""
    files = sorted(Path(table_dir).glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{table_dir}: no mix table parts (part-*.parquet)")
    return files


def table_columns(table_dir: Path) -> list[str]:
    """The columns of a mix table (every part has the same)."""
    return list(pq.read_schema(part_files(table_dir)[0]).names)


def read_table(table_dir: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The whole mix table in memory, sorted by uid (for readers that need it all)."""
    frames = [pd.read_parquet(p, columns=list(columns) if columns else None)
              for p in part_files(table_dir)]
    return pd.concat(frames, ignore_index=True)


def iter_parts(table_dir: Path, columns: Sequence[str]) -> Iterator[pa.Table]:
    """The mix table a part at a time, in uid order (as Arrow: no Python object per row)."""
    for path in part_files(table_dir):
        yield pq.read_table(path, columns=list(columns))


# ------------------------------------------------------------------ scattering inputs


class Scatter:
    """Rows of parquet inputs split into per-part files by uid (rule mix_table's map step).

    ``scatter(name, files, columns)`` reads ``files`` a batch at a time and appends each row to
    ``work_dir/name/part-NNNNN.parquet`` of its uid's part; it returns the n part files (each
    written, empty ones too, with the inputs' schema). With one part nothing is copied: the
    part's files are the inputs themselves.
    """

    def __init__(self, n_parts: int, work_dir: Path):
        self.n_parts = n_parts
        self.work_dir = Path(work_dir)

    def scatter(self, name: str, files: Sequence[Path], columns: Sequence[str],
                keep: Any = None) -> list[list[Path]]:
        """Part -> its files of input ``name``; ``keep`` is an optional Arrow filter
        expression rows must pass to be scattered (e.g. fetched only; with one part the
        reader filters)."""
        if self.n_parts == 1:
            return [list(files)]
        out_dir = self.work_dir / name
        out_dir.mkdir(parents=True, exist_ok=True)
        schema = _common_schema(files, columns)
        writers: dict[int, pq.ParquetWriter] = {}
        try:
            for path in files:
                for batch in pq.ParquetFile(path).iter_batches(BATCH_ROWS, columns=list(columns)):
                    table = pa.Table.from_batches([batch])
                    if keep is not None:
                        table = table.filter(keep)
                    try:
                        table = table.cast(schema)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                        raise ValueError(f"{path}: columns {list(columns)} do not match the "
                                         f"other files of '{name}' ({error})") from error
                    try:
                        parts = uid_parts(table.column("uid"), self.n_parts)
                    except ValueError as error:
                        raise ValueError(f"{path}: {error}") from error
                    order = np.argsort(parts, kind="stable")
                    bounds = np.searchsorted(parts[order], np.arange(self.n_parts + 1))
                    ordered = table.take(pa.array(order))
                    for part in np.flatnonzero(np.diff(bounds)):
                        if part not in writers:
                            writers[part] = pq.ParquetWriter(out_dir / PART_NAME.format(part),
                                                             schema)
                        writers[part].write_table(
                            ordered.slice(bounds[part], bounds[part + 1] - bounds[part]))
        finally:
            for writer in writers.values():
                writer.close()
        result = []
        for part in range(self.n_parts):
            path = out_dir / PART_NAME.format(part)
            if part not in writers:
                pq.write_table(schema.empty_table(), path)
            result.append([path])
        return result


def _common_schema(files: Sequence[Path], columns: Sequence[str]) -> pa.Schema:
    """One schema for ``columns`` of every file (a column that is all null in one file takes
    its type from the others); a file without one of the columns is a KeyError naming it."""
    schemas = []
    for path in files:
        schema = pq.read_schema(path)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise KeyError(f"{path}: no column(s) {missing}")
        schemas.append(pa.schema([schema.field(c) for c in columns]))
    if not schemas:
        raise FileNotFoundError("no input files to scatter")
    return pa.unify_schemas(schemas, promote_options="default")


# ------------------------------------------------------------------ rule mix_table


def _read(files: Sequence[Path], columns: Sequence[str], keep: Any = None) -> pd.DataFrame:
    tables = [pq.read_table(f, columns=list(columns)) for f in files]
    table = pa.concat_tables(tables, promote_options="default") if tables else None
    if table is not None and keep is not None:
        table = table.filter(keep)
    return table.to_pandas() if table is not None else pd.DataFrame(columns=list(columns))


def _merge_reports(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One report from the parts': counts summed, each source's mean score weighted by the
    part's images."""
    merged: dict[str, Any] = {"n_fetched": 0, "n_pool": 0, "sources": {}, "dropped": {}}
    weighted: dict[str, float] = {}
    for report in reports:
        merged["n_fetched"] += report["n_fetched"]
        merged["n_pool"] += report["n_pool"]
        for name, counts in report["dropped"].items():
            if isinstance(counts, int):
                merged["dropped"][name] = merged["dropped"].get(name, 0) + counts
                continue
            mine = merged["dropped"].setdefault(name, {})
            for key, count in counts.items():
                mine[key] = mine.get(key, 0) + count
        for source, entry in report["sources"].items():
            merged["sources"].setdefault(source, {"caption_sets": entry["caption_sets"]})
            if entry["mean_score"] is not None:
                weighted[source] = weighted.get(source, 0.0) + entry["mean_score"] * report[
                    "n_pool"]
    for source, entry in merged["sources"].items():
        entry["mean_score"] = (weighted[source] / merged["n_pool"]
                               if source in weighted and merged["n_pool"] else None)
    return merged


def run_mix_table(pool: str, sources: Mapping[str, Sequence[str]],
                  score_paths: Mapping[str, str | Path],
                  caption_manifests: Mapping[str, Sequence[str | Path]], index_path: Path,
                  table_dir: Path, report_path: Path, n_parts: int = 1,
                  clusters_path: Path | None = None,
                  on_missing_score: str = "error",
                  caption_text_path: Path | None = None) -> dict[str, Any]:
    """The mix_table rule: every score the pool's strategies use, loaded, checked and joined
    into ``n_parts`` uid-range parts (``table_dir/part-NNNNN.parquet``, each sorted by uid).

    Score problems of every part are collected before the job fails, so the error counts them
    all; nothing is left in ``table_dir`` then.
    """
    from capmix.caption import caption_files

    fetched = pc.field("status") == "fetched"
    work_dir = Path(table_dir).with_name(Path(table_dir).name + ".scatter")
    building = Path(table_dir).with_name(Path(table_dir).name + ".building")
    for stale in (work_dir, building):
        shutil.rmtree(stale, ignore_errors=True)
    building.mkdir(parents=True)
    scatter = Scatter(n_parts, work_dir)
    try:
        index_parts = scatter.scatter("index", [index_path], ["uid", "status"], keep=fetched)
        set_parts: dict[str, tuple[list[list[Path]], list[list[Path]]]] = {}
        for name in sorted({s for sets in sources.values() for s in sets}):
            captions = caption_files([Path(p) for p in caption_manifests[name]])
            set_parts[name] = (
                scatter.scatter(f"scores/{name}", [Path(score_paths[name])],
                                ["uid", "cos", "cos_all", "missing"]),
                scatter.scatter(f"captions/{name}", captions, ["uid", "captions"]))
        cluster_parts = (scatter.scatter("clusters", [clusters_path], ["uid", CLUSTER_COLUMN])
                         if clusters_path is not None else None)
        text_parts = (scatter.scatter("caption_language", [caption_text_path],
                                      ["uid", *CAPTION_TEXT_COLUMNS])
                      if caption_text_path is not None else None)
        reports, errors = [], []
        for part in range(n_parts):
            pool_uids = _read(index_parts[part], ["uid", "status"], keep=fetched)["uid"]
            sets = {source: [CaptionSet(s, set_parts[s][0][part][0], set_parts[s][1][part],
                                        reported_as=Path(score_paths[s])) for s in names]
                    for source, names in sources.items()}
            clusters = (_read(cluster_parts[part], ["uid", CLUSTER_COLUMN])
                        if cluster_parts is not None else None)
            caption_text = (_read(text_parts[part], ["uid", *CAPTION_TEXT_COLUMNS])
                            if text_parts is not None else None)
            try:
                table, report = build_mix_table(pool_uids.tolist(), sets, clusters,
                                                on_missing_score, caption_text)
            except ScoreTableError as error:
                errors.append((part, str(error)))
                continue
            reports.append(report)
            write_parquet_atomic(table, building / PART_NAME.format(part),
                                 {"stage": "mix_table", "part": part, "parts": n_parts})
        if errors:
            shown = "\n".join(f"[part {p} of {n_parts}] {e}" for p, e in errors[:3])
            raise ScoreTableError(f"{len(errors)} of {n_parts} part(s) of the mix table have "
                                  f"incomplete scores; the first:\n{shown}")
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    shutil.rmtree(table_dir, ignore_errors=True)
    os.replace(building, table_dir)
    report = _merge_reports(reports)
    inputs = [index_path, *(Path(p) for p in score_paths.values())]
    if clusters_path is not None:
        inputs.append(clusters_path)
    if caption_text_path is not None:
        inputs.append(caption_text_path)
    provenance = provenance_record("mix_table", inputs=inputs,
                                   params={"sources": {k: list(v) for k, v in sources.items()},
                                           "on_missing_score": on_missing_score,
                                           "table_parts": n_parts})
    write_json(report_path, {"pool": pool, **report, "table_parts": n_parts,
                             "rows_per_part": [int(pq.ParquetFile(p).metadata.num_rows)
                                               for p in part_files(table_dir)],
                             "provenance": provenance})
    log.info("%s: mix table of %d images in %d part(s), sources %s", pool, report["n_pool"],
             n_parts, sorted(sources))
    return report


# ------------------------------------------------------------------ rule subset


def run_subset(name: str, spec: Mapping[str, Any], pool: Mapping[str, Any], table_dir: Path,
               out_dir: Path, language_summary: Path | None = None) -> dict[str, Any]:
    """The subset rule: one strategy of one pool, part by part. ``language_summary`` is the
    pool's caption_language summary (which language-id model ran), for a strategy with a
    text filter."""
    strategy = parse_strategy(name, spec)

    def resolve(source: str) -> str:
        return resolve_source(source, pool)

    columns = strategy_columns(strategy, resolve, table_columns(table_dir))
    needs = threshold_needs(strategy, resolve)
    score_columns = [score_column(s) for s in needs]
    thresholds = pool_thresholds(lambda: iter_parts(table_dir, score_columns), needs)
    language_id = None
    inputs = [Path(table_dir)]
    if strategy.text_filter is not None and language_summary is not None:
        language_id = json.loads(Path(language_summary).read_text())["language_id"]
        inputs.append(Path(language_summary))
    provenance = provenance_record("subset", inputs=inputs,
                                   params={"strategy": json.loads(json.dumps(spec)),
                                           "pool_sources": dict(pool_mix(pool).get("sources",
                                                                                   {}))})
    writer = SubsetWriter(strategy, out_dir)
    n_pool = 0
    for table in iter_parts(table_dir, columns):
        writer.add(select(strategy, table, thresholds, resolve))
        n_pool += table.num_rows
    summary = writer.close(n_pool, provenance, language_id)
    log.info("%s: %d samples (%d images) of %d; thresholds %s", name, summary["n_samples"],
             summary["n_images"], n_pool, summary["thresholds"])
    return summary
