"""Entry point of rule eval_data: fetch one real evaluation task (network)."""

from pathlib import Path

from capmix.evaldata import fetch_task
from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.suites import load_suite

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm) as job:
        suite = load_suite(sm.config, sm.params.task["suite"])
        fetch_task(suite.task(sm.params.task["task"]), Path(sm.wildcards.eval_data_dir))
        # The task's files beside its manifest; the job's log and benchmark lie there too.
        job.produced(Path(sm.output.manifest).parent,
                     exclude=("capmix_fetch.log", "capmix_fetch.benchmark.tsv"))
