"""DataComp's top-fraction thresholds over a pool held in parts, exactly, in bounded memory.

DataComp keeps the top fraction ``f`` of a pool by a score with
``threshold = -np.sort(-s)[int(N * f)]`` and ``s >= threshold`` (:func:`datacomp_threshold`,
which also keeps everything at ``f = 1``). Sorting needs the whole pool's
scores in one process: 1.28B float64 scores are 10 GB, and a pool is read part by part
(DataComp ships it as many parquet parts). The threshold is an order statistic, so it can be
found without the sort: a radix select over the scores' bit patterns.

* Each float64 maps to a uint64 key in the same order (:func:`order_keys`: flip the sign bit
  of non-negative numbers, every bit of negative ones; the IEEE 754 trick radix sorts use).
* A pass reads every part once and counts, for each pending selection, the keys that share the
  selection's known prefix by their next 16 bits (65,536 counters); the rank's digit is the
  one whose cumulative count covers it. Four such passes pin all 64 bits, whatever the ties.
* As soon as the bucket that holds the rank has at most ``gather_limit`` keys, the next pass
  collects that bucket's keys instead and picks the rank among them (``np.partition``): on real
  scores, two passes.

Every fraction of every score column is selected in the same passes. Memory: one part's
scores and keys, plus 65,536 counters and at most ``gather_limit`` gathered keys per pending
selection. Written here because no maintained library selects an exact order statistic from
data streamed in parts (numpy/pandas quantiles need the whole array; t-digest-like sketches
are approximate, and DataComp's thresholds must be exact).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Bits of the key a histogram pass resolves (65,536 counters per pending selection).
DIGIT_BITS = 16
KEY_BITS = 64
#: Default most keys a selection gathers once its bucket is this small.
GATHER_LIMIT = 1 << 20

_SIGN = np.uint64(1 << 63)


def order_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys ordered as the float64 ``values`` (-0.0 just below 0.0). NaN is refused:
    DataComp's formula has no place for it, and the mix table stops on it earlier."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError(f"{int(np.isnan(values).sum())} NaN scores: a threshold needs "
                         "every score")
    bits = values.view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def key_values(keys: np.ndarray) -> np.ndarray:
    """The float64 values of :func:`order_keys`' keys."""
    keys = np.asarray(keys, dtype=np.uint64)
    bits = np.where(keys & _SIGN, keys & ~_SIGN, ~keys)
    return bits.view(np.float64)


def datacomp_threshold(sorted_desc: np.ndarray, fraction: float) -> float:
    """DataComp's clip_score threshold on scores sorted high to low, ``sorted_desc[int(N * f)]``
    (f = 1 keeps all; inf for no scores): the whole-pool formula :func:`part_thresholds`
    equals, kept as the reference the tests compare with."""
    if len(sorted_desc) == 0:
        return float("inf")
    return float(sorted_desc[rank_from_top(len(sorted_desc), fraction)])


def rank_from_top(n: int, fraction: float) -> int:
    """The 0-based descending rank DataComp's formula reads: ``int(N * f)``, the last one at
    ``f = 1`` (capmix keeps everything there; DataComp would index past the end)."""
    return min(int(n * fraction), n - 1)


@dataclass
class _Selection:
    """One order statistic being found: its ascending rank among the keys that share
    ``prefix`` (the top ``known`` bits found so far)."""

    rank: int
    prefix: int = 0
    known: int = 0
    gather: bool = False
    result: float | None = None

    def matches(self, keys: np.ndarray) -> np.ndarray | None:
        """Which keys share the prefix (None: all do, nothing known yet)."""
        if self.known == 0:
            return None
        return (keys >> np.uint64(KEY_BITS - self.known)) == np.uint64(self.prefix)


def part_thresholds(read_parts: Callable[[], Iterable[Mapping[str, np.ndarray]]],
                    fractions: Mapping[str, Sequence[float]],
                    gather_limit: int = GATHER_LIMIT) -> dict[str, dict[float, float]]:
    """Per score column and fraction, DataComp's threshold over the pool's parts, equal to
    :func:`datacomp_threshold` on the whole pool sorted (inf for an empty pool).

    ``read_parts()`` yields, each time it is called, every part as a mapping of column ->
    scores (one array per column of ``fractions``, the same rows in each); it is called once
    per pass. ``fractions``: column -> the fractions to select.
    """
    columns = list(fractions)
    sizes = dict.fromkeys(columns, 0)
    for part in read_parts():
        for column in columns:
            sizes[column] += len(part[column])
    selections: dict[str, dict[float, _Selection]] = {}
    results: dict[str, dict[float, float]] = {}
    for column in columns:
        n = sizes[column]
        results[column] = {}
        selections[column] = {}
        for fraction in fractions[column]:
            if n == 0:
                results[column][float(fraction)] = float("inf")
            else:
                # descending rank k is ascending rank n - 1 - k
                selections[column][float(fraction)] = _Selection(
                    n - 1 - rank_from_top(n, float(fraction)))
    pending = [(c, f) for c in columns for f in selections[c]]
    while pending:
        _one_pass(read_parts, {c: [selections[c][f] for cc, f in pending if cc == c]
                               for c in columns}, gather_limit)
        for column, fraction in pending:
            selection = selections[column][fraction]
            if selection.result is not None:
                results[column][fraction] = selection.result
        pending = [(c, f) for c, f in pending if selections[c][f].result is None]
    return results


def _one_pass(read_parts: Callable[[], Iterable[Mapping[str, np.ndarray]]],
              by_column: Mapping[str, list[_Selection]], gather_limit: int) -> None:
    """Read every part once: histogram the next digit of each histogramming selection and
    collect the keys of each gathering one; then narrow or resolve each."""
    counts = {id(s): np.zeros(1 << DIGIT_BITS, dtype=np.int64)
              for selections in by_column.values() for s in selections if not s.gather}
    gathered: dict[int, list[np.ndarray]] = {id(s): [] for selections in by_column.values()
                                             for s in selections if s.gather}
    for part in read_parts():
        for column, selections in by_column.items():
            if not selections:
                continue
            keys = order_keys(part[column])
            for selection in selections:
                mask = selection.matches(keys)
                chosen = keys if mask is None else keys[mask]
                if selection.gather:
                    gathered[id(selection)].append(chosen)
                    continue
                shift = np.uint64(KEY_BITS - selection.known - DIGIT_BITS)
                digits = (chosen >> shift) & np.uint64((1 << DIGIT_BITS) - 1)
                counts[id(selection)] += np.bincount(digits.astype(np.int64),
                                                     minlength=1 << DIGIT_BITS)
    for selections in by_column.values():
        for selection in selections:
            if selection.gather:
                keys = np.concatenate(gathered[id(selection)])
                picked = np.partition(keys, selection.rank)[selection.rank]
                selection.result = float(key_values(np.asarray([picked]))[0])
                continue
            histogram = counts[id(selection)]
            cumulative = np.cumsum(histogram)
            digit = int(np.searchsorted(cumulative, selection.rank, side="right"))
            before = int(cumulative[digit - 1]) if digit else 0
            selection.rank -= before
            selection.prefix = (selection.prefix << DIGIT_BITS) | digit
            selection.known += DIGIT_BITS
            if selection.known == KEY_BITS:  # every bit known: ties all share this value
                selection.result = float(key_values(
                    np.asarray([selection.prefix], dtype=np.uint64))[0])
            elif int(histogram[digit]) <= gather_limit:
                selection.gather = True
