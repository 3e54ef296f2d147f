# The paper's findings (config/findings.yaml) on a pool's results: per finding, the two
# quantities compared (evaluation aggregates, caption-set quality), our values and whether
# it holds; what the pool cannot measure is reported as such. Across seeds:
# `python -m capmix.findings combine OUT_PREFIX results/*/findings.json`. The CSV comes with
# findings.cells.json: the results file and field of each value (`capmix provenance
# results/{pool}/findings.csv --cell F2.1 "ours a"`; docs/provenance.md).


rule findings:
    input:
        findings_inputs,
    output:
        json=FINDINGS,
        md="results/{pool}/findings.md",
        csv="results/{pool}/findings.csv",
        cells="results/{pool}/findings.cells.json",
    params:
        plan=findings_plan,
    log:
        "logs/findings/{pool}.log",
    benchmark:
        "benchmarks/findings/{pool}.tsv"
    threads: resource("findings", "threads")
    resources:
        mem_mb=resource("findings", "mem_mb"),
        runtime=resource("findings", "runtime"),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/findings.py"
