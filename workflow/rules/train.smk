# CLIP training: one model per (pool, strategy) with open_clip_train at the pool's
# scale (config/train_scales.yaml: DataComp's recipe per scale, and what each scale
# asks of the cluster). Checkpoints stay in results/{pool}/models/{strategy}/run/,
# outside the outputs, so a killed job resumes from its latest checkpoint on re-run.


rule train:
    input:
        unpack(train_inputs),
    output:
        checkpoint="results/{pool}/models/{strategy}/final.pt",
        summary="results/{pool}/models/{strategy}/training.json",
    params:
        scale=lambda wildcards: train_scale_name(wildcards.pool),
        seed=config["seed"],
        work=lambda wildcards: f"results/{wildcards.pool}/models/{wildcards.strategy}",
    log:
        "logs/train/{pool}/{strategy}.log",
    benchmark:
        "benchmarks/train/{pool}/{strategy}.tsv"
    threads: lambda wildcards: train_resource(wildcards, "cpus_per_task")
    resources:
        mem_mb=lambda wildcards: train_resource(wildcards, "mem_mb"),
        runtime=lambda wildcards: train_resource(wildcards, "runtime"),
        nodes=lambda wildcards: train_resource(wildcards, "nodes"),
        gpu=lambda wildcards: train_resource(wildcards, "gpu"),
        gres=lambda wildcards: train_resource(wildcards, "gres"),
        mpi=lambda wildcards: train_resource(wildcards, "mpi"),
        tasks=lambda wildcards: train_resource(wildcards, "tasks"),
        tasks_per_node=lambda wildcards: train_resource(wildcards, "tasks_per_node"),
        cpus_per_task=lambda wildcards: train_resource(wildcards, "cpus_per_task"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/train.py"
