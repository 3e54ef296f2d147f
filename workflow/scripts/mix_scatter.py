"""Entry point of rule mix_scatter: a pool's mix inputs split by uid into its table's parts."""

from pathlib import Path

from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.mixparts import MixInputs, run_scatter

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        inputs = MixInputs.from_manifests(
            Path(sm.input.index), sm.params.score_paths, sm.params.caption_manifests,
            clusters=Path(sm.input.clusters) if "clusters" in sm.input.keys() else None,
            caption_text=(Path(sm.input.caption_language)
                          if "caption_language" in sm.input.keys() else None))
        run_scatter(inputs, sm.params.table_parts, Path(sm.output[0]))
