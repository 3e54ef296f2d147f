# The data the paper's figures and tables are drawn from (capmix.analysisplan.ANALYSES), measured
# on one pool's finished results: caption text statistics of its training sets, score
# histograms, differences between its evaluated models, its subsets' sizes and thresholds.
# One cheap job per pool; what the pool cannot measure is written as "not available" with the
# reason. Across pools (Figure 8): rule figure_8_pools (figures.smk) joins the pools' pool_scaling.


rule analyses:
    input:
        analyses_inputs,
    output:
        expand(ANALYSIS, analysis=list(ANALYSES), allow_missing=True),
    params:
        plan=analyses_plan,
        out_dir="results/{pool}/analyses",
    log:
        "logs/analyses/{pool}.log",
    benchmark:
        "benchmarks/analyses/{pool}.tsv"
    threads: resource("analyses", "threads")
    resources:
        mem_mb=resource("analyses", "mem_mb"),
        runtime=resource("analyses", "runtime"),
    conda:
        "../../envs/analyses.yaml"
    script:
        "../scripts/analyses.py"
