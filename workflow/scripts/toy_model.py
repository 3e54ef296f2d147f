"""Entry point of rule toy_model: train one of the toy world's stand-in models."""

from pathlib import Path

from capmix.logs import setup_logging
from capmix.toymodels import finetune_toy_captioner, train_toy_captioner, train_toy_scorer

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    world_dir = Path(sm.input.pretrain).parent
    out_dir = Path(sm.output.config).parent
    kind, settings, seed = sm.wildcards.kind, sm.params.settings, sm.params.seed
    work = Path(sm.params.work)
    if kind == "captioner":
        vision = Path(sm.input.vision).parent if "vision" in sm.input.keys() else None
        train_toy_captioner(world_dir, out_dir, settings, seed, work, vision_from=vision)
    elif kind == "captioner_coco":
        finetune_toy_captioner(world_dir, Path(sm.input.base).parent, out_dir, settings, seed, work)
    else:
        train_toy_scorer(world_dir, out_dir, settings, seed, work)
