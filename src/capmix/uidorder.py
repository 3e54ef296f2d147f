"""Seeded samples in uid order over rows held in many parquet files, without holding them.

The quality and analyses stages draw their seeded samples (:func:`capmix.quality.
sample_indices`) from positions in *uid order*: Table 1's trigram sample is the ``i``-th
caption of the set sorted by uid, whatever file it sits in, so that the same seed picks the
same captions however the set was sharded. At DataComp large a caption set is 1.28B rows in
~128k shard files, not sorted across them; sorting it needs every uid in one process (20 GB
as 128-bit pairs at large, 200 GB at xlarge). The positions are order statistics, so they are
found here without the sort, as :mod:`capmix.thresholds` finds its thresholds:

* a counting pass reads the uids piece by piece (a piece is one row group of one file) and
  counts them per bucket of their top ``bits`` bits (:class:`UidOrder`, sized so a bucket
  holds about :data:`TARGET_BUCKET_ROWS` uids; uids are hashes, so buckets are even);
* the cumulative counts say which bucket each wanted position falls in; a gathering pass
  keeps only the rows of those buckets (uid, piece, row), which are sorted to give each its
  exact rank; ties (a uid twice) keep reading order, as a stable sort of the concatenated
  files does;
* :func:`take` then reads the wanted rows' values piece by piece.

Memory: one piece, ``2**bits`` counters (at most 1 GiB at ``bits`` = 27) and the rows of the
buckets that hold a wanted position (about :data:`TARGET_BUCKET_ROWS` per position).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from capmix.uids import UID_PAIR_DTYPE, arrow_uids_to_pairs

#: Most bits of a uid a bucket is named by (2**27 counters: 1 GiB as int64, 12.8B uids at
#: xlarge ~95 per bucket).
MAX_BITS = 27
#: Uids per bucket the counters are sized for: the gathering pass keeps about this many rows
#: per wanted position.
TARGET_BUCKET_ROWS = 32


@dataclass(frozen=True)
class Piece:
    """One row group of one parquet file: the unit read at a time."""

    path: Path
    row_group: int
    rows: int


def pieces(files: Iterable[Path]) -> list[Piece]:
    """Every row group of ``files``, in order, with its row count (parquet metadata only); a
    missing or unreadable file is an error naming it."""
    found = []
    for path in files:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        try:
            meta = pq.ParquetFile(path).metadata
        except (pa.ArrowException, OSError) as error:
            raise ValueError(f"{path}: not a readable parquet file ({error})") from error
        found.extend(Piece(path, g, meta.row_group(g).num_rows)
                     for g in range(meta.num_row_groups))
    return found


def read_piece(piece: Piece, columns: Sequence[str]) -> pa.Table:
    """One piece's ``columns``; a file that lacks one or cannot be read is named."""
    try:
        return pq.ParquetFile(piece.path).read_row_group(piece.row_group, columns=list(columns))
    except (pa.ArrowException, OSError, KeyError) as error:
        raise ValueError(f"{piece.path} (row group {piece.row_group}): cannot read columns "
                         f"{list(columns)} ({error})") from error


def iter_pieces(found: Sequence[Piece], columns: Sequence[str]) -> Iterator[tuple[int, pa.Table]]:
    """(index, table) of each piece, in order."""
    for index, piece in enumerate(found):
        yield index, read_piece(piece, columns)


def uid_keys(uids: pa.Array | pa.ChunkedArray, where: Path | str) -> np.ndarray:
    """The 128-bit keys of ``uids`` (in uid order as strings: lowercase hex); a uid that is not
    32 lowercase hex digits is an error naming ``where``."""
    try:
        return arrow_uids_to_pairs(uids)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error


