# Start-up: validate the config against the schema (defaults filled in), check
# cross-references, and helpers that turn config data into file paths.
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(workflow.basedir)
# Jobs (local, conda or SLURM) import the package from this checkout.
sys.path.insert(0, str(REPO / "src"))

from capmix.captionsets import pool_caption_sets  # noqa: E402
from capmix.config import check_references, explain_errors, load_schema  # noqa: E402
from capmix.suites import (  # noqa: E402
    TASK_MANIFEST,
    load_suite,
    real_eval_data_dirs,
    toy_eval_tasks,
)
from capmix.findings import finding_inputs, plan_findings  # noqa: E402
from capmix.strategies import (  # noqa: E402
    expand_strategies,
    pool_needs_clusters,
    pool_sources,
    pool_strategy_names,
)
from capmix.scales import load_scale, pool_train_strategies  # noqa: E402
from capmix.sources import allows_local_urls, needs_download  # noqa: E402
from capmix.toykinds import FINETUNED_FROM, TOY_MODEL_KINDS  # noqa: E402
from capmix.toymodels import CONFIG_NAME  # noqa: E402
from capmix.toyspec import SPLITS  # noqa: E402
from capmix.workflow import export_package_path  # noqa: E402

export_package_path(REPO / "src")

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
try:
    validate(config, SCHEMA)
except WorkflowError as error:
    details = "\n  ".join(explain_errors(config, load_schema(SCHEMA)))
    raise WorkflowError(f"invalid configuration:\n  {details}") from error
_reference_problems = check_references(config)
if _reference_problems:
    raise WorkflowError("invalid configuration:\n  " + "\n  ".join(_reference_problems))

POOLS = {pool["name"]: pool for pool in config["pools"]}
# Captioner and scorer names as the schema allows them (one pattern for both places).
MODEL_NAME = load_schema(SCHEMA)["$defs"]["model_name"]["pattern"].strip("^$")
TOY_WORLDS = config["toy_worlds"]
STRATEGIES = expand_strategies(config["strategies"])
# Where real suites fetch their task data to (config eval_suites.<suite>.data_dir).
REAL_EVAL_DATA_DIRS = real_eval_data_dirs(config)
# Every toy-suite task: data directory -> (suite, task); one job builds them all per world.
TOY_EVAL_TASKS = toy_eval_tasks(config)


wildcard_constraints:
    pool="|".join(POOLS) or "no_pool",
    world="[a-z][a-z0-9_]*",
    captioner=MODEL_NAME,
    scorer=MODEL_NAME,
    temperature="[0-9]+[.][0-9]+",
    chunk="chunk[0-9]+of[0-9]+",
    caption_set=f"raw|{MODEL_NAME}/[0-9]+[.][0-9]+",
    strategy="|".join(STRATEGIES) or "no_strategy",
    data="[A-Za-z0-9][A-Za-z0-9_.-]*",
    eval_data_dir="|".join(map(re.escape, REAL_EVAL_DATA_DIRS)) or "no_eval_data_dir",


def pool_source(wildcards):
    return POOLS[wildcards.pool]["source"]


def metadata_required_columns(wildcards):
    """Columns later stages read, by config key: checked by the metadata stage."""
    index = list(POOLS).index(wildcards.pool)
    column = POOLS[wildcards.pool].get("references_column")
    return {f"pools[{index}].references_column": column} if column else {}


def metadata_input(wildcards):
    """What the metadata stage reads: a toy split, a local file/dir, or a download record."""
    source = pool_source(wildcards)
    if source["type"] == "toy":
        return f"results/toyworld/{source['world']}/{source['split']}.parquet"
    if needs_download(source):
        return f"results/{wildcards.pool}/metadata_raw/download.json"
    if source["type"] == "datacomp":
        return source["local_dir"]
    return source["path"]


def res(stage, key):
    """A stage's resource setting (config `resources`, defaults from the schema)."""
    return config["resources"][stage][key]


def chunk_names(stage):
    jobs = config[stage]["jobs"]
    return [f"chunk{i}of{jobs}" for i in range(jobs)]


def toy_model_dir(world, kind):
    return f"results/toymodels/{world}/{kind}"


def toy_model_config(world, kind):
    """The file that marks a trained stand-in (its local-dir config, written last)."""
    return f"{toy_model_dir(world, kind)}/{CONFIG_NAME}"


