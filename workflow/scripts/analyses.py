"""Entry point of rule analyses: the figures' and tables' data for one pool."""

from pathlib import Path

from capmix.analyses import run_analyses
from capmix.lineage import job_provenance
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        run_analyses(sm.params.plan, Path(sm.params.out_dir))
