"""Entry point of rule fetch_gather: the list of a pool's fetch jobs' indexes and reports."""

from pathlib import Path

from capmix.fetch import write_chunk_list
from capmix.lineage import job_provenance
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        write_chunk_list(sm.params.chunks, list(sm.input.indexes), list(sm.input.reports),
                         Path(sm.output[0]))
