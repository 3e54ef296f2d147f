# Captioning: synthetic captions per fetched shard, one job per (pool,
# captioner, temperature, chunk); resumable shard by shard; caption_merge lists a
# set's chunks in one manifest. The raw captions are materialised in the same
# per-shard layout (one manifest too), so every later stage treats raw and
# synthetic caption sets alike, one manifest per set.


rule raw_captions:
    input:
        index=FETCH_INDEX,
        shard_table=FETCH_SHARD_TABLE,
    output:
        manifest=RAW_CAPTIONS,
    params:
        shards=SHARDS,
    log:
        "logs/raw_captions/{pool}.log",
    benchmark:
        "benchmarks/raw_captions/{pool}.tsv"
    threads: resource("raw_captions", "threads")
    resources:
        mem_mb=resource("raw_captions", "mem_mb"),
        runtime=resource("raw_captions", "runtime"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/raw_captions.py"


rule caption:
    input:
        index=FETCH_INDEX,
        shard_table=FETCH_SHARD_TABLE,
        model=captioner_model,
        metadata=captioner_metadata,
    output:
        manifest=CAPTION_CHUNK,
    params:
        spec=captioner_spec,
        settings=config["caption"],
        shards=SHARDS,
        seed=config["seed"],
    log:
        "logs/caption/{pool}/{captioner}/{temperature}/{chunk}.log",
    benchmark:
        "benchmarks/caption/{pool}/{captioner}/{temperature}/{chunk}.tsv"
    threads: resource("caption", "threads")
    resources:
        mem_mb=resource("caption", "mem_mb"),
        runtime=resource("caption", "runtime"),
        gpu=resource("caption", "gpu"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/caption.py"


rule caption_merge:
    input:
        chunks=caption_chunk_manifests,
    output:
        manifest=CAPTION_SET,
    log:
        "logs/caption_merge/{pool}/{captioner}/{temperature}.log",
    benchmark:
        "benchmarks/caption_merge/{pool}/{captioner}/{temperature}.tsv"
    threads: resource("caption_merge", "threads")
    resources:
        mem_mb=resource("caption_merge", "mem_mb"),
        runtime=resource("caption_merge", "runtime"),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/caption_merge.py"