class UidOrder:
    """Rows at given positions of the uid order of rows fed piece by piece (module doc).

    Feed every piece's kept rows to :meth:`count` (first pass), call :meth:`want`, feed the
    same rows, in the same order, to :meth:`gather` (second pass), then :meth:`picks`.
    """

    def __init__(self, max_rows: int):
        wanted = math.ceil(math.log2(max(max_rows, 1) / TARGET_BUCKET_ROWS)) \
            if max_rows > TARGET_BUCKET_ROWS else 0
        self.bits = int(min(MAX_BITS, max(0, wanted)))
        self.counts = np.zeros(1 << self.bits, dtype=np.int64)
        self.n = 0
        self._needed: np.ndarray | None = None
        self._starts: np.ndarray | None = None
        self._positions: np.ndarray | None = None
        self._gathered: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def _buckets(self, keys: np.ndarray) -> np.ndarray:
        if not self.bits:
            return np.zeros(len(keys), dtype=np.int64)
        return (keys["f0"] >> np.uint64(64 - self.bits)).astype(np.int64)

    def count(self, keys: np.ndarray) -> None:
        """First pass: one piece's kept rows."""
        buckets, counts = np.unique(self._buckets(keys), return_counts=True)
        self.counts[buckets] += counts
        self.n += len(keys)

    def want(self, positions: np.ndarray) -> None:
        """The positions (0 .. n - 1, in uid order) :meth:`picks` will return, in this order."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and (positions.min() < 0 or positions.max() >= self.n):
            raise ValueError(f"positions outside 0 .. {self.n - 1}")
        ends = np.cumsum(self.counts)
        buckets = np.searchsorted(ends, positions, side="right")
        self._needed = np.unique(buckets)
        self._starts = ends[self._needed] - self.counts[self._needed]
        self._positions = positions

    def gather(self, piece: int, keys: np.ndarray, rows: np.ndarray,
               ties: np.ndarray | None = None) -> None:
        """Second pass: the same kept rows as :meth:`count` got, with their rows in the piece
        and optionally a tie-break before reading order (a subset's ``part``: its samples are
        sorted by uid, then part)."""
        assert self._needed is not None, "call want() first"
        if not len(self._needed):
            return
        buckets = self._buckets(keys)
        at = np.minimum(np.searchsorted(self._needed, buckets), len(self._needed) - 1)
        hit = self._needed[at] == buckets
        if hit.any():
            tie = (np.zeros(int(hit.sum()), dtype=np.int64) if ties is None
                   else np.asarray(ties, dtype=np.int64)[hit])
            self._gathered.append((keys[hit], tie,
                                   np.full(int(hit.sum()), piece, dtype=np.int64),
                                   np.asarray(rows, dtype=np.int64)[hit]))

    def picks(self) -> tuple[np.ndarray, np.ndarray]:
        """(piece, row) of each wanted position, in the order :meth:`want` was given them."""
        assert self._needed is not None and self._starts is not None
        assert self._positions is not None
        if self._gathered:
            keys = np.concatenate([g[0] for g in self._gathered])
            tie = np.concatenate([g[1] for g in self._gathered])
            piece = np.concatenate([g[2] for g in self._gathered])
            row = np.concatenate([g[3] for g in self._gathered])
        else:
            keys = np.zeros(0, dtype=UID_PAIR_DTYPE)
            tie, piece, row = (np.zeros(0, np.int64) for _ in range(3))
        order = np.lexsort((row, piece, tie, keys["f1"], keys["f0"]))
        keys, piece, row = keys[order], piece[order], row[order]
        buckets = self._buckets(keys)
        at = np.searchsorted(self._needed, buckets)
        got = np.bincount(at, minlength=len(self._needed))
        if not np.array_equal(got, self.counts[self._needed]):
            raise ValueError("the rows read twice differ between the passes (files changed "
                             "while being read?)")
        first = np.searchsorted(buckets, buckets, side="left")
        ranks = self._starts[at] + (np.arange(len(buckets)) - first)
        index = np.searchsorted(ranks, self._positions)
        return piece[index], row[index]


def take(found: Sequence[Piece], piece: np.ndarray, row: np.ndarray, column: str) -> list[Any]:
    """The values of ``column`` at (piece, row) pairs, in their order, read piece by piece."""
    values: list[Any] = [None] * len(piece)
    order = np.argsort(piece, kind="stable")
    sorted_pieces = piece[order]
    bounds = np.flatnonzero(np.diff(sorted_pieces)) + 1
    for group in np.split(order, bounds):
        if not len(group):
            continue
        index = int(piece[group[0]])
        table = read_piece(found[index], [column])
        for slot, value in zip(group, table.column(0).take(pa.array(row[group])).to_pylist(),
                               strict=True):
            values[int(slot)] = value
    return values


def sample_in_uid_order(found: Sequence[Piece], column: str, draw: Any,
                        keep_non_null: bool = False,
                        tie: str | None = None) -> tuple[int, list[Any]]:
    """Two passes over ``found`` (uid, and ``column`` if ``keep_non_null``): the number ``n``
    of rows (those whose ``column`` is not null if ``keep_non_null``) and the values of
    ``column`` at positions ``draw(n)`` of those rows in uid order (ties by the ``tie``
    column if given, then in reading order), in the order ``draw`` gives them."""
    columns = ["uid", *([column] if keep_non_null else []), *([tie] if tie else [])]
    order = UidOrder(sum(p.rows for p in found))
    for index, table in iter_pieces(found, columns):
        keys, _ = _kept(table, found[index], column if keep_non_null else None)
        order.count(keys)
    positions = np.asarray(draw(order.n), dtype=np.int64)
    order.want(positions)
    for index, table in iter_pieces(found, columns):
        keys, rows = _kept(table, found[index], column if keep_non_null else None)
        ties = None
        if tie:
            ties = np.asarray(table.column(tie).to_numpy(zero_copy_only=False))[rows]
        order.gather(index, keys, rows, ties)
    piece, row = order.picks()
    return order.n, take(found, piece, row, column)


def _kept(table: pa.Table, piece: Piece, non_null: str | None) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(table.num_rows)
    uids = table.column("uid")
    if non_null is not None:
        valid = np.asarray(table.column(non_null).is_valid())
        rows = rows[valid]
        uids = uids.filter(pa.array(valid))
    return uid_keys(uids, piece.path), rows
