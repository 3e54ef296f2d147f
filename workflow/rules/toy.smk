# The toy world and its stand-in models, all produced by the pipeline itself:
# the world is drawn from the seed; the captioner (stand-in for BLIP2), its
# COCO-fine-tuned variant and the CLIP scorer (stand-in for ViT-L/14) are
# trained with open_clip_train on the world's clean splits, never on the pool.


rule toy_world:
    output:
        parquets=expand(TOY_WORLD_SPLIT, split=SPLITS, allow_missing=True),
        manifest=TOY_WORLD_MANIFEST,
    params:
        spec=toy_world_spec,
        seed=config["seed"],
    log:
        "logs/toy_world/{world}.log",
    benchmark:
        "benchmarks/toy_world/{world}.tsv"
    threads: resource("toy_world", "threads")
    resources:
        mem_mb=resource("toy_world", "mem_mb"),
        runtime=resource("toy_world", "runtime"),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/toy_world.py"


rule toy_model:
    input:
        unpack(toy_model_inputs),
    output:
        config=TOY_MODEL_CONFIG,
        summary="results/toymodels/{world}/{kind}/training.json",
    wildcard_constraints:
        kind="|".join(TOY_MODEL_KINDS),
    params:
        settings=toy_model_settings,
        seed=config["seed"],
        work="results/toymodels/{world}/_work/{kind}",
    log:
        "logs/toy_model/{world}/{kind}.log",
    benchmark:
        "benchmarks/toy_model/{world}/{kind}.tsv"
    threads: resource("toy_model", "threads")
    # The stand-ins gate every caption and score of the toy pools: first when a core frees.
    priority: 10
    resources:
        mem_mb=resource("toy_model", "mem_mb"),
        runtime=resource("toy_model", "runtime"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/toy_model.py"
