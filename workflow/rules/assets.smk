# Published files (config/assets.yaml): DataComp's ImageNet-1k embeddings, pool centroids and
# fastText's language-id model, each fetched once into assets.data_dir and checked against its
# SHA-256. A pool names one as asset:NAME where it names a file; a file already there (e.g. a
# DataComp cache as data_dir) is used as it is.


# The network is needed here only: on a cluster, run it where the network is
# (it is a local rule, so it runs on the node that runs Snakemake).
localrules:
    download_asset,


rule download_asset:
    output:
        asset=ASSET,
    params:
        spec=asset_spec,
    log:
        "logs/download_asset/{asset_file}.log",
    benchmark:
        "benchmarks/download_asset/{asset_file}.tsv"
    threads: resource("download_asset", "threads")
    resources:
        mem_mb=resource("download_asset", "mem_mb"),
        runtime=resource("download_asset", "runtime"),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/download_asset.py"
