"""Entry point of rule mix_table_part: one uid range of a pool's mix table, checked and joined."""

from pathlib import Path

from capmix.chunks import parse_table_part
from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.mixparts import MixInputs, run_table_part

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        scatter = Path(sm.input.scatter) if "scatter" in sm.input.keys() else None
        files = sm.params.unscattered
        inputs = None if scatter else MixInputs.from_manifests(
            Path(sm.input.index), files["score_paths"], files["caption_manifests"],
            clusters=Path(sm.input.clusters) if "clusters" in sm.input.keys() else None,
            caption_text=(Path(sm.input.caption_language)
                          if "caption_language" in sm.input.keys() else None))
        run_table_part(sm.wildcards.pool, parse_table_part(sm.wildcards.table_part),
                       sm.params.table_parts, sm.params.sources, inputs,
                       Path(sm.output.table), Path(sm.output.report), scatter_dir=scatter,
                       on_missing_score=sm.params.on_missing_score)
