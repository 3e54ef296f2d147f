# CLIP scoring: image embeddings once per (pool, scorer), then every caption
# set (raw and synthetic) costs only the text tower, one score job per embed_images
# chunk and a score_merge per set; plus the caption-set quality measures of Table 1
# (CLIP-S, mean cosine, unique trigrams, CIDEr).


rule embed_images:
    input:
        index=FETCH_INDEX,
        shard_table=FETCH_SHARD_TABLE,
        metadata=METADATA,
        model=scorer_model,
    output:
        manifest=IMAGE_EMBEDDINGS,
    params:
        spec=scorer_spec,
        settings=config["score"],
        shards=SHARDS,
    log:
        "logs/embed_images/{pool}/{scorer}/{chunk}.log",
    benchmark:
        "benchmarks/embed_images/{pool}/{scorer}/{chunk}.tsv"
    threads: resource("embed_images", "threads")
    resources:
        mem_mb=resource("embed_images", "mem_mb"),
        runtime=resource("embed_images", "runtime"),
        gpu=resource("embed_images", "gpu"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/embed_images.py"


rule score:
    input:
        captions=caption_set_manifest,
        images=IMAGE_EMBEDDINGS,
        index=FETCH_INDEX,
        metadata=METADATA,
        model=scorer_model,
    output:
        scores=SCORE_CHUNK,
    params:
        spec=scorer_spec,
        settings=config["score"],
    log:
        "logs/score/{pool}/{scorer}/{caption_set}/{chunk}.log",
    benchmark:
        "benchmarks/score/{pool}/{scorer}/{caption_set}/{chunk}.tsv"
    threads: resource("score", "threads")
    resources:
        mem_mb=resource("score", "mem_mb"),
        runtime=resource("score", "runtime"),
        gpu=resource("score", "gpu"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/score.py"


rule score_merge:
    input:
        captions=caption_set_manifest,
        chunks=score_chunks,
    output:
        scores=SCORES,
        summary="results/{pool}/scores/{scorer}/{caption_set}.json",
    log:
        "logs/score_merge/{pool}/{scorer}/{caption_set}.log",
    benchmark:
        "benchmarks/score_merge/{pool}/{scorer}/{caption_set}.tsv"
    threads: resource("score_merge", "threads")
    resources:
        mem_mb=resource("score_merge", "mem_mb"),
        runtime=resource("score_merge", "runtime"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/score_merge.py"


rule quality:
    input:
        captions=caption_set_manifest,
        scores=SCORES,
        metadata=METADATA,
    output:
        QUALITY,
    params:
        references_column=pool_setting("references_column"),
        trigram_sample_size=config["quality"]["trigram_sample_size"],
        seed=config["seed"],
    log:
        "logs/quality/{pool}/{scorer}/{caption_set}.log",
    benchmark:
        "benchmarks/quality/{pool}/{scorer}/{caption_set}.tsv"
    threads: resource("quality", "threads")
    resources:
        mem_mb=resource("quality", "mem_mb"),
        runtime=resource("quality", "runtime"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/quality.py"
