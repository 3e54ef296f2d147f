# Filtering and mixing: every strategy of the paper (config/strategies.yaml) on a
# pool. The scores all strategies need are loaded, checked and sorted once per
# pool (mix_table); each strategy is then its own small job (subset), so editing
# one strategy re-runs only its subset and training shards.


rule image_clusters:
    input:
        unpack(image_cluster_inputs),
    output:
        clusters="results/{pool}/mix/image_clusters.parquet",
        summary="results/{pool}/mix/image_clusters.json",
    params:
        spec=lambda wildcards: image_cluster_spec(wildcards.pool),
        seed=config["seed"],
    log:
        "logs/image_clusters/{pool}.log",
    benchmark:
        "benchmarks/image_clusters/{pool}.tsv"
    threads: res("image_clusters", "threads")
    resources:
        mem_mb=res("image_clusters", "mem_mb"),
        runtime=res("image_clusters", "runtime"),
        gpu=res("image_clusters", "gpus"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/image_clusters.py"


rule mix_table:
    input:
        unpack(mix_table_inputs),
    output:
        table="results/{pool}/mix/table.parquet",
        sorted="results/{pool}/mix/sorted_scores.npz",
        report="results/{pool}/mix/table.json",
    params:
        sources=lambda wildcards: mix_sources(wildcards.pool),
        score_paths=mix_score_paths,
        caption_manifests=mix_caption_manifests,
        on_missing_score=lambda wildcards: POOLS[wildcards.pool]["mix"]["on_missing_score"],
    log:
        "logs/mix_table/{pool}.log",
    benchmark:
        "benchmarks/mix_table/{pool}.tsv"
    threads: res("mix_table", "threads")
    resources:
        mem_mb=res("mix_table", "mem_mb"),
        runtime=res("mix_table", "runtime"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/mix_table.py"


rule subset:
    input:
        table="results/{pool}/mix/table.parquet",
        sorted="results/{pool}/mix/sorted_scores.npz",
    output:
        uids="results/{pool}/subsets/{strategy}/uids.npy",
        samples="results/{pool}/subsets/{strategy}/samples.parquet",
        summary="results/{pool}/subsets/{strategy}/summary.json",
    params:
        spec=strategy_spec,
        aliases=pool_aliases,
    log:
        "logs/subset/{pool}/{strategy}.log",
    benchmark:
        "benchmarks/subset/{pool}/{strategy}.tsv"
    threads: res("subset", "threads")
    resources:
        mem_mb=res("subset", "mem_mb"),
        runtime=res("subset", "runtime"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/subset.py"


# The shards are not declared outputs (Snakemake deletes the outputs of a failed
# job): a killed job resumes from the shards already written (capmix.reshard).
rule train_shards:
    input:
        samples="results/{pool}/subsets/{strategy}/samples.parquet",
        index="results/{pool}/fetch/index.parquet",
    output:
        manifest="results/{pool}/train_shards/{strategy}/manifest.json",
    params:
        shards=lambda wildcards: f"results/{wildcards.pool}/shards",
        out=lambda wildcards: f"results/{wildcards.pool}/train_shards/{wildcards.strategy}/shards",
        samples_per_shard=lambda wildcards: POOLS[wildcards.pool]["mix"]["samples_per_shard"],
    log:
        "logs/train_shards/{pool}/{strategy}.log",
    benchmark:
        "benchmarks/train_shards/{pool}/{strategy}.tsv"
    threads: res("train_shards", "threads")
    resources:
        mem_mb=res("train_shards", "mem_mb"),
        runtime=res("train_shards", "runtime"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/train_shards.py"
