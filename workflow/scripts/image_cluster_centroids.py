"""Entry point of rule image_cluster_centroids: the centroids (given, or k-means on a seeded
sample of the pool's image embeddings) and the ImageNet-1k-like target clusters."""

from pathlib import Path

from capmix.clusters import run_cluster_centroids
from capmix.lineage import job_provenance
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        run_cluster_centroids(
            sm.wildcards.pool, [Path(p) for p in sm.input.images],
            [Path(p) for p in sm.input.reference_images],
            [Path(p) for p in sm.input.reference_files],
            Path(sm.input.centroids[0]) if sm.input.centroids else None,
            dict(sm.params.spec), sm.params.seed, Path(sm.output.centroids),
            Path(sm.output.record))
