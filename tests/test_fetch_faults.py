"""The fetch against a misbehaving server (tests/fault_server.py): every uid accounted for
with the reason its fault deserves, and a new round that asks only for what may succeed."""

import ipaddress

import pandas as pd
import pytest

from capmix import fetch_limits
from capmix.fetch import FetchSettings, fetch_pool
from capmix.fetch_limits import UrlLimits, guarded_download_image
from capmix.fetch_reasons import RETRYABLE_REASONS, failure_reason
from capmix.sources import build_metadata, source_files
from tests.fault_server import FAULTS, INWARD_REDIRECTS, FaultServer

PER_FAULT = 2  # uids per fault kind

pytestmark = pytest.mark.integration


def _settings(allow_local_urls: bool = True, **extra) -> FetchSettings:
    # retries=1: a transient 503 succeeds on img2dataset's second try; timeout 2 s < the
    # server's 4 s stall; a 2 s deadline < the 0.2 s/byte drip; max_image_area below the
    # "huge" fault's 6.25 MP; max_body_bytes below the endless body's 4 s of output.
    return FetchSettings.from_config(dict(
        image_size=16, samples_per_shard=64, retries=1, timeout=2, threads_per_process=16,
        encode_format="png", max_image_area=4_000_000, max_body_bytes=1_000_000, deadline=2,
        **extra), "table", allow_local_urls)  # the server is on 127.0.0.1


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


def test_without_allow_local_urls_no_request_reaches_this_machine(tmp_path):
    """A table source that does not allow local URLs: every uid on 127.0.0.1 fails with
    internal_address, and the server is never asked (the check precedes the connection)."""
    with FaultServer(max_seconds=4) as server:
        table = _pool(tmp_path, server)
        report = _fetch(tmp_path, _settings(allow_local_urls=False))
        assert server.requests == []
        assert report["n_total"] == len(table) and report["n_fetched"] == 0
        assert set().union(*_reasons(tmp_path, table).values()) == {"internal_address"}


@pytest.mark.parametrize("address, internal", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("10.1.2.3", True), ("172.16.0.1", True),
    ("192.168.1.1", True), ("169.254.169.254", True), ("100.64.0.1", True), ("0.0.0.0", True),
    ("224.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True), ("fe80::1", True),
    ("fd00::1", True), ("93.184.215.14", False), ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", False),
])
def test_internal_addresses(address, internal):
    assert fetch_limits.is_internal(ipaddress.ip_address(address)) is internal


@pytest.mark.parametrize("url", ["http://localhost/x.png", "https://127.1/x.png",
                                 "http://0x7f000001/x.png", "http://[::1]/x.png"])
def test_host_names_and_odd_spellings_are_resolved_before_they_are_judged(url):
    with pytest.raises(fetch_limits.RefusedUrl, match="internal address"):
        fetch_limits.check_url(url)


def test_redirects_inward_are_refused(monkeypatch):
    """The fault server stands in for a public web site (only its own address counts as
    public here); its redirects to this machine, private networks, cloud metadata or other
    schemes are refused, and one to another public URL (itself) is followed."""
    monkeypatch.setattr(fetch_limits, "is_internal", lambda address: str(address) != "127.0.0.1")
    fetch_limits.set_limits(UrlLimits(max_body_bytes=10**6, deadline_s=5, max_image_area=10**7,
                                      allow_internal=False))
    try:
        with FaultServer(max_seconds=4) as server:
            _, body, error = guarded_download_image((0, server.url("redirect")), 2, None, None)
            assert error is None and body is not None and server.requested("png") == 1
            for fault, (_, reason) in INWARD_REDIRECTS.items():
                _, body, error = guarded_download_image((0, server.url(fault)), 2, None, None)
                assert body is None and failure_reason("failed_to_download", error) == reason, (
                    fault, error)
            assert server.requested("png") == 1  # 127.0.0.2 (same port) never reached
    finally:
        fetch_limits.set_limits(None)
