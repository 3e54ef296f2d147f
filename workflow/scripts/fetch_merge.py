"""Entry point of rule fetch_merge: the fetch jobs' indexes and reports joined into the pool's."""

from pathlib import Path

from capmix.fetch import merge_fetch
from capmix.lineage import job_provenance
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        merge_fetch(sm.wildcards.pool, sm.params.chunks, [Path(p) for p in sm.input.indexes],
                    [Path(p) for p in sm.input.reports], Path(sm.output.index),
                    Path(sm.output.report))
