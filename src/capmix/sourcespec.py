"""What a pool's ``source`` config means, without reading any data: its types, whether its
metadata must be downloaded, which URL schemes and addresses its rows may use.

A light module (standard library only): the config checker and the Snakefile read sources
through it, and must not import the metadata stage (pyarrow, numpy) to do so.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

#: The source types (``pools[].source.type``); the schema lists exactly these (a test holds
#: them equal). ``capmix.sources`` reads each.
SOURCE_TYPES: tuple[str, ...] = ("toy", "datacomp", "table", "captionnet")

#: The formats a ``table`` source may declare (``source.format``; ``auto`` besides: from the
#: file's suffix). ``coco_captions`` is a COCO-caption annotation file (``images`` and
#: ``annotations``, e.g. NoCaps' ``nocaps_val_4500_captions.json`` or COCO's
#: ``captions_train2017.json``): one row per image. The web datasets' own formats
#: (``capmix.webformats``): ``headerless_tsv`` (CC3M, CC12M: fields named by
#: ``source.column_names``), ``yfcc100m`` (YFCC100M's 25-field dataset file), ``redcaps``
#: (RedCaps' per-subreddit annotation json), ``aligned_lines`` (SBU: line-aligned text files,
#: ``source.line_files``). The schema lists exactly these (a test holds them equal);
#: ``capmix.sources`` reads each.
TABLE_FORMATS: tuple[str, ...] = ("csv", "tsv", "parquet", "jsonl", "coco_captions",
                                  "headerless_tsv", "yfcc100m", "redcaps", "aligned_lines")
#: What the metadata stage does with a uid that repeats (``source.duplicates``, table sources):
#: ``stop`` names the rows and stops; ``drop`` drops a row whose uid, url and text all equal an
#: earlier row's (the exact duplicate rows real CC3M/CC12M/LAION/SBU files hold) and still
#: stops on a uid repeated with another url or text. The schema lists exactly these (a test
#: holds them equal); ``capmix.sources`` applies them.
DUPLICATE_POLICIES: tuple[str, ...] = ("stop", "drop")
#: The formats whose ``path`` is a folder read as one table (SBU's line-aligned files); any
#: other declared format given a folder reads each of its files as a metadata part.
FOLDER_FORMATS: tuple[str, ...] = ("aligned_lines",)


def is_url(path: str) -> bool:
    """Whether a metadata ``path`` is a URL (downloaded first), not a local file."""
    return urllib.parse.urlparse(path).scheme in ("http", "https", "file", "ftp")


#: URL schemes the fetch accepts from third-party metadata. ``file`` reads this machine's
#: files, so it is accepted only where the source says so (``allow_local_urls``; the toy world
#: serves its images that way); anything else (``ftp:``, ``data:``, ``javascript:``, none)
#: is refused at the metadata stage, before any fetch.
REMOTE_URL_SCHEMES: tuple[str, ...] = ("http", "https")
LOCAL_URL_SCHEMES: tuple[str, ...] = ("file",)


def allows_local_urls(source: Mapping[str, Any]) -> bool:
    """Whether a source's URLs may reach this machine anywhere: ``file://`` URLs to any file,
    and hosts on loopback or private networks (the toy world always, whose images are served
    that way; others only with ``allow_local_urls: true``). A CaptionNet ``imagenet_dir`` does
    not turn this on: it lets only files under that folder be read
    (:func:`local_file_roots`), and the spreadsheet's http(s) URLs stay barred from this
    machine and its networks (``capmix.fetch_limits``)."""
    return source["type"] == "toy" or bool(source.get("allow_local_urls", False))


def local_file_roots(source: Mapping[str, Any]) -> tuple[str, ...]:
    """The folders whose files a source's ``file://`` URLs may read when it does not allow
    local URLs (:func:`allows_local_urls`): a CaptionNet source's ``imagenet_dir``, where the
    metadata stage itself matched its ImageNet rows (``capmix.captionnet``). The fetch refuses
    any other ``file://`` URL, and one whose path (links and ``..`` resolved) leaves them."""
    if source["type"] == "captionnet" and source.get("imagenet_dir"):
        return (str(source["imagenet_dir"]),)
    return ()


def allowed_url_schemes(source: Mapping[str, Any]) -> tuple[str, ...]:
    """The schemes a source's URLs may use (see :data:`REMOTE_URL_SCHEMES`); ``file`` where
    local files may be read at all (anywhere, or under :func:`local_file_roots` only)."""
    local = allows_local_urls(source) or bool(local_file_roots(source))
    return REMOTE_URL_SCHEMES + (LOCAL_URL_SCHEMES if local else ())


def needs_download(source: Mapping[str, Any]) -> bool:
    """Whether the metadata stage reads a download record (``download_metadata``'s output)
    instead of local files: DataComp without ``local_dir``, a table given by URL."""
    if source["type"] == "datacomp":
        return not source.get("local_dir")
    if source["type"] == "table":
        return is_url(source["path"])
    return False
