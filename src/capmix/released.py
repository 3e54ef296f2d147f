"""The paper's released BLIP2 captions as a caption source.

Nguyen et al. released the BLIP2 captions they generated for the DataComp
medium and large pools as Hugging Face datasets, one set of CSV files per
sampling temperature (0.5, 0.75, 1.0, 1.5, 2.0). Joining them to our pool by
uid lets the filtering/mixing stages run on the paper's own captions, which
separates "did we caption like they did" from "does the method work".

Nobody on this project has seen the real files, so everything about their
layout is data with a stated default that must be checked against the real
files before a real run:

* columns: :data:`DEFAULT_COLUMNS` (uid column ``uid``, caption column ``text``,
  DataComp's own names) is an *assumption*; a captioner spec's ``columns``
  mapping overrides it (see :func:`released_columns`);
* temperature: a CSV belongs to a temperature when a decimal number in its path
  (file or folder name, e.g. ``temp_0.75/part-000.csv``) equals it;
  :func:`released_files` refuses to guess when nothing matches.

Joining never drops anything silently: :func:`join_released` reports how many
pool uids have no caption, how many released rows are not in the pool, and how
many duplicate captions were dropped, with examples.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

#: The captioner ``backend`` that reads released captions instead of running a model (the
#: model backends are :data:`capmix.captioners.BACKENDS`; the schema allows exactly both).
BACKEND = "released"
RELEASED_REPOS = {
    "medium": "thaottn/DataComp_medium_pool_BLIP2_captions",
    "large": "thaottn/DataComp_large_pool_BLIP2_captions",
}
RELEASED_TEMPERATURES = (0.5, 0.75, 1.0, 1.5, 2.0)
# ASSUMPTION (unverified): DataComp's own column names. Check against the real CSVs.
DEFAULT_COLUMNS: dict[str, str] = {"uid": "uid", "caption": "text"}
CSV_SUFFIXES = (".csv", ".csv.gz")
EXAMPLES = 5
# A decimal number not glued to other digits or dots: "0.75", "1.0" in "temp_1.0.csv".
_DECIMAL = re.compile(r"(?<![\d.])(\d+\.\d+)(?!\d)")


def released_columns(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The CSV column names to use: :data:`DEFAULT_COLUMNS` updated with ``overrides``."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(DEFAULT_COLUMNS))
    if unknown:
        raise ValueError(f"released caption columns: unknown key(s) {unknown} "
                         f"(allowed: {sorted(DEFAULT_COLUMNS)})")
    columns = {**DEFAULT_COLUMNS, **overrides}
    if columns["uid"] == columns["caption"]:
        raise ValueError(f"released caption columns: uid and caption are both "
                         f"'{columns['uid']}'")
    return columns


def _temperatures_in(path: str) -> list[float]:
    return [float(number) for number in _DECIMAL.findall(path)]


def released_files(repo_files: Sequence[str], temperature: float) -> list[str]:
    """The CSV files of one temperature in a repository listing, sorted.

    A file matches when any decimal number in its path equals ``temperature``
    (``"0.75"``, ``"1.0"``; an integer like ``part-1`` never counts, so shard
    numbers cannot be mistaken for temperatures). No match is an error that lists
    what was there, rather than an empty caption set later.
    """
    csvs = sorted(f for f in repo_files if f.lower().endswith(CSV_SUFFIXES))
    chosen = [f for f in csvs
              if any(math.isclose(t, temperature, abs_tol=1e-9) for t in _temperatures_in(f))]
    if not chosen:
        found = sorted({t for f in csvs for t in _temperatures_in(f)})
        shown = ", ".join(csvs[:10]) + (f", ... ({len(csvs)} in all)" if len(csvs) > 10 else "")
        raise ValueError(f"no released caption CSV for temperature {temperature}: the listing "
                         f"has {len(csvs)} CSV file(s) ({shown or 'none'}), temperatures in "
                         f"their paths: {found or 'none'}")
    return chosen


def download_released(repo: str, temperature: float, dest: Path, hub: Any = None,
                      revision: str | None = None) -> list[Path]:
    """Download the released CSVs of one temperature from a Hugging Face dataset repo.

    ``hub`` is anything with ``list_repo_files`` and ``hf_hub_download`` with the
    ``huggingface_hub`` signatures (default: the module itself); tests pass a
    stand-in so nothing reaches the network. Files land under ``dest`` keeping
    their repo paths; an already-downloaded file is not fetched again.
    ``revision`` pins a commit for a reproducible run.
    """
    if hub is None:
        import huggingface_hub as hub
    dest = Path(dest)
    listing = hub.list_repo_files(repo, repo_type="dataset", revision=revision)
    paths = []
    for filename in released_files(listing, temperature):
        path = Path(hub.hf_hub_download(repo_id=repo, filename=filename, repo_type="dataset",
                                        revision=revision, local_dir=dest))
        if not path.is_file():
            raise FileNotFoundError(f"{repo}: download of '{filename}' left no file at {path}")
        paths.append(path)
    return paths


def _read_released(path: Path, uid_column: str, caption_column: str,
                   chunksize: int) -> Iterator[pd.DataFrame]:
    """Chunks of (uid, caption) text columns of one CSV; errors name the file.

    Read as text with NA detection off, so a caption "NA" or "null" stays a
    caption; chunked because a released file covers a whole pool. All columns are
    parsed (no ``usecols``): pandas then rejects a row with too many fields, which
    with ``usecols`` would silently cut a caption at an unquoted comma.
    """
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable CSV: {error}") from error
    missing = [c for c in (uid_column, caption_column) if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (columns: {list(header)}); "
                         "set the captioner's `columns` to the real names")
    # index_col=False: otherwise pandas silently turns the first column into the index
    # when the first data row has one field too many (an unquoted comma in a caption);
    # with it, pandas warns instead, and the warning is made an error here.
    with pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False,
                     chunksize=chunksize) as reader:
        while True:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", pd.errors.ParserWarning)
                    chunk = next(reader)
            except StopIteration:
                return
            except (pd.errors.ParserError, pd.errors.ParserWarning,
                    UnicodeDecodeError) as error:
                raise ValueError(f"{path}: malformed CSV: {error}") from error
            yield chunk[[uid_column, caption_column]].set_axis(["uid", "caption"], axis=1)


def join_released(pool_uids: Sequence[str] | pd.Series, csv_files: Sequence[Path],
                  uid_column: str = DEFAULT_COLUMNS["uid"],
                  caption_column: str = DEFAULT_COLUMNS["caption"],
                  chunksize: int = 1_000_000) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Released captions of the pool's uids, and a report of what did not join.

    Returns a frame (uid, caption) with exactly one row per pool uid that has a
    released caption, in pool order (when a uid has several captions the first,
    in file order, is kept and the extras are counted), and a report: n_pool,
    n_released_rows, n_joined, n_pool_without_caption, n_released_not_in_pool
    (rows), n_duplicate_uids (joined uids with more than one caption),
    n_duplicate_rows (captions dropped for them), n_empty_captions (joined),
    and up to 5 example uids each way. Duplicates are only tracked for pool uids:
    the rest of a released file is counted, not held in memory.
    """
    pool = pd.Index(pd.Series(pool_uids, dtype=str)).drop_duplicates()
    kept: list[pd.DataFrame] = []
    n_rows = n_outside = 0
    outside_examples: list[str] = []
    for path in csv_files:
        for chunk in _read_released(Path(path), uid_column, caption_column, chunksize):
            n_rows += len(chunk)
            in_pool = chunk["uid"].isin(pool)
            n_outside += int((~in_pool).sum())
            if len(outside_examples) < EXAMPLES:
                outside_examples += chunk.loc[~in_pool, "uid"].head(EXAMPLES).tolist()
            kept.append(chunk.loc[in_pool])
    released = (pd.concat(kept, ignore_index=True) if kept
                else pd.DataFrame({"uid": pd.Series(dtype=str), "caption": pd.Series(dtype=str)}))
    duplicate = released["uid"].duplicated(keep="first")
    first = released.loc[~duplicate].set_index("uid")["caption"]
    joined_uids = pool[pool.isin(first.index)]
    frame = pd.DataFrame({"uid": joined_uids.to_numpy(),
                          "caption": first.reindex(joined_uids).to_numpy()})
    without = pool[~pool.isin(first.index)]
    report = {
        "n_pool": int(len(pool)),
        "n_released_rows": int(n_rows),
        "n_joined": int(len(frame)),
        "n_pool_without_caption": int(len(without)),
        "n_released_not_in_pool": int(n_outside),
        "n_duplicate_uids": int(released.loc[duplicate, "uid"].nunique()),
        "n_duplicate_rows": int(duplicate.sum()),
        "n_empty_captions": int((frame["caption"].str.strip() == "").sum()),
        "examples_pool_without_caption": without[:EXAMPLES].tolist(),
        "examples_released_not_in_pool": outside_examples[:EXAMPLES],
        "columns": {"uid": uid_column, "caption": caption_column},
        "files": [str(p) for p in csv_files],
    }
    return frame, report
