"""Readers for the web image-text datasets' own metadata formats (CC3M, CC12M, YFCC100M,
RedCaps, SBU), each returning one Arrow table of the file's rows, every value as the file
holds it.

The metadata stage (:mod:`capmix.sources`) dispatches on ``source.format``
(:data:`capmix.sourcespec.TABLE_FORMATS`) and maps the columns these readers name to
uid/url/text as the dataset's config says; these readers only parse. They are strict in the
same way as the stage's other parsers: a row with the wrong number of fields, bytes that are
not UTF-8 or a value of the wrong type stops the run with the file and the line (or the
annotation) named, never a silently shifted column. Third-party text is data: nothing here
evaluates, unpickles or follows anything it reads.

Formats whose files have no header (CC3M's and CC12M's TSV, YFCC100M's dataset file) take
their column names from config (``source.column_names``) or, for YFCC100M, from Yahoo's
documented order (:data:`YFCC100M_COLUMNS`), so a dataset's config only maps columns.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

#: How many example lines an error lists.
EXAMPLES = 5

#: The 25 tab-separated fields of a line of YFCC100M's ``yfcc100m_dataset`` file, in Yahoo's
#: documented order (the Multimedia Commons release: a line number, the photo id and the
#: photo hash first, as OpenAI's YFCC-15M list ``yfcc100m_subset_data.tsv`` names them).
#: ``title``, ``description``, ``user_tags`` and ``machine_tags`` are URL-encoded in the file
#: ('+' for a space, %XX escapes); :func:`read_yfcc100m` decodes them
#: (:data:`YFCC100M_ENCODED_COLUMNS`). ``marker`` is 0 for a photo, 1 for a video.
YFCC100M_COLUMNS: tuple[str, ...] = (
    "line_number", "photo_id", "photo_hash", "user_nsid", "user_nickname", "date_taken",
    "date_uploaded", "capture_device", "title", "description", "user_tags", "machine_tags",
    "longitude", "latitude", "accuracy", "page_url", "download_url", "license_name",
    "license_url", "server_id", "farm_id", "secret", "secret_original", "extension_original",
    "marker")
YFCC100M_ENCODED_COLUMNS: tuple[str, ...] = ("title", "description", "user_tags",
                                             "machine_tags")

#: The fields of a RedCaps annotation (``annotations/<subreddit>_<year>.json``) and the Arrow
#: type each is read as; ``crosspost_parents`` is a list of post ids or null.
REDCAPS_FIELDS: dict[str, pa.DataType] = {
    "image_id": pa.string(), "author": pa.string(), "url": pa.string(),
    "raw_caption": pa.string(), "caption": pa.string(), "subreddit": pa.string(),
    "score": pa.int64(), "created_utc": pa.int64(), "permalink": pa.string(),
    "crosspost_parents": pa.list_(pa.string()),
}


class FormatError(ValueError):
    """A metadata file that does not parse as its format; the message names file and lines."""


def examples(items: Sequence[Any]) -> str:
    """The first few of ``items``, and how many more there are."""
    shown = ", ".join(str(x) for x in list(items)[:EXAMPLES])
    return shown + (f" and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else "")


def lines_not_utf8(path: Path | str) -> list[int]:
    """1-based line numbers whose bytes are not UTF-8 (only called once a read failed)."""
    bad = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(number)
    return bad


# ------------------------------------------------------------------ headerless TSV files


def read_headerless_tsv(path: Path | str, names: Sequence[str],
                        columns: Sequence[str] | None = None,
                        listed: tuple[str, pa.Array] | None = None) -> pa.Table:
    """A tab-separated file without a header (CC3M's ``Train_GCC-training.tsv``: caption,
    url; CC12M's ``cc12m.tsv``: url, caption), its fields named ``names``, every value a
    string. Quotes are text (these files do not quote); a line with another number of fields
    than ``names`` or bytes that are not UTF-8 stop the read, naming the lines.

    Read in batches, only ``columns`` materialised, and with ``listed = (column, keys)`` only
    the rows whose ``column`` is among ``keys`` kept batch by batch: YFCC100M's file is ~50 GB
    of which a subset list (YFCC-15M) keeps 15%, so the whole file is never held.
    """
    if not names or len(set(names)) != len(names):
        raise FormatError(f"{path}: column_names must name each of the file's fields once "
                          f"(got {list(names)})")
    wanted = list(columns) if columns else list(names)
    if listed is not None and listed[0] not in wanted:
        wanted.append(listed[0])
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise FormatError(f"{path}: no column(s) {unknown} among column_names {list(names)}")
    ragged: list[str] = []

    def on_invalid_row(row: Any) -> str:
        ragged.append(f"line {row.number} ({row.actual_columns} fields)")
        return "skip"

    batches = []
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False, column_names=list(names)),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False,
                                             invalid_row_handler=on_invalid_row),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names},
                include_columns=wanted,
                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
        for batch in reader:
            if listed is not None:
                batch = batch.filter(pc.fill_null(
                    pc.is_in(batch[listed[0]], value_set=listed[1]), False))
            batches.append(batch)
    except pa.ArrowInvalid as exc:
        if "UTF8" in str(exc):
            bad = lines_not_utf8(path)
            raise FormatError(f"{path}: {len(bad)} line(s) are not UTF-8 text: line "
                              f"{examples(bad)}") from exc
        raise FormatError(f"{path}: cannot read as tab-separated text: {exc}") from exc
    if ragged:
        raise FormatError(f"{path}: {len(ragged)} line(s) do not have the {len(names)} "
                          f"tab-separated fields of column_names {list(names)}: "
                          f"{examples(ragged)}")
    return pa.Table.from_batches(batches, schema=reader.schema)


def url_decode(values: pa.ChunkedArray) -> pa.Array:
    """YFCC100M's URL-encoded text ('+' for space, %XX escapes) as plain text."""
    return pa.array([urllib.parse.unquote_plus(v) if v is not None else None
                     for v in values.to_pylist()], pa.string())


def read_yfcc100m(path: Path | str, columns: Sequence[str] | None = None,
                  listed: tuple[str, pa.Array] | None = None) -> pa.Table:
    """YFCC100M's ``yfcc100m_dataset`` file (or one of its split parts): tab-separated, no
    header, :data:`YFCC100M_COLUMNS` in that order, every value a string; its URL-encoded
    text fields decoded. Only ``columns`` are materialised (the full file is ~50 GB; the
    columns a config maps and keeps are a fraction; ``listed``: see
    :func:`read_headerless_tsv`)."""
    table = read_headerless_tsv(path, YFCC100M_COLUMNS, columns, listed)
    for name in YFCC100M_ENCODED_COLUMNS:
        if name in table.column_names:
            index = table.column_names.index(name)
            table = table.set_column(index, name, url_decode(table[name]))
    return table


# ------------------------------------------------------------------- RedCaps annotations


def _redcaps_value(name: str, value: Any) -> str | None:
    """Why an annotation's field does not have its type (None: it does)."""
    kind = REDCAPS_FIELDS[name]
    if value is None:
        return None if name == "crosspost_parents" else "missing"
    if pa.types.is_string(kind):
        return None if isinstance(value, str) else f"a {type(value).__name__}, not text"
    if pa.types.is_int64(kind):
        whole = isinstance(value, int) and not isinstance(value, bool)
        whole = whole or (isinstance(value, float) and value.is_integer())
        return None if whole else f"a {type(value).__name__}, not a whole number"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return None
    return "not a list of post ids"


def read_json_document(path: Path | str) -> Any:
    """A whole JSON file (RedCaps' annotations, COCO's captions), parsed strictly: bytes that
    are not UTF-8 or text that is not JSON stop the read, naming the file (and the line)."""
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from exc


def read_redcaps(path: Path | str, columns: Sequence[str] | None = None) -> pa.Table:
    """A RedCaps annotation file, ``{"info": {...}, "annotations": [{...}, ...]}``: one row
    per annotation with :data:`REDCAPS_FIELDS` (the subreddit kept, ``score`` and
    ``created_utc`` as integers). An annotation that is not an object, lacks a field or holds
    one of the wrong type stops the read, named by its index and image_id."""
    document = read_json_document(path)
    if not isinstance(document, dict) or not isinstance(document.get("annotations"), list):
        raise FormatError(f"{path}: not a RedCaps annotation file (a JSON object with the "
                          "list 'annotations')")
    problems: list[str] = []
    for i, note in enumerate(document["annotations"]):
        if not isinstance(note, dict):
            problems.append(f"annotations[{i}] is a {type(note).__name__}, not an object")
            continue
        wrong = [f"{name} {why}" for name in REDCAPS_FIELDS
                 if (why := _redcaps_value(name, note.get(name))) is not None]
        if wrong:
            problems.append(f"annotations[{i}] (image_id {note.get('image_id')!r}): "
                            + ", ".join(wrong))
    if problems:
        raise FormatError(f"{path}: {len(problems)} malformed annotation(s): "
                          + "; ".join(problems[:EXAMPLES])
                          + (f" and {len(problems) - EXAMPLES} more"
                             if len(problems) > EXAMPLES else ""))
    names = [c for c in columns if c in REDCAPS_FIELDS] if columns else list(REDCAPS_FIELDS)
    notes = document["annotations"]
    arrays = {}
    for name in names:
        values = [note.get(name) for note in notes]
        if pa.types.is_int64(REDCAPS_FIELDS[name]):
            values = [int(v) for v in values]
        arrays[name] = pa.array(values, REDCAPS_FIELDS[name])
    return pa.table(arrays) if arrays else pa.table({})


# ------------------------------------------------------------- line-aligned text files


def read_aligned_lines(directory: Path | str, line_files: Mapping[str, str],
                       columns: Sequence[str] | None = None) -> pa.Table:
    """Several text files whose line i describes the same sample (SBU's
    ``SBU_captioned_photo_dataset_urls.txt`` and ``..._captions.txt``), each a column:
    ``line_files`` maps a column name to its file in ``directory``. Files of different line
    counts, or lines that are not UTF-8, stop the read, naming the files and lines."""
    directory = Path(directory)
    if not line_files:
        raise FormatError(f"{directory}: line_files names no file")
    wanted = [c for c in line_files if not columns or c in columns]
    lines: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for name, filename in line_files.items():
        path = directory / filename
        if not path.is_file():
            raise FormatError(f"{path}: missing (line_files.{name})")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = lines_not_utf8(path)
            raise FormatError(f"{path}: {len(bad)} line(s) are not UTF-8 text: line "
                              f"{examples(bad)}") from exc
        rows = text.split("\n")
        if rows and rows[-1] == "":  # the newline that ends the last line
            rows.pop()
        rows = [row[:-1] if row.endswith("\r") else row for row in rows]
        counts[filename] = len(rows)
        if name in wanted:
            lines[name] = rows
    if len(set(counts.values())) > 1:
        raise FormatError(f"{directory}: line_files are not line-aligned: "
                          + ", ".join(f"{f} has {n} line(s)" for f, n in counts.items()))
    return pa.table({name: pa.array(lines[name], pa.string()) for name in wanted})


def keep_listed(table: pa.Table, listed: tuple[str, pa.Array] | None) -> pa.Table:
    """The rows of ``table`` whose ``listed[0]`` column is among the keys ``listed[1]``."""
    if listed is None:
        return table
    return table.filter(pc.fill_null(pc.is_in(table[listed[0]], value_set=listed[1]), False))


Listed = tuple[str, pa.Array] | None
#: The readers of this module by format name (``source.format``), each given the file, the
#: source config, the columns wanted and an optional subset (column, keys) to keep. The names
#: are listed once, in :data:`capmix.sourcespec.TABLE_FORMATS`; a test holds these among them.
Reader = Callable[[Path, Mapping[str, Any], Sequence[str] | None, Listed], pa.Table]
READERS: dict[str, Reader] = {
    "headerless_tsv": lambda path, source, columns, listed: read_headerless_tsv(
        path, source.get("column_names") or (), columns, listed),
    "yfcc100m": lambda path, source, columns, listed: read_yfcc100m(path, columns, listed),
    "redcaps": lambda path, source, columns, listed: keep_listed(
        read_redcaps(path, columns), listed),
    "aligned_lines": lambda path, source, columns, listed: keep_listed(read_aligned_lines(
        path, source.get("line_files") or {}, columns), listed),
}


def header_columns(fmt: str, source: Mapping[str, Any]) -> list[str] | None:
    """The columns a format's file has, known without reading it (None: read it to know), so
    that the metadata stage parses each file once, for the columns it maps and keeps."""
    if fmt == "headerless_tsv":
        return list(source.get("column_names") or ())
    if fmt == "yfcc100m":
        return list(YFCC100M_COLUMNS)
    if fmt == "redcaps":  # every annotation has every field (checked when it is read)
        return list(REDCAPS_FIELDS)
    if fmt == "aligned_lines":
        return list(source.get("line_files") or {})
    return None
