# Sources: downloads of remote metadata, and normalised
# results/{pool}/metadata (uid, url, text + kept columns), checked before any fetch.


rule download_metadata:
    output:
        DOWNLOAD_RECORD,
    params:
        source=pool_source,
    log:
        "logs/download_metadata/{pool}.log",
    benchmark:
        "benchmarks/download_metadata/{pool}.tsv"
    threads: resource("download_metadata", "threads")
    resources:
        mem_mb=resource("download_metadata", "mem_mb"),
        runtime=resource("download_metadata", "runtime"),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/download_metadata.py"


rule metadata:
    input:
        metadata_input,
    output:
        directory(METADATA),
    params:
        source=pool_source,
        required=metadata_required_columns,
    log:
        "logs/metadata/{pool}.log",
    benchmark:
        "benchmarks/metadata/{pool}.tsv"
    threads: resource("metadata", "threads")
    resources:
        mem_mb=resource("metadata", "mem_mb"),
        runtime=resource("metadata", "runtime"),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/metadata.py"
