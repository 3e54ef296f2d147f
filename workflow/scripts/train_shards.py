"""Entry point of rule train_shards: webdataset shards of one strategy, chosen captions."""

from pathlib import Path

import pandas as pd

from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.provenance import provenance_record
from capmix.reshard import reshard

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm) as job:
        reshard(
            pd.read_parquet(sm.input.samples), Path(sm.input.index), Path(sm.params.shards),
            Path(sm.params.out), Path(sm.output.manifest),
            samples_per_shard=sm.params.samples_per_shard, workers=sm.threads,
            provenance=provenance_record("train_shards", inputs=[sm.input.samples],
                                         params={"samples_per_shard":
                                                 sm.params.samples_per_shard},
                                         packages=("numpy", "pandas", "webdataset")))
        job.produced(sm.params.out)  # the shards (not declared: a killed job resumes them)
