"""Entry point of rule score: one caption set of one pool on the shards of one embed_images
chunk, with one scorer (rule score_merge joins the chunks)."""

from pathlib import Path

from capmix.caption import RunSettings
from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.score import score_chunk
from capmix.weights import CACHE_KEY, offline_hub

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        # A model job never reaches the Hub: its weights are in the cache (rule model_weights).
        offline_hub(sm.params.spec.get(CACHE_KEY))
        score_chunk(
            sm.wildcards.pool, sm.wildcards.scorer, sm.params.spec, sm.wildcards.caption_set,
            Path(sm.input.captions), Path(sm.input.images), Path(sm.output.scores),
            RunSettings.from_config(sm.params.settings, sm.resources.get("gpu")),
            index_path=Path(sm.input.index), metadata_dir=Path(sm.input.metadata))
