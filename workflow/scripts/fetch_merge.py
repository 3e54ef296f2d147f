"""Entry point of rule fetch_merge: the fetch jobs' indexes and reports joined into the pool's."""

from pathlib import Path

from capmix.fetch import merge_fetch, read_chunk_list
from capmix.lineage import job_provenance
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        if hasattr(sm.input, "chunk_list"):  # several fetch jobs (rule fetch_gather)
            chunks, indexes, reports = read_chunk_list(Path(sm.input.chunk_list))
        else:
            chunks, indexes, reports = sm.params.chunks, sm.input.indexes, sm.input.reports
        merge_fetch(sm.wildcards.pool, chunks, [Path(p) for p in indexes],
                    [Path(p) for p in reports], Path(sm.output.index), Path(sm.output.report))
