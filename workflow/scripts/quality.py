"""Entry point of rule quality: Table 1's columns for one caption set."""

from pathlib import Path

from capmix.caption import caption_files
from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.quality import write_quality

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        write_quality(sm.wildcards.pool, sm.wildcards.caption_set,
                      caption_files([Path(sm.input.captions)]), Path(sm.input.scores),
                      Path(sm.input.metadata), sm.params.references_column, Path(sm.output[0]),
                      sm.params.trigram_sample_size, sm.params.seed)
