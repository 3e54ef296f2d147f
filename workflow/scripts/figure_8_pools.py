"""Entry point of rule figure_8_pools: Figure 8 across the pools of config figure_8.pools."""

from pathlib import Path

from capmix.figures import run_pools_figure
from capmix.lineage import job_provenance
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        run_pools_figure(list(sm.input), [Path(sm.output.figure), Path(sm.output.pdf)],
                         Path(sm.output.table), strategies=sm.params.strategies,
                         absent=dict(sm.params.absent))
