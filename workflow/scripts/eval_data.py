"""Entry point of rule eval_data: fetch one real evaluation task (network)."""

from pathlib import Path

from capmix.evaluate import fetch_task, load_suite
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    suite = load_suite(sm.config, sm.params.task["suite"])
    fetch_task(suite.task(sm.params.task["task"]), Path(sm.wildcards.eval_data_dir))
