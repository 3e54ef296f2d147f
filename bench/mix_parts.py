"""Benchmark: the mix stages through the DAG on a synthetic DataComp-like pool held in parts.

Writes, under --out (default runs/bench_mix_parts), the files the mix stages read, at the
paths the workflow's other stages would have written them (rows in --parts parquet parts):

  results/{pool}/fetch/index.parquet                        uid, status (all fetched)
  results/{pool}/captions/raw/{manifest.json, part-K.parquet}          uid, captions, status
  results/{pool}/captions/blip2_opt_2.7b/0.75/{manifest.json, part-K.parquet}
  results/{pool}/scores/openai_vit_l_14/{raw, blip2_opt_2.7b/0.75}.parquet
                                                            uid, cos, cos_all, missing
  results/{pool}/mix/image_clusters.parquet                 uid, in_image_clusters

(uids: 32 random hex digits; scores ~ N(0.22, 0.06) raw and N(0.27, 0.05) BLIP2, correlated
0.4, rounded to 4 decimals so that thresholds fall on ties; captions of 40-60 characters drawn
from 1M distinct random-word captions; 37% of images in the ImageNet-like clusters), then runs
the workflow's own rules `mix_scatter`, `mix_table_part`, `mix_table` and `subset` on them (the
repository's Snakefile, `--allowed-rules`: every other file is taken as it is) for every strategy of
the nine Table 5 families at the catalogue's six fractions (54), --batch strategies per
Snakemake call, removing each batch's samples.parquet afterwards (at 128M rows all 54 would
need ~250 GB; without --compare the uid files go too, ~1 GB each at 64M rows; the summaries
stay; --resume continues a run that stopped). It prints, from Snakemake's benchmark files,
each job's wall seconds and peak RSS (max_rss), the largest, the total wall time and rows/s.

With --compare the same inputs are also mixed by a pool with one part (the whole-pool path)
and every strategy's uids.npy is compared byte for byte, and its summary.json without
provenance.

    .venv/bin/python bench/mix_parts.py --rows 1000000 --parts 64 --compare
    .venv/bin/python bench/mix_parts.py                  # 128M rows, 64 parts, 64 table parts
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from capmix.config import pipeline_config  # noqa: E402
from capmix.mix import CLUSTER_COLUMN  # noqa: E402
from capmix.strategies import expand_strategies  # noqa: E402

TABLE5_FAMILIES = (
    "raw_top", "synthetic_top", "synthetic_top_by_raw", "raw_top_synthetic_remaining",
    "raw_top_synthetic_remaining_filtered", "synthetic_top_raw_remaining_filtered",
    "concat_top_synthetic_remaining_filtered", "raw_top_plus_synthetic_top",
    "synthetic_top_in1k",
)
SCORER = "openai_vit_l_14"
CAPTIONER, TEMPERATURE = "blip2_opt_2.7b", "0.75"
DISTINCT_CAPTIONS = 1_000_000


# ------------------------------------------------------------------ the synthetic pool


def random_captions(n: int, rng: np.random.Generator) -> pa.Array:
    """n distinct-ish captions of 40-60 characters made of random lowercase words."""
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    lengths = rng.integers(40, 61, n)
    text = letters[rng.integers(0, 26, (n, 60))]
    text[rng.random((n, 60)) < 0.16] = ord(" ")
    rows = [bytes(text[i, :lengths[i]]).decode() for i in range(n)]
    return pa.array(rows, type=pa.string())


def hex_uids(n: int, rng: np.random.Generator) -> pa.Array:
    words = rng.integers(0, np.iinfo(np.uint64).max, size=(n, 2), dtype=np.uint64,
                         endpoint=True).astype(">u8")
    octets = words.view(np.uint8).reshape(n, 16)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    text = np.empty((n, 32), dtype=np.uint8)
    text[:, 0::2] = digits[octets >> 4]
    text[:, 1::2] = digits[octets & 15]
    offsets = pa.py_buffer(np.arange(0, 32 * n + 1, 32, dtype=np.int32).tobytes())
    return pa.StringArray.from_buffers(n, offsets, pa.py_buffer(text.tobytes()))


def write_pool(root: Path, pool: str, rows: int, parts: int, seed: int) -> None:
    """The mix stages' inputs of ``pool`` under ``root/results/{pool}``."""
    rng = np.random.default_rng(seed)
    base = root / "results" / pool
    captions_dir = {"raw": base / "captions" / "raw",
                    "syn": base / "captions" / CAPTIONER / TEMPERATURE}
    for folder in captions_dir.values():
        folder.mkdir(parents=True, exist_ok=True)
    (base / "fetch").mkdir(parents=True, exist_ok=True)
    (base / "mix").mkdir(parents=True, exist_ok=True)
    score_paths = {"raw": base / "scores" / SCORER / "raw.parquet",
                   "syn": base / "scores" / SCORER / CAPTIONER / f"{TEMPERATURE}.parquet"}
    for path in score_paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    pool_captions = {"raw": random_captions(DISTINCT_CAPTIONS, rng),
                     "syn": random_captions(DISTINCT_CAPTIONS // 10, rng)}
    index_schema = pa.schema([("uid", pa.string()), ("status", pa.string())])
    score_schema = pa.schema([("uid", pa.string()), ("cos", pa.float64()),
                              ("cos_all", pa.list_(pa.float64())), ("missing", pa.string())])
    writers = {"index": pq.ParquetWriter(base / "fetch" / "index.parquet", index_schema),
               "clusters": pq.ParquetWriter(base / "mix" / "image_clusters.parquet",
                                            pa.schema([("uid", pa.string()),
                                                       (CLUSTER_COLUMN, pa.bool_())])),
               **{k: pq.ParquetWriter(p, score_schema) for k, p in score_paths.items()}}
    bounds = np.linspace(0, rows, parts + 1).astype(np.int64)
    for part in range(parts):
        n = int(bounds[part + 1] - bounds[part])
        uids = hex_uids(n, rng)
        writers["index"].write_table(pa.table({"uid": uids, "status": pa.repeat("fetched", n)},
                                              schema=index_schema))
        writers["clusters"].write_table(pa.table({"uid": uids,
                                                  CLUSTER_COLUMN: rng.random(n) < 0.37}))
        z = rng.standard_normal((2, n))
        scores = {"raw": np.round(0.22 + 0.06 * z[0], 4),
                  "syn": np.round(0.27 + 0.05 * (0.4 * z[0] + np.sqrt(1 - 0.16) * z[1]), 4)}
        for kind in ("raw", "syn"):
            cos = pa.array(scores[kind])
            writers[kind].write_table(pa.table({
                "uid": uids, "cos": cos,
                "cos_all": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)),
                                                    cos),
                "missing": pa.nulls(n, pa.string())}, schema=score_schema))
            text = pool_captions[kind].take(pa.array(rng.integers(0, len(pool_captions[kind]),
                                                                  n)))
            pq.write_table(pa.table({
                "uid": uids,
                "captions": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)),
                                                     text),
                "status": pa.repeat("ok", n)}), captions_dir[kind] / f"part-{part:05d}.parquet")
        print(f"  part {part + 1}/{parts}: {n:,} rows", flush=True)
    for writer in writers.values():
        writer.close()
    shards = [{"output": f"part-{part:05d}.parquet"} for part in range(parts)]
    (captions_dir["raw"] / "manifest.json").write_text(json.dumps({"shards": shards}))
    # one manifest per caption set, as caption_merge writes it for a synthetic set
    (captions_dir["syn"] / "manifest.json").write_text(json.dumps({"shards": shards}))
    (base / "mix" / "image_clusters.json").write_text("{}")


