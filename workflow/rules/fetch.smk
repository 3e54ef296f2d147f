# Fetch: img2dataset into webdataset shards (results/{pool}/shards/round_K/),
# then every uid accounted for. Re-running the job (`-R fetch`) retries only the
# rows that have not been fetched yet; the shards are kept across runs.


rule fetch:
    input:
        "results/{pool}/metadata",
    output:
        index="results/{pool}/fetch/index.parquet",
        report="results/{pool}/fetch/report.json",
    params:
        settings=lambda wildcards: POOLS[wildcards.pool]["fetch"],
        source_type=lambda wildcards: POOLS[wildcards.pool]["source"]["type"],
        allow_local_urls=lambda wildcards: allows_local_urls(POOLS[wildcards.pool]["source"]),
        shards=lambda wildcards: f"results/{wildcards.pool}/shards",
    log:
        "logs/fetch/{pool}.log",
    benchmark:
        "benchmarks/fetch/{pool}.tsv"
    threads: res("fetch", "threads")
    resources:
        mem_mb=res("fetch", "mem_mb"),
        runtime=res("fetch", "runtime"),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/fetch.py"
