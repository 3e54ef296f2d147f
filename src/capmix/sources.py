"""Sources: where a pool's metadata comes from, and its normalisation.

A source is config data (``pools[].source``): a type (toy, datacomp, table),
where its files are, and how its columns map to ``uid``, ``url`` and ``text``.
This stage turns any source into ``results/{pool}/metadata/part-NNNNN.parquet``
with those three columns first, plus the columns the source ships and we keep
(DataComp's CLIP scores, face boxes; for DataComp the ``.npz`` embeddings are
placed beside each part, row-aligned).

Everything is checked *before* anything is written or fetched: a missing
mapped column, malformed or duplicate uids, empty urls or an empty source stop
the run with the file and the rows named (a table source may drop rows that repeat an
earlier row exactly instead: ``duplicates: drop``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from capmix.provenance import file_checksum, provenance_record, sha256_file, write_json
from capmix.sourcespec import (
    FOLDER_FORMATS,
    REMOTE_URL_SCHEMES,
    TABLE_FORMATS,
    allowed_url_schemes,
)
from capmix.uids import (
    derive_key_uid,
    derive_uid,
    duplicate_positions,
    pairs_to_uids,
    repeats,
    uid_sample_mask,
    uids_to_pairs,
)
from capmix.webformats import (
    READERS,
    FormatError,
    examples,
    header_columns,
    lines_not_utf8,
    read_json_document,
)

log = logging.getLogger(__name__)

CORE_COLUMNS = ("uid", "url", "text")
#: The formats ``format: auto`` tells from a file's suffix (the others must be declared).
FORMAT_BY_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".jsonl": "jsonl"}
#: Formats whose columns are known only from the whole file (no header): parsed once, whole.
WHOLE_FILE_FORMATS = ("jsonl", "coco_captions")
#: The columns a COCO-caption file adds to each image's own fields: its captions (a list, in
#: the file's order: the references CIDEr scores against) and the first of them.
COCO_CAPTIONS_COLUMN = "captions"
COCO_FIRST_CAPTION_COLUMN = "caption"
#: How many example rows an error message lists.
EXAMPLES = 5


class MetadataError(ValueError):
    """Source metadata that cannot be used; the message names file, key and rows."""


@dataclass(frozen=True)
class ColumnMap:
    """Which source column holds uid, url and text; ``uid=None`` derives the uid: from
    ``uid_from`` (a key column: the dataset's own sample id) when given, else from url+text.
    ``text_item``: the text column holds a list of captions (COCO's ``captions``) and item
    ``text_item`` of each trains (0: the first; -1: the last)."""

    uid: str | None = "uid"
    url: str = "url"
    text: str = "text"
    uid_from: str | None = None
    text_item: int | None = None

    @classmethod
    def from_config(cls, columns: Mapping[str, Any] | None) -> ColumnMap:
        columns = columns or {}
        return cls(
            uid=columns.get("uid", "uid"),
            url=columns.get("url", "url"),
            text=columns.get("text", "text"),
            uid_from=columns.get("uid_from") if columns.get("uid", "uid") is None else None,
            text_item=columns.get("text_item"),
        )

    def is_identity(self) -> bool:
        return (self.uid, self.url, self.text) == CORE_COLUMNS

    def read(self) -> list[str]:
        """The source columns the core columns are made from, once each."""
        return [c for c in dict.fromkeys((self.uid_from or self.uid, self.url, self.text)) if c]


# --------------------------------------------------------------------------- reading
#
# One parser per format, used for both the checks and the write: what is checked is exactly
# what is written. Third-party tables are parsed strictly: a CSV/TSV row with the wrong number
# of fields, bytes that are not UTF-8, a JSON line that is not an object, or a mapped column
# holding lists or objects stops the run with the file and line (or row) named, instead of
# being read with shifted columns (pandas silently turns extra leading fields into an index).
# Numbers in a mapped column are read as their text.


def table_format(path: Path | str, declared: str = "auto") -> str:
    """The table format: declared, or from the file suffix (``.gz`` etc. ignored)."""
    if declared != "auto":
        return declared
    suffixes = [s.lower() for s in Path(str(path)).suffixes]
    for suffix in reversed(suffixes):
        if suffix in FORMAT_BY_SUFFIX:
            return FORMAT_BY_SUFFIX[suffix]
    raise MetadataError(
        f"{path}: cannot tell the table format from the name; set source.format "
        f"to one of {list(TABLE_FORMATS)}"
    )


def _delimited_header(path: Path | str, fmt: str) -> list[str]:
    """The header row's names; the same quoting rules as :func:`_read_delimited`."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline().decode("utf-8").rstrip("\r\n")
        header = next(csv.reader([first], delimiter="," if fmt == "csv" else "\t",
                                 quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE),
                      None)
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{path}: the header line is not UTF-8 text") from exc
    except csv.Error as exc:
        raise MetadataError(f"{path}: cannot read the header as {fmt}: {exc}") from exc
    if any(ord(ch) < 32 and ch != "\t" for ch in first):
        raise MetadataError(f"{path}: the header line holds control characters: binary data, "
                            f"not {fmt} text (set source.format to the file's real format)")
    if not header or not any(name.strip() for name in header):
        raise MetadataError(f"{path}: has no header line (column names)")
    duplicated = sorted({n for n in header if header.count(n) > 1})
    if duplicated:
        raise MetadataError(f"{path}: the header names column(s) {duplicated} more than once")
    return header


def _read_delimited(path: Path | str, fmt: str, columns: Sequence[str] | None) -> pa.Table:
    """CSV (RFC 4180 quoting) or TSV (no quoting: a quote is text), every column a string.

    pyarrow's reader, because it reports each row whose field count differs from the header's
    (``invalid_row_handler``) where pandas shifts or drops fields without a word.
    """
    import pyarrow.csv as pacsv

    header = _delimited_header(path, fmt)
    ragged: list[str] = []

    def on_invalid_row(row: Any) -> str:
        ragged.append(f"line {row.number} ({row.actual_columns} fields)")
        return "skip"

    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter="," if fmt == "csv" else "\t",
                                         quote_char='"' if fmt == "csv" else False,
                                         newlines_in_values=fmt == "csv",
                                         invalid_row_handler=on_invalid_row),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            include_columns=list(columns) if columns else None,
            strings_can_be_null=False, quoted_strings_can_be_null=False),
    )
    if ragged:
        raise MetadataError(f"{path}: {len(ragged)} row(s) do not have the header's "
                            f"{len(header)} fields: {examples(ragged)}")
    return table


