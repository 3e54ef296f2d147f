"""Sources: where a pool's metadata comes from, and its normalisation.

A source is config data (``pools[].source``): a type (toy, datacomp, table),
where its files are, and how its columns map to ``uid``, ``url`` and ``text``.
This stage turns any source into ``results/{pool}/metadata/part-NNNNN.parquet``
with those three columns first, plus the columns the source ships and we keep
(DataComp's CLIP scores, face boxes; for DataComp the ``.npz`` embeddings are
placed beside each part, row-aligned).

Everything is checked *before* anything is written or fetched: a missing
mapped column, malformed or duplicate uids, empty urls or an empty source stop
the run with the file and the rows named.
"""

from __future__ import annotations

import logging
import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from capmix.provenance import provenance_record, sha256_file, write_json
from capmix.uids import derive_uid, duplicate_positions, uids_to_pairs

log = logging.getLogger(__name__)

CORE_COLUMNS = ("uid", "url", "text")
TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".jsonl": "jsonl"}
#: How many example rows an error message lists.
EXAMPLES = 5


class MetadataError(ValueError):
    """Source metadata that cannot be used; the message names file, key and rows."""


@dataclass(frozen=True)
class ColumnMap:
    """Which source column holds uid, url and text; ``uid=None`` derives the uid."""

    uid: str | None = "uid"
    url: str = "url"
    text: str = "text"

    @classmethod
    def from_config(cls, columns: Mapping[str, Any] | None) -> ColumnMap:
        columns = columns or {}
        return cls(
            uid=columns.get("uid", "uid"),
            url=columns.get("url", "url"),
            text=columns.get("text", "text"),
        )

    def is_identity(self) -> bool:
        return (self.uid, self.url, self.text) == CORE_COLUMNS


# --------------------------------------------------------------------------- reading


def is_url(path: str) -> bool:
    return urllib.parse.urlparse(path).scheme in ("http", "https", "file", "ftp")


def table_format(path: Path | str, declared: str = "auto") -> str:
    """The table format: declared, or from the file suffix (``.gz`` etc. ignored)."""
    if declared != "auto":
        return declared
    suffixes = [s.lower() for s in Path(str(path)).suffixes]
    for suffix in reversed(suffixes):
        if suffix in TABLE_FORMATS:
            return TABLE_FORMATS[suffix]
    raise MetadataError(
        f"{path}: cannot tell the table format from the name; set source.format "
        f"to one of {sorted(set(TABLE_FORMATS.values()))}"
    )


