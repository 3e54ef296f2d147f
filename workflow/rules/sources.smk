# Sources: downloads of remote metadata, and normalised
# results/{pool}/metadata (uid, url, text + kept columns), checked before any fetch.


rule download_metadata:
    output:
        "results/{pool}/metadata_raw/download.json",
    params:
        source=pool_source,
    log:
        "logs/download_metadata/{pool}.log",
    benchmark:
        "benchmarks/download_metadata/{pool}.tsv"
    threads: res("download_metadata", "threads")
    resources:
        mem_mb=res("download_metadata", "mem_mb"),
        runtime=res("download_metadata", "runtime"),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/download_metadata.py"


rule metadata:
    input:
        metadata_input,
    output:
        directory("results/{pool}/metadata"),
    params:
        source=pool_source,
        required=metadata_required_columns,
    log:
        "logs/metadata/{pool}.log",
    benchmark:
        "benchmarks/metadata/{pool}.tsv"
    threads: res("metadata", "threads")
    resources:
        mem_mb=res("metadata", "mem_mb"),
        runtime=res("metadata", "runtime"),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/metadata.py"
