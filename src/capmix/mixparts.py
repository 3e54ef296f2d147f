"""The mix jobs over a pool held in parts: the mix table in uid ranges, a strategy part by part.

A pool's mix table (every source's score and caption per fetched image, :func:`capmix.mix.
build_mix_table`) is too big for one process beyond DataComp medium: at small the old
whole-pool table peaked at 10.1 GiB, at large it extrapolates to 0.4-0.8 TB. So the table is
built and kept as ``n`` parts (``pools[].mix.table_parts``), part ``p`` holding the uids whose
first 32 bits fall in the ``p``-th of ``n`` equal ranges (:func:`uid_parts`). Uids are hashes, so
the parts are of even size; and because a part is a uid *range*, the parts' uid-sorted rows in
part order are the pool sorted by uid: a subset's DataComp uid file is the parts' selections
appended, bit for bit the whole-pool file, with no merge.

A map and a reduce, each a Snakemake rule (workflow/rules/mix.smk):

* :func:`run_scatter` (``mix_scatter``, only for n > 1) reads every input a batch at a time and
  appends each row to its part's file (:func:`scatter_rows`). Memory: one batch.
* :func:`run_table_part` (``mix_table_part``, one job per part, in parallel) builds and checks
  one part. Memory: one part's rows.
* :func:`run_mix_table` (``mix_table``) merges the parts' reports into the table's manifest,
  ``results/{pool}/mix/table.json``, which lists the parts: readers take the manifest.
* :func:`run_subset` (``subset``) finds the strategy's thresholds over every part in bounded
  memory (:func:`capmix.mix.pool_thresholds`: an exact radix select, equal to DataComp's
  formula on the whole pool), then selects part by part with them and appends each part's
  selection to the subset's files (:class:`capmix.mix.SubsetWriter`). Memory: one part.

Readers that want the whole table (the analyses, the image grid) read every part with
:func:`read_table`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from capmix.chunks import table_part_name
from capmix.mix import (
    CAPTION_TEXT_COLUMNS,
    CLUSTER_COLUMN,
    SHARD_COLUMN,
    CaptionSet,
    ScoreTableError,
    SubsetWriter,
    build_mix_table,
    pool_thresholds,
    score_column,
    select,
    strategy_columns,
    threshold_needs,
    with_metadata_columns,
)
from capmix.parquetio import stream_batches
from capmix.provenance import provenance_record, write_json, write_parquet_atomic
from capmix.shards import unified_schema
from capmix.sources import metadata_parts
from capmix.strategies import parse_strategy, pool_mix, resolve_source
from capmix.uids import arrow_uids_to_pairs

log = logging.getLogger(__name__)

#: Rows read from an input at a time while scattering.
BATCH_ROWS = 1 << 20
#: The scattered copy is a second copy of every mix input (temporary, but whole at once: 22-23
#: GB with zstd for the 128M-row bench's 36.6 GiB of inputs, ~2 TB at xlarge). zstd writes it
#: ~40% smaller than snappy at the same speed (measured on the bench's uids and captions in
#: 15,625-row groups: 84 -> 50 MiB and 32 -> 18 MiB per 1M rows, 0.4 s either way): random
#: uids and captions barely compress with snappy.
SCATTER_COMPRESSION = "zstd"


def part_file(directory: Path, part: int) -> Path:
    """Part ``part``'s file in a folder of parts (sorted names are uid order)."""
    return Path(directory) / f"{table_part_name(part)}.parquet"


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


def part_files(table: Path) -> list[Path]:
    """The parts of a mix table, in uid order, from its manifest (``table.json``)."""
    manifest = json.loads(Path(table).read_text())
    return [Path(table).parent / p for p in manifest["parts"]]


def table_columns(table: Path) -> list[str]:
    """The columns of a mix table (every part has the same)."""
    return list(pq.read_schema(part_files(table)[0]).names)