def _read_jsonl(path: Path | str, columns: Sequence[str] | None) -> pa.Table:
    """JSON lines, one object per line; keys become columns (absent keys are null)."""
    rows: list[dict[str, Any]] = []
    line_of_row: list[int] = []
    problems: list[str] = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                problems.append(f"line {number} (not UTF-8)")
                continue
            except json.JSONDecodeError as exc:
                problems.append(f"line {number} (not JSON: {exc.msg})")
                continue
            if not isinstance(value, dict):
                problems.append(f"line {number} (a JSON {type(value).__name__}, not an object)")
                continue
            rows.append(value)
            line_of_row.append(number)
    if problems:
        raise MetadataError(f"{path}: {len(problems)} unreadable JSON line(s): "
                            f"{examples(problems)}")
    return _records_table(path, rows, [f"line {n}" for n in line_of_row], columns)


def _records_table(path: Path | str, rows: Sequence[Mapping[str, Any]], where: Sequence[str],
                   columns: Sequence[str] | None) -> pa.Table:
    """JSON objects as a table: their keys become columns (absent keys are null); a column
    whose values have different types names the rows (``where[i]``: "line 3", "image 3")."""
    names = list(dict.fromkeys(key for row in rows for key in row))
    if columns:
        names = [c for c in columns if c in names]
    arrays = {}
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            kinds = [type(v).__name__ for v in values if v is not None]
            usual = Counter(kinds).most_common(1)[0][0]  # ties: the first row's type
            odd = [f"{where[i]} ({type(v).__name__})" for i, v in enumerate(values)
                   if v is not None and type(v).__name__ != usual]
            raise MetadataError(f"{path}: column '{name}' holds {usual} values but also "
                                f"{examples(odd)}") from exc
    return pa.table(arrays) if arrays else pa.table({})


def _read_coco_captions(path: Path | str, columns: Sequence[str] | None) -> pa.Table:
    """A COCO-caption annotation file (COCO captions' own format, which NoCaps and others
    use): ``{"images": [{"id": ..., ...}], "annotations": [{"image_id": ..., "caption": ...}]}``.

    One row per image, in the file's order: the image's own fields (``id``, ``file_name``,
    ``coco_url``, ...), its captions as a list (:data:`COCO_CAPTIONS_COLUMN`, in the file's
    order) and the first of them (:data:`COCO_FIRST_CAPTION_COLUMN`). An annotation of an
    image the file does not list, a caption that is not text, an image listed twice or an
    image without a caption stops the stage, naming them.
    """
    try:
        document = read_json_document(path)
    except FormatError as exc:
        raise MetadataError(str(exc)) from exc
    if (not isinstance(document, dict) or not isinstance(document.get("images"), list)
            or not isinstance(document.get("annotations"), list)):
        raise MetadataError(f"{path}: not a COCO-caption file (a JSON object with the lists "
                            "'images' and 'annotations')")
    added = (COCO_CAPTIONS_COLUMN, COCO_FIRST_CAPTION_COLUMN)
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    position: dict[Any, int] = {}
    for i, image in enumerate(document["images"]):
        if not isinstance(image, dict) or isinstance(image.get("id"), (dict, list, type(None))):
            problems.append(f"images[{i}] is not an object with an 'id'")
            continue
        clash = [k for k in added if k in image]
        if clash:
            problems.append(f"images[{i}] has the field(s) {clash}, which the captions fill")
        if image["id"] in position:
            problems.append(f"images[{i}] repeats the id {image['id']!r} of "
                            f"images[{position[image['id']]}]")
            continue
        position[image["id"]] = len(rows)
        rows.append({**image, COCO_CAPTIONS_COLUMN: []})
    for j, note in enumerate(document["annotations"]):
        image_id = note.get("image_id") if isinstance(note, dict) else None
        if isinstance(image_id, (dict, list)) or image_id not in position:
            problems.append(f"annotations[{j}] names no image of the file (image_id "
                            f"{image_id!r})")
        elif not isinstance(note.get("caption"), str):
            problems.append(f"annotations[{j}]: the caption is "
                            f"{type(note.get('caption')).__name__}, not text")
        else:
            rows[position[image_id]][COCO_CAPTIONS_COLUMN].append(note["caption"])
    bare = [str(row["id"]) for row in rows if not row[COCO_CAPTIONS_COLUMN]]
    if bare:
        problems.append(f"{len(bare)} image(s) without a caption: id {examples(bare)}")
    if problems:
        raise MetadataError(f"{path}: {len(problems)} problem(s) in the COCO-caption file: "
                            + "; ".join(problems[:EXAMPLES])
                            + (f" and {len(problems) - EXAMPLES} more"
                               if len(problems) > EXAMPLES else ""))
    for row in rows:
        row[COCO_FIRST_CAPTION_COLUMN] = row[COCO_CAPTIONS_COLUMN][0]
    return _records_table(path, rows, [f"image {row['id']!r}" for row in rows], columns)


