# capmix: improving image-text datasets with synthetic captions.
# Stages live in workflow/rules (one .smk each); logic in src/capmix.
from snakemake.utils import min_version

min_version("9.0")


# The strategy catalogue, the training scales, the evaluation suites, the costs, the paper's
# findings and the published files (assets) first, then the embedded default
# (capmix.config.BASE_CONFIGS). Paths from the Snakefile's folder, so that `--directory DIR`
# runs the workflow into another results root (the replicates over seeds do).
configfile: f"{workflow.basedir}/config/strategies.yaml"


configfile: f"{workflow.basedir}/config/train_scales.yaml"


configfile: f"{workflow.basedir}/config/eval_suites.yaml"


configfile: f"{workflow.basedir}/config/costs.yaml"


configfile: f"{workflow.basedir}/config/findings.yaml"


configfile: f"{workflow.basedir}/config/analyses.yaml"


configfile: f"{workflow.basedir}/config/figures.yaml"


configfile: f"{workflow.basedir}/config/assets.yaml"


configfile: f"{workflow.basedir}/config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/toy.smk"
include: "workflow/rules/sources.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/assets.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/caption.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/mix.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/findings.smk"
include: "workflow/rules/analyses.smk"
include: "workflow/rules/figures.smk"


# `snakemake --report report.zip`: this page first (with the code version), then every
# figure and table by category (workflow/rules/figures.smk).
report: "workflow/report/workflow.rst"


rule all:
    input:
        all_targets(),
    default_target: True


# `snakemake figures` (`make figures`): every pool's figures and tables, and Figure 8 across
# the pools of config `figure_8.pools`, and nothing else (workflow/rules/figures.smk; each
# pool with the target `figures`).
rule figures:
    input:
        figure_indexes(),
        figure_8_files(),
