# Filtering and mixing: every strategy of the paper (config/strategies.yaml) on a
# pool. The scores all strategies need are loaded, checked and joined once per
# pool (mix_table), into uid-range parts (pools[].mix.table_parts); each strategy
# is then its own job (subset) that finds its thresholds over the parts and selects
# part by part, so editing one strategy re-runs only its subset and training shards.


# ImageNet-1k-like image clusters (capmix.clusters), a map and a reduce: the centroids
# (DataComp's, or k-means on a seeded sample of at most train_sample embeddings) and the
# target clusters; pools[].jobs.image_clusters jobs each assigning a contiguous run of the
# embed_images chunks; the reduce streams them into one file and writes the summary.
rule image_cluster_centroids:
    input:
        unpack(image_cluster_centroid_inputs),
    output:
        centroids=IMAGE_CLUSTER_CENTROIDS,
        record=IMAGE_CLUSTER_CENTROIDS_RECORD,
    params:
        spec=image_cluster_spec,
        seed=config["seed"],
    log:
        "logs/image_cluster_centroids/{pool}.log",
    benchmark:
        "benchmarks/image_cluster_centroids/{pool}.tsv"
    threads: resource("image_cluster_centroids", "threads")
    resources:
        mem_mb=resource("image_cluster_centroids", "mem_mb"),
        runtime=resource("image_cluster_centroids", "runtime"),
        gpu=resource("image_cluster_centroids", "gpu"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/image_cluster_centroids.py"


rule image_clusters_part:
    input:
        unpack(image_clusters_part_inputs),
    output:
        IMAGE_CLUSTERS_PART,
    log:
        "logs/image_clusters_part/{pool}/{chunk}.log",
    benchmark:
        "benchmarks/image_clusters_part/{pool}/{chunk}.tsv"
    threads: resource("image_clusters_part", "threads")
    resources:
        mem_mb=resource("image_clusters_part", "mem_mb"),
        runtime=resource("image_clusters_part", "runtime"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/image_clusters_part.py"


rule image_clusters:
    input:
        parts=image_clusters_parts,
        centroids=IMAGE_CLUSTER_CENTROIDS_RECORD,
    output:
        clusters=IMAGE_CLUSTERS,
        summary="results/{pool}/mix/image_clusters.json",
    params:
        spec=image_cluster_spec,
    log:
        "logs/image_clusters/{pool}.log",
    benchmark:
        "benchmarks/image_clusters/{pool}.tsv"
    threads: resource("image_clusters", "threads")
    resources:
        mem_mb=resource("image_clusters", "mem_mb"),
        runtime=resource("image_clusters", "runtime"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/image_clusters.py"


# Each raw caption's language id, fastText tokens and characters, for strategies with a
# text filter (DataComp's image-based caption filter); the model is the pool's language_id.
# pools[].jobs.caption_language jobs each measure a contiguous run of the raw captions'
# shard files; the reduce streams them into one file and merges their counts.
rule caption_language_part:
    input:
        unpack(caption_language_inputs),
    output:
        languages=CAPTION_LANGUAGE_PART,
        counts=CAPTION_LANGUAGE_PART_COUNTS,
    params:
        settings=language_id_spec,
    log:
        "logs/caption_language_part/{pool}/{chunk}.log",
    benchmark:
        "benchmarks/caption_language_part/{pool}/{chunk}.tsv"
    threads: resource("caption_language_part", "threads")
    resources:
        mem_mb=resource("caption_language_part", "mem_mb"),
        runtime=resource("caption_language_part", "runtime"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/caption_language_part.py"


rule caption_language:
    input:
        unpack(caption_language_merge_inputs),
    output:
        languages=CAPTION_LANGUAGE,
        summary=CAPTION_LANGUAGE_SUMMARY,
    params:
        settings=language_id_spec,
    log:
        "logs/caption_language/{pool}.log",
    benchmark:
        "benchmarks/caption_language/{pool}.tsv"
    threads: resource("caption_language", "threads")
    resources:
        mem_mb=resource("caption_language", "mem_mb"),
        runtime=resource("caption_language", "runtime"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/caption_language.py"


# The mix table in pools[].mix.table_parts uid-range parts (capmix.mixparts): a pool in
# several parts has its inputs scattered once (mix_scatter), then each part is built by its
# own job (mix_table_part) and the parts' reports merged into the table's manifest
# (mix_table), results/{pool}/mix/table.json, which the readers take. The params map each
# caption set to its files (the inputs, listed flat).
rule mix_scatter:
    input:
        unpack(mix_table_inputs),
    output:
        temp(directory(MIX_SCATTER)),
    params:
        score_paths=mix_score_paths,
        caption_manifests=mix_caption_manifests,
        table_parts=pool_setting("mix", "table_parts"),
    log:
        "logs/mix_scatter/{pool}.log",
    benchmark:
        "benchmarks/mix_scatter/{pool}.tsv"
    threads: resource("mix_scatter", "threads")
    resources:
        mem_mb=resource("mix_scatter", "mem_mb"),
        runtime=resource("mix_scatter", "runtime"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/mix_scatter.py"


rule mix_table_part:
    input:
        unpack(mix_table_part_inputs),
    output:
        table=MIX_TABLE_PART,
        report="results/{pool}/mix/table/{table_part}.json",
    params:
        sources=mix_sources,
        unscattered=mix_table_part_files,
        on_missing_score=pool_setting("mix", "on_missing_score"),
        table_parts=pool_setting("mix", "table_parts"),
    log:
        "logs/mix_table_part/{pool}/{table_part}.log",
    benchmark:
        "benchmarks/mix_table_part/{pool}/{table_part}.tsv"
    threads: resource("mix_table_part", "threads")
    resources:
        mem_mb=resource("mix_table_part", "mem_mb"),
        runtime=resource("mix_table_part", "runtime"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/mix_table_part.py"


rule mix_table:
    input:
        parts=mix_table_parts,
        reports=mix_table_part_reports,
    output:
        MIX_TABLE,
    log:
        "logs/mix_table/{pool}.log",
    benchmark:
        "benchmarks/mix_table/{pool}.tsv"
    threads: resource("mix_table", "threads")
    resources:
        mem_mb=resource("mix_table", "mem_mb"),
        runtime=resource("mix_table", "runtime"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/mix_table.py"


# One kept source column a strategy filters on (metadata_filter), in the table's uid ranges,
# beside the table: adding such a strategy rebuilds no other subset. Runs early (priority):
# a column the metadata lacks stops here, before captions and scores.
rule mix_metadata_column:
    input:
        metadata=METADATA,
    output:
        directory(MIX_METADATA_COLUMN),
    params:
        table_parts=pool_setting("mix", "table_parts"),
    log:
        "logs/mix_metadata_column/{pool}/{column}.log",
    benchmark:
        "benchmarks/mix_metadata_column/{pool}/{column}.tsv"
    priority: 50
    threads: resource("mix_metadata_column", "threads")
    resources:
        mem_mb=resource("mix_metadata_column", "mem_mb"),
        runtime=resource("mix_metadata_column", "runtime"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/mix_metadata_column.py"


rule subset:
    input:
        unpack(subset_inputs),
    output:
        uids="results/{pool}/subsets/{strategy}/uids.npy",
        samples=SUBSET_SAMPLES,
        summary=SUBSET_SUMMARY,
    params:
        spec=strategy_spec,
        aliases=pool_aliases,
    log:
        "logs/subset/{pool}/{strategy}.log",
    benchmark:
        "benchmarks/subset/{pool}/{strategy}.tsv"
    threads: resource("subset", "threads")
    resources:
        mem_mb=resource("subset", "mem_mb"),
        runtime=resource("subset", "runtime"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/subset.py"


# The shards are not declared outputs (Snakemake deletes the outputs of a failed
# job): a killed job resumes from the shards already written (capmix.reshard). With
# pools[].jobs.train_shards = n > 1 the samples are split by runs of pool shards
# (train_shards_scatter), n train_shards_part jobs write the shards, and train_shards joins
# their reports; with one job (the default) train_shards does it all.
rule train_shards_scatter:
    input:
        samples=SUBSET_SAMPLES,
    output:
        temp(directory(TRAIN_SHARDS_SCATTER)),
    params:
        jobs=train_shard_jobs,
        samples_per_shard=pool_setting("mix", "samples_per_shard"),
    log:
        "logs/train_shards_scatter/{pool}/{strategy}.log",
    benchmark:
        "benchmarks/train_shards_scatter/{pool}/{strategy}.tsv"
    threads: resource("train_shards_scatter", "threads")
    resources:
        mem_mb=resource("train_shards_scatter", "mem_mb"),
        runtime=resource("train_shards_scatter", "runtime"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/train_shards_scatter.py"


rule train_shards_part:
    input:
        scatter=TRAIN_SHARDS_SCATTER,
    output:
        report=TRAIN_SHARDS_PART,
    params:
        shards=SHARDS,
        out=TRAIN_SHARDS_OUT,
    log:
        "logs/train_shards_part/{pool}/{strategy}/{chunk}.log",
    benchmark:
        "benchmarks/train_shards_part/{pool}/{strategy}/{chunk}.tsv"
    threads: resource("train_shards_part", "threads")
    resources:
        mem_mb=resource("train_shards_part", "mem_mb"),
        runtime=resource("train_shards_part", "runtime"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/train_shards_part.py"


rule train_shards:
    input:
        unpack(train_shards_inputs),
    output:
        manifest=TRAIN_SHARDS,
    params:
        shards=SHARDS,
        out=TRAIN_SHARDS_OUT,
        samples_per_shard=pool_setting("mix", "samples_per_shard"),
    log:
        "logs/train_shards/{pool}/{strategy}.log",
    benchmark:
        "benchmarks/train_shards/{pool}/{strategy}.tsv"
    threads: resource("train_shards", "threads")
    resources:
        mem_mb=resource("train_shards", "mem_mb"),
        runtime=resource("train_shards", "runtime"),
    conda:
        "../../envs/mix.yaml"
    script:
        "../scripts/train_shards.py"