def _check_is_file(path: Path | str, fmt: str) -> None:
    """A directory or an empty file is named before any parser sees it."""
    path_obj = Path(str(path))
    if path_obj.is_dir():
        raise MetadataError(f"{path}: is a directory, not a {fmt} file")
    if path_obj.exists() and path_obj.stat().st_size == 0:
        raise MetadataError(f"{path}: is empty (0 bytes)")


def read_table(path: Path | str, fmt: str, columns: Sequence[str] | None = None,
               source: Mapping[str, Any] | None = None,
               listed: tuple[str, pa.Array] | None = None) -> pa.Table:
    """Read a metadata file as an Arrow table (text columns as strings, never 'NA' -> null).

    Every failure is a :class:`MetadataError` naming the file (and the lines, where the format
    has lines): a directory, an empty file, a file that is not in the declared format. The
    web datasets' formats (:data:`capmix.webformats.READERS`) read ``source``'s options
    (``column_names``, ``line_files``); ``listed = (column, keys)`` keeps only the rows whose
    column is among keys (a subset list), while reading where the format streams.
    """
    if fmt in READERS:
        if fmt != "aligned_lines":  # a folder of line-aligned files
            _check_is_file(path, fmt)
        try:
            return READERS[fmt](Path(path), source or {}, columns, listed)
        except FormatError as exc:
            raise MetadataError(str(exc)) from exc
    _check_is_file(path, fmt)
    try:
        if fmt == "parquet":
            return pq.read_table(path, columns=list(columns) if columns else None)
        if fmt in ("csv", "tsv"):
            return _read_delimited(path, fmt, columns)
        if fmt == "jsonl":
            return _read_jsonl(path, columns)
        if fmt == "coco_captions":
            return _read_coco_captions(path, columns)
        raise MetadataError(f"{path}: unknown table format '{fmt}'")
    except MetadataError:
        raise
    except (ValueError, OSError, pa.ArrowException) as exc:
        if fmt in ("csv", "tsv") and "UTF8" in str(exc):
            bad = lines_not_utf8(path)
            raise MetadataError(f"{path}: {len(bad)} line(s) are not UTF-8 text: line "
                                f"{examples(bad)}") from exc
        raise MetadataError(f"{path}: cannot read as {fmt}: {exc}") from exc


def file_columns(path: Path | str, fmt: str,
                 source: Mapping[str, Any] | None = None) -> list[str]:
    """The column names of a metadata file (header only where the format has one; config
    or the format's documented layout where the file has none)."""
    known = header_columns(fmt, source or {})
    if known is not None:
        if not known:
            key = "line_files" if fmt == "aligned_lines" else "column_names"
            raise MetadataError(f"{path}: format {fmt} has no header: source.{key} must name "
                                "its columns")
        return known
    _check_is_file(path, fmt)
    try:
        if fmt == "parquet":
            return list(pq.read_schema(path).names)
        if fmt in ("csv", "tsv"):
            return _delimited_header(path, fmt)
    except MetadataError:
        raise
    except (ValueError, OSError, pa.ArrowException) as exc:
        raise MetadataError(f"{path}: cannot read as {fmt}: {exc}") from exc
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
    for role in (*CORE_COLUMNS, "uid_from"):
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


def _as_text(path: Path | str, table: pa.Table, column: str, role: str) -> pa.ChunkedArray:
    """A mapped column as strings; numbers are cast, nested values (lists, objects) refused."""
    values = table[column]
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
        return pc.cast(values, pa.string())
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return pc.cast(values, pa.string())
    rows = np.flatnonzero(pc.is_valid(values).to_numpy(zero_copy_only=False))
    raise MetadataError(f"{path}: column '{column}' (the {role}) holds {kind} values, not text: "
                        + _examples(rows))


def list_item(path: Path | str, table: pa.Table, column: str, item: int) -> pa.ChunkedArray:
    """Item ``item`` of each row's list of captions in ``column`` (``columns.text_item``): a
    column that is not a list of text, or a row with too few captions, is named."""
    values = table[column]
    if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)) or not (
            pa.types.is_string(values.type.value_type)
            or pa.types.is_null(values.type.value_type)):
        raise MetadataError(f"{path}: columns.text_item needs column '{column}' to hold lists "
                            f"of captions; it holds {values.type}")
    lists = values.to_pylist()
    short = [i for i, captions in enumerate(lists)
             if captions is None or not -len(captions) <= item < len(captions)]
    if short:
        raise MetadataError(f"{path}: {len(short)} row(s) have no caption {item} in column "
                            f"'{column}' (columns.text_item): " + _examples(short))
    return pa.chunked_array([pa.array([captions[item] or "" for captions in lists],
                                      pa.string())])


