"""Entry point of rule toy_eval_data: one toy-suite task from the toy world's split."""

from pathlib import Path

from capmix.evaluate import load_suite, write_toy_task
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    suite = load_suite(sm.config, sm.params.task["suite"])
    write_toy_task(suite.task(sm.params.task["task"]), Path(sm.params.world_dir),
                   Path(sm.output.manifest).parent, suite.templates)