def read_table(table: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The whole mix table in memory, sorted by uid (for readers that need it all)."""
    frames = [pd.read_parquet(p, columns=list(columns) if columns else None)
              for p in part_files(table)]
    return pd.concat(frames, ignore_index=True)


def iter_parts(table: Path, columns: Sequence[str]) -> Iterator[pa.Table]:
    """The mix table a part at a time, in uid order (as Arrow: no Python object per row)."""
    for path in part_files(table):
        yield pq.read_table(path, columns=list(columns))


# ------------------------------------------------------------------ scattering inputs


def scatter_rows(files: Sequence[Path], columns: Sequence[str], n_parts: int, out_dir: Path,
                 keep: Any = None) -> None:
    """Rows of parquet inputs split into per-part files by uid (rule mix_scatter): ``files``
    are read a batch at a time and each row is appended to ``out_dir/part-NNNNN.parquet`` of
    its uid's part; every part's file is written, empty ones too, with the inputs' schema.
    ``keep`` is an optional Arrow filter expression rows must pass (e.g. fetched only)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    schema = unified_schema(files, columns)
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for path in files:
            for batch in stream_batches(path, BATCH_ROWS, columns):
                table = pa.Table.from_batches([batch])
                if keep is not None:
                    table = table.filter(keep)
                try:
                    table = table.cast(schema)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                    raise ValueError(f"{path}: columns {list(columns)} do not match the "
                                     f"other files of {out_dir} ({error})") from error
                try:
                    parts = uid_parts(table.column("uid"), n_parts)
                except ValueError as error:
                    raise ValueError(f"{path}: {error}") from error
                order = np.argsort(parts, kind="stable")
                bounds = np.searchsorted(parts[order], np.arange(n_parts + 1))
                ordered = table.take(pa.array(order))
                for part in np.flatnonzero(np.diff(bounds)):
                    if part not in writers:
                        writers[part] = pq.ParquetWriter(part_file(out_dir, part), schema,
                                                         compression=SCATTER_COMPRESSION)
                    writers[part].write_table(
                        ordered.slice(bounds[part], bounds[part + 1] - bounds[part]))
    finally:
        for writer in writers.values():
            writer.close()
    for part in range(n_parts):
        if part not in writers:
            pq.write_table(schema.empty_table(), part_file(out_dir, part),
                           compression=SCATTER_COMPRESSION)


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


@dataclass
class MixInputs:
    """What a pool's mix table is built from: the fetch index, each caption set's score table
    and caption files, and (if strategies need them) image clusters and caption languages."""

    index: Path
    score_paths: Mapping[str, Path]
    caption_files: Mapping[str, Sequence[Path]]
    clusters: Path | None = None
    caption_text: Path | None = None

    @classmethod
    def from_manifests(cls, index: Path, score_paths: Mapping[str, str | Path],
                       caption_manifests: Mapping[str, Sequence[str | Path]],
                       clusters: Path | None = None,
                       caption_text: Path | None = None) -> MixInputs:
        from capmix.caption import caption_files

        return cls(Path(index), {s: Path(p) for s, p in score_paths.items()},
                   {s: caption_files([Path(m) for m in ms])
                    for s, ms in caption_manifests.items()}, clusters, caption_text)

    def files(self) -> list[Path]:
        """Every input file (for provenance)."""
        found = [self.index, *self.score_paths.values()]
        for files in self.caption_files.values():
            found += list(files)
        return found + [p for p in (self.clusters, self.caption_text) if p is not None]

    def record(self) -> dict[str, Any]:
        """What :func:`run_scatter` notes beside the parts it writes (:meth:`from_record`)."""
        return {"index": str(self.index),
                "score_paths": {s: str(p) for s, p in self.score_paths.items()},
                "caption_sets": sorted(self.caption_files),
                "clusters": str(self.clusters) if self.clusters else None,
                "caption_text": str(self.caption_text) if self.caption_text else None}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> MixInputs:
        """The inputs a scatter was made from (caption sets by name only)."""
        return cls(Path(record["index"]), {s: Path(p) for s, p in record["score_paths"].items()},
                   {s: [] for s in record["caption_sets"]},
                   Path(record["clusters"]) if record["clusters"] else None,
                   Path(record["caption_text"]) if record["caption_text"] else None)

    def scattered(self, scatter_dir: Path) -> MixInputs:
        """The same inputs as :func:`run_scatter` wrote them into ``scatter_dir``: each one a
        folder of part files (:meth:`part`)."""
        return MixInputs(scatter_dir / "index",
                         {s: scatter_dir / "scores" / s for s in self.score_paths},
                         {s: [scatter_dir / "captions" / s] for s in self.caption_files},
                         scatter_dir / "clusters" if self.clusters else None,
                         scatter_dir / "caption_language" if self.caption_text else None)

    def part(self, part: int) -> MixInputs:
        """Part ``part`` of scattered inputs (a folder becomes its part file)."""
        def pick(path: Path) -> Path:
            return part_file(path, part) if path.is_dir() else path

        return MixInputs(pick(self.index), {s: pick(p) for s, p in self.score_paths.items()},
                         {s: [pick(f) for f in files] for s, files in self.caption_files.items()},
                         pick(self.clusters) if self.clusters else None,
                         pick(self.caption_text) if self.caption_text else None)


SCORE_COLUMNS = ("uid", "cos", "cos_all", "missing")


def index_columns(index: Path) -> list[str]:
    """The fetch index's columns the mix table reads: uid, status, and the shard of each
    image where the index has one (the table carries it into the subsets, for resharding)."""
    names = pq.read_schema(index).names
    return ["uid", "status"] + ([SHARD_COLUMN] if SHARD_COLUMN in names else [])

#: The file in a scatter folder naming the inputs it was made from.
SCATTER_RECORD = "inputs.json"
FETCHED = pc.field("status") == "fetched"


def allow_open_files(needed: int) -> None:
    """Raise this process's open-file limit to ``needed`` (scattering keeps one file open per
    part); a hard limit below it stops the job before any work, naming both numbers."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise OSError(f"scattering into this many parts keeps {needed} files open, but "
                          f"the hard limit is {hard} (ulimit -Hn): lower mix.table_parts or "
                          "raise the limit")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def run_scatter(inputs: MixInputs, n_parts: int, out_dir: Path) -> None:
    """The mix_scatter rule (pools with more than one part): every input's rows into
    ``out_dir/<input>/part-NNNNN.parquet`` by uid (:func:`scatter_rows`), a batch at a time."""
    out_dir = Path(out_dir)
    allow_open_files(n_parts + 64)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    write_json(out_dir / SCATTER_RECORD, {**inputs.record(), "parts": n_parts})
    # where each input goes is what the parts read back: MixInputs.scattered, in one place
    target = inputs.scattered(out_dir)
    scatter_rows([inputs.index], index_columns(inputs.index), n_parts, target.index,
                 keep=FETCHED)
    for name, path in inputs.score_paths.items():
        scatter_rows([path], SCORE_COLUMNS, n_parts, target.score_paths[name])
    for name, files in inputs.caption_files.items():
        scatter_rows(files, ["uid", "captions"], n_parts, target.caption_files[name][0])
    if inputs.clusters is not None and target.clusters is not None:
        scatter_rows([inputs.clusters], ["uid", CLUSTER_COLUMN], n_parts, target.clusters)
    if inputs.caption_text is not None and target.caption_text is not None:
        scatter_rows([inputs.caption_text], ["uid", *CAPTION_TEXT_COLUMNS], n_parts,
                     target.caption_text)


def run_table_part(pool: str, part: int, n_parts: int, sources: Mapping[str, Sequence[str]],
                   inputs: MixInputs | None, out_path: Path, report_path: Path,
                   scatter_dir: Path | None = None, on_missing_score: str = "error",
                   ) -> dict[str, Any]:
    """The mix_table_part rule: one uid range of the pool's mix table, loaded, checked and
    joined (:func:`capmix.mix.build_mix_table`), read from ``scatter_dir`` (what
    :func:`run_scatter` wrote, which names the ``inputs``) or, for a pool in one part, from
    ``inputs`` themselves."""
    if scatter_dir is not None:
        inputs = MixInputs.from_record(json.loads((Path(scatter_dir) / SCATTER_RECORD)
                                                  .read_text()))
        here = inputs.scattered(Path(scatter_dir)).part(part)
    else:
        assert inputs is not None
        here = inputs
    fetched = _read([here.index], index_columns(here.index), keep=FETCHED)
    pool_uids = fetched["uid"]
    sets = {source: [CaptionSet(s, here.score_paths[s], here.caption_files[s],
                                reported_as=inputs.score_paths[s]) for s in names]
            for source, names in sources.items()}
    clusters = (_read([here.clusters], ["uid", CLUSTER_COLUMN])
                if here.clusters is not None else None)
    caption_text = (_read([here.caption_text], ["uid", *CAPTION_TEXT_COLUMNS])
                    if here.caption_text is not None else None)
    try:
        table, report = build_mix_table(pool_uids.tolist(), sets, clusters, on_missing_score,
                                        caption_text)
    except ScoreTableError as error:
        raise ScoreTableError(f"part {part} of {n_parts} of pool '{pool}''s mix table: "
                              f"{error}") from error
    if SHARD_COLUMN in fetched.columns:  # each image's pool shard (a fetched uid has one)
        shard_of = fetched.drop_duplicates("uid").set_index("uid")[SHARD_COLUMN]
        table[SHARD_COLUMN] = table["uid"].map(shard_of).astype(object)
    write_parquet_atomic(table, Path(out_path), {"stage": "mix_table", "part": part,
                                                 "parts": n_parts})
    provenance = provenance_record("mix_table_part", inputs=here.files(), params={
        "sources": {k: list(v) for k, v in sources.items()}, "part": part, "parts": n_parts,
        "on_missing_score": on_missing_score})
    report = {"pool": pool, "part": part, "parts": n_parts, **report,
              "provenance": provenance}
    write_json(report_path, report)
    log.info("%s: part %d of %d: %d images", pool, part, n_parts, report["n_pool"])
    return report


def run_mix_table(pool: str, part_paths: Sequence[Path], part_reports: Sequence[Path],
                  manifest_path: Path) -> dict[str, Any]:
    """The mix_table rule (the reduce): the parts' reports merged into the table's manifest,
    which lists its parts (relative to the manifest, in uid order) and their rows."""
    reports = [json.loads(Path(p).read_text()) for p in part_reports]
    merged = _merge_reports(reports)
    manifest_path = Path(manifest_path)
    parts = [os.path.relpath(p, manifest_path.parent) for p in part_paths]
    write_json(manifest_path, {
        "pool": pool, **merged, "table_parts": len(parts), "parts": parts,
        "rows_per_part": [int(r["n_pool"]) for r in reports],
        "provenance": provenance_record("mix_table", inputs=list(part_paths),
                                        params={"parts": len(parts)})})
    log.info("%s: mix table of %d images in %d part(s)", pool, merged["n_pool"], len(parts))
    return merged


def build_table(pool: str, sources: Mapping[str, Sequence[str]], inputs: MixInputs,
                manifest_path: Path, n_parts: int = 1,
                on_missing_score: str = "error") -> dict[str, Any]:
    """Scatter, every part and the reduce in one process: what the three rules do, for tests
    and benchmarks that build a table without Snakemake. Parts go beside the manifest, in
    ``<manifest stem>/``."""
    manifest_path = Path(manifest_path)
    table_dir = manifest_path.with_suffix("")
    scatter_dir = manifest_path.with_name(manifest_path.stem + ".scatter") if n_parts > 1 \
        else None
    if scatter_dir is not None:
        run_scatter(inputs, n_parts, scatter_dir)
    paths, reports = [], []
    try:
        for part in range(n_parts):
            paths.append(part_file(table_dir, part))
            reports.append(table_dir / f"{table_part_name(part)}.json")
            run_table_part(pool, part, n_parts, sources, inputs, paths[-1], reports[-1],
                           scatter_dir, on_missing_score)
    finally:
        if scatter_dir is not None:
            shutil.rmtree(scatter_dir, ignore_errors=True)
    return run_mix_table(pool, paths, reports, manifest_path)


# ------------------------------------------------------------------ rule mix_metadata_column


class MetadataColumnError(ValueError):
    """A column strategies filter on is not in the pool's metadata; names files and column."""


def run_metadata_column(pool: str, column: str, metadata_dir: Path, n_parts: int,
                        out_dir: Path, used_by: Sequence[str] = ()) -> dict[str, Any]:
    """The mix_metadata_column rule: one kept source column of the pool's metadata (every row,
    fetched or not), as uid and that column in the mix table's uid-range parts, for the subset
    jobs of strategies that filter on it (``metadata_filter``; :func:`run_subset`).

    Its own job and folder per column, beside the mix table rather than in it: adding a
    strategy that filters on a column rebuilds neither the pool's table nor any other
    strategy's subset, and a second strategy on the same column reuses it. Every metadata
    file's schema is checked first (a missing column stops here, naming the files and the
    strategies ``used_by``), then the rows are scattered a batch at a time (memory: one batch)
    into a staging folder that replaces ``out_dir`` only when complete."""
    files = metadata_parts(Path(metadata_dir))
    problems = []
    for path in files:
        names = pq.read_schema(path).names
        if column not in names:
            problems.append(f"{path}: no column '{column}' (columns: {names})")
    if problems:
        who = f" (strategies {', '.join(used_by)})" if used_by else ""
        raise MetadataColumnError(
            f"pool '{pool}': a metadata_filter{who} names column '{column}', which the pool's "
            f"metadata does not keep (pools[].source.keep_columns):\n" + "\n".join(problems))
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    scatter_rows(files, ["uid", column], n_parts, staging)
    manifest = {"pool": pool, "column": column, "parts": n_parts,
                "provenance": provenance_record("mix_metadata_column", inputs=files,
                                                params={"column": column, "parts": n_parts})}
    write_json(staging / "manifest.json", manifest)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    log.info("%s: metadata column %s in %d part(s)", pool, column, n_parts)
    return manifest


def read_metadata_parts(columns: Mapping[str, Path], part: int) -> dict[str, pa.Table]:
    """Part ``part`` of each metadata column folder (:func:`run_metadata_column`)."""
    return {column: pq.read_table(part_file(folder, part), columns=["uid", column])
            for column, folder in columns.items()}


# ------------------------------------------------------------------ rule subset


def run_subset(name: str, spec: Mapping[str, Any], pool: Mapping[str, Any], table: Path,
               out_dir: Path, language_summary: Path | None = None,
               metadata_columns: Mapping[str, Path] | None = None) -> dict[str, Any]:
    """The subset rule: one strategy of one pool, part by part of the mix table whose manifest
    is ``table``. ``language_summary`` is the
    pool's caption_language summary (which language-id model ran), for a strategy with a
    text filter; ``metadata_columns`` (column -> its folder, :func:`run_metadata_column`) the
    kept columns a strategy with a metadata filter reads, joined to each part."""
    strategy = parse_strategy(name, spec)

    def resolve(source: str) -> str:
        return resolve_source(source, pool)

    columns = strategy_columns(strategy, resolve, table_columns(table))
    needs = threshold_needs(strategy, resolve)
    score_columns = [score_column(s) for s in needs]
    thresholds = pool_thresholds(lambda: iter_parts(table, score_columns), needs)
    language_id = None
    inputs = [Path(table)]  # the manifest: its job record hashes the parts
    if strategy.text_filter is not None and language_summary is not None:
        language_id = json.loads(Path(language_summary).read_text())["language_id"]
        inputs.append(Path(language_summary))
    side = dict(metadata_columns or {})
    if strategy.metadata_filter is not None:
        absent = [c for c in strategy.metadata_filter.columns if c not in side]
        if absent:
            raise ValueError(f"strategy '{name}' filters on metadata column(s) {absent}, but "
                             "the subset job was given none (mix_metadata_column's folders)")
        n_parts = len(part_files(table))
        for column in strategy.metadata_filter.columns:
            made = json.loads((Path(side[column]) / "manifest.json").read_text())["parts"]
            if made != n_parts:
                raise ValueError(f"metadata column '{column}' ({side[column]}) is in {made} "
                                 f"part(s), the mix table in {n_parts}: rebuild it")
            inputs.append(Path(side[column]) / "manifest.json")
    provenance = provenance_record("subset", inputs=inputs,
                                   params={"strategy": json.loads(json.dumps(spec)),
                                           "pool_sources": dict(pool_mix(pool).get("sources",
                                                                                   {}))})
    writer = SubsetWriter(strategy, out_dir)
    n_pool = 0
    try:
        for index, part in enumerate(iter_parts(table, columns)):
            if strategy.metadata_filter is not None:
                part = with_metadata_columns(part, read_metadata_parts(
                    {c: side[c] for c in strategy.metadata_filter.columns}, index))
            writer.add(select(strategy, part, thresholds, resolve))
            n_pool += part.num_rows
        summary = writer.close(n_pool, provenance, language_id)
    except BaseException:
        writer.abort()
        raise
    log.info("%s: %d samples (%d images) of %d; thresholds %s", name, summary["n_samples"],
             summary["n_images"], n_pool, summary["thresholds"])
    return summary
