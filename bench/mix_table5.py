"""Benchmark: the Table 5 subsets (capmix.mix select + write_subset) on a DataComp-small pool.

Builds a synthetic mix table shaped like the one build_mix_table gives (uid, score:S and
caption:S for S = raw and blip2_opt_2.7b/0.75, in_image_clusters; sorted by uid), finds
every threshold the strategies need once (pool_thresholds), then runs every strategy of the
nine Table 5 sweep families of config/strategies.yaml (54 strategies with the catalogue's six
fractions) through select and, unless --no-write, write_subset (uids.npy, samples.parquet,
summary.json), and prints seconds, rows/s and memory. Nothing is asserted.

The synthetic table (seeded by --seed; generating it is timed but is not the measured work):
  uid                        32 lowercase hex chars, unique by construction (high 64 bits are
                             a bijective hash of the row number, low 64 bits random); sorted
  score:raw                  float64 ~ N(0.22, 0.06)
  score:blip2_opt_2.7b/0.75  float64 ~ N(0.27, 0.05), correlation 0.4 with the raw score
  caption:raw, caption:...   every row its own Python str (as after reading a parquet), built
                             with numpy from a vocabulary of random lowercase words (raw:
                             20,000 words, 4-10 per caption; BLIP2: 2,000 words, 5-9 per
                             caption; both about 40-60 chars)
  in_image_clusters          bool, True with probability 0.37
The pipeline's subset rule (run_subset) also reads the table parquet and hashes it for its
provenance once per strategy; neither is timed here (the table is built in memory).

Without --out each subset is written under a temporary directory and deleted right after it
is written (a full Table 5 sweep at 12.8M rows writes tens of GB); --out DIR keeps them all.

    .venv/bin/python bench/mix_table5.py --rows 100000
    .venv/bin/python bench/mix_table5.py                       # 12.8M rows = DataComp small
    .venv/bin/python bench/mix_table5.py --no-write --families raw_top synthetic_top_in1k \\
        --fractions 0.3 0.9
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from capmix.config import pipeline_config
from capmix.mix import (
    CLUSTER_COLUMN,
    caption_column,
    pool_thresholds,
    score_column,
    select,
    threshold_needs,
    write_subset,
)
from capmix.provenance import provenance_record
from capmix.strategies import Strategy, expand_strategies, parse_strategy

TABLE5_FAMILIES = (
    "raw_top",
    "synthetic_top",
    "synthetic_top_by_raw",
    "raw_top_synthetic_remaining",
    "raw_top_synthetic_remaining_filtered",
    "synthetic_top_raw_remaining_filtered",
    "concat_top_synthetic_remaining_filtered",
    "raw_top_plus_synthetic_top",
    "synthetic_top_in1k",
)
RAW = "raw"
SYNTHETIC = "blip2_opt_2.7b/0.75"
ALIASES = {"raw": RAW, "synthetic": SYNTHETIC, "synthetic_best": "blip2_opt_2.7b/best"}
CHUNK = 500_000  # rows converted to Python strings at a time (bounds the numpy temporaries)
GIB = 2**30


# ------------------------------------------------------------------ memory


def rss_gib() -> float:
    """Resident set size now (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except OSError:
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / GIB


def peak_rss_gib() -> float:
    """Peak resident set size of the process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / GIB if sys.platform == "darwin" else peak * 1024 / GIB


# ------------------------------------------------------------------ the synthetic table


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64, so distinct inputs give distinct outputs."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _to_str_objects(fixed: np.ndarray, make: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Fill ``fixed`` (an object array) chunk by chunk with str objects from ``make(lo, hi)``,
    a fixed-width bytes (``S``) array; trailing NULs are dropped by the conversion."""
    for lo in range(0, len(fixed), CHUNK):
        hi = min(lo + CHUNK, len(fixed))
        fixed[lo:hi] = make(lo, hi).astype("U").astype(object)
    return fixed


def make_uids(n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct 32-hex uids, sorted (build_mix_table's table is sorted by uid)."""
    offset = rng.integers(0, 2**63, dtype=np.uint64)
    high = _mix64(np.arange(n, dtype=np.uint64) + offset)
    high.sort()
    low = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)

    def chunk(lo: int, hi: int) -> np.ndarray:
        words = np.empty((hi - lo, 2), dtype=">u8")
        words[:, 0] = high[lo:hi]
        words[:, 1] = low[lo:hi]
        octets = words.view(np.uint8).reshape(hi - lo, 16)
        text = np.empty((hi - lo, 32), dtype=np.uint8)
        text[:, 0::2] = digits[octets >> 4]
        text[:, 1::2] = digits[octets & 15]
        return text.view("S32").ravel()

    return _to_str_objects(np.empty(n, dtype=object), chunk)


def make_vocabulary(size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` random lowercase words of 3-10 letters, as an ``S10`` array."""
    letters = rng.integers(ord("a"), ord("z") + 1, size=(size, 10), dtype=np.uint8)
    lengths = rng.integers(3, 11, size=size)
    letters[np.arange(10)[None, :] >= lengths[:, None]] = 0
    return letters.view("S10").ravel()


def make_captions(n: int, rng: np.random.Generator, vocabulary_size: int, min_words: int,
                  max_words: int) -> np.ndarray:
    """n captions of min_words..max_words random vocabulary words, one str object each."""
    vocabulary = make_vocabulary(vocabulary_size, rng)

    def chunk(lo: int, hi: int) -> np.ndarray:
        m = hi - lo
        n_words = rng.integers(min_words, max_words + 1, size=m)
        picks = vocabulary[rng.integers(0, vocabulary_size, size=(m, max_words))]
        text = picks[:, 0]
        for j in range(1, max_words):
            used = j < n_words
            text = np.strings.add(text, np.where(used, b" ", b""))
            text = np.strings.add(text, np.where(used, picks[:, j], b""))
        return text

    return _to_str_objects(np.empty(n, dtype=object), chunk)


def make_table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    uids = make_uids(n, rng)
    z_raw = rng.standard_normal(n)
    z_syn = 0.4 * z_raw + np.sqrt(1 - 0.4**2) * rng.standard_normal(n)
    raw_scores = np.clip(0.22 + 0.06 * z_raw, -1.0, 1.0)
    synthetic_scores = np.clip(0.27 + 0.05 * z_syn, -1.0, 1.0)
    del z_raw, z_syn
    in_clusters = rng.random(n) < 0.37
    return pd.DataFrame({
        "uid": uids,
        score_column(RAW): raw_scores,
        caption_column(RAW): make_captions(n, rng, 20_000, 4, 10),
        score_column(SYNTHETIC): synthetic_scores,
        caption_column(SYNTHETIC): make_captions(n, rng, 2_000, 5, 9),
        CLUSTER_COLUMN: in_clusters,
    }, copy=False)


# ------------------------------------------------------------------ the strategies


def table5_strategies(families: Sequence[str],
                      fractions: Sequence[float] | None) -> list[Strategy]:
    """The catalogue's specs of these families, expanded (optionally over other fractions)."""
    catalogue = pipeline_config()["strategies"]
    chosen: dict[str, dict[str, Any]] = {}
    for family in families:
        spec = catalogue.get(family)
        if spec is None or not spec.get("fractions"):
            sweeps = sorted(f for f, s in catalogue.items() if s.get("fractions"))
            raise SystemExit(f"--families: '{family}' is not a sweep family of the catalogue "
                             f"(allowed: {', '.join(sweeps)})")
        chosen[family] = dict(spec) if fractions is None else {**spec,
                                                               "fractions": list(fractions)}
    return [parse_strategy(name, spec) for name, spec in expand_strategies(chosen).items()]


def resolve(source: str) -> str:
    return ALIASES.get(source, source)


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=12_800_000,
                        help="pool images (default: 12.8M, DataComp small)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true",
                        help="time select only, not write_subset")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the subsets here and keep them (default: a temp dir)")
    parser.add_argument("--families", nargs="+", default=list(TABLE5_FAMILIES),
                        help="sweep families of config/strategies.yaml (default: Table 5's)")
    parser.add_argument("--fractions", nargs="+", type=float, default=None,
                        help="fractions to sweep (default: each family's catalogue fractions)")
    args = parser.parse_args()
    write = not args.no_write

    strategies = table5_strategies(args.families, args.fractions)
    sources = sorted({resolve(s) for strategy in strategies for s in strategy.sources()})
    missing = [s for s in sources if s not in (RAW, SYNTHETIC)]
    if missing:
        raise SystemExit(f"the synthetic table has no source {missing} (only {RAW}, {SYNTHETIC})")

    n = args.rows
    rss_start = rss_gib()
    start = time.perf_counter()
    table = make_table(n, args.seed)
    generated = time.perf_counter() - start
    rss_table = rss_gib()
    peak_table = peak_rss_gib()
    start = time.perf_counter()
    by_column = table.memory_usage(deep=True, index=False)
    measured = time.perf_counter() - start
    caption_chars = {s: float(table[caption_column(s)].str.len().mean()) for s in (RAW, SYNTHETIC)}

    print(f"pool of {n:,} rows, seed {args.seed}, {len(strategies)} strategies of "
          f"{len(args.families)} families, write={'yes' if write else 'no'}, "
          f"{os.cpu_count()} CPUs, pandas {pd.__version__}, numpy {np.__version__}")
    print(f"table generation  : {generated:8.2f} s  (not part of the measured work)")
    print(f"table in memory   : {by_column.sum() / GIB:8.3f} GiB by DataFrame.memory_usage("
          f"deep=True) ({measured:.1f} s to measure)")
    for column, size in by_column.items():
        print(f"    {column:<34} {size / GIB:7.3f} GiB")
    print(f"    mean caption length: raw {caption_chars[RAW]:.1f}, "
          f"{SYNTHETIC} {caption_chars[SYNTHETIC]:.1f} chars")
    print(f"RSS before table  : {rss_start:8.3f} GiB")
    print(f"RSS after table   : {rss_table:8.3f} GiB  (peak while building: {peak_table:.3f} GiB)")

    start = time.perf_counter()
    needs: dict[str, set[float]] = {}
    for strategy in strategies:
        for source, fractions in threshold_needs(strategy, resolve).items():
            needs.setdefault(source, set()).update(fractions)
    pool_cut = pool_thresholds(lambda: [table], {s: sorted(f) for s, f in needs.items()})
    sorted_seconds = time.perf_counter() - start
    print(f"pool_thresholds   : {sorted_seconds:8.2f} s  for {', '.join(sorted(needs))}")

    if args.out is not None:
        out_root = args.out
        out_root.mkdir(parents=True, exist_ok=True)
        temporary = None
    else:
        temporary = tempfile.TemporaryDirectory(prefix="mix_table5_")
        out_root = Path(temporary.name)

    header = (f"{'strategy':<44} {'samples':>11} {'images':>11} {'thresholds':<15} "
              f"{'select s':>8}")
    if write:
        header += f" {'write s':>8} {'MiB':>7}"
    print(header + f" {'peak GiB':>8}")
    select_total = write_total = 0.0
    samples_total = 0
    try:
        for strategy in strategies:
            start = time.perf_counter()
            selection = select(strategy, table, pool_cut, resolve)
            selected = time.perf_counter() - start
            select_total += selected
            samples = selection.rows.num_rows
            samples_total += samples
            thresholds = [p["threshold"] for p in selection.parts
                          if p["keep"] in ("top", "min_score")]
            line = ""
            if write:
                provenance = provenance_record("subset", params={"strategy": strategy.name,
                                                                 "pool_sources": ALIASES})
                out_dir = out_root / strategy.name
                start = time.perf_counter()
                summary = write_subset(strategy, selection, n, out_dir, provenance)
                written = time.perf_counter() - start
                write_total += written
                images = summary["n_images"]
                line = f" {written:8.2f} {directory_bytes(out_dir) / 2**20:7.0f}"
                if temporary is not None:
                    shutil.rmtree(out_dir)
            else:
                images = len(selection.image_uids)
            del selection
            shown = ",".join(f"{t:.4f}" for t in thresholds)
            print(f"{strategy.name:<44} {samples:>11,} {images:>11,} {shown:<15} "
                  f"{selected:8.2f}{line} {peak_rss_gib():8.3f}", flush=True)
    finally:
        if temporary is not None:
            temporary.cleanup()

    measured_total = select_total + write_total
    peak = peak_rss_gib()
    what = "select + write_subset" if write else "select"
    print(f"select total      : {select_total:8.2f} s  "
          f"({n * len(strategies) / select_total:,.0f} rows/s, {samples_total:,} samples)")
    if write:
        print(f"write_subset total: {write_total:8.2f} s")
    print(f"measured total    : {measured_total:8.2f} s  ({what}, {len(strategies)} strategies; "
          f"pool_thresholds adds {sorted_seconds:.2f} s once)")
    print(f"rows/s            : {n * len(strategies) / measured_total:,.0f}  (= {n:,} pool rows x "
          f"{len(strategies)} strategies / {what} seconds)")
    if peak > peak_table:
        added = f"the subsets add {peak - rss_table:.3f} GiB to the table's"
    else:
        added = "the subsets stayed below the peak of building the table"
    print(f"peak RSS          : {peak:8.3f} GiB  (after table {rss_table:.3f} GiB: {added}; "
          f"peak while building {peak_table:.3f} GiB)")


if __name__ == "__main__":
    main()
