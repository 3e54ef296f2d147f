"""Entry point of rule fetch: one img2dataset round over one job's metadata parts, and the
per-uid accounting.

img2dataset starts worker processes with the "spawn" method, which re-imports
this file as ``__mp_main__`` in every worker; the ``__main__`` guard keeps the
workers from running the stage again (they have no ``snakemake`` object).
"""

from pathlib import Path

from capmix.chunks import parse_chunk
from capmix.fetch import FetchSettings, chunk_parts, fetch_pool
from capmix.lineage import job_provenance
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm) as job:
        fetch_pool(
            sm.wildcards.pool, Path(sm.input[0]), Path(sm.params.shards),
            Path(sm.output.index), Path(sm.output.report),
            FetchSettings.from_config(sm.params.settings, sm.params.source_type,
                                      sm.params.allow_local_urls),
            processes=sm.threads,
            parts=chunk_parts(Path(sm.input[0]), *parse_chunk(sm.wildcards.chunk)),
        )
        # The shards are not declared outputs (kept across rounds); the record hashes them.
        job.produced(sm.params.shards)
