"""Entry point of rule caption_language_part: a run of the raw captions' shard files, each
caption's language id, fastText tokens and characters, and their counts."""

from pathlib import Path

from capmix.chunks import parse_chunk
from capmix.language import run_caption_language_part
from capmix.lineage import job_provenance
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        run_caption_language_part(
            sm.wildcards.pool, Path(sm.input.raw), *parse_chunk(sm.wildcards.chunk),
            dict(sm.params.settings), Path(sm.input.model[0]) if sm.input.model else None,
            Path(sm.output.languages), Path(sm.output.counts))
