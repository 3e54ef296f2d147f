"""Entry point of rule image_clusters_part: a run of the pool's embed_images chunks, each image
assigned to its nearest centroid (in a target cluster or not)."""

from pathlib import Path

from capmix.clusters import run_assign_clusters
from capmix.lineage import job_provenance
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        run_assign_clusters(sm.wildcards.pool, [Path(p) for p in sm.input.images],
                            Path(sm.input.centroids), Path(sm.output[0]))
