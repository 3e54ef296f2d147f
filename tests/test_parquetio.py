"""Streaming a parquet file holds about a row group, not the rows read so far."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from capmix.parquetio import open_streaming, stream_batches

GROUPS, GROUP_ROWS = 24, 40_000


def write_many_groups(path):
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(path, pa.schema([("uid", pa.string()), ("cos", pa.float64())])) as w:
        for _ in range(GROUPS):
            uids = pa.array([f"{v:032x}" for v in rng.integers(0, 2**62, GROUP_ROWS)])
            w.write_table(pa.table({"uid": uids, "cos": rng.random(GROUP_ROWS)}),
                          row_group_size=GROUP_ROWS)
    return GROUP_ROWS * (32 + 8 + 4)  # bytes of one decoded row group, about


def peak_arrow_bytes(batches) -> tuple[int, int]:
    base = pa.total_allocated_bytes()
    peak = rows = 0
    for batch in batches:
        rows += batch.num_rows
        peak = max(peak, pa.total_allocated_bytes() - base)
        del batch
    return peak, rows


def test_streaming_holds_about_one_row_group_not_the_file(tmp_path):
    path = tmp_path / "scores.parquet"
    group_bytes = write_many_groups(path)
    peak, rows = peak_arrow_bytes(stream_batches(path, 10_000))
    assert rows == GROUPS * GROUP_ROWS
    assert peak < 6 * group_bytes, (peak, group_bytes)
    # pyarrow's default (pre-buffering) keeps what it read: the reason for the module
    default_peak, _ = peak_arrow_bytes(pq.ParquetFile(path).iter_batches(10_000))
    assert default_peak > 12 * group_bytes, (default_peak, group_bytes)


def test_columns_and_row_groups_are_honoured(tmp_path):
    path = tmp_path / "scores.parquet"
    write_many_groups(path)
    file = open_streaming(path)
    whole = file.read_row_groups([3, 5], columns=["cos"])
    streamed = pa.Table.from_batches(list(stream_batches(file, 7_000, ["cos"], row_groups=[3, 5])))
    assert streamed.column_names == ["cos"]
    assert streamed.equals(whole)
