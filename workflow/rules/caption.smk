# Captioning: synthetic captions per fetched shard, one job per (pool,
# captioner, temperature, chunk); resumable shard by shard. The raw captions
# are materialised in the same per-shard layout so every later stage treats
# raw and synthetic caption sets alike.


rule raw_captions:
    input:
        index="results/{pool}/fetch/index.parquet",
    output:
        manifest="results/{pool}/captions/raw/manifest.json",
    params:
        shards=lambda wildcards: f"results/{wildcards.pool}/shards",
    log:
        "logs/raw_captions/{pool}.log",
    benchmark:
        "benchmarks/raw_captions/{pool}.tsv"
    threads: 1
    resources:
        mem_mb=res("quality", "mem_mb"),
        runtime=res("quality", "runtime"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/raw_captions.py"


rule caption:
    input:
        index="results/{pool}/fetch/index.parquet",
        model=lambda wildcards: model_input(
            wildcards.pool, config["captioners"][wildcards.captioner]
        ),
    output:
        manifest="results/{pool}/captions/{captioner}/{temperature}/{chunk}.json",
    params:
        spec=lambda wildcards, input: resolved_spec(
            config["captioners"][wildcards.captioner], input.model
        ),
        settings=config["caption"],
        shards=lambda wildcards: f"results/{wildcards.pool}/shards",
        seed=config["seed"],
    log:
        "logs/caption/{pool}/{captioner}/{temperature}/{chunk}.log",
    benchmark:
        "benchmarks/caption/{pool}/{captioner}/{temperature}/{chunk}.tsv"
    threads: res("caption", "threads")
    resources:
        mem_mb=res("caption", "mem_mb"),
        runtime=res("caption", "runtime"),
        gpu=res("caption", "gpus"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/caption.py"
