# Fetch: img2dataset into webdataset shards (results/{pool}/shards/round_K/),
# then every uid accounted for. Re-running the job (`-R fetch`) retries only the
# rows that have not been fetched yet; the shards are kept across runs.


rule fetch:
    input:
        METADATA,
    output:
        index=FETCH_INDEX,
        report=FETCH_REPORT,
    params:
        settings=pool_setting("fetch"),
        source_type=pool_setting("source", "type"),
        allow_local_urls=local_urls_allowed,
        shards=SHARDS,
    log:
        "logs/fetch/{pool}.log",
    benchmark:
        "benchmarks/fetch/{pool}.tsv"
    threads: resource("fetch", "threads")
    resources:
        mem_mb=resource("fetch", "mem_mb"),
        runtime=resource("fetch", "runtime"),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/fetch.py"
