"""Entry point of rule score_merge: a caption set's score chunks streamed into its scores
table and summary."""

from pathlib import Path

from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.scoretables import merge_scores

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        merge_scores(sm.wildcards.pool, sm.wildcards.scorer,
                     sm.wildcards.caption_set, [Path(p) for p in sm.input.chunks],
                     Path(sm.input.captions), Path(sm.output.scores), Path(sm.output.summary))
