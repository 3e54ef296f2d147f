"""Entry point of rule caption_language: the parts joined into the pool's caption languages,
and the summary from their merged counts."""

from pathlib import Path

from capmix.language import run_caption_language
from capmix.lineage import job_provenance
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        run_caption_language(
            sm.wildcards.pool, Path(sm.input.raw), [Path(p) for p in sm.input.parts],
            [Path(p) for p in sm.input.counts], dict(sm.params.settings),
            Path(sm.input.model[0]) if sm.input.model else None, Path(sm.output.languages),
            Path(sm.output.summary))
