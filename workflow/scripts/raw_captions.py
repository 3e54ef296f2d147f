"""Entry point of rule raw_captions: the web captions in the per-shard caption layout."""

from pathlib import Path

from capmix.caption import caption_files, raw_caption_sets
from capmix.lineage import job_provenance
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm) as job:
        manifest = Path(sm.output.manifest)
        raw_caption_sets(sm.wildcards.pool, Path(sm.input.index), Path(sm.params.shards),
                         manifest.parent, manifest)
        job.produced(*caption_files([manifest]))  # the per-shard parquets it lists