def link_inputs(root: Path, source: str, pool: str) -> None:
    """Pool ``pool`` reads ``source``'s inputs (for the whole-pool comparison)."""
    base = root / "results" / pool
    for relative in ("fetch", "captions", "scores", "mix/image_clusters.parquet",
                     "mix/image_clusters.json"):
        target = base / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to((root / "results" / source / relative).resolve())


# ------------------------------------------------------------------ the DAG


def pool_entry(name: str, strategies: list[str], table_parts: int) -> dict:
    return {
        "name": name,
        "source": {"type": "table", "path": "unused.parquet",
                   "columns": {"uid": "uid", "url": "url", "text": "caption"}},
        "captioners": [CAPTIONER], "temperatures": {CAPTIONER: [float(TEMPERATURE)]},
        "scorer": SCORER, "jobs": {"caption": 1, "score": 1},
        "mix": {"sources": {"synthetic": f"{CAPTIONER}/{TEMPERATURE}"},
                "strategies": strategies, "table_parts": table_parts,
                "image_clusters": {"reference_embeddings": "unused.npy"}},
    }


def run_batch(root: Path, config: Path, targets: list[str], cores: int) -> float:
    command = [str(REPO / ".venv" / "bin" / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(root), "--configfile", str(config), "--cores", str(cores),
               "--quiet", "rules", "--allowed-rules", "mix_scatter", "mix_table_part", "mix_table",
               "subset", "--", *targets]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return time.perf_counter() - start


def read_benchmark(path: Path) -> dict[str, float]:
    with open(path) as handle:
        row = next(csv.DictReader(handle, delimiter="\t"))
    return {"s": float(row["s"]), "max_rss_mb": float(row["max_rss"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=128_000_000)
    parser.add_argument("--parts", type=int, default=64, help="metadata-like input parts")
    parser.add_argument("--table-parts", type=int, default=None,
                        help="mix.table_parts (default: one per 2M rows, at least 8)")
    parser.add_argument("--batch", type=int, default=2, help="strategies per Snakemake call")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_mix_parts")
    parser.add_argument("--compare", action="store_true",
                        help="also mix with one part and compare the uid files byte for byte")
    parser.add_argument("--keep-samples", action="store_true",
                        help="keep each subset's samples.parquet and uids.npy (at 128M rows "
                             "all 54 take ~250 GB)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the pool under --out and the strategies already done")
    parser.add_argument("--families", nargs="+", default=list(TABLE5_FAMILIES))
    args = parser.parse_args()
    table_parts = args.table_parts or max(8, round(args.rows / 2_000_000))
    catalogue = expand_strategies(pipeline_config()["strategies"])
    strategies = [name for name, spec in catalogue.items() if spec.get("family") in args.families]
    root = args.out.resolve()
    pool, whole = "bench_parts", "bench_whole"
    resume = args.resume and (root / "config.yaml").exists()
    if root.exists() and not resume:
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    print(f"{args.rows:,} rows in {args.parts} input parts, mix table in {table_parts} parts, "
          f"{len(strategies)} strategies, {os.cpu_count()} CPUs, --cores {args.cores}")
    if not resume:
        start = time.perf_counter()
        write_pool(root, pool, args.rows, args.parts, args.seed)
        size = sum(f.stat().st_size for f in (root / "results").rglob("*") if f.is_file())
        print(f"pool written in {time.perf_counter() - start:.0f} s ({size / 2**30:.1f} GiB)")
    pools = [pool_entry(pool, strategies, table_parts)]
    if args.compare:
        link_inputs(root, pool, whole)
        pools.append(pool_entry(whole, strategies, 1))
    config = root / "config.yaml"
    config.write_text(json.dumps({"pools": pools, "targets": ["subsets"]}, indent=1))
    wall = 0.0
    for entry in pools:
        name = entry["name"]
        subsets = root / "results" / name / "subsets"
        for i in range(0, len(strategies), args.batch):
            batch = [s for s in strategies[i:i + args.batch]
                     if not (resume and (subsets / s / "summary.json").exists())]
            if not batch:
                continue
            wall += run_batch(root, config, [f"results/{name}/subsets/{s}/summary.json"
                                             for s in batch], args.cores)
            if not args.keep_samples:
                for strategy in batch:
                    (subsets / strategy / "samples.parquet").unlink()
                    if not args.compare:  # ~1 GB each at 64M rows: only a comparison needs them
                        (subsets / strategy / "uids.npy").unlink()
            print(f"  {name}: {min(i + args.batch, len(strategies))}/{len(strategies)} "
                  f"strategies, {wall:.0f} s", flush=True)
    marks = root / "benchmarks"
    jobs = {"mix_scatter": read_benchmark(marks / "mix_scatter" / f"{pool}.tsv")}
    for path in sorted((marks / "mix_table_part" / pool).glob("*.tsv")):
        jobs[f"mix_table_part {path.stem}"] = read_benchmark(path)
    jobs["mix_table"] = read_benchmark(marks / "mix_table" / f"{pool}.tsv")
    for strategy in strategies:
        jobs[strategy] = read_benchmark(root / "benchmarks" / "subset" / pool / f"{strategy}.tsv")
    print(f"\n{'job':<46} {'wall s':>8} {'peak RSS MiB':>13}")
    for job, figures in jobs.items():
        print(f"{job:<46} {figures['s']:8.1f} {figures['max_rss_mb']:13.0f}")
    biggest = max(jobs.items(), key=lambda item: item[1]["max_rss_mb"])
    table = sum(f["s"] for job, f in jobs.items() if job.startswith("mix_"))
    subsets = sum(f["s"] for job, f in jobs.items() if not job.startswith("mix_"))
    print(f"\nlargest peak RSS: {biggest[1]['max_rss_mb'] / 1024:.2f} GiB ({biggest[0]})")
    print(f"job seconds summed: {table + subsets:.0f} s; the table (scatter, parts, manifest) "
          f"{table:.0f} s = {args.rows / table:,.0f} rows/s; subsets {subsets:.0f} s = "
          f"{args.rows * len(strategies) / subsets:,.0f} rows/s")
    print(f"wall time of the Snakemake calls ({pool}{' and ' + whole if args.compare else ''}"
          f"{', this run: resumed' if resume else ''}): {wall:.0f} s")
    if args.compare:
        differ = []
        for strategy in strategies:
            a = root / "results" / pool / "subsets" / strategy
            b = root / "results" / whole / "subsets" / strategy
            same = (a / "uids.npy").read_bytes() == (b / "uids.npy").read_bytes()
            summaries = [{k: v for k, v in json.loads((d / "summary.json").read_text()).items()
                          if k != "provenance"} for d in (a, b)]
            if not same or summaries[0] != summaries[1]:
                differ.append(strategy)
        print(f"compared with the whole-pool path: {len(strategies) - len(differ)} of "
              f"{len(strategies)} strategies have byte-identical uids.npy and equal summaries"
              + (f"; differ: {differ}" if differ else ""))


if __name__ == "__main__":
    main()
