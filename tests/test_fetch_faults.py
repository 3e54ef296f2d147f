"""The fetch against a misbehaving server (tests/fault_server.py): every uid accounted for
with the reason its fault deserves, and a new round that asks only for what may succeed."""

import pandas as pd
import pytest

from capmix.fetch import RETRYABLE_REASONS, FetchSettings, fetch_pool
from capmix.sources import build_metadata, source_files
from tests.fault_server import FAULTS, FaultServer

PER_FAULT = 2  # uids per fault kind

pytestmark = pytest.mark.integration


def _settings(**extra) -> FetchSettings:
    # retries=1: a transient 503 succeeds on img2dataset's second try; timeout 2 s < the
    # server's 4 s stall; a 2 s deadline < the 0.2 s/byte drip; max_image_area below the
    # "huge" fault's 6.25 MP; max_body_bytes below the endless body's 4 s of output.
    return FetchSettings.from_config(dict(
        image_size=16, samples_per_shard=64, retries=1, timeout=2, threads_per_process=16,
        encode_format="png", max_image_area=4_000_000, max_body_bytes=1_000_000, deadline=2,
        **extra), "table")


def _pool(tmp_path, server) -> pd.DataFrame:
    rows = [{"uid": f"{len(FAULTS) * n + i:032x}", "url": server.url(fault, n), "text": fault}
            for n in range(PER_FAULT) for i, fault in enumerate(FAULTS)]
    table = pd.DataFrame(rows)
    table.to_parquet(tmp_path / "t.parquet", index=False)
    source = {"type": "table", "path": str(tmp_path / "t.parquet"), "format": "auto"}
    build_metadata("faults", source, source_files(source, [tmp_path / "t.parquet"]),
                   tmp_path / "metadata")
    return table


def _fetch(tmp_path, settings):
    return fetch_pool("faults", tmp_path / "metadata", tmp_path / "shards",
                      tmp_path / "index.parquet", tmp_path / "report.json", settings)


def _reasons(tmp_path, table) -> dict[str, set[str]]:
    index = pd.read_parquet(tmp_path / "index.parquet").merge(table, on="uid")
    index["outcome"] = index["reason"].where(index["status"] == "failed", "fetched")
    return index.groupby("text")["outcome"].agg(set).to_dict()


def test_every_fault_gets_its_reason_and_a_new_round_retries_only_transient_ones(tmp_path):
    with FaultServer(max_seconds=4) as server:
        table = _pool(tmp_path, server)
        report = _fetch(tmp_path, _settings())
        assert report["n_total"] == len(table)  # every uid accounted for, none lost
        assert _reasons(tmp_path, table) == {f: {reason} for f, (_, reason) in FAULTS.items()}
        assert report["n_fetched"] == PER_FAULT * sum(r == "fetched" for _, r in FAULTS.values())

        before = {fault: server.requested(fault) for fault in FAULTS}
        report = _fetch(tmp_path, _settings())  # a second round: the user re-runs the fetch
        again = {fault: server.requested(fault) - before[fault] for fault in FAULTS}
        for fault, (_, reason) in FAULTS.items():
            if reason in RETRYABLE_REASONS:
                assert again[fault] >= PER_FAULT, (fault, again[fault])
            else:  # fetched, or failed for good (404, opt-out, undecodable, ...)
                assert again[fault] == 0, (fault, again[fault])
        assert report["n_total"] == len(table) and len(report["rounds"]) == 2
        assert _reasons(tmp_path, table) == {f: {reason} for f, (_, reason) in FAULTS.items()}

        # The list is config: asking for 404s again requests them again (twice each:
        # img2dataset's own retry), and still nothing else.
        before = {fault: server.requested(fault) for fault in FAULTS}
        _fetch(tmp_path, _settings(retry_reasons=["not_found"]))
        again = {fault: server.requested(fault) - before[fault] for fault in FAULTS}
        assert again == {fault: 2 * PER_FAULT if reason == "not_found" else 0
                         for fault, (_, reason) in FAULTS.items()}
