"""Entry point of rule score: one caption set of one pool, with one scorer."""

from pathlib import Path

from capmix.caption import RunSettings, caption_files
from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.score import embedding_files, score_pool_caption_set
from capmix.weights import CACHE_KEY, offline_hub

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        # A model job never reaches the Hub: its weights are in the cache (rule model_weights).
        offline_hub(sm.params.spec.get(CACHE_KEY))
        score_pool_caption_set(
            sm.wildcards.pool, sm.wildcards.scorer, sm.params.spec, sm.wildcards.caption_set,
            caption_files([Path(p) for p in sm.input.captions]),
            embedding_files([Path(p) for p in sm.input.images]),
            Path(sm.output.scores), Path(sm.output.summary),
            RunSettings.from_config(sm.params.settings, sm.resources.get("gpu")),
            metadata_dir=Path(sm.input.metadata))
