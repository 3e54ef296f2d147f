"""Entry point of rule caption_merge: a synthetic caption set's chunk manifests as one
manifest, in the raw captions' format."""

from pathlib import Path

from capmix.caption import merge_caption_chunks
from capmix.lineage import job_provenance
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        merge_caption_chunks(sm.wildcards.pool, [Path(p) for p in sm.input.chunks],
                             Path(sm.output.manifest))
