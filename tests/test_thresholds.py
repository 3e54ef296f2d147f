"""Exact DataComp thresholds from a pool's parts (capmix.thresholds) against the whole-pool
formula (capmix.thresholds.datacomp_threshold on ``-np.sort(-s)``), on pools built to be hard:
heavy ties, one value, signed zeros, negatives, empty parts, tiny gather limits."""

import numpy as np
import pytest

from capmix.thresholds import (
    datacomp_threshold,
    key_values,
    order_keys,
    part_thresholds,
    rank_from_top,
)

FRACTIONS = (0.1, 0.2, 0.3, 0.5, 0.75, 0.9, 1.0)


def whole_pool(values: np.ndarray, fraction: float) -> float:
    return datacomp_threshold(-np.sort(-np.asarray(values, dtype=np.float64)), fraction)


def split(values: np.ndarray, n_parts: int, seed: int) -> list[np.ndarray]:
    """The pool cut at random places into parts (some empty)."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, len(values) + 1, size=n_parts - 1))
    return np.split(values, cuts)


def pools(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        # CLIP-score-like, rounded to 3 digits: thousands of ties per value
        "ties": np.round(rng.normal(0.25, 0.05, 20000), 3),
        "one_value": np.full(5000, 0.28),
        "few_values": rng.choice([-1.0, -0.0, 0.0, 0.3, 0.3000000000000001], 3000),
        "continuous": rng.standard_normal(7000) * 1e-3,
        "float32": rng.random(4000).astype(np.float32).astype(np.float64),
        "single": np.array([0.5]),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gather_limit", [0, 50, 1 << 20])
def test_part_thresholds_equal_the_whole_pool_formula(seed, gather_limit):
    data = pools(seed)
    parts = {name: split(values, 7, seed) for name, values in data.items()}
    n_parts = 7

    def read_parts():
        for i in range(n_parts):
            yield {name: parts[name][i] for name in data}

    found = part_thresholds(read_parts, dict.fromkeys(data, FRACTIONS), gather_limit)
    for name, values in data.items():
        for fraction in FRACTIONS:
            expected = whole_pool(values, fraction)
            got = found[name][fraction]
            assert got == expected, (name, fraction, got, expected)
            # the same images kept (s >= threshold), which is what the uid files hold
            assert ((values >= got) == (values >= expected)).all(), (name, fraction)


def test_an_empty_pool_keeps_nothing_and_nan_is_refused():
    assert part_thresholds(lambda: iter([{"s": np.array([])}]), {"s": [0.3]}) == {
        "s": {0.3: float("inf")}}
    with pytest.raises(ValueError, match="1 NaN scores"):
        part_thresholds(lambda: iter([{"s": np.array([0.1, np.nan])}]), {"s": [0.3]})


def test_keys_keep_the_order_of_floats_and_invert():
    values = np.array([-np.inf, -2.5, -1e-300, -0.0, 0.0, 1e-300, 0.25, 3.0, np.inf])
    keys = order_keys(values)
    assert (np.diff(keys.astype(object)) > 0).all()
    assert np.array_equal(key_values(keys), values)
    assert np.signbit(key_values(order_keys(np.array([-0.0]))))[0]
    assert [rank_from_top(10, f) for f in (0.1, 0.3, 1.0)] == [1, 3, 9]


def test_a_pass_reads_each_part_once_and_few_passes_suffice():
    rng = np.random.default_rng(3)
    values = np.round(rng.normal(0.25, 0.05, 50000), 4)
    parts = split(values, 16, 3)
    reads = []

    def read_parts():
        reads.append(1)
        for part in parts:
            yield {"s": part}

    found = part_thresholds(read_parts, {"s": FRACTIONS})
    assert all(found["s"][f] == whole_pool(values, f) for f in FRACTIONS)
    # one pass to count, one histogram pass, one gathering pass: all fractions together
    assert len(reads) == 3