def core_columns(path: Path | str, table: pa.Table, colmap: ColumnMap,
                 ) -> tuple[list[str], pa.ChunkedArray, pa.ChunkedArray]:
    """uids (given or derived), urls and texts of one file, as Python/Arrow values."""
    urls = _as_text(path, table, colmap.url, "url")
    if colmap.text_item is not None:
        texts = list_item(path, table, colmap.text, colmap.text_item)
    else:
        texts = pc.fill_null(_as_text(path, table, colmap.text, "text"), "")
    if colmap.uid is None and colmap.uid_from is not None:
        keys = _as_text(path, table, colmap.uid_from, "uid_from key")
        missing = np.flatnonzero(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(keys), ""),
                                              True).to_numpy(zero_copy_only=False))
        if len(missing):
            raise MetadataError(f"{path}: {len(missing)} row(s) without a key in column "
                                f"'{colmap.uid_from}' (uid_from): " + _examples(missing))
        uids = [derive_key_uid(k) for k in keys.to_pylist()]
    elif colmap.uid is None:
        uids = [derive_uid(u or "", t) for u, t in zip(urls.to_pylist(), texts.to_pylist(),
                                                       strict=True)]
    else:
        uids = _as_text(path, table, colmap.uid, "uid").to_pylist()
    return uids, urls, texts


def check_rows(path: Path | str, uids: Sequence[Any], urls: pa.ChunkedArray,
               schemes: Sequence[str] = REMOTE_URL_SCHEMES) -> list[str]:
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
    scheme = pc.utf8_lower(pc.struct_field(pc.extract_regex(
        pc.fill_null(pc.utf8_trim_whitespace(urls), ""), r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):"),
        [0]))
    refused = pc.invert(pc.fill_null(pc.is_in(scheme, pa.array(list(schemes))), False))
    refused = pc.and_(refused, pc.invert(empty_url))
    bad_scheme = np.flatnonzero(refused.to_numpy(zero_copy_only=False))
    if len(bad_scheme):
        local = (" (file:// only with the source's allow_local_urls: true)"
                 if "file" not in schemes else "")
        shown = [str(u)[:80] for u in pc.take(urls, pa.array(bad_scheme[:EXAMPLES])).to_pylist()]
        problems.append(f"{path}: {len(bad_scheme)} url(s) whose scheme the fetch does not "
                        f"accept (allowed: {', '.join(schemes)}{local}): "
                        + _examples(bad_scheme, shown))
    return problems


def row_locator(files: Sequence[tuple[str, np.ndarray]]) -> Callable[[int], tuple[str, int]]:
    """(file, row) of a position in the files' records concatenated (the duplicate checks
    work on one flat array of every file's uids)."""
    starts = np.cumsum([0] + [len(pairs) for _, pairs in files])

    def where(position: int) -> tuple[str, int]:
        index = int(np.searchsorted(starts, position, side="right")) - 1
        return files[index][0], int(position - starts[index])

    return where


def check_duplicates(files: Sequence[tuple[str, np.ndarray]]) -> list[str]:
    """Duplicate uids within and across files, each named by file and row (``source.
    duplicates: stop``). ``files``: each file's uids as :func:`capmix.uids.uids_to_pairs`
    records (16 bytes a row, not a Python string: what the stage holds for a whole source).
    """
    if not files:
        return []
    flat = np.concatenate([pairs for _, pairs in files])
    groups = duplicate_positions(flat)
    if not groups:
        return []
    where = row_locator(files)
    shown = [f"uid {pairs_to_uids(flat[group[:1]])[0]} at "
             + "; ".join("{} row {}".format(*where(int(i))) for i in group[:EXAMPLES])
             for group in groups[:EXAMPLES]]
    more = f" (and {len(groups) - EXAMPLES} more)" if len(groups) > EXAMPLES else ""
    total = sum(len(group) - 1 for group in groups)
    return [f"{total} duplicate uid row(s) in {len(groups)} uid(s){more}: " + " | ".join(shown)]


def exact_duplicates(files: Sequence[tuple[str, np.ndarray]],
                     contents: Sequence[np.ndarray] | None,
                     ) -> tuple[list[str], dict[int, np.ndarray], dict[str, Any]]:
    """``source.duplicates: drop``: the rows to drop, or why not.

    A row whose uid was seen earlier (file order, across all files) is an exact duplicate when
    its url and text equal that first row's too: ``contents`` holds each row's
    md5(url + "\\n" + text) as uid records, aligned with ``files``; None when the uid itself is
    that digest (derived from url + text), so an equal uid is an equal row. A uid repeated with
    another url or text (a reused key: RedCaps' image_id, a DataComp uid) is a problem naming
    both rows; then nothing is dropped. Returns (problems, rows to drop by file index, the
    manifest's ``duplicates`` record). Everything is numpy over the 16-byte records (one sort,
    as :func:`check_duplicates`), so LAION's millions of repeats cost no Python loop.
    """
    report: dict[str, Any] = {"policy": "drop", "rows_dropped": 0, "examples": []}
    if not files:
        return [], {}, report
    flat = np.concatenate([pairs for _, pairs in files])
    later, first = repeats(flat)
    starts = np.cumsum([0] + [len(pairs) for _, pairs in files])
    file_of = np.searchsorted(starts, later, side="right") - 1
    where = row_locator(files)

    if contents is not None and len(later):
        content = np.concatenate(list(contents))
        differs = content[later] != content[first]
        if differs.any():
            clashes = np.flatnonzero(differs)
            shown = []
            for k in clashes[:EXAMPLES]:
                (f_file, f_row), (l_file, l_row) = where(int(first[k])), where(int(later[k]))
                shown.append(f"uid {pairs_to_uids(flat[later[k:k + 1]])[0]} at {f_file} row "
                             f"{f_row} and {l_file} row {l_row}")
            more = f" (and {len(clashes) - EXAMPLES} more)" if len(clashes) > EXAMPLES else ""
            return [f"{len(clashes)} row(s) repeat an earlier row's uid with another url or "
                    f"text (source.duplicates: drop drops only rows equal in uid, url and "
                    f"text){more}: " + " | ".join(shown)], {}, report
    drops = {int(i): (later[file_of == i] - starts[i]).astype(np.int64)
             for i in np.unique(file_of)}
    report["rows_dropped"] = int(len(later))
    for k in range(min(EXAMPLES, len(later))):
        (l_file, l_row), (f_file, f_row) = where(int(later[k])), where(int(first[k]))
        report["examples"].append({"uid": pairs_to_uids(flat[later[k:k + 1]])[0],
                                   "file": l_file, "row": l_row,
                                   "same_as": {"file": f_file, "row": f_row}})
    return [], drops, report


