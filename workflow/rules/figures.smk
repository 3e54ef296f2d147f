# Every figure and table of config/figures.yaml that a pool's finished results support, drawn
# from its analyses and result JSONs (capmix.figurespec, capmix.figures, capmix.tables):
# figures as PNG + PDF, tables as CSV (+ cell sidecar), Markdown and LaTeX, in
# results/{pool}/figures/files/; results/{pool}/figures/index.json lists every entry as drawn
# or "not available: why" (a config it needs, a result the pool does not make). One cheap job
# per pool. `snakemake figures` (or `make figures`, which re-runs nothing upstream) draws them
# for every pool; `snakemake --report report.zip` carries them with their captions.
# Figure 8 across pools (rule figure_8_pools): the pools of config `figure_8.pools`, each
# pool's analyses/pool_scaling.json joined into results/figures/figure_8_pools.*; pools of
# other configs are read from their finished runs.


rule draw_figures:
    input:
        figures_inputs,
    output:
        index=FIGURE_INDEX,
        files=report(
            directory(FIGURE_FILES),
            patterns=["{figure}.png", "{figure}.csv"],
            caption="../report/figure.rst",
            category=figure_category,
            subcategory=figure_subcategory,
            labels={"pool": "{pool}", "figure": "{figure}"},
        ),
    params:
        plan=figures_plan,
        captions=FIGURE_CAPTIONS,
    log:
        "logs/draw_figures/{pool}.log",
    benchmark:
        "benchmarks/draw_figures/{pool}.tsv"
    threads: resource("draw_figures", "threads")
    resources:
        mem_mb=resource("draw_figures", "mem_mb"),
        runtime=resource("draw_figures", "runtime"),
    conda:
        "../../envs/figures.yaml"
    script:
        "../scripts/figures.py"


rule figure_8_pools:
    input:
        figure_8_inputs,
    output:
        figure=report(
            FIGURE_8_PNG,
            caption="../report/figure_8_pools.rst",
            category=FIGURE_8_CATEGORY,
            subcategory="Figure 8",
            labels={"pool": FIGURE_8_LABEL, "figure": "figure_8_pools"},
        ),
        pdf=FIGURE_8_PDF,
        table=report(
            FIGURE_8_TABLE,
            caption="../report/figure_8_pools.rst",
            category=FIGURE_8_CATEGORY,
            subcategory="Figure 8",
            labels={"pool": FIGURE_8_LABEL, "figure": "figure_8_pools (table)"},
        ),
        cells=FIGURE_8_CELLS,
    params:
        pools=FIGURE_8_POOLS,
        absent=figure_8_absent,
        strategies=config["figure_8"]["strategies"],
    log:
        "logs/figure_8_pools/figure_8_pools.log",
    benchmark:
        "benchmarks/figure_8_pools/figure_8_pools.tsv"
    threads: resource("figure_8_pools", "threads")
    resources:
        mem_mb=resource("figure_8_pools", "mem_mb"),
        runtime=resource("figure_8_pools", "runtime"),
    conda:
        "../../envs/figures.yaml"
    script:
        "../scripts/figure_8_pools.py"
