# CLIP scoring: image embeddings once per (pool, scorer), then every caption
# set (raw and synthetic) costs only the text tower; plus the caption-set
# quality measures of Table 1 (CLIP-S, mean cosine, unique trigrams, CIDEr).


rule embed_images:
    input:
        index="results/{pool}/fetch/index.parquet",
        metadata="results/{pool}/metadata",
        model=lambda wildcards: model_input(wildcards.pool, config["scorers"][wildcards.scorer]),
    output:
        manifest="results/{pool}/scores/{scorer}/images/{chunk}.json",
    params:
        spec=pool_scorer_spec,
        settings=config["score"],
        shards=lambda wildcards: f"results/{wildcards.pool}/shards",
    log:
        "logs/embed_images/{pool}/{scorer}/{chunk}.log",
    benchmark:
        "benchmarks/embed_images/{pool}/{scorer}/{chunk}.tsv"
    threads: res("embed_images", "threads")
    resources:
        mem_mb=res("embed_images", "mem_mb"),
        runtime=res("embed_images", "runtime"),
        gpu=res("embed_images", "gpus"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/embed_images.py"


rule score:
    input:
        captions=lambda wildcards: caption_manifests(wildcards.pool, wildcards.caption_set),
        images=lambda wildcards: embedding_manifests(wildcards.pool, wildcards.scorer),
        metadata="results/{pool}/metadata",
        model=lambda wildcards: model_input(wildcards.pool, config["scorers"][wildcards.scorer]),
    output:
        scores="results/{pool}/scores/{scorer}/{caption_set}.parquet",
        summary="results/{pool}/scores/{scorer}/{caption_set}.json",
    params:
        spec=pool_scorer_spec,
        settings=config["score"],
    log:
        "logs/score/{pool}/{scorer}/{caption_set}.log",
    benchmark:
        "benchmarks/score/{pool}/{scorer}/{caption_set}.tsv"
    threads: res("score", "threads")
    resources:
        mem_mb=res("score", "mem_mb"),
        runtime=res("score", "runtime"),
        gpu=res("score", "gpus"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/score.py"


rule quality:
    input:
        captions=lambda wildcards: caption_manifests(wildcards.pool, wildcards.caption_set),
        scores="results/{pool}/scores/{scorer}/{caption_set}.parquet",
        metadata="results/{pool}/metadata",
    output:
        "results/{pool}/quality/{scorer}/{caption_set}.json",
    params:
        references_column=lambda wildcards: POOLS[wildcards.pool]["references_column"],
        trigram_sample_size=config["quality"]["trigram_sample_size"],
        seed=config["seed"],
    log:
        "logs/quality/{pool}/{scorer}/{caption_set}.log",
    benchmark:
        "benchmarks/quality/{pool}/{scorer}/{caption_set}.tsv"
    threads: res("quality", "threads")
    resources:
        mem_mb=res("quality", "mem_mb"),
        runtime=res("quality", "runtime"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/quality.py"
