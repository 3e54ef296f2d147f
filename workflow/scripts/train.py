"""Entry point of rule train: one CLIP on one strategy's training shards (resumes)."""

from pathlib import Path

from capmix.config import pool_by_name
from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.scales import load_scale
from capmix.toymodels import stage_toy_model
from capmix.train import train_clip

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm) as job:
        scale = load_scale(sm.config, sm.params.scale)
        work = Path(sm.params.work)
        model = stage_toy_model(Path(sm.input.toy_model).parent, work) if scale.toy_model else None
        train_clip(scale, manifest_path=Path(sm.input.manifest), work_dir=work,
                   final_path=Path(sm.output.checkpoint), summary_path=Path(sm.output.summary),
                   seed=sm.params.seed, model=model,
                   extra={"pool": sm.wildcards.pool, "strategy": sm.wildcards.strategy,
                          "source": pool_by_name(sm.config, sm.wildcards.pool)["source"]})
        job.produced(work)  # its checkpoints, logs and model config beside final.pt