# ----------------------------------------------------------------------- normalising


@dataclass(frozen=True)
class SourceFile:
    """One metadata file of a source, with its npz sibling when the source ships one.

    ``rows``: the source takes only the file's first rows (the last file of a ``max_rows``
    cut); None takes them all.
    """

    path: Path
    fmt: str
    npz: Path | None = None
    rows: int | None = None


def first_rows(parquets: Sequence[Path], max_rows: int) -> list[tuple[Path, int | None]]:
    """The files, in order, that hold the first ``max_rows`` rows: (file, None) for a file
    taken whole, (file, n) for the last one, cut after n rows. Row counts come from the
    parquet footers (nothing else is read); fewer rows in all stops the stage."""
    taken: list[tuple[Path, int | None]] = []
    total = 0
    for parquet in parquets:
        if total == max_rows:
            break
        rows = pq.ParquetFile(parquet).metadata.num_rows
        cut = rows if total + rows <= max_rows else max_rows - total
        taken.append((parquet, None if cut == rows else cut))
        total += cut
    if total < max_rows:
        raise MetadataError(f"max_rows {max_rows:,}: the {len(parquets)} parquet file(s) hold "
                            f"only {total:,} rows")
    return taken


def datacomp_files(directory: Path, max_files: int | None = None,
                   max_rows: int | None = None) -> list[SourceFile]:
    """DataComp metadata in a directory: ``*.parquet`` (any depth, sorted), npz by the same
    stem; the first ``max_files`` files, then the first ``max_rows`` rows of those."""
    parquets = sorted(p for p in directory.rglob("*.parquet") if not p.name.startswith("."))
    if max_files is not None:
        parquets = parquets[:max_files]
    taken = (first_rows(parquets, max_rows) if max_rows is not None
             else [(p, None) for p in parquets])
    files = []
    for parquet, rows in taken:
        npz = parquet.with_suffix(".npz")
        files.append(SourceFile(parquet, "parquet", npz if npz.exists() else None, rows))
    return files


def cut_npz(src: Path, dst: Path, file_rows: int, rows: int) -> None:
    """An npz sibling cut like its parquet: every array with one entry per row of the file
    keeps its first ``rows``; other arrays are copied as they are."""
    with np.load(src, allow_pickle=False) as data:
        arrays = {name: (data[name][:rows] if data[name].ndim and len(data[name]) == file_rows
                         else data[name]) for name in data.files}
    with open(dst, "wb") as handle:
        np.savez(handle, **arrays)


def table_dir_files(directory: Path, declared: str) -> list[SourceFile]:
    """A table given as a folder of parts in one format (LAION-COCO ships many parquet
    files): every file of that format under it, sorted, each its own metadata part. Only with
    a declared format: a folder's name says nothing about it (with ``auto`` a folder is
    refused as not a file, naming it)."""
    suffixes = [s for s, f in FORMAT_BY_SUFFIX.items() if f == declared] or [f".{declared}"]
    files = sorted(p for p in directory.rglob("*")
                   if p.is_file() and not p.name.startswith(".")
                   and any(x.lower() in suffixes for x in p.suffixes))
    if not files:
        raise MetadataError(f"{directory}: holds no {declared} file ({', '.join(suffixes)})")
    return [SourceFile(p, declared) for p in files]


def source_files(source: Mapping[str, Any], inputs: Sequence[Path]) -> list[SourceFile]:
    """The metadata files of a source, given the rule's input paths."""
    kind = source["type"]
    if kind == "toy":
        return [SourceFile(Path(inputs[0]), "parquet")]
    if kind == "table":
        path = Path(inputs[0])
        if path.name == "download.json":  # the table was fetched from a URL
            path = path.parent / Path(urllib.parse.urlparse(source["path"]).path).name
        if source.get("glob"):
            return table_parts(path, source["glob"], source.get("format", "auto"))
        if path.is_dir() and source.get("format", "auto") not in ("auto", *FOLDER_FORMATS):
            return table_dir_files(path, source["format"])
        return [SourceFile(path, table_format(source["path"], source.get("format", "auto")))]
    if kind == "datacomp":
        directory = Path(inputs[0])
        if directory.name == "download.json":
            directory = directory.parent
        return datacomp_files(directory, source.get("max_files"), source.get("max_rows"))
    raise MetadataError(f"unknown source type '{kind}'")


def table_parts(directory: Path, pattern: str, declared: str) -> list[SourceFile]:
    """A table source held in many files (LAION-400M's parquet parts, RedCaps' annotation
    files): the files under ``directory`` matching ``pattern`` (``source.glob``), sorted by
    path, each one metadata part in the same format."""
    if not directory.is_dir():
        raise MetadataError(f"{directory}: source.glob '{pattern}' needs source.path to be a "
                            "folder")
    paths = sorted(p for p in directory.glob(pattern)
                   if p.is_file() and not p.name.startswith("."))
    if not paths:
        raise MetadataError(f"{directory}: no file matches source.glob '{pattern}'")
    return [SourceFile(p, table_format(p, declared)) for p in paths]


