# Fetch: img2dataset into webdataset shards, then every uid accounted for. A pool's
# metadata parts are fetched by pools[].jobs.fetch jobs (job i of n takes the i-th of n
# contiguous runs of parts into results/{pool}/shards/chunk{i}of{n}/round_K/); fetch_merge
# joins their indexes (ordered by shard, with the shard table beside it) and reports.
# Re-running a job (`-R fetch`) retries only the rows it has not fetched yet; the shards are
# kept across runs, and a failed job is re-run alone.


rule fetch:
    input:
        METADATA,
    output:
        index=FETCH_CHUNK_INDEX,
        report=FETCH_CHUNK_REPORT,
    params:
        settings=fetch_settings,
        source_type=pool_setting("source", "type"),
        allow_local_urls=local_urls_allowed,
        shards=FETCH_CHUNK_SHARDS,
    log:
        "logs/fetch/{pool}/{chunk}.log",
    benchmark:
        "benchmarks/fetch/{pool}/{chunk}.tsv"
    threads: resource("fetch", "threads")
    resources:
        mem_mb=resource("fetch", "mem_mb"),
        runtime=resource("fetch", "runtime"),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/fetch.py"


# A pool fetched by several jobs: their files listed by one small local job, fetch_merge's
# one input (why: common.smk fetch_merge_inputs).
localrules:
    fetch_gather,


rule fetch_gather:
    input:
        indexes=fetch_chunk_indexes,
        reports=fetch_chunk_reports,
    output:
        FETCH_CHUNK_LIST,
    params:
        chunks=fetch_chunks,
    log:
        "logs/fetch_gather/{pool}.log",
    benchmark:
        "benchmarks/fetch_gather/{pool}.tsv"
    threads: resource("fetch_gather", "threads")
    resources:
        mem_mb=resource("fetch_gather", "mem_mb"),
        runtime=resource("fetch_gather", "runtime"),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/fetch_gather.py"


rule fetch_merge:
    input:
        unpack(fetch_merge_inputs),
    output:
        index=FETCH_INDEX,
        shard_table=FETCH_SHARD_TABLE,
        report=FETCH_REPORT,
    params:
        chunks=fetch_chunks,
    log:
        "logs/fetch_merge/{pool}.log",
    benchmark:
        "benchmarks/fetch_merge/{pool}.tsv"
    threads: resource("fetch_merge", "threads")
    resources:
        mem_mb=resource("fetch_merge", "mem_mb"),
        runtime=resource("fetch_merge", "runtime"),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/fetch_merge.py"