def read_table(path: Path | str, fmt: str, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a metadata file as an Arrow table (text columns as strings, never 'NA' -> null)."""
    try:
        if fmt == "parquet":
            return pq.read_table(path, columns=list(columns) if columns else None)
        if fmt in ("csv", "tsv"):
            frame = pd.read_csv(
                path, sep="," if fmt == "csv" else "\t", dtype=str, keep_default_na=False,
                quoting=0 if fmt == "csv" else 3, usecols=columns,
            )
        elif fmt == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
            if columns:
                frame = frame[[c for c in columns if c in frame.columns]]
        else:
            raise MetadataError(f"{path}: unknown table format '{fmt}'")
    except (ValueError, OSError, pa.ArrowException) as exc:
        if isinstance(exc, MetadataError):
            raise
        raise MetadataError(f"{path}: cannot read as {fmt}: {exc}") from exc
    return pa.Table.from_pandas(frame, preserve_index=False)


def file_columns(path: Path | str, fmt: str) -> list[str]:
    if fmt == "parquet":
        return list(pq.read_schema(path).names)
    if fmt in ("csv", "tsv"):
        return list(pd.read_csv(path, sep="," if fmt == "csv" else "\t", nrows=0).columns)
    return list(read_table(path, fmt).column_names)


# ------------------------------------------------------------------------ validation


def _examples(rows: np.ndarray | Sequence[int], values: Sequence[Any] | None = None) -> str:
    shown = []
    for i, row in enumerate(list(rows)[:EXAMPLES]):
        shown.append(f"row {int(row)}" + (f" ({values[i]!r})" if values is not None else ""))
    more = f" and {len(rows) - EXAMPLES} more" if len(rows) > EXAMPLES else ""
    return ", ".join(shown) + more


def check_columns(path: Path | str, present: Sequence[str], colmap: ColumnMap,
                  keep: Sequence[str]) -> list[str]:
    problems = []
    for role in CORE_COLUMNS:
        column = getattr(colmap, role)
        if column is not None and column not in present:
            problems.append(
                f"{path}: mapped column '{column}' (for {role}) is missing; "
                f"columns present: {list(present)}"
            )
    for column in keep:
        if column not in present:
            problems.append(f"{path}: keep_columns names '{column}', which is missing")
        elif column in CORE_COLUMNS and getattr(colmap, column) != column:
            problems.append(f"{path}: kept column '{column}' would clash with the mapped {column}")
    return problems


def core_columns(table: pa.Table, colmap: ColumnMap) -> tuple[list[str], pa.ChunkedArray,
                                                               pa.ChunkedArray]:
    """uids (given or derived), urls and texts of one file, as Python/Arrow values."""
    urls = pc.cast(table[colmap.url], pa.string())
    texts = pc.fill_null(pc.cast(table[colmap.text], pa.string()), "")
    if colmap.uid is None:
        uids = [derive_uid(u or "", t) for u, t in zip(urls.to_pylist(), texts.to_pylist(),
                                                       strict=True)]
    else:
        uids = pc.cast(table[colmap.uid], pa.string()).to_pylist()
    return uids, urls, texts


def check_rows(path: Path | str, uids: Sequence[Any], urls: pa.ChunkedArray) -> list[str]:
    problems = []
    uid_array = pa.array(uids, type=pa.string())
    well_formed = pc.fill_null(pc.match_substring_regex(uid_array, r"^[0-9a-f]{32}$"), False)
    bad = np.flatnonzero(~well_formed.to_numpy(zero_copy_only=False))
    if len(bad):
        problems.append(
            f"{path}: {len(bad)} malformed uid(s) (need 32 lowercase hex characters): "
            + _examples(bad, [uids[i] for i in bad[:EXAMPLES]])
        )
    empty_url = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(urls), ""), True)
    bad_url = np.flatnonzero(empty_url.to_numpy(zero_copy_only=False))
    if len(bad_url):
        problems.append(f"{path}: {len(bad_url)} row(s) with an empty url: " + _examples(bad_url))
    return problems


def check_duplicates(files: Sequence[tuple[str, list[str]]]) -> list[str]:
    """Duplicate uids within and across files, each named by file and row.

    Expects well-formed uids (malformed ones are reported first and stop the run).
    """
    flat = [uid for _, uids in files for uid in uids]
    groups = duplicate_positions(uids_to_pairs(flat))
    if not groups:
        return []
    starts = np.cumsum([0] + [len(uids) for _, uids in files])

    def where(position: int) -> str:
        index = int(np.searchsorted(starts, position, side="right")) - 1
        return f"{files[index][0]} row {position - starts[index]}"

    shown = [f"uid {flat[group[0]]} at " + "; ".join(where(int(i)) for i in group[:EXAMPLES])
             for group in groups[:EXAMPLES]]
    more = f" (and {len(groups) - EXAMPLES} more)" if len(groups) > EXAMPLES else ""
    total = sum(len(group) - 1 for group in groups)
    return [f"{total} duplicate uid row(s) in {len(groups)} uid(s){more}: " + " | ".join(shown)]


# ----------------------------------------------------------------------- normalising


@dataclass(frozen=True)
class SourceFile:
    """One metadata file of a source, with its npz sibling when the source ships one."""

    path: Path
    fmt: str
    npz: Path | None = None


def datacomp_files(directory: Path, max_files: int | None = None) -> list[SourceFile]:
    """DataComp metadata in a directory: ``*.parquet`` (any depth), npz by the same stem."""
    parquets = sorted(p for p in directory.rglob("*.parquet") if not p.name.startswith("."))
    if max_files is not None:
        parquets = parquets[:max_files]
    files = []
    for parquet in parquets:
        npz = parquet.with_suffix(".npz")
        files.append(SourceFile(parquet, "parquet", npz if npz.exists() else None))
    return files


def source_files(source: Mapping[str, Any], inputs: Sequence[Path]) -> list[SourceFile]:
    """The metadata files of a source, given the rule's input paths."""
    kind = source["type"]
    if kind == "toy":
        return [SourceFile(Path(inputs[0]), "parquet")]
    if kind == "table":
        path = Path(inputs[0])
        if path.name == "download.json":  # the table was fetched from a URL
            path = path.parent / Path(urllib.parse.urlparse(source["path"]).path).name
        return [SourceFile(path, table_format(source["path"], source.get("format", "auto")))]
    if kind == "datacomp":
        directory = Path(inputs[0])
        if directory.name == "download.json":
            directory = directory.parent
        return datacomp_files(directory, source.get("max_files"))
    raise MetadataError(f"unknown source type '{kind}'")


def keep_list(source: Mapping[str, Any], present: Sequence[str], colmap: ColumnMap) -> list[str]:
    keep = source.get("keep_columns", "all" if source["type"] != "table" else [])
    mapped = {c for c in (colmap.uid, colmap.url, colmap.text) if c}
    if keep == "all":
        return [c for c in present if c not in mapped and c not in CORE_COLUMNS]
    return list(keep)


def materialise(src: Path, dst: Path) -> str:
    """Place a file that needs no rewriting: hard link if possible, else copy.

    DataComp's large pool has 300 GB of parquet and 7.5 TB of npz; rewriting
    them only to rename nothing would double the disk use.
    """
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
        return "hardlink"
    except OSError:
        shutil.copyfile(src, dst)
        return "copy"


def build_metadata(pool: str, source: Mapping[str, Any], files: Sequence[SourceFile],
                   out_dir: Path) -> dict[str, Any]:
    """Check every file, then write normalised parts and ``manifest.json`` to out_dir."""
    colmap = ColumnMap.from_config(source.get("columns"))
    if not files:
        raise MetadataError(f"pool '{pool}': source has no metadata files")

    # Pass 1: check everything, write nothing.
    problems: list[str] = []
    plans = []
    all_uids: list[tuple[str, list[str]]] = []
    for file in files:
        present = file_columns(file.path, file.fmt)
        keep = keep_list(source, present, colmap)
        column_problems = check_columns(file.path, present, colmap, keep)
        if column_problems:
            problems += column_problems
            continue
        needed = [c for c in dict.fromkeys((colmap.uid, colmap.url, colmap.text)) if c]
        table = read_table(file.path, file.fmt, needed)
        uids, urls, _ = core_columns(table, colmap)
        problems += check_rows(file.path, uids, urls)
        all_uids.append((str(file.path), uids))
        plans.append((file, keep, table.num_rows))
    if not problems:
        problems += check_duplicates(all_uids)
    total_rows = sum(rows for _, _, rows in plans)
    if not problems and total_rows == 0:
        problems.append(
            f"pool '{pool}': source is empty (0 rows in {', '.join(str(f.path) for f in files)})"
        )
    if problems:
        raise MetadataError(f"pool '{pool}': metadata rejected before any download:\n  "
                            + "\n  ".join(problems))

    # Pass 2: write parts (atomically per file) and the manifest.
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for index, (file, keep, rows) in enumerate(plans):
        part = out_dir / f"part-{index:05d}.parquet"
        fast = (file.fmt == "parquet" and colmap.is_identity()
                and source.get("keep_columns", "all") == "all"
                and pq.read_schema(file.path).names[:3] == list(CORE_COLUMNS))
        if fast:
            how = materialise(file.path, part)
        else:
            table = read_table(file.path, file.fmt)
            uids, urls, texts = core_columns(table, colmap)
            columns = {"uid": pa.array(uids, pa.string()), "url": urls, "text": texts}
            columns.update({c: table[c] for c in keep})
            tmp = part.with_name(part.name + ".tmp")
            pq.write_table(pa.table(columns), tmp)
            os.replace(tmp, part)
            how = "rewritten"
        entry = {"part": part.name, "source_file": str(file.path), "rows": rows, "how": how,
                 "source_sha256": sha256_file(file.path)}
        if file.npz is not None:
            entry["npz"] = part.with_suffix(".npz").name
            entry["npz_how"] = materialise(file.npz, part.with_suffix(".npz"))
        parts.append(entry)
        log.info("metadata part %s: %d rows from %s (%s)", part.name, rows, file.path, how)

    manifest = {
        "pool": pool,
        "source": dict(source),
        "rows": total_rows,
        "uid_derived": colmap.uid is None,
        "columns": list(CORE_COLUMNS) + list(plans[0][1]),
        "parts": parts,
        "toy": source["type"] == "toy",
        "provenance": provenance_record("metadata", params={"source": dict(source)}),
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def read_manifest(metadata_dir: Path) -> dict[str, Any]:
    import json

    path = Path(metadata_dir) / "manifest.json"
    if not path.exists():
        raise MetadataError(f"{path}: missing; run the metadata stage first")
    with open(path) as handle:
        return json.load(handle)


def metadata_parts(metadata_dir: Path) -> list[Path]:
    manifest = read_manifest(metadata_dir)
    return [Path(metadata_dir) / entry["part"] for entry in manifest["parts"]]


# ------------------------------------------------------------------------- downloads


def download_table(url: str, dest_dir: Path) -> dict[str, Any]:
    """Fetch a table given by URL once into dest_dir (http(s), ftp or file://)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = Path(urllib.parse.urlparse(url).path).name or "table"
    dest = dest_dir / name
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        raise MetadataError(f"cannot download table {url}: {exc}") from exc
    os.replace(tmp, dest)
    return {"url": url, "files": [{"path": name, "bytes": dest.stat().st_size,
                                   "sha256": sha256_file(dest)}]}


def datacomp_patterns(repo_files: Sequence[str], include_npz: bool,
                      max_files: int | None) -> list[str]:
    """Files to fetch from a DataComp repo: sorted parquet (first max_files), npz siblings."""
    parquets = sorted(f for f in repo_files if f.endswith(".parquet"))
    if max_files is not None:
        parquets = parquets[:max_files]
    if not parquets:
        raise MetadataError("the DataComp repo lists no .parquet files")
    wanted = list(parquets)
    if include_npz:
        available = set(repo_files)
        wanted += [p[: -len(".parquet")] + ".npz" for p in parquets
                   if p[: -len(".parquet")] + ".npz" in available]
    return wanted


def download_datacomp(source: Mapping[str, Any], dest_dir: Path, workers: int = 8,
                      hub: Any = None) -> dict[str, Any]:
    """Download DataComp metadata with huggingface_hub (resumable: done files are skipped).

    ``hub`` is the ``huggingface_hub`` module or a stand-in with the same two
    functions (tests use one; nothing in the tests reaches a hub).
    """
    if hub is None:
        import huggingface_hub as hub
    repo, revision = source["hf_repo"], source.get("revision")
    repo_files = hub.list_repo_files(repo, repo_type="dataset", revision=revision)
    wanted = datacomp_patterns(repo_files, source.get("include_npz", False),
                               source.get("max_files"))
    log.info("downloading %d files of %s into %s", len(wanted), repo, dest_dir)
    hub.snapshot_download(repo, repo_type="dataset", revision=revision, local_dir=str(dest_dir),
                          allow_patterns=wanted, max_workers=workers)
    missing = [f for f in wanted if not (dest_dir / f).exists()]
    if missing:
        raise MetadataError(f"{repo}: download finished without {missing[:EXAMPLES]}")
    return {"hf_repo": repo, "revision": revision,
            "files": [{"path": f, "bytes": (dest_dir / f).stat().st_size} for f in wanted]}


def download_source(source: Mapping[str, Any], dest_dir: Path, workers: int = 8) -> None:
    """The download_metadata stage: fetch what a remote source needs, then a record of it."""
    if source["type"] == "datacomp":
        record = download_datacomp(source, dest_dir, workers)
    elif source["type"] == "table":
        record = download_table(source["path"], dest_dir)
    else:
        raise MetadataError(f"source type '{source['type']}' has nothing to download")
    record["provenance"] = provenance_record("download_metadata", params={"source": dict(source)},
                                             packages=("huggingface_hub",))
    write_json(dest_dir / "download.json", record)


def needs_download(source: Mapping[str, Any]) -> bool:
    if source["type"] == "datacomp":
        return not source.get("local_dir")
    if source["type"] == "table":
        return is_url(source["path"])
    return False
