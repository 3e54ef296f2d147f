# CLIP training: one model per (pool, strategy) with open_clip_train at the pool's
# scale (config/train_scales.yaml: DataComp's recipe per scale, and what each scale
# asks of the cluster). Checkpoints stay in results/{pool}/models/{strategy}/run/,
# outside the outputs, so a killed job resumes from its latest checkpoint on re-run.


rule train:
    input:
        unpack(train_inputs),
    output:
        checkpoint=CHECKPOINT,
        summary=TRAINING,
    params:
        scale=train_scale,
        seed=config["seed"],
        work=MODEL_DIR,
    log:
        "logs/train/{pool}/{strategy}.log",
    benchmark:
        "benchmarks/train/{pool}/{strategy}.tsv"
    threads: resource("train", "threads")
    resources:
        mem_mb=resource("train", "mem_mb"),
        runtime=resource("train", "runtime"),
        nodes=resource("train", "nodes"),
        gpu=resource("train", "gpu"),
        gres=resource("train", "gres"),
        mpi=resource("train", "mpi"),
        tasks=resource("train", "tasks"),
        tasks_per_node=resource("train", "tasks_per_node"),
        cpus_per_task=resource("train", "cpus_per_task"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/train.py"