def model_input(pool, spec):
    """The toy stand-in a captioner/scorer needs (trained by the pipeline), else nothing."""
    if spec.get("toy_model"):
        world = POOLS[pool]["source"]["world"]
        return toy_model_config(world, spec["toy_model"])
    return []


def resolved_spec(spec, model_config):
    """A captioner/scorer spec with a toy stand-in's model dir filled in (local-dir:)."""
    spec = dict(spec)
    if spec.get("toy_model"):
        spec["model"] = f"local-dir:{Path(str(model_config)).parent.resolve()}"
    return spec


def toy_model_inputs(wildcards):
    world = f"results/toyworld/{wildcards.world}"
    inputs = {"pretrain": f"{world}/pretrain.parquet", "coco": f"{world}/coco.parquet"}
    base = FINETUNED_FROM.get(wildcards.kind)
    if base:  # a fine-tune starts from its base model's weights
        inputs["base"] = toy_model_config(wildcards.world, base)
    vision = config["toy_models"][wildcards.kind].get("vision_from")
    if vision:  # the model whose image tower starts this one's
        inputs["vision"] = toy_model_config(wildcards.world, vision)
    return inputs


def pool_scorer_spec(wildcards, input):
    return resolved_spec(config["scorers"][wildcards.scorer], input.model)


def caption_sets(pool):
    """'raw' plus one set per (captioner, temperature) of the pool."""
    return pool_caption_sets(config["captioners"], POOLS[pool])


def caption_manifests(pool, caption_set):
    if caption_set == "raw":
        return [f"results/{pool}/captions/raw/manifest.json"]
    return [f"results/{pool}/captions/{caption_set}/{chunk}.json" for chunk in chunk_names("caption")]


def embedding_manifests(pool, scorer):
    return [f"results/{pool}/scores/{scorer}/images/{chunk}.json" for chunk in chunk_names("score")]


def mix_sources(pool):
    """Concrete caption source -> the caption sets it reads, for the pool's strategies."""
    return pool_sources(config, POOLS[pool])


def mix_caption_sets(pool):
    return sorted({s for sets in mix_sources(pool).values() for s in sets})


def mix_table_inputs(wildcards):
    pool = wildcards.pool
    scorer = POOLS[pool]["scorer"]
    inputs = {
        "index": f"results/{pool}/fetch/index.parquet",
        "scores": [f"results/{pool}/scores/{scorer}/{s}.parquet" for s in mix_caption_sets(pool)],
        "captions": [m for s in mix_caption_sets(pool) for m in caption_manifests(pool, s)],
    }
    if pool_needs_clusters(config, POOLS[pool]):
        inputs["clusters"] = f"results/{pool}/mix/image_clusters.parquet"
    return inputs


def mix_score_paths(wildcards):
    scorer = POOLS[wildcards.pool]["scorer"]
    return {s: f"results/{wildcards.pool}/scores/{scorer}/{s}.parquet"
            for s in mix_caption_sets(wildcards.pool)}


def mix_caption_manifests(wildcards):
    return {s: caption_manifests(wildcards.pool, s) for s in mix_caption_sets(wildcards.pool)}


def image_cluster_spec(pool):
    return POOLS[pool]["mix"]["image_clusters"] or {}