def subset_keys(source: Mapping[str, Any]) -> tuple[str, pa.Array] | None:
    """``source.subset``: (the metadata column, the keys a subset list keeps), e.g. OpenAI's
    YFCC-15M ``yfcc100m_subset_data.tsv`` (header line_number, photoid, photo_hash) by photo
    id. The list is read like any table (its format from its suffix); a missing column or an
    empty list stops the stage, naming the file."""
    subset = source.get("subset")
    if not subset:
        return None
    path = subset["path"]
    table = read_table(path, table_format(path, subset.get("format", "auto")))
    if subset["list_column"] not in table.column_names:
        raise MetadataError(f"{path}: source.subset.list_column '{subset['list_column']}' is "
                            f"missing; columns present: {table.column_names}")
    keys = pc.unique(pc.cast(table[subset["list_column"]], pa.string()).combine_chunks())
    keys = keys.filter(pc.is_valid(keys))
    if len(keys) == 0:
        raise MetadataError(f"{path}: the subset list is empty")
    return subset["column"], keys


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


def _is_fast(file: SourceFile, source: Mapping[str, Any], colmap: ColumnMap,
             present: Sequence[str]) -> bool:
    """A parquet already in our layout is linked, not rewritten (DataComp's 300 GB)."""
    return (file.fmt == "parquet" and file.rows is None and colmap.is_identity()
            and source.get("keep_columns", "all") == "all" and not source.get("subset")
            and not source.get("rows_per_part") and not source.get("where")
            and not source.get("sample") and source.get("duplicates", "stop") == "stop"
            and not (source["type"] == "table" and source.get("max_rows"))
            and list(present[:3]) == list(CORE_COLUMNS))


@dataclass
class PartPlan:
    """One metadata part to publish: from which file (``index`` in the source's files), which
    of its rows (``source_rows``, with rows_per_part) and how; ``dropped``: exact duplicate
    rows removed from it (``source.duplicates: drop``)."""

    file: SourceFile
    index: int
    keep: list[str]
    rows: int
    part: Path
    how: str
    source_rows: tuple[int, int] | None
    dropped: int = 0


def drop_part_rows(plan: PartPlan, file_rows: np.ndarray, staging: Path) -> None:
    """Remove the rows ``file_rows`` (positions in the plan's file) that fall in the plan's
    part from its staged parquet: one part read and rewritten, nothing else held."""
    start, end = plan.source_rows or (0, plan.rows)
    local = file_rows[(file_rows >= start) & (file_rows < end)] - start
    if not len(local):
        return
    staged = staging / plan.part.name
    keep = np.ones(plan.rows, dtype=bool)
    keep[local] = False
    pq.write_table(pq.read_table(staged).filter(pa.array(keep)), staged)
    plan.rows -= len(local)
    plan.dropped = len(local)


