"""Entry point of rule findings: the paper's findings on one pool's results."""

from pathlib import Path

from capmix.findings import write_findings
from capmix.lineage import job_provenance
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        write_findings(sm.params.plan, Path(sm.output.json), Path(sm.output.md),
                       Path(sm.output.csv))
