"""Entry point of rule toy_eval_data: every toy-suite task from the toy world's splits."""

from pathlib import Path

from capmix.evaldata import write_toy_task
from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.suites import load_suite

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm) as job:
        for manifest in sm.output.manifests:
            suite_name, task_name = sm.params.tasks[Path(manifest).parent.name]
            suite = load_suite(sm.config, suite_name)
            write_toy_task(suite.task(task_name), Path(sm.params.world_dir),
                           Path(manifest).parent, suite.templates)
            job.produced(Path(manifest).parent)  # the task's images beside its manifest