def build_metadata(pool: str, source: Mapping[str, Any], files: Sequence[SourceFile],
                   out_dir: Path, required: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Check every file, then publish normalised parts and ``manifest.json`` in out_dir.

    Each file is parsed once: the table that is checked is the table that is written (to a
    temporary part, published only when every file passed), so no row can pass the checks
    and be written differently. Nothing is published if anything fails. ``required`` maps a
    config key to a column a later stage reads (e.g. a pool's ``references_column``): it must
    be in every file and kept, so the mistake shows here and not after captioning.
    """
    colmap = ColumnMap.from_config(source.get("columns"))
    if not files:
        raise MetadataError(f"pool '{pool}': source has no metadata files")
    schemes = allowed_url_schemes(source)
    listed = subset_keys(source)
    found: set[str] = set()
    rows_per_part = source.get("rows_per_part")
    next_part = 0
    where: Mapping[str, Sequence[Any]] = source.get("where") or {}
    dropped: Counter[str] = Counter()
    # Checked parts wait beside out_dir until every file passed: a rejected source leaves
    # nothing behind.
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)

    # source.sample, source.max_rows (table sources; DataComp's max_rows is a cut of its
    # files, SourceFile.rows), source.duplicates: applied in this order, after where/subset
    fraction = source.get("sample", {}).get("fraction") if source.get("sample") else None
    cap = source.get("max_rows") if source["type"] == "table" else None
    drop_duplicates = source.get("duplicates", "stop") == "drop"
    # whether the uid is md5(url + text) itself: then an equal uid is an equal row
    uid_is_content = colmap.uid is None and colmap.uid_from is None
    sampled = [0, 0]  # rows before, after the sample
    offered, taken, files_not_read = 0, 0, 0  # for max_rows

    problems: list[str] = []
    plans: list[PartPlan] = []
    # Every row's uid (and with drop, its url + text digest) as 16-byte records: what the
    # duplicate check needs of the whole source; the rows themselves are held one file at a time.
    all_uids: list[tuple[str, np.ndarray]] = []
    contents: list[np.ndarray] = []
    read: list[int] = []  # the index in files of each all_uids entry
    try:
        for index, file in enumerate(files):
            if cap is not None and taken >= cap:
                files_not_read += 1
                continue
            try:
                # JSON lines and COCO-caption files have no header: their keys are known only
                # from the whole file, so that one parse is kept and its columns selected below.
                whole = (read_table(file.path, file.fmt, source=source)
                         if file.fmt in WHOLE_FILE_FORMATS else None)
                present = (whole.column_names if whole is not None
                           else file_columns(file.path, file.fmt, source))
                keep = keep_list(source, present, colmap)
                column_problems = check_columns(file.path, present, colmap, keep)
                for key, column in (required or {}).items():
                    if column not in present:
                        column_problems.append(f"{file.path}: config key '{key}' names column "
                                               f"'{column}', which is missing; columns present: "
                                               f"{list(present)}")
                    elif column not in keep and column not in CORE_COLUMNS:
                        column_problems.append(f"{file.path}: config key '{key}' names column "
                                               f"'{column}', which the source does not keep "
                                               f"(add it to source.keep_columns)")
                for column in where:
                    if column not in present:
                        column_problems.append(f"{file.path}: source.where names column "
                                               f"'{column}', which is missing; columns "
                                               f"present: {list(present)}")
                if listed is not None and listed[0] not in present:
                    column_problems.append(f"{file.path}: source.subset.column names column "
                                           f"'{listed[0]}', which is missing; columns "
                                           f"present: {list(present)}")
                if column_problems:
                    problems += column_problems
                    continue
                needed = colmap.read()
                fast = _is_fast(file, source, colmap, present)
                wanted = needed if fast else list(dict.fromkeys(needed + keep))
                if listed is not None and listed[0] not in wanted:
                    wanted.append(listed[0])
                wanted += [c for c in where if c not in wanted]
                table = (whole.select(wanted) if whole is not None
                         else read_table(file.path, file.fmt, wanted, source, listed))
                if listed is not None:  # formats that do not filter while reading
                    table = table.filter(pc.fill_null(pc.is_in(
                        pc.cast(table[listed[0]], pa.string()), value_set=listed[1]), False))
                    found.update(pc.cast(table[listed[0]], pa.string()).to_pylist())
                table = keep_where(table, where, dropped)
                file_rows = table.num_rows
                if file.rows is not None:  # the last file of a max_rows cut
                    table = table.slice(0, file.rows)
                uids, urls, texts = core_columns(file.path, table, colmap)
            except MetadataError as exc:
                problems.append(str(exc))
                continue
            row_problems = check_rows(file.path, uids, urls, schemes)
            problems += row_problems
            if row_problems:
                continue
            pairs = uids_to_pairs(uids)
            if fraction is not None:
                chosen = uid_sample_mask(pairs, fraction)
                sampled[0] += len(pairs)
                sampled[1] += int(chosen.sum())
                if not chosen.all():
                    mask = pa.array(chosen)
                    table, urls, texts = table.filter(mask), urls.filter(mask), texts.filter(mask)
                    uids = [uid for uid, kept in zip(uids, chosen.tolist(), strict=True) if kept]
                    pairs = pairs[chosen]
            if cap is not None:
                offered += table.num_rows
                room = cap - taken
                if table.num_rows > room:
                    table, urls, texts = (table.slice(0, room), urls.slice(0, room),
                                          texts.slice(0, room))
                    uids, pairs = uids[:room], pairs[:room]
                taken += table.num_rows
            all_uids.append((str(file.path), pairs))
            read.append(index)
            if drop_duplicates and not uid_is_content:
                contents.append(uids_to_pairs([derive_uid(u or "", t or "") for u, t in zip(
                    urls.to_pylist(), texts.to_pylist(), strict=True)]))
            how = "hardlink-or-copy" if fast else "rewritten"
            # One part per file, or per rows_per_part rows of it (a 12M-row tsv in parts that
            # fetch jobs share out, README: pools held in parts).
            step = rows_per_part or max(table.num_rows, 1)
            for start in range(0, max(table.num_rows, 1), step):
                rows = min(step, table.num_rows - start)
                part = out_dir / f"part-{next_part:05d}.parquet"
                next_part += 1
                if not fast and not row_problems:
                    columns = {"uid": pa.array(uids[start:start + rows], pa.string()),
                               "url": urls.slice(start, rows), "text": texts.slice(start, rows)}
                    columns.update({c: table[c].slice(start, rows) for c in keep})
                    staging.mkdir(parents=True, exist_ok=True)
                    pq.write_table(pa.table(columns), staging / part.name)
                    if file.npz is not None and file.rows is not None:
                        cut_npz(file.npz, staging / part.with_suffix(".npz").name, file_rows,
                                file.rows)
                plans.append(PartPlan(file, index, keep, rows, part, how,
                                      (start, start + rows) if rows_per_part else None))
        duplicates: dict[str, Any] | None = None
        if not problems and drop_duplicates:
            dup_problems, drops, duplicates = exact_duplicates(
                all_uids, None if uid_is_content else contents)
            problems += dup_problems
            by_file = {read[i]: rows for i, rows in drops.items()}
            for plan in plans if not dup_problems else []:
                if plan.index in by_file:
                    drop_part_rows(plan, by_file[plan.index], staging)
        elif not problems:
            problems += check_duplicates(all_uids)
        total_rows = sum(plan.rows for plan in plans)
        if not problems and total_rows == 0:
            problems.append(f"pool '{pool}': source is empty (0 rows in "
                            f"{', '.join(str(f.path) for f in files)})")
        if problems:
            raise MetadataError(f"pool '{pool}': metadata rejected before any download:\n  "
                                + "\n  ".join(problems))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for plan in plans:
        file, rows, part, how, source_rows = (plan.file, plan.rows, plan.part, plan.how,
                                              plan.source_rows)
        if how == "rewritten":
            os.replace(staging / part.name, part)
        else:
            how = materialise(file.path, part)
        entry = {"part": part.name, "source_file": str(file.path), "rows": rows, "how": how,
                 "source_sha256": source_checksum(file.path, source)}
        if file.rows is not None:
            entry["cut_after_rows"] = file.rows
        if source_rows is not None:
            entry["source_rows"] = list(source_rows)
        if plan.dropped:
            entry["duplicates_dropped"] = plan.dropped
        if file.npz is not None:
            entry["npz"] = part.with_suffix(".npz").name
            if file.rows is not None:
                os.replace(staging / entry["npz"], part.with_suffix(".npz"))
                entry["npz_how"] = "cut"
            else:
                entry["npz_how"] = materialise(file.npz, part.with_suffix(".npz"))
        parts.append(entry)
        log.info("metadata part %s: %d rows from %s (%s)", part.name, rows, file.path, how)
    shutil.rmtree(staging, ignore_errors=True)

    manifest = {
        "pool": pool,
        "source": dict(source),
        "rows": total_rows,
        "uid_derived": colmap.uid is None,
        "url_schemes": list(schemes),
        "columns": list(CORE_COLUMNS) + list(plans[0].keep),
        "parts": parts,
        **({"subset": subset_report(source, listed, found)} if listed is not None else {}),
        **({"where": {column: {"kept_values": [str(v) for v in values],
                               "rows_dropped": dropped[column]}
                      for column, values in where.items()}} if where else {}),
        **({"sample": {"fraction": fraction, "rows_before": sampled[0],
                       "rows_after": sampled[1]}} if fraction is not None else {}),
        **({"max_rows": {"max_rows": cap, "rows_before": offered, "rows_after": taken,
                         "files_not_read": files_not_read}} if cap is not None else {}),
        **({"duplicates": duplicates} if duplicates is not None else {}),
        "toy": source["type"] == "toy",
        "provenance": provenance_record("metadata", params={"source": dict(source)}),
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def keep_where(table: pa.Table, where: Mapping[str, Sequence[Any]],
               dropped: Counter[str]) -> pa.Table:
    """The rows whose every ``where`` column holds one of its listed values (compared as
    text: LAION's NSFW "UNLIKELY", YFCC100M's marker "0"); ``dropped`` counts the rows each
    column removed, in order."""
    for column, values in where.items():
        allowed = pa.array([str(v) for v in values], pa.string())
        kept = table.filter(pc.fill_null(pc.is_in(pc.cast(table[column], pa.string()),
                                                  value_set=allowed), False))
        dropped[column] += table.num_rows - kept.num_rows
        table = kept
    return table


def source_checksum(path: Path, source: Mapping[str, Any]) -> str | dict[str, str]:
    """A source file's sha256; for a folder of line-aligned files (SBU), each file's."""
    if path.is_dir():
        return {name: file_checksum(path / name)[0]
                for name in (source.get("line_files") or {}).values()}
    return file_checksum(path)[0]


def subset_report(source: Mapping[str, Any], listed: tuple[str, pa.Array],
                  found: set[str]) -> dict[str, Any]:
    """What a subset list kept: its keys, how many the source's files hold, and examples of
    those they do not (a YFCC-15M photo whose line is absent from the dataset file given)."""
    keys = listed[1].to_pylist()
    absent = [k for k in keys if k not in found]
    if absent:
        log.warning("subset %s: %d of %d listed keys are in no metadata file (e.g. %s)",
                    source["subset"]["path"], len(absent), len(keys), absent[:EXAMPLES])
    return {"path": str(source["subset"]["path"]),
            "list_column": source["subset"]["list_column"], "column": listed[0],
            "listed": len(keys), "found": len(keys) - len(absent),
            "not_found": len(absent), "not_found_examples": absent[:EXAMPLES]}


def read_manifest(metadata_dir: Path) -> dict[str, Any]:
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

    With ``max_rows``, parquet files are fetched in sorted order, ``workers`` at a time, until
    they hold that many rows (their footers say how many); only then the npz siblings of
    those, so a 400M pool cut from large fetches about a third of large's metadata.
    ``hub`` is the ``huggingface_hub`` module or a stand-in with the same two
    functions (tests use one; nothing in the tests reaches a hub).
    """
    if hub is None:
        import huggingface_hub as hub
    repo, revision = source["hf_repo"], source.get("revision")
    repo_files = hub.list_repo_files(repo, repo_type="dataset", revision=revision)
    wanted = datacomp_patterns(repo_files, source.get("include_npz", False),
                               source.get("max_files"))

    def download(files: list[str]) -> None:
        log.info("downloading %d files of %s into %s", len(files), repo, dest_dir)
        hub.snapshot_download(repo, repo_type="dataset", revision=revision,
                              local_dir=str(dest_dir), allow_patterns=files,
                              max_workers=workers)

    max_rows = source.get("max_rows")
    if max_rows is None:
        download(wanted)
    else:
        parquets = [f for f in wanted if f.endswith(".parquet")]
        chosen: list[str] = []
        rows = 0
        while rows < max_rows and len(chosen) < len(parquets):
            batch = parquets[len(chosen):len(chosen) + max(workers, 1)]
            download(batch)
            for name in batch:
                if rows < max_rows:
                    chosen.append(name)
                    rows += pq.ParquetFile(dest_dir / name).metadata.num_rows
        if rows < max_rows:
            raise MetadataError(f"{repo}: max_rows {max_rows:,}, but its {len(parquets)} "
                                f"parquet file(s) hold only {rows:,} rows")
        stems = {name[: -len(".parquet")] for name in chosen}
        npz = [f for f in wanted if f.endswith(".npz") and f[: -len(".npz")] in stems]
        if npz:
            download(npz)
        wanted = chosen + npz
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
