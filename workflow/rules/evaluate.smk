# Evaluation: every trained model on its pool's suite (config/eval_suites.yaml):
# DataComp's 38 scored tasks on real pools, the toy suite on toy pools. Task data
# is fetched (real) or built from the toy world (toy) once, into one directory per
# task; evaluation reads only from there. Finished tasks are kept in
# results/{pool}/eval/{strategy}.progress.jsonl, so a re-run skips them.


# The network is needed here only: on a cluster, run it where the network is
# (it is a local rule, so it runs on the node that runs Snakemake).
localrules:
    eval_data,


rule eval_data:
    output:
        manifest="{eval_data_dir}/{data}/capmix_task.json",
    params:
        task=real_eval_task,
    log:
        "{eval_data_dir}/{data}/capmix_fetch.log",
    benchmark:
        "{eval_data_dir}/{data}/capmix_fetch.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=1440,
    conda:
        "../../envs/evaldata.yaml"
    script:
        "../scripts/eval_data.py"


rule toy_eval_data:
    input:
        manifest="results/toyworld/{world}/manifest.json",
    output:
        manifests=expand(
            "results/eval_data/toy/{{world}}/{data}/capmix_task.json", data=list(TOY_EVAL_TASKS)
        ),
    params:
        tasks=TOY_EVAL_TASKS,
        world_dir=lambda wildcards: f"results/toyworld/{wildcards.world}",
    log:
        "logs/toy_eval_data/{world}.log",
    benchmark:
        "benchmarks/toy_eval_data/{world}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/toy_eval_data.py"


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        results="results/{pool}/eval/{strategy}.jsonl",
        aggregate="results/{pool}/eval/{strategy}.aggregate.json",
    params:
        suite=lambda wildcards: POOLS[wildcards.pool]["eval"]["suite"],
        data_dir=lambda wildcards: eval_data_dir(wildcards.pool),
        progress="results/{pool}/eval/{strategy}.progress.jsonl",
        settings=config["eval"],
    log:
        "logs/evaluate/{pool}/{strategy}.log",
    benchmark:
        "benchmarks/evaluate/{pool}/{strategy}.tsv"
    threads: lambda wildcards: eval_resource(wildcards, "cpus_per_task") or 1
    resources:
        mem_mb=lambda wildcards: eval_resource(wildcards, "mem_mb"),
        runtime=lambda wildcards: eval_resource(wildcards, "runtime"),
        gpu=lambda wildcards: eval_resource(wildcards, "gpu"),
        cpus_per_task=lambda wildcards: eval_resource(wildcards, "cpus_per_task"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/evaluate.py"
