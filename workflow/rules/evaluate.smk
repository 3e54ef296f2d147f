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
        manifest=EVAL_TASK,
    params:
        task=real_eval_task,
    log:
        "{eval_data_dir}/{data}/capmix_fetch.log",
    benchmark:
        "{eval_data_dir}/{data}/capmix_fetch.benchmark.tsv"
    threads: resource("eval_data", "threads")
    resources:
        mem_mb=resource("eval_data", "mem_mb"),
        runtime=resource("eval_data", "runtime"),
    conda:
        "../../envs/evaldata.yaml"
    script:
        "../scripts/eval_data.py"


rule toy_eval_data:
    input:
        manifest=TOY_WORLD_MANIFEST,
    output:
        manifests=expand(EVAL_TASK, eval_data_dir=TOY_EVAL_DATA_DIR, data=list(TOY_EVAL_TASKS)),
    params:
        tasks=TOY_EVAL_TASKS,
        world_dir=input_manifest_dir,
    log:
        "logs/toy_eval_data/{world}.log",
    benchmark:
        "benchmarks/toy_eval_data/{world}.tsv"
    threads: resource("toy_eval_data", "threads")
    resources:
        mem_mb=resource("toy_eval_data", "mem_mb"),
        runtime=resource("toy_eval_data", "runtime"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/toy_eval_data.py"


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        results=EVAL_RESULTS,
        aggregate=EVAL_AGGREGATE,
    params:
        suite=pool_setting("eval", "suite"),
        data_dir=suite_data_dir,
        progress="results/{pool}/eval/{strategy}.progress.jsonl",
        settings=config["eval"],
    log:
        "logs/evaluate/{pool}/{strategy}.log",
    benchmark:
        "benchmarks/evaluate/{pool}/{strategy}.tsv"
    threads: resource("evaluate", "threads")
    resources:
        mem_mb=resource("evaluate", "mem_mb"),
        runtime=resource("evaluate", "runtime"),
        gpu=resource("evaluate", "gpu"),
        cpus_per_task=resource("evaluate", "cpus_per_task"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/evaluate.py"
