"""Entry point of rule evaluate: one trained model on every task of its pool's suite."""

import json
from pathlib import Path

from capmix.evaluate import evaluate_model, load_model
from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.suites import load_suite

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm) as job:
        suite = load_suite(sm.config, sm.params.suite)
        training = json.loads(Path(sm.input.training).read_text())
        model = load_model(training["model"], Path(sm.input.checkpoint),
                           device=sm.params.settings["device"], gpus=sm.resources.get("gpu"))
        evaluate_model(suite, model, Path(sm.params.data_dir),
                       progress_path=Path(sm.params.progress),
                       results_path=Path(sm.output.results),
                       aggregate_path=Path(sm.output.aggregate),
                       batch_size=sm.params.settings["batch_size"],
                       workers=sm.params.settings["workers"],
                       provenance_inputs=[Path(sm.input.checkpoint), Path(sm.input.training),
                                          *map(Path, sm.input.tasks)],
                       extra={"pool": sm.wildcards.pool, "strategy": sm.wildcards.strategy,
                              "training": {k: training.get(k) for k in
                                           ("scale", "samples_seen", "steps", "world_size")}})
        job.produced(sm.params.progress)  # finished tasks, kept for a resumed run
