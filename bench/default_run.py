"""Benchmark: where the embedded default's wall time goes, per stage and in total.

Runs the whole default DAG (``snakemake --cores N``) into its own results root
(``--directory``, so nothing of ``results/`` is touched), times it, and prints per stage (rule):
jobs, summed job wall time (Snakemake's ``benchmark:`` files), the mean per job, and the
share of the summed time; then the start-up a job pays before it does any work (importing
what its script imports), which multiplies by the number of jobs. Prints only; never asserts.
Time it on an idle machine: anything else running inflates every figure.

    .venv/bin/python bench/default_run.py                       # fresh run, seed 0
    .venv/bin/python bench/default_run.py --summarise runs/seed1  # an existing run's figures
    .venv/bin/python bench/default_run.py --configfile config/smoke.yaml  # `make smoke`'s DAG
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
#: What a job of each kind imports before it works (its script's heaviest import).
STARTUP_IMPORTS = {
    "no torch (subset, mix_table, quality, findings)": "import capmix.mix, capmix.quality",
    "webdataset (train_shards)": "import capmix.reshard",
    "open_clip (caption, score, train, evaluate, toy_model)": "import open_clip",
}


def job_runs(workdir: Path) -> list[tuple[str, float, float]]:
    """(rule, wall seconds, end time) of every job, from ``benchmarks/{rule}/...tsv``.

    A job's end is its benchmark file's modification time (Snakemake writes it as the job
    ends), so its start is that minus its wall time.
    """
    runs = []
    for tsv in sorted((workdir / "benchmarks").rglob("*.tsv")):
        rule = tsv.relative_to(workdir / "benchmarks").parts[0]
        with tsv.open() as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if rows:
            runs.append((rule, float(rows[-1]["s"]), tsv.stat().st_mtime))
    return runs


def stage_times(runs: list[tuple[str, float, float]]) -> dict[str, list[float]]:
    """Rule -> wall seconds of each of its jobs."""
    times: dict[str, list[float]] = defaultdict(list)
    for rule, seconds, _ in runs:
        times[rule].append(seconds)
    return dict(times)


def stage_spans(runs: list[tuple[str, float, float]]) -> dict[str, tuple[float, float]]:
    """Rule -> (first start, last end) in seconds from the run's first job start: what
    overlaps and what waits (the critical path) shows without Snakemake's log."""
    spans: dict[str, tuple[float, float]] = {}
    for rule, seconds, end in runs:
        first, last = spans.get(rule, (end - seconds, end))
        spans[rule] = (min(first, end - seconds), max(last, end))
    if not spans:
        return {}
    origin = min(first for first, _ in spans.values())
    return {rule: (first - origin, last - origin) for rule, (first, last) in spans.items()}


def startup_seconds() -> dict[str, float]:
    """Seconds to start Python and import each kind of job's libraries (median of 3)."""
    out = {}
    for kind, statement in STARTUP_IMPORTS.items():
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", statement], check=True, cwd=REPO)
            runs.append(time.perf_counter() - start)
        out[kind] = sorted(runs)[1]
    return out


def report(workdir: Path, wall: float | None) -> None:
    runs = job_runs(workdir)
    times = stage_times(runs)
    total = sum(sum(v) for v in times.values())
    print(f"{'stage (rule)':16s} {'jobs':>5s} {'sum s':>8s} {'mean s':>7s} {'share':>6s}")
    for rule, values in sorted(times.items(), key=lambda kv: -sum(kv[1])):
        print(f"{rule:16s} {len(values):5d} {sum(values):8.1f} {sum(values) / len(values):7.1f} "
              f"{sum(values) / total:6.1%}")
    jobs = sum(len(v) for v in times.values())
    print(f"{'all jobs':16s} {jobs:5d} {total:8.1f}   (summed job wall time; jobs overlap on "
          f"{os.cpu_count()} cores)")
    print("when each stage ran (s from the first job's start; first start .. last end):")
    for rule, (first, last) in sorted(stage_spans(runs).items(), key=lambda kv: kv[1]):
        print(f"  {rule:16s} {first:7.0f} .. {last:7.0f}")
    if wall is not None:
        print(f"DAG wall time: {wall:.1f} s = {wall / 60:.1f} min")
    print("start-up per job (Python + the job's imports, before any work):")
    for kind, seconds in startup_seconds().items():
        print(f"  {kind:55s} {seconds:5.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cores", default="all")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="results root of the run (default runs/bench_seed{seed}, "
                             "emptied first)")
    parser.add_argument("--configfile", type=Path, default=None,
                        help="a config to run instead of the default (e.g. config/smoke.yaml)")
    parser.add_argument("--summarise", type=Path, default=None, metavar="WORKDIR",
                        help="only print the figures of a finished run in WORKDIR")
    args = parser.parse_args()
    if args.summarise:
        report(args.summarise, None)
        return
    name = f"bench_{args.configfile.stem}" if args.configfile else "bench"
    workdir = (args.workdir or REPO / "runs" / f"{name}_seed{args.seed}").resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    print(f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.2f}; "
          f"results root {workdir}")
    configfile = ["--configfile", str(args.configfile.resolve())] if args.configfile else []
    start = time.perf_counter()
    subprocess.run([str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--cores", args.cores,
                    "--directory", str(workdir), *configfile, "--config", f"seed={args.seed}",
                    "--quiet", "rules"], check=True, cwd=REPO)
    wall = time.perf_counter() - start
    report(workdir, wall)


if __name__ == "__main__":
    main()
