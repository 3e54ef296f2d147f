"""Entry point of rule model_weights: one captioner's or scorer's weights into the cache."""

from pathlib import Path

from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.weights import fetch_weights

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        fetch_weights(sm.wildcards.role, sm.wildcards.model, dict(sm.params.spec),
                      Path(sm.params.cache_dir), Path(sm.output.record))
