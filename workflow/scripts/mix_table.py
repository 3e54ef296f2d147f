"""Entry point of rule mix_table: every score a pool's strategies need, checked and joined
into uid-range parts."""

from pathlib import Path

from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.mixparts import run_mix_table

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        run_mix_table(
            sm.wildcards.pool, sm.params.sources, sm.params.score_paths,
            sm.params.caption_manifests,
            Path(sm.input.index), Path(sm.output.table), Path(sm.output.report),
            n_parts=sm.params.table_parts,
            clusters_path=Path(sm.input.clusters) if "clusters" in sm.input.keys() else None,
            on_missing_score=sm.params.on_missing_score,
            caption_text_path=(Path(sm.input.caption_language)
                               if "caption_language" in sm.input.keys() else None))
