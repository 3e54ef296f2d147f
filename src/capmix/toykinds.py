"""The toy world's stand-in models by kind: the one list the code, the checks and the rules use.

A kind names a config key (``toy_models.<kind>``), a ``toy_model:`` value of a captioner, a
scorer or a training scale, and a result directory (``results/toymodels/{world}/{kind}``).
The config schema has to spell the kinds out as well; a test holds its enums equal to these.

This module imports nothing: the config checks (:mod:`capmix.scales`, :mod:`capmix.config`)
and the Snakefile's rules need the names, and should not import the code that trains the
models (:mod:`capmix.toymodels`, which imports the training-run module, which imports
:mod:`capmix.scales`).
"""

from __future__ import annotations

#: Stand-in for BLIP2: a tiny CoCa trained from scratch on the world's ``pretrain`` split.
CAPTIONER = "captioner"
#: Stand-in for BLIP2-COCO / CoCa-COCO: the captioner fine-tuned on the narrow ``coco`` split.
CAPTIONER_COCO = "captioner_coco"
#: Stand-in for OpenAI's CLIP ViT-L/14: a tiny CLIP trained on ``pretrain``.
SCORER = "scorer"

#: Every stand-in the pipeline trains (the keys of config ``toy_models``).
TOY_MODEL_KINDS: tuple[str, ...] = (CAPTIONER, CAPTIONER_COCO, SCORER)
#: The CoCa stand-ins: what a captioner's ``toy_model`` may name.
TOY_CAPTIONER_KINDS: tuple[str, ...] = (CAPTIONER, CAPTIONER_COCO)
#: The CLIP stand-ins: what a scorer's or a training scale's ``toy_model`` may name, and the
#: models a captioner's image tower may start from (``toy_models.captioner.vision_from``).
TOY_CLIP_KINDS: tuple[str, ...] = (SCORER,)
#: A fine-tuned stand-in -> the stand-in whose weights it starts from (trained first).
FINETUNED_FROM: dict[str, str] = {CAPTIONER_COCO: CAPTIONER}
