"""Entry point of rule draw_figures: every figure and table one pool's results support."""

from pathlib import Path

from capmix.figures import run_figures
from capmix.lineage import job_provenance
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        run_figures(sm.params.plan, Path(sm.output.files), Path(sm.output.index))