def listed(value):
    """A config value that may be one path or a list of paths, as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def image_cluster_inputs(wildcards):
    spec = image_cluster_spec(wildcards.pool)
    scorer = POOLS[wildcards.pool]["scorer"]
    reference = spec.get("reference_pool")
    return {
        "images": embedding_manifests(wildcards.pool, scorer),
        "reference_images": embedding_manifests(reference, scorer) if reference else [],
        "reference_files": listed(spec.get("reference_embeddings")),
        "centroids": listed(spec.get("centroids")),
    }


def strategy_spec(wildcards):
    return STRATEGIES[wildcards.strategy]


def pool_aliases(wildcards):
    return POOLS[wildcards.pool]["mix"]["sources"]


def pool_targets(pool, target):
    if target == "findings":
        # Only pools that opt in (pools[].findings) check the paper's findings.
        return [f"results/{pool}/findings.json"] if POOLS[pool]["findings"] else []
    if target == "metadata":
        return [f"results/{pool}/metadata"]
    if target == "fetch":
        return [f"results/{pool}/fetch/report.json"]
    if target == "captions":
        return [m for s in caption_sets(pool) for m in caption_manifests(pool, s)]
    scorer = POOLS[pool]["scorer"]
    if target == "scores":
        return [f"results/{pool}/scores/{scorer}/{s}.parquet" for s in caption_sets(pool)]
    if target == "quality":
        return [f"results/{pool}/quality/{scorer}/{s}.json" for s in caption_sets(pool)]
    strategies = pool_strategy_names(config, POOLS[pool])
    if target == "subsets":
        return [f"results/{pool}/subsets/{s}/summary.json" for s in strategies]
    if target == "train_shards":
        return [f"results/{pool}/train_shards/{s}/manifest.json" for s in strategies]
    if target == "models":
        if not POOLS[pool]["train"]:
            return []  # a pool without a training scale trains nothing
        return [f"results/{pool}/models/{s}/training.json"
                for s in pool_train_strategies(config, POOLS[pool])]
    if target == "eval":
        if not (POOLS[pool]["train"] and POOLS[pool]["eval"]):
            return []  # nothing trained, or no suite: nothing to evaluate
        return [f"results/{pool}/eval/{s}.aggregate.json"
                for s in pool_train_strategies(config, POOLS[pool])]
    raise ValueError(target)


def train_scale_name(pool):
    train = POOLS[pool]["train"]
    if not train:
        raise WorkflowError(f"pool '{pool}' has no train.scale, so it trains no models")
    return train["scale"]


def train_resource(wildcards, key):
    """One resource of a training job, from the pool's scale (capmix.scales.Scale)."""
    return load_scale(config, train_scale_name(wildcards.pool)).slurm_resources()[key]


def train_inputs(wildcards):
    pool = wildcards.pool
    inputs = {"manifest": f"results/{pool}/train_shards/{wildcards.strategy}/manifest.json"}
    kind = config["train_scales"][train_scale_name(pool)].get("toy_model")
    if kind:
        world = POOLS[pool]["source"]["world"]
        inputs["toy_model"] = toy_model_config(world, kind)
    return inputs


def pool_suite(pool):
    """The evaluation suite of a pool (capmix.suites.Suite)."""
    evaluation = POOLS[pool]["eval"]
    if not evaluation:
        raise WorkflowError(f"pool '{pool}' has no eval.suite, so it evaluates no models")
    return load_suite(config, evaluation["suite"])


def eval_data_dir(pool):
    """Task data of the pool's suite: the toy suite is built per toy world."""
    suite = pool_suite(pool)
    if suite.toy:
        return f"results/eval_data/toy/{POOLS[pool]['source']['world']}"
    return suite.data_dir


def eval_inputs(wildcards):
    pool, strategy = wildcards.pool, wildcards.strategy
    data_dir = eval_data_dir(pool)
    return {
        "checkpoint": f"results/{pool}/models/{strategy}/final.pt",
        "training": f"results/{pool}/models/{strategy}/training.json",
        "tasks": [f"{data_dir}/{t.data}/{TASK_MANIFEST}" for t in pool_suite(pool).tasks],
    }


def eval_resource(wildcards, key):
    """One resource of an evaluation job, from the suite's `resources` (unset if absent)."""
    return (config["eval_suites"][POOLS[wildcards.pool]["eval"]["suite"]].get("resources")
            or {}).get(key)


def real_eval_task(wildcards):
    """The real-suite task fetched to `{eval_data_dir}/{data}`, and its suite."""
    for name, spec in config["eval_suites"].items():
        if spec.get("toy"):
            continue
        suite = load_suite(config, name)
        if suite.data_dir == wildcards.eval_data_dir:
            for task in suite.tasks:
                if task.data == wildcards.data:
                    return {"suite": name, "task": task.name}
    raise WorkflowError(f"no task of a suite with data_dir '{wildcards.eval_data_dir}' has "
                        f"the data directory '{wildcards.data}'")


def findings_plan(wildcards):
    """Every finding resolved for the pool: files and fields, or why it is not measured."""
    return plan_findings(config, wildcards.pool)


def findings_inputs(wildcards):
    """The quality and evaluation JSONs the pool's measurable findings compare."""
    return finding_inputs(config, wildcards.pool)


def all_targets():
    return [f for pool in POOLS for t in (POOLS[pool]["targets"] or config["targets"])
            for f in pool_targets(pool, t)]
