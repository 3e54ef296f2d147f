"""Entry point of rule caption: one chunk of a pool, one captioner, one temperature.

Released captions are downloaded here, shipped ones read from the metadata; a model runs
offline, from the weights cache (``capmix.weights``). The ``__main__`` guard keeps DataLoader /
img2dataset-style spawned workers, which re-import this file, from running the stage again.
"""

from pathlib import Path

from capmix.caption import (
    RunSettings,
    caption_files,
    caption_pool,
    caption_released,
    caption_shipped,
)
from capmix.chunks import parse_chunk
from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.released import BACKEND as RELEASED_BACKEND
from capmix.shipped import BACKEND as SHIPPED_BACKEND
from capmix.weights import CACHE_KEY, offline_hub

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm) as job:
        chunk, n_chunks = parse_chunk(sm.wildcards.chunk)
        manifest = Path(sm.output.manifest)
        common = dict(
            pool=sm.wildcards.pool,
            captioner_name=sm.wildcards.captioner,
            spec=sm.params.spec,
            temperature=float(sm.wildcards.temperature),
            index_path=Path(sm.input.index),
            shards_dir=Path(sm.params.shards),
            out_dir=manifest.parent,
            manifest_path=manifest,
            chunk=chunk,
            n_chunks=n_chunks,
        )
        if sm.params.spec["backend"] == RELEASED_BACKEND:
            slug = sm.params.spec["repo"].replace("/", "__")
            caption_released(**common, download_dir=Path("results/released") / slug)
        elif sm.params.spec["backend"] == SHIPPED_BACKEND:
            # captions the source ships: a column of the pool's normalised metadata
            caption_shipped(**common, metadata_dir=Path(sm.input.metadata))
        else:
            # A model job never reaches the Hub: its weights are in the cache (model_weights).
            offline_hub(sm.params.spec.get(CACHE_KEY))
            # The job's GPU request: with device auto, a job that asked for one must see one.
            settings = RunSettings.from_config(sm.params.settings, sm.resources.get("gpu"))
            caption_pool(**common, settings=settings, seed=sm.params.seed)
        job.produced(*caption_files([manifest]))  # the per-shard parquets it lists
