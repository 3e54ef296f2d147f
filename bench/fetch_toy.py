"""Benchmark: toy-world generation, metadata normalisation and img2dataset fetch.

Prints images/s for each stage on a toy pool of --pool images (file:// URLs,
so this measures img2dataset's decode/resize/encode/shard path, not a network).

    .venv/bin/python bench/fetch_toy.py --pool 4000 --processes 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from capmix.config import pipeline_config  # noqa: E402
from capmix.fetch import FetchSettings, fetch_pool  # noqa: E402
from capmix.sources import build_metadata, source_files  # noqa: E402
from capmix.toyspec import SPLITS  # noqa: E402
from capmix.toyworld import generate_world  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=4000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()

    config = pipeline_config()
    spec = json.loads(json.dumps(config["toy_worlds"]["default"]))
    spec["splits"] = {split: 0 for split in SPLITS} | {"pool": args.pool}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        generate_world(root / "world", spec, seed=0)
        generated = time.perf_counter() - start

        source = {"type": "toy", "world": "bench", "split": "pool", "keep_columns": "all"}
        start = time.perf_counter()
        build_metadata("bench", source, source_files(source, [root / "world" / "pool.parquet"]),
                       root / "metadata")
        normalised = time.perf_counter() - start

        settings = FetchSettings(image_size=args.image_size, samples_per_shard=1000, retries=0,
                                 threads_per_process=args.threads)
        start = time.perf_counter()
        report = fetch_pool("bench", root / "metadata", root / "shards", root / "index.parquet",
                            root / "report.json", settings, processes=args.processes)
        fetched = time.perf_counter() - start

    n = args.pool
    print(f"toy pool of {n} images, {os.cpu_count()} CPUs, fetch processes={args.processes} "
          f"threads={args.threads}")
    print(f"generate world : {generated:7.2f} s  {n / generated:8.1f} images/s")
    print(f"metadata       : {normalised:7.2f} s  {n / normalised:8.1f} rows/s")
    print(f"fetch (img2ds) : {fetched:7.2f} s  {n / fetched:8.1f} images/s "
          f"(success rate {report['success_rate']:.3f}, incl. ~5 s process start-up)")


if __name__ == "__main__":
    main()
