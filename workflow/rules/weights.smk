# Model weights: each real captioner's and scorer's weights (Hugging Face repos, open_clip
# tags) fetched once into model_weights.cache_dir, with a record of the revision and files.
# The caption, embed_images and score jobs take the record as an input and load from the
# cache offline; toy stand-ins, local models and released captions need no record.


# The network is needed here only: on a cluster, run it where the network is
# (it is a local rule, so it runs on the node that runs Snakemake).
localrules:
    model_weights,


rule model_weights:
    output:
        record=MODEL_WEIGHTS,
    params:
        spec=weights_spec,
        cache_dir=weights_cache_of,
    log:
        "logs/model_weights/{role}/{model}.log",
    benchmark:
        "benchmarks/model_weights/{role}/{model}.tsv"
    threads: resource("model_weights", "threads")
    resources:
        mem_mb=resource("model_weights", "mem_mb"),
        runtime=resource("model_weights", "runtime"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/model_weights.py"
