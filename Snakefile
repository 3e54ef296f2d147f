# capmix: improving image-text datasets with synthetic captions.
# Stages live in workflow/rules (one .smk each); logic in src/capmix.
from snakemake.utils import min_version

min_version("9.0")


# The strategy catalogue, the training scales and the evaluation suites first, then
# the embedded default (capmix.config.BASE_CONFIGS).
configfile: "config/strategies.yaml"


configfile: "config/train_scales.yaml"


configfile: "config/eval_suites.yaml"


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/toy.smk"
include: "workflow/rules/sources.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/caption.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/mix.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        all_targets(),
    default_target: True
