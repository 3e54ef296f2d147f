# Every figure and table of config/figures.yaml that a pool's finished results support, drawn
# from its analyses and result JSONs (capmix.figurespec, capmix.figures, capmix.tables):
# figures as PNG + PDF, tables as CSV (+ cell sidecar), Markdown and LaTeX, in
# results/{pool}/figures/files/; results/{pool}/figures/index.json lists every entry as drawn
# or "not available: why" (a config it needs, a result the pool does not make). One cheap job
# per pool. `snakemake figures` (or `make figures`, which re-runs nothing upstream) draws them
# for every pool; `snakemake --report report.zip` carries them with their captions.


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

