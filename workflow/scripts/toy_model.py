"""Entry point of rule toy_model: train one of the toy world's stand-in models."""

from pathlib import Path

from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.toykinds import FINETUNED_FROM
from capmix.toymodels import finetune_toy_captioner, train_toy_model

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm) as job:
        world_dir = Path(sm.input.pretrain).parent
        out_dir = Path(sm.output.config).parent
        kind, settings, seed = sm.wildcards.kind, sm.params.settings, sm.params.seed
        work = Path(sm.params.work)
        if kind in FINETUNED_FROM:
            finetune_toy_captioner(world_dir, Path(sm.input.base).parent, out_dir, settings, seed,
                                   work)
        else:
            vision = Path(sm.input.vision).parent if "vision" in sm.input.keys() else None
            train_toy_model(kind, world_dir, out_dir, settings, seed, work, vision_from=vision)
        job.produced(out_dir, work)  # the weights beside the declared config; its run
