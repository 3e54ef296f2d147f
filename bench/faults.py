"""Benchmark: hostile input and faults, tabulated (the fault suite's outcome as figures).

1. The fetch against tests/fault_server.py: every fault kind on --per-fault uids, one round,
   then a second round (a user re-running the fetch): the reason each uid got, uids lost
   (in the metadata but not in the index), and how many requests the second round sent.
2. The same pool from a source without ``allow_local_urls``: requests the server received.
3. Redirects inward (to loopback, private networks, cloud metadata, other schemes), with the
   server standing in for a public site: the reason each got.
4. The hostile-input tests (malformed metadata and configs, eval rows, kill -9 per stage),
   run with pytest: cases per test, passed, failed (a failure = an input that crashed or
   was not named as the test expects).

    .venv/bin/python bench/faults.py [--per-fault 2] [--skip-pytest]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from capmix import fetch_limits  # noqa: E402
from capmix.fetch import FetchSettings, fetch_pool  # noqa: E402
from capmix.fetch_reasons import failure_reason  # noqa: E402
from capmix.sources import build_metadata, source_files  # noqa: E402
from tests.fault_server import FAULTS, INWARD_REDIRECTS, FaultServer  # noqa: E402

#: The hostile-input tests: test file -> what its cases are.
HOSTILE_TESTS = {
    "tests/test_sources.py": "malformed metadata files and rows",
    "tests/test_config.py": "config mistakes and unreadable config files",
    "tests/test_fetch_faults.py": "fault server, internal addresses, redirects",
    "tests/test_kill9.py": "kill -9 mid-stage, then resume",
    "tests/test_evaluate.py": "evaluation rows from Parquet",
    "tests/test_train.py": "kill -9 mid-training, then resume",
}
KEYWORDS = ("malformed or mistake or bad_config or unreadable or fault or internal or redirect"
            " or killed or kill or hf_dataset or winogavil_rows or parsed_once or directory")


def settings(allow_local_urls: bool) -> FetchSettings:
    return FetchSettings.from_config(dict(
        image_size=16, samples_per_shard=64, retries=1, timeout=2, threads_per_process=16,
        encode_format="png", max_image_area=4_000_000, max_body_bytes=1_000_000, deadline=2),
        "table", allow_local_urls)


def fetch_table(root: Path, server: FaultServer, per_fault: int, allow_local: bool
                ) -> tuple[pd.DataFrame, dict, Path]:
    rows = [{"uid": f"{len(FAULTS) * n + i:032x}", "url": server.url(fault, n), "text": fault}
            for n in range(per_fault) for i, fault in enumerate(FAULTS)]
    table = pd.DataFrame(rows)
    root.mkdir(parents=True)
    table.to_parquet(root / "t.parquet", index=False)
    source = {"type": "table", "path": str(root / "t.parquet"), "format": "auto",
              "allow_local_urls": allow_local}
    build_metadata("faults", source, source_files(source, [root / "t.parquet"]),
                   root / "metadata")
    report = fetch_pool("faults", root / "metadata", root / "shards", root / "index.parquet",
                        root / "report.json", settings(allow_local))
    return table, report, root


def outcomes(root: Path, table: pd.DataFrame) -> pd.DataFrame:
    index = pd.read_parquet(root / "index.parquet")
    merged = table.merge(index, on="uid", how="left")
    merged["outcome"] = merged["reason"].where(merged["status"] == "failed", "fetched")
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-fault", type=int, default=2)
    parser.add_argument("--skip-pytest", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()

    with tempfile.TemporaryDirectory() as tmp, FaultServer(max_seconds=4) as server:
        root = Path(tmp)
        table, report, run = fetch_table(root / "local", server, args.per_fault, True)
        first = outcomes(run, table)
        before = {fault: server.requested(fault) for fault in FAULTS}
        fetch_pool("faults", run / "metadata", run / "shards", run / "index.parquet",
                   run / "report.json", settings(True))
        second = outcomes(run, table)
        print(f"## 1. Fetch against the fault server ({len(FAULTS)} kinds x {args.per_fault} "
              f"uids, retries=1, timeout 2 s, deadline 2 s)\n")
        print("| fault | expected | outcome (uids) | lost | requests in round 2 |")
        print("| --- | --- | --- | --- | --- |")
        for fault, (_, expected) in FAULTS.items():
            got = collections.Counter(first.loc[first["text"] == fault, "outcome"].fillna("LOST"))
            lost = int(second.loc[second["text"] == fault, "status"].isna().sum())
            again = server.requested(fault) - before[fault]
            shown = ", ".join(f"{k} ({v})" for k, v in sorted(got.items()))
            print(f"| {fault} | {expected} | {shown} | {lost} | {again} |")
        matches = sum(set(first.loc[first["text"] == f, "outcome"]) == {r}
                      for f, (_, r) in FAULTS.items())
        print(f"\nuids {len(table)}, in the index {report['n_total']}, lost "
              f"{int(second['status'].isna().sum())}; kinds with the expected reason "
              f"{matches}/{len(FAULTS)}; rounds {len(second['round'].unique())} recorded\n")

        requests_before = len(server.requests)
        table2, report2, run2 = fetch_table(root / "public_only", server, args.per_fault, False)
        confined = outcomes(run2, table2)
        print("## 2. Same pool, source without allow_local_urls\n")
        print(f"uids {len(table2)}, outcomes {dict(collections.Counter(confined['outcome']))}, "
              f"requests the server received {len(server.requests) - requests_before}\n")

        print("## 3. Redirects inward (the server stands in for a public site)\n")
        print("| redirect | expected | outcome |")
        print("| --- | --- | --- |")
        public = server.base.split("//")[1].split(":")[0]
        real_is_internal = fetch_limits.is_internal
        fetch_limits.is_internal = lambda address: str(address) != public
        fetch_limits.set_limits(fetch_limits.UrlLimits(10**6, 5, 10**7, allow_internal=False))
        try:
            for fault, (_, expected) in INWARD_REDIRECTS.items():
                _, body, error = fetch_limits.guarded_download_image(
                    (0, server.url(fault)), 2, None, None)
                got = "fetched" if body is not None else failure_reason("failed_to_download",
                                                                        error)
                print(f"| {fault} | {expected} | {got} |")
        finally:
            fetch_limits.is_internal = real_is_internal
            fetch_limits.set_limits(None)
    print(f"\n(sections 1-3: {time.monotonic() - started:.0f} s)\n")

    if args.skip_pytest:
        return
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={junit}", "-k", KEYWORDS, *HOSTILE_TESTS],
                       cwd=REPO, check=False, stdout=subprocess.DEVNULL)
        cases: dict[tuple[str, str], collections.Counter] = collections.defaultdict(
            collections.Counter)
        for case in ET.parse(junit).iter("testcase"):
            name = case.get("name", "").split("[")[0]
            module = case.get("classname", "").replace(".", "/") + ".py"
            state = ("failed" if case.find("failure") is not None
                     or case.find("error") is not None
                     else "skipped" if case.find("skipped") is not None else "passed")
            cases[(module, name)][state] += 1
    print("## 4. Hostile-input tests\n")
    print("| file | test | cases | passed | failed |")
    print("| --- | --- | --- | --- | --- |")
    total = collections.Counter()
    for (module, name), counts in sorted(cases.items()):
        n = sum(counts.values())
        total.update(counts)
        print(f"| {module} | {name} | {n} | {counts['passed']} | {counts['failed']} |")
    print(f"\ntotal {sum(total.values())} cases, {total['passed']} passed, "
          f"{total['failed']} failed, {total['skipped']} skipped; "
          f"whole bench {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
