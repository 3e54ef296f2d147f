"""Entry point of rule mix_table: the parts' reports merged into the mix table's manifest."""

from pathlib import Path

from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.mixparts import run_mix_table

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        run_mix_table(sm.wildcards.pool, [Path(p) for p in sm.input.parts],
                      [Path(p) for p in sm.input.reports], Path(sm.output[0]))
