"""Entry point of rule embed_images: image embeddings of one chunk, once per pool and scorer."""

from pathlib import Path

from capmix.caption import RunSettings
from capmix.chunks import parse_chunk
from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.score import embed_pool_images, embedding_files
from capmix.weights import CACHE_KEY, offline_hub

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm) as job:
        # A model job never reaches the Hub: its weights are in the cache (rule model_weights).
        offline_hub(sm.params.spec.get(CACHE_KEY))
        chunk, n_chunks = parse_chunk(sm.wildcards.chunk)
        manifest = Path(sm.output.manifest)
        embed_pool_images(sm.wildcards.pool, sm.wildcards.scorer, sm.params.spec,
                          Path(sm.input.index), Path(sm.params.shards), manifest.parent, manifest,
                          RunSettings.from_config(sm.params.settings, sm.resources.get("gpu")),
                          metadata_dir=Path(sm.input.metadata), chunk=chunk, n_chunks=n_chunks)
        job.produced(*embedding_files([manifest]))  # the per-shard files it lists
