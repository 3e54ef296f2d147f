"""Entry point of rule train_shards: webdataset shards of one strategy, chosen captions.

A strategy resharded in one job writes its shards here; one resharded in parts
(pools[].jobs.train_shards > 1) only joins its train_shards_part jobs' reports."""

from pathlib import Path

import pandas as pd

from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.provenance import provenance_record
from capmix.reshard import SIZES_FILE, reshard, run_reshard_reduce

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm) as job:
        if "reports" in sm.input.keys():
            run_reshard_reduce(
                [Path(p) for p in sm.input.reports], Path(sm.params.out),
                Path(sm.output.manifest),
                provenance=provenance_record("train_shards", inputs=list(sm.input.reports),
                                             params={"jobs": len(sm.input.reports)}))
            job.produced(Path(sm.params.out) / SIZES_FILE)
        else:
            reshard(
                pd.read_parquet(sm.input.samples), Path(sm.input.index),
                Path(sm.params.shards), Path(sm.params.out), Path(sm.output.manifest),
                samples_per_shard=sm.params.samples_per_shard, workers=sm.threads,
                provenance=provenance_record("train_shards", inputs=[sm.input.samples],
                                             params={"samples_per_shard":
                                                     sm.params.samples_per_shard},
                                             packages=("numpy", "pandas", "webdataset")))
            job.produced(sm.params.out)  # the shards (not declared: a killed job resumes them)
