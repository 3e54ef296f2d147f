"""Entry point of rule train_shards_scatter: a strategy's samples planned into output shards
and split by runs of pool shards, one file per train_shards_part job."""

from pathlib import Path

from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.reshard import scatter_samples

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        scatter_samples(Path(sm.input.samples), sm.params.jobs, sm.params.samples_per_shard,
                        Path(sm.output[0]))
