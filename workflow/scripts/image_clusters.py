"""Entry point of rule image_clusters: the assignment parts joined into the pool's image
clusters, and the summary."""

from pathlib import Path

from capmix.clusters import run_merge_clusters
from capmix.lineage import job_provenance
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        run_merge_clusters(sm.wildcards.pool, [Path(p) for p in sm.input.parts],
                           Path(sm.input.centroids), dict(sm.params.spec or {}),
                           Path(sm.output.clusters), Path(sm.output.summary))
