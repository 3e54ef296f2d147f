"""CaptionNet (ImageNet-100, OpenImages-100, LAION-100, YFCC-100) as a source.

CaptionNet ships one metadata spreadsheet per subset; each row is an image with two label
sources: ``idx`` (ImageNet-1k class indices: human labels for ImageNet-100 and
OpenImages-100, synthetic "subset matching" ones for LAION-100 and YFCC-100) and a caption
(Flickr or alt text), and for some subsets a BLIP caption. Rows of ImageNet-100 that come
from ImageNet itself carry no URL: CaptionNet's README says to match them by their
``filename`` to a local ImageNet copy. This module turns a spreadsheet into a table the
metadata stage can normalise (:func:`resolve_captionnet`):

* the spreadsheet is read strictly (:func:`capmix.sources.read_table`: a ragged row or bytes
  that are not UTF-8 stop the run with the line named); every column is kept as text, so
  ``idx`` ("417" or "417, 932": several labels) stays exactly what the file says;
* a row with a URL must use http(s) (third-party data never points at this machine);
* a row without one is matched by file name to the files under ``imagenet_dir`` (scanned
  once) and gets a ``file://`` URL under that root, the only local URLs the source may have
  (the fetch reads ``file://`` only under that root, ``capmix.sourcespec.local_file_roots``,
  and keeps http(s) URLs off this machine and its networks); a name found twice under the
  root is ambiguous, and a matched file that is a link out of the root is refused: both stop
  the run;
* rows that match nothing are reported (count and examples, in the metadata manifest);
  ``unmatched: stop`` (the default) stops the run before anything is written,
  ``unmatched: drop`` drops them and the report says how many.

Nobody on this project has seen the real spreadsheets. The column names
(:data:`DEFAULT_COLUMNS`) follow CaptionNet's README and VL Hub's loader (tab-separated,
caption key ``title``) and are an *assumption* to check against the real files; a source's
``columns`` overrides each.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from capmix.provenance import file_checksum, write_json
from capmix.sources import MetadataError, SourceFile, build_metadata, read_table
from capmix.sourcespec import REMOTE_URL_SCHEMES
from capmix.uids import derive_uid

#: The four subsets (``source.subset``; the schema lists exactly these, a test holds them).
SUBSETS: tuple[str, ...] = ("imagenet_100", "openimages_100", "laion_100", "yfcc_100")
#: What ``unmatched`` may say (the schema lists exactly these).
UNMATCHED_POLICIES: tuple[str, ...] = ("stop", "drop")
# ASSUMPTION (unverified): the spreadsheets' column names. Check against the real files.
DEFAULT_COLUMNS: dict[str, str] = {"url": "url", "text": "title", "filename": "filename",
                                   "idx": "idx"}
#: The columns the resolved table adds: the uid (derived from the row's URL, or for an
#: ImageNet row from ``imagenet:`` + its file name, so it does not depend on where this
#: machine keeps ImageNet), the URL used (the spreadsheet's, or file:// for a matched ImageNet
#: row) and where it came from (``url`` or ``imagenet_dir``).
UID_COLUMN = "capmix_uid"
URL_COLUMN = "capmix_url"
URL_ORIGIN_COLUMN = "capmix_url_origin"
EXAMPLES = 5


def captionnet_columns(source: Mapping[str, Any]) -> dict[str, str]:
    """The spreadsheet's column names by role: :data:`DEFAULT_COLUMNS` with the source's
    ``columns`` over them."""
    return {**DEFAULT_COLUMNS, **dict(source.get("columns") or {})}


def index_image_folder(root: Path) -> dict[str, list[Path]]:
    """File name -> the files under ``root`` with that name (ImageNet's train folder holds
    1.28M files in 1,000 class folders: one walk, no per-row search)."""
    found: dict[str, list[Path]] = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            found.setdefault(name, []).append(Path(folder) / name)
    return found


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:EXAMPLES])
    return shown + (f" and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else "")


def resolve_captionnet(source: Mapping[str, Any], spreadsheet: Path
                       ) -> tuple[pa.Table, dict[str, Any]]:
    """The spreadsheet as a table with :data:`URL_COLUMN` filled, and the matching report.

    Everything is checked before the table is returned: missing columns, a URL that is not
    http(s), an ImageNet row with no file name, a file name found twice under
    ``imagenet_dir``, and (with ``unmatched: stop``) rows that match nothing each stop the run
    with the spreadsheet, the column and the rows (1-based data rows) named.
    """
    columns = captionnet_columns(source)
    fmt = source.get("format", "tsv")
    table = read_table(spreadsheet, fmt)
    missing = [f"{role} -> '{name}'" for role, name in columns.items()
               if name not in table.column_names]
    if missing:
        raise MetadataError(f"{spreadsheet}: CaptionNet column(s) missing: {missing} (columns "
                            f"present: {table.column_names}); set source.columns to the real "
                            f"names")
    for added in (UID_COLUMN, URL_COLUMN, URL_ORIGIN_COLUMN):
        if added in table.column_names:
            raise MetadataError(f"{spreadsheet}: has a column '{added}', which capmix fills")
    urls = [u if isinstance(u, str) else "" for u in table[columns["url"]].to_pylist()]
    names = [n if isinstance(n, str) else "" for n in table[columns["filename"]].to_pylist()]
    bad_scheme = [f"row {i + 1} ({u[:60]!r})" for i, u in enumerate(urls)
                  if u.strip() and urllib.parse.urlparse(u.strip()).scheme.lower()
                  not in REMOTE_URL_SCHEMES
                  and not source.get("allow_local_urls", False)]
    if bad_scheme:
        raise MetadataError(f"{spreadsheet}: column '{columns['url']}': {len(bad_scheme)} URL(s) "
                            f"not http(s): {_examples(bad_scheme)}")
    need_match = [i for i, u in enumerate(urls) if not u.strip()]
    imagenet_dir = source.get("imagenet_dir")
    problems: list[str] = []
    resolved = [u.strip() for u in urls]
    origin = ["url" if u.strip() else "" for u in urls]
    unmatched: list[int] = []
    if need_match:
        nameless = [f"row {i + 1}" for i in need_match if not names[i].strip()]
        if nameless:
            problems.append(f"column '{columns['filename']}': {len(nameless)} row(s) with neither "
                            f"a URL nor a file name: {_examples(nameless)}")
        if not imagenet_dir:
            problems.append(f"{len(need_match)} row(s) have no URL (ImageNet images: "
                            f"{_examples([f'row {i + 1}' for i in need_match])}); set "
                            f"source.imagenet_dir to a local ImageNet copy to match them by "
                            f"file name")
        else:
            root = Path(imagenet_dir).resolve()
            if not root.is_dir():
                raise MetadataError(f"source.imagenet_dir {root}: not a folder")
            files = index_image_folder(root)
            ambiguous, escaping = [], []
            for i in need_match:
                name = Path(names[i].strip()).name  # a name only: no path from the data
                hits = files.get(name, []) if name else []
                if len(hits) == 1 and not hits[0].resolve().is_relative_to(root):
                    # a link out of the folder: the fetch reads files under imagenet_dir only
                    escaping.append(f"row {i + 1} ('{name}': {hits[0]} -> "
                                    f"{hits[0].resolve()})")
                elif len(hits) == 1:
                    resolved[i] = hits[0].as_uri()
                    origin[i] = "imagenet_dir"
                elif len(hits) > 1:
                    ambiguous.append(f"row {i + 1} ('{name}': {len(hits)} files)")
                elif name:
                    unmatched.append(i)
            if ambiguous:
                problems.append(f"{len(ambiguous)} file name(s) found more than once under "
                                f"{root}: {_examples(ambiguous)}")
            if escaping:
                problems.append(f"{len(escaping)} matched file(s) under {root} are links to "
                                f"files outside it, which the fetch does not read: "
                                f"{_examples(escaping)} (set source.imagenet_dir to the folder "
                                f"that holds the images themselves)")
    policy = source.get("unmatched", "stop")
    if unmatched and policy == "stop":
        problems.append(f"{len(unmatched)} row(s) without URL match no file under "
                        f"{imagenet_dir} by '{columns['filename']}': "
                        f"{_examples([f'row {i + 1} ({names[i]!r})' for i in unmatched])} "
                        f"(source.unmatched: drop to train without them)")
    try:
        idx_labels(table, columns["idx"])
    except MetadataError as exc:
        problems.append(str(exc))
    if problems:
        raise MetadataError(f"{spreadsheet}: " + "; ".join(problems))
    texts = [t if isinstance(t, str) else "" for t in table[columns["text"]].to_pylist()]
    uids = [derive_uid(urls[i].strip() or f"imagenet:{Path(names[i].strip()).name}", texts[i])
            for i in range(len(urls))]
    table = table.append_column(UID_COLUMN, pa.array(uids, pa.string()))
    table = table.append_column(URL_COLUMN, pa.array(resolved, pa.string()))
    table = table.append_column(URL_ORIGIN_COLUMN, pa.array(origin, pa.string()))
    if unmatched:
        dropped = set(unmatched)
        keep = pa.array([i not in dropped for i in range(table.num_rows)])
        table = table.filter(keep)
    report = {
        "subset": source["subset"],
        "rows": len(urls),
        "rows_with_url": len(urls) - len(need_match),
        "rows_matched_by_filename": len(need_match) - len(unmatched)
        - sum(1 for i in need_match if not names[i].strip()),
        "rows_unmatched": len(unmatched),
        "unmatched_policy": policy,
        "examples_unmatched": [names[i] for i in unmatched[:EXAMPLES]],
        "imagenet_dir": str(Path(imagenet_dir).resolve()) if imagenet_dir else None,
        "rows_kept": table.num_rows,
        "columns": columns,
    }
    return table, report


def idx_labels(table: pa.Table, column: str) -> list[list[int]]:
    """The ``idx`` labels of each row as integers ("417, 932" -> [417, 932]; empty -> []);
    a value that is not a list of ImageNet-1k indices stops the run naming the rows."""
    out: list[list[int]] = []
    bad = []
    for i, value in enumerate(pc.cast(table[column], pa.string()).to_pylist()):
        text = (value or "").strip().strip("[]")
        try:
            labels = [int(float(x)) for x in text.replace(";", ",").split(",") if x.strip()]
        except ValueError:
            bad.append(f"row {i + 1} ({value!r})")
            continue
        if any(not 0 <= label < 1000 for label in labels):
            bad.append(f"row {i + 1} ({value!r})")
            continue
        out.append(labels)
    if bad:
        raise MetadataError(f"column '{column}': {len(bad)} value(s) are not ImageNet-1k "
                            f"indices (0-999): {_examples(bad)}")
    return out


def metadata_source(source: Mapping[str, Any], resolved: Path) -> dict[str, Any]:
    """The table source the metadata stage normalises a resolved spreadsheet as: uid and url
    from the columns :func:`resolve_captionnet` added, text from the caption column, every
    other column kept (both label sources: ``idx`` and the captions, the BLIP caption too)."""
    columns = captionnet_columns(source)
    return {"type": "table", "path": str(resolved), "format": "parquet",
            "columns": {"uid": UID_COLUMN, "url": URL_COLUMN, "text": columns["text"]},
            "keep_columns": source.get("keep_columns", "all"),
            # file:// only for the rows matched under imagenet_dir (checked above; the fetch
            # reads file:// only under it, capmix.sourcespec.local_file_roots)
            "allow_local_urls": bool(source.get("imagenet_dir")
                                     or source.get("allow_local_urls", False))}


def build_captionnet_metadata(pool: str, source: Mapping[str, Any], spreadsheet: Path,
                              out_dir: Path, required: Mapping[str, str] | None = None
                              ) -> dict[str, Any]:
    """The metadata stage of a CaptionNet source: resolve the spreadsheet, normalise it as a
    table (:func:`capmix.sources.build_metadata`, every check of a table source), and record
    the matching report and the CaptionNet source in the manifest."""
    import pyarrow.parquet as pq

    table, report = resolve_captionnet(source, Path(spreadsheet))
    staging = Path(out_dir).with_name(f".{Path(out_dir).name}.captionnet")
    staging.mkdir(parents=True, exist_ok=True)
    resolved = staging / "resolved.parquet"
    pq.write_table(table, resolved)
    try:
        effective = metadata_source(source, resolved)
        manifest = build_metadata(pool, effective, [SourceFile(resolved, "parquet")],
                                  Path(out_dir), required=required)
    finally:
        resolved.unlink(missing_ok=True)
        staging.rmdir()
    manifest["source"] = dict(source)
    manifest["captionnet"] = {**report, "spreadsheet": str(spreadsheet)}
    for part in manifest["parts"]:
        part["source_file"] = str(spreadsheet)
        part["source_sha256"] = file_checksum(Path(spreadsheet))[0]
    write_json(Path(out_dir) / "manifest.json", manifest)
    return manifest
