# Start-up: validate the config against the schema (defaults filled in), check
# cross-references; then what the rules are wired with: the paths several rules or helpers
# name (one pattern each), what each job asks for (`resource`), and helpers that take a
# job's `wildcards` and turn config data into its inputs and params.
import os
import re
import sys
from functools import cache, partial
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(workflow.basedir)
# Jobs (local, conda or SLURM) import the package from this checkout.
sys.path.insert(0, str(REPO / "src"))

from capmix.analysisplan import ANALYSES, coco_task, plan_analyses, plan_inputs  # noqa: E402
from capmix.assetspec import asset_files, assets, assets_dir, resolve_file  # noqa: E402
from capmix.captionsets import RAW, pool_caption_sets  # noqa: E402
from capmix.chunks import (  # noqa: E402
    CHUNK_PATTERN,
    TABLE_PART_PATTERN,
    chunk_names,
    contiguous_run,
    parse_chunk,
    table_part_names,
)
from capmix.config import (  # noqa: E402
    check_references,
    explain_errors,
    load_schema,
    pool_config_files,
)
from capmix.cost import cost_table, dry_run_requested  # noqa: E402
from capmix.suites import (  # noqa: E402
    TASK_MANIFEST,
    load_suite,
    real_eval_data_dirs,
    toy_eval_tasks,
)
from capmix.findings import finding_inputs, plan_findings  # noqa: E402
from capmix.figurespec import (  # noqa: E402
    FILES_DIR,
    INDEX,
    POOLS_FIGURE_8,
    category_heading,
    figure_8_pools,
    figure_entries,
    missing_pool_files,
    plan_figures,
    read_captions,
)
from capmix.figurespec import plan_inputs as figure_plan_inputs  # noqa: E402
from capmix.metadatafilter import COLUMN_PATTERN as METADATA_COLUMN_PATTERN  # noqa: E402
from capmix.strategies import (  # noqa: E402
    expand_strategies,
    no_filter_strategies,
    pool_filters_captions,
    pool_needs_clusters,
    pool_sources,
    pool_strategy_names,
)
from capmix.scales import load_scale, pool_train_strategies  # noqa: E402
from capmix.shipped import BACKEND as SHIPPED_BACKEND  # noqa: E402
from capmix.shipped import required_columns as shipped_required_columns  # noqa: E402
from capmix.sourcespec import allows_local_urls, local_file_roots, needs_download  # noqa: E402
from capmix.toykinds import FINETUNED_FROM, TOY_MODEL_KINDS  # noqa: E402
from capmix.toymodels import CONFIG_NAME  # noqa: E402
from capmix.toyspec import SPLITS  # noqa: E402
from capmix.weights import (  # noqa: E402
    CACHE_KEY,
    WEIGHT_ROLES,
    weights_cache_dir,
    weights_source,
)
from capmix.workflow import export_package_path, report_requested  # noqa: E402

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
# A dry run says what the config will cost on GPUs before anything is submitted (`onstart`
# does not run on dry runs; a job's own Snakemake is not the main process). To stderr, beside
# Snakemake's log.
if workflow.is_main_process and dry_run_requested(sys.argv):
    print(cost_table(config, Path("results"), "this dry run"), file=sys.stderr)

# `snakemake --report`: the landing page (workflow/report/workflow.rst) shows the code version
# the report was made from (git commit, dirty or not); no job reads this key.
if workflow.is_main_process and report_requested(sys.argv):
    from capmix.provenance import code_version

    config["report_code_version"] = code_version()

# ---- Allowed values: from the schema and capmix, never restated here ---------------------
SCHEMA_DEFS = load_schema(SCHEMA)["$defs"]
POOLS = {pool["name"]: pool for pool in config["pools"]}
# Captioner and scorer names as the schema allows them (one pattern for both places).
MODEL_NAME = SCHEMA_DEFS["model_name"]["pattern"].strip("^$")
# What `targets` and `pools[].targets` may name (TARGET_FILES says what each builds).
TARGETS = SCHEMA_DEFS["target"]["enum"]
TOY_WORLDS = config["toy_worlds"]
STRATEGIES = expand_strategies(config["strategies"])
# Where real suites fetch their task data to (config eval_suites.<suite>.data_dir).
REAL_EVAL_DATA_DIRS = real_eval_data_dirs(config)
# Every toy-suite task: data directory -> (suite, task); one job builds them all per world.
TOY_EVAL_TASKS = toy_eval_tasks(config)
# Published files the DAG fetches (config `assets`): file name -> asset name.
ASSET_FILES = asset_files(config)


wildcard_constraints:
    pool="|".join(POOLS) or "no_pool",
    world="[a-z][a-z0-9_]*",
    captioner=MODEL_NAME,
    scorer=MODEL_NAME,
    temperature="[0-9]+[.][0-9]+",
    chunk=CHUNK_PATTERN,
    table_part=TABLE_PART_PATTERN,
    caption_set=f"raw|{MODEL_NAME}/[0-9]+[.][0-9]+",
    strategy="|".join(STRATEGIES) or "no_strategy",
    data="[A-Za-z0-9][A-Za-z0-9_.-]*",
    column=METADATA_COLUMN_PATTERN,
    eval_data_dir="|".join(map(re.escape, REAL_EVAL_DATA_DIRS)) or "no_eval_data_dir",
    asset_file="|".join(map(re.escape, ASSET_FILES)) or "no_asset_file",
    role="|".join(WEIGHT_ROLES),
    model=MODEL_NAME,


# ---- Paths that more than one rule or helper names -------------------------------------
# One pattern each: rules use them as they are (Snakemake fills in the wildcards, in params
# too), helpers with .format(). Paths only one rule names stay in that rule.
TOY_WORLD_DIR = "results/toyworld/{world}"
TOY_WORLD_SPLIT = f"{TOY_WORLD_DIR}/{{split}}.parquet"
TOY_WORLD_MANIFEST = f"{TOY_WORLD_DIR}/manifest.json"
TOY_MODEL_CONFIG = f"results/toymodels/{{world}}/{{kind}}/{CONFIG_NAME}"
DOWNLOAD_RECORD = "results/{pool}/metadata_raw/download.json"
METADATA = "results/{pool}/metadata"
FETCH_INDEX = "results/{pool}/fetch/index.parquet"
# shard, fetched rows, metadata parts, in the index's (shard) order: fetch_merge writes it
# beside the index (capmix.shards.SHARD_TABLE_NAME); per-shard jobs cut their chunk from it
FETCH_SHARD_TABLE = "results/{pool}/fetch/shards.parquet"
FETCH_REPORT = "results/{pool}/fetch/report.json"
FETCH_CHUNK_INDEX = "results/{pool}/fetch/{chunk}/index.parquet"
FETCH_CHUNK_REPORT = "results/{pool}/fetch/{chunk}/report.json"
# A pool fetched by several jobs: their indexes and reports, listed by one small job
# (fetch_gather) so that fetch_merge, whose outputs thousands of jobs read, has one input.
FETCH_CHUNK_LIST = "results/{pool}/fetch/chunks.json"
SHARDS = "results/{pool}/shards"  # img2dataset's rounds; read by every stage that decodes
FETCH_CHUNK_SHARDS = f"{SHARDS}/{{chunk}}"  # one fetch job's rounds
RAW_CAPTIONS = "results/{pool}/captions/raw/manifest.json"
CAPTION_CHUNK = "results/{pool}/captions/{captioner}/{temperature}/{chunk}.json"
# A synthetic caption set's one manifest (rule caption_merge), in RAW_CAPTIONS' format.
CAPTION_SET = "results/{pool}/captions/{captioner}/{temperature}/manifest.json"
IMAGE_EMBEDDINGS = "results/{pool}/scores/{scorer}/images/{chunk}.json"
# One score job's table: a caption set on the shards of one embed_images chunk.
SCORE_CHUNK = "results/{pool}/scores/{scorer}/{caption_set}/{chunk}.parquet"
SCORES = "results/{pool}/scores/{scorer}/{caption_set}.parquet"
QUALITY = "results/{pool}/quality/{scorer}/{caption_set}.json"
IMAGE_CLUSTERS = "results/{pool}/mix/image_clusters.parquet"
# image_clusters' map: the centroids and target clusters (npz) and how they were made (json);
# each job's assignments (pools[].jobs.image_clusters).
IMAGE_CLUSTER_CENTROIDS = "results/{pool}/mix/image_clusters/centroids.npz"
IMAGE_CLUSTER_CENTROIDS_RECORD = "results/{pool}/mix/image_clusters/centroids.json"
IMAGE_CLUSTERS_PART = "results/{pool}/mix/image_clusters/{chunk}.parquet"
CAPTION_LANGUAGE = "results/{pool}/mix/caption_language.parquet"
CAPTION_LANGUAGE_SUMMARY = "results/{pool}/mix/caption_language.json"
# caption_language's map: each job's measurements and counts (pools[].jobs.caption_language).
CAPTION_LANGUAGE_PART = "results/{pool}/mix/caption_language/{chunk}.parquet"
CAPTION_LANGUAGE_PART_COUNTS = "results/{pool}/mix/caption_language/{chunk}.json"
MIX_TABLE = "results/{pool}/mix/table.json"  # the manifest of its parts
MIX_TABLE_PART = "results/{pool}/mix/table/{table_part}.parquet"
MIX_SCATTER = "results/{pool}/mix/scatter"
# one kept source column a strategy filters on (metadata_filter), in the table's uid ranges
MIX_METADATA_COLUMN = "results/{pool}/mix/metadata/{column}"
SUBSET_SAMPLES = "results/{pool}/subsets/{strategy}/samples.parquet"
SUBSET_SUMMARY = "results/{pool}/subsets/{strategy}/summary.json"
TRAIN_SHARDS_DIR = "results/{pool}/train_shards/{strategy}"
TRAIN_SHARDS = f"{TRAIN_SHARDS_DIR}/manifest.json"
TRAIN_SHARDS_OUT = f"{TRAIN_SHARDS_DIR}/shards"  # the tars, sizes.json, plans/
# A strategy resharded in parts (pools[].jobs.train_shards > 1): its samples split by runs
# of pool shards, and each train_shards_part job's report.
TRAIN_SHARDS_SCATTER = f"{TRAIN_SHARDS_DIR}/scatter"
TRAIN_SHARDS_PART = f"{TRAIN_SHARDS_DIR}/jobs/{{chunk}}.json"
MODEL_DIR = "results/{pool}/models/{strategy}"  # checkpoints of a run in progress live here
CHECKPOINT = f"{MODEL_DIR}/final.pt"
TRAINING = f"{MODEL_DIR}/training.json"
EVAL_RESULTS = "results/{pool}/eval/{strategy}.jsonl"
EVAL_AGGREGATE = "results/{pool}/eval/{strategy}.aggregate.json"
TOY_EVAL_DATA_DIR = "results/eval_data/toy/{world}"
EVAL_TASK = f"{{eval_data_dir}}/{{data}}/{TASK_MANIFEST}"  # a task's directory and manifest
FINDINGS = "results/{pool}/findings.json"
ANALYSIS = "results/{pool}/analyses/{analysis}.json"  # one per capmix.analysisplan.ANALYSES
FIGURE_INDEX = INDEX  # every figure/table of config/figures.yaml: drawn, or why not
FIGURE_FILES = FILES_DIR  # the drawn figures (PNG, PDF) and tables (CSV, MD, TeX)
ASSET = f"{assets_dir(config)}/{{asset_file}}"  # a published file (config `assets`)
# The shared weights cache (config `model_weights`) and rule model_weights' record of one
# captioner's/scorer's weights in it (`role`: captioners or scorers, `model`: its name).
WEIGHTS_DIR = weights_cache_dir(config)
MODEL_WEIGHTS = f"{WEIGHTS_DIR}/capmix/{{role}}/{{model}}.json"


# ---- Resources: every rule's threads and resources come from here --------------------
# Training and evaluation ask for what the pool's scale and suite say; the other stages for
# config `resources.<stage>` (one entry per rule; defaults in the schema).
PER_POOL_RESOURCES = ("train", "evaluate")
# What a suite's `resources` may set; unset ones are None (Snakemake leaves them out).
SUITE_RESOURCES = list(SCHEMA_DEFS["eval_suite"]["properties"]["resources"]["properties"])
# Keys of config `resources.<stage>` -> the Snakemake resource they set, where they differ.
RESOURCE_NAMES = {"gpus": "gpu"}  # SLURM's --gpus
# A caption job of a shipped caption set (captioner backend `shipped`, capmix.shipped) joins a
# metadata column: no model, so it asks for config `resources.caption_shipped` (no GPU by
# default), not the model jobs' `resources.caption`.
SHIPPED_CAPTION_RESOURCES = "caption_shipped"


def shipped_caption_job(stage, wildcards):
    """Whether a job of `stage` writes a shipped caption set (see SHIPPED_CAPTION_RESOURCES)."""
    return (stage == "caption" and wildcards is not None
            and config["captioners"][wildcards.captioner]["backend"] == SHIPPED_BACKEND)


def shipped_captions_in_use():
    """Whether any pool captions with a shipped captioner (only then does a caption job's
    request depend on the job)."""
    return any(config["captioners"].get(name, {}).get("backend") == SHIPPED_BACKEND
               for pool in POOLS.values() for name in pool.get("captioners") or [])


def stage_resources(stage, wildcards):
    """Every resource one job of `stage` asks for, by Snakemake name, threads included."""
    if stage == "train":  # capmix.train.Scale: nodes, GPUs, CPUs and memory per process
        requested = load_scale(config, train_scale_name(wildcards.pool)).slurm_resources()
        return {"threads": requested["cpus_per_task"], **requested}
    if stage == "evaluate":
        suite = config["eval_suites"][POOLS[wildcards.pool]["eval"]["suite"]]
        requested = {key: (suite.get("resources") or {}).get(key) for key in SUITE_RESOURCES}
        return {"threads": requested["cpus_per_task"] or 1, **requested}
    settings = config["resources"][SHIPPED_CAPTION_RESOURCES if shipped_caption_job(
        stage, wildcards) else stage]
    return {RESOURCE_NAMES.get(key, key): value for key, value in settings.items()}


def resource(stage, key):
    """One resource of `stage`'s jobs (threads: key "threads"); see stage_resources. A stage
    whose request is one per config (all but PER_POOL_RESOURCES) gets the value itself:
    Snakemake calls a function once per job and resource, which cost the DAG of xlarge's
    45,863 jobs more than a minute; train and evaluate get a function of the job's pool, and
    caption one of the job's captioner where a pool uses a shipped caption set."""
    if stage not in PER_POOL_RESOURCES and stage not in config["resources"]:
        raise WorkflowError(f"stage '{stage}' has no entry in config `resources`")
    if stage not in PER_POOL_RESOURCES:
        entries = [stage] + ([SHIPPED_CAPTION_RESOURCES]
                             if stage == "caption" and shipped_captions_in_use() else [])
        for entry in entries:
            if key not in {RESOURCE_NAMES.get(k, k) for k in config["resources"][entry]}:
                named = {v: k for k, v in RESOURCE_NAMES.items()}.get(key, key)
                sets = ", ".join(sorted(config["resources"][entry])) or "nothing"
                raise WorkflowError(f"config `resources.{entry}` sets no `{named}` (it sets "
                                    f"{sets})")
        if len(entries) == 1:
            return stage_resources(stage, None)[key]

    def job_resource(wildcards):
        return stage_resources(stage, wildcards)[key]

    job_resource.__name__ = f"resource_{stage}_{key}"
    return job_resource


# ---- Pools and sources -----------------------------------------------------------------
def pool_setting(*keys):
    """A function of a job's wildcards giving `POOLS[pool][key][subkey]...`."""

    def setting(wildcards):
        value = POOLS[wildcards.pool]
        for key in keys:
            value = value[key]
        return value

    setting.__name__ = "pool_" + "_".join(keys)
    return setting


def pool_source(wildcards):
    return POOLS[wildcards.pool]["source"]


def local_urls_allowed(wildcards):
    return allows_local_urls(pool_source(wildcards))


def fetch_settings(wildcards):
    """The pool's fetch settings, with the folders its file:// URLs may read without
    allow_local_urls (a CaptionNet imagenet_dir) as `local_file_roots` where it has any. Only
    there: Snakemake compares a job's parameter values, so a key every pool carried would
    re-run every finished fetch once."""
    settings = dict(POOLS[wildcards.pool]["fetch"])
    roots = list(local_file_roots(pool_source(wildcards)))
    if roots:
        settings["local_file_roots"] = roots
    return settings


def metadata_required_columns(wildcards):
    """Columns later stages read, by config key: checked by the metadata stage."""
    index = list(POOLS).index(wildcards.pool)
    column = POOLS[wildcards.pool].get("references_column")
    required = {f"pools[{index}].references_column": column} if column else {}
    # the columns the pool's shipped captioners read (capmix.shipped)
    required.update(shipped_required_columns(index, POOLS[wildcards.pool],
                                             config.get("captioners") or {}))
    return required


def metadata_input(wildcards):
    """What the metadata stage reads: a toy split, a local file/dir, or a download record
    (first), then a table's subset list (source.subset.path), if any."""
    source = pool_source(wildcards)
    if source["type"] == "toy":
        return TOY_WORLD_SPLIT.format(world=source["world"], split=source["split"])
    # a table's `subset` is a list of keys to keep (YFCC-15M); CaptionNet's names its subset
    subset = ([source["subset"]["path"]]
              if source["type"] == "table" and source.get("subset") else [])
    if needs_download(source):
        return [DOWNLOAD_RECORD.format(pool=wildcards.pool), *subset]
    if source["type"] == "datacomp":
        return source["local_dir"]
    return [source["path"], *subset]  # a table, or CaptionNet's spreadsheet


# ---- Toy world and stand-in models -----------------------------------------------------
def input_manifest_dir(wildcards, input):
    """The folder of the job's `manifest` input (a toy world's, for its task data)."""
    return str(Path(input.manifest).parent)


def toy_world_spec(wildcards):
    return TOY_WORLDS[wildcards.world]


def toy_model_config(world, kind):
    """The file that marks a trained stand-in (its local-dir config, written last)."""
    return TOY_MODEL_CONFIG.format(world=world, kind=kind)


def toy_model_settings(wildcards):
    return config["toy_models"][wildcards.kind]


def toy_model_inputs(wildcards):
    world = wildcards.world
    inputs = {"pretrain": TOY_WORLD_SPLIT.format(world=world, split="pretrain"),
              "coco": TOY_WORLD_SPLIT.format(world=world, split="coco")}
    base = FINETUNED_FROM.get(wildcards.kind)
    if base:  # a fine-tune starts from its base model's weights
        inputs["base"] = toy_model_config(world, base)
    vision = config["toy_models"][wildcards.kind].get("vision_from")
    if vision:  # the model whose image tower starts this one's
        inputs["vision"] = toy_model_config(world, vision)
    return inputs


def model_input(pool, role, name):
    """What captioner/scorer `name` (config `role`) loads: the toy stand-in (trained by the
    pipeline), the record of its weights fetched into the cache (rule model_weights), or
    nothing (a local model, released captions)."""
    return model_file(pool, role, name) or []


@cache
def model_file(pool, role, name):
    """model_input's file, None for nothing; once per (pool, model): every chunk job asks."""
    spec = config[role][name]
    if spec.get("toy_model"):
        return toy_model_config(POOLS[pool]["source"]["world"], spec["toy_model"])
    if weights_source(spec) is not None:
        return MODEL_WEIGHTS.format(role=role, model=name)
    return None


@cache
def resolved_spec(role, name, model_config):
    """Captioner/scorer `name`'s spec (config `role`) as its job loads it: a toy stand-in's
    model dir filled in (local-dir:, from its `model_config` file), or, for weights from the
    Hub, the cache to load them from offline. Once per model (paths resolved on disk); the
    jobs share the dict, which nothing changes."""
    spec = dict(config[role][name])
    if spec.get("toy_model"):
        spec["model"] = f"local-dir:{Path(str(model_config)).parent.resolve()}"
    elif weights_source(spec) is not None:
        spec[CACHE_KEY] = str(Path(WEIGHTS_DIR).resolve())
    return spec


def weights_spec(wildcards):
    """The config entry whose weights rule model_weights fetches."""
    return config[wildcards.role][wildcards.model]


def weights_cache_of(wildcards, output):
    """The cache folder a model_weights record lies in (MODEL_WEIGHTS' folder, two up)."""
    return str(Path(output.record).parents[2])


# ---- Captions and scores ---------------------------------------------------------------
def captioner_model(wildcards):
    return model_input(wildcards.pool, "captioners", wildcards.captioner)


def captioner_metadata(wildcards):
    """A shipped captioner reads its captions from the pool's metadata; others need none."""
    if config["captioners"][wildcards.captioner]["backend"] == SHIPPED_BACKEND:
        return METADATA.format(pool=wildcards.pool)
    return []


def captioner_spec(wildcards, input):
    return resolved_spec("captioners", wildcards.captioner, str(input.model))


def scorer_model(wildcards):
    return model_input(wildcards.pool, "scorers", wildcards.scorer)


def scorer_spec(wildcards, input):
    return resolved_spec("scorers", wildcards.scorer, str(input.model))


def caption_sets(pool):
    """'raw' plus one set per (captioner, temperature) of the pool."""
    return pool_caption_sets(config["captioners"], POOLS[pool])


def pool_jobs(pool, stage):
    """Jobs per pass of `stage` (fetch, caption, score, image_clusters, caption_language,
    train_shards) over the pool: `pools[].jobs`, else config (caption, score) or one job."""
    default = config[stage]["jobs"] if stage in ("caption", "score") else 1
    return POOLS[pool]["jobs"].get(stage, default)


def fetch_chunks(wildcards):
    """The pool's fetch jobs, in metadata order."""
    return chunk_names(pool_jobs(wildcards.pool, "fetch"))


def fetch_chunk_indexes(wildcards):
    return [FETCH_CHUNK_INDEX.format(pool=wildcards.pool, chunk=c)
            for c in fetch_chunks(wildcards)]


def fetch_chunk_reports(wildcards):
    return [FETCH_CHUNK_REPORT.format(pool=wildcards.pool, chunk=c)
            for c in fetch_chunks(wildcards)]


def fetch_merge_inputs(wildcards):
    """One fetch job: its index and report. Several: the list fetch_gather writes of them.
    Snakemake checks every file a job reads against each input of the job that makes it,
    so the index read by every caption, embed_images and score job must come from a job
    with few inputs (xlarge: 7,000 readers x 3,200 chunk files made its dry run minutes)."""
    if pool_jobs(wildcards.pool, "fetch") > 1:
        return {"chunk_list": FETCH_CHUNK_LIST.format(pool=wildcards.pool)}
    return {"indexes": fetch_chunk_indexes(wildcards), "reports": fetch_chunk_reports(wildcards)}


def caption_manifest(pool, caption_set):
    """A caption set's one manifest: raw_captions', or a synthetic set's (caption_merge)."""
    if caption_set == "raw":
        return RAW_CAPTIONS.format(pool=pool)
    captioner, temperature = caption_set.split("/")
    return CAPTION_SET.format(pool=pool, captioner=captioner, temperature=temperature)


def caption_manifests(pool, caption_set):
    """The caption set's manifest as a list (what the mix and analyses jobs take per set)."""
    return [caption_manifest(pool, caption_set)]


def caption_chunk_manifests(wildcards):
    """A synthetic caption set's chunk manifests (rule caption), in chunk order."""
    return [CAPTION_CHUNK.format(pool=wildcards.pool, captioner=wildcards.captioner,
                                 temperature=wildcards.temperature, chunk=chunk)
            for chunk in chunk_names(pool_jobs(wildcards.pool, "caption"))]


def embedding_manifests(pool, scorer):
    return [IMAGE_EMBEDDINGS.format(pool=pool, scorer=scorer, chunk=chunk)
            for chunk in chunk_names(pool_jobs(pool, "score"))]


def caption_set_manifest(wildcards):
    return caption_manifest(wildcards.pool, wildcards.caption_set)


def score_chunks(wildcards):
    """A caption set's score tables, one per embed_images chunk, in chunk order."""
    return [SCORE_CHUNK.format(pool=wildcards.pool, scorer=wildcards.scorer,
                               caption_set=wildcards.caption_set, chunk=chunk)
            for chunk in chunk_names(pool_jobs(wildcards.pool, "score"))]


def pool_scores(pool, sets):
    """Caption set -> its scores parquet (by the pool's scorer), for the caption sets `sets`."""
    scorer = POOLS[pool]["scorer"]
    return {s: SCORES.format(pool=pool, scorer=scorer, caption_set=s) for s in sets}


# ---- Filtering and mixing --------------------------------------------------------------
def mix_sources(wildcards):
    """Concrete caption source -> the caption sets it reads, for the pool's strategies (one
    dict per pool, shared by its jobs: each mix_table_part's params)."""
    return pool_mix_sources(wildcards.pool)


@cache
def pool_mix_sources(pool):
    """mix_sources, worked out once per pool (it parses every strategy of the catalogue)."""
    return pool_sources(config, POOLS[pool])


def mix_caption_sets(wildcards):
    return sorted({s for sets in mix_sources(wildcards).values() for s in sets})


def mix_score_paths(wildcards):
    """Caption set -> scores parquet, for the sets the pool's strategies read."""
    return pool_scores(wildcards.pool, mix_caption_sets(wildcards))


def mix_caption_manifests(wildcards):
    """Caption set -> its caption manifests, for the sets the pool's strategies read."""
    return {s: caption_manifests(wildcards.pool, s) for s in mix_caption_sets(wildcards)}


def mix_table_inputs(wildcards):
    """The files of mix_score_paths and mix_caption_manifests (its params), as inputs."""
    pool = wildcards.pool
    inputs = {
        "index": FETCH_INDEX.format(pool=pool),
        "scores": list(mix_score_paths(wildcards).values()),
        "captions": [m for ms in mix_caption_manifests(wildcards).values() for m in ms],
    }
    if pool_needs_clusters(config, POOLS[pool]):
        inputs["clusters"] = IMAGE_CLUSTERS.format(pool=pool)
    if pool_filters_captions(config, POOLS[pool]):
        inputs["caption_language"] = CAPTION_LANGUAGE.format(pool=pool)
    return inputs


def mix_table_part_inputs(wildcards):
    """A part's inputs: the scattered inputs of a pool in several parts, the inputs themselves
    for a pool in one."""
    if POOLS[wildcards.pool]["mix"]["table_parts"] > 1:
        return {"scatter": MIX_SCATTER.format(pool=wildcards.pool)}
    return mix_table_inputs(wildcards)


def mix_table_part_files(wildcards):
    """A pool in one part: its part reads the score tables and caption manifests themselves.
    A scattered part finds them in the scatter's record (listing every caption chunk in the
    params of each of hundreds of parts slowed the DAG build: large, 16.5 -> 14.4 s)."""
    if POOLS[wildcards.pool]["mix"]["table_parts"] > 1:
        return {}
    return {"score_paths": mix_score_paths(wildcards),
            "caption_manifests": mix_caption_manifests(wildcards)}


def mix_table_parts(wildcards):
    return [MIX_TABLE_PART.format(pool=wildcards.pool, table_part=part)
            for part in table_part_names(POOLS[wildcards.pool]["mix"]["table_parts"])]


def mix_table_part_reports(wildcards):
    return [path.removesuffix(".parquet") + ".json" for path in mix_table_parts(wildcards)]


def image_cluster_spec(wildcards):
    return POOLS[wildcards.pool]["mix"]["image_clusters"] or {}


def listed(value):
    """A config value that may be one file or a list of files (paths or asset:NAME), as a
    list of paths."""
    if value is None:
        return []
    return [resolve_file(config, v) for v in ([value] if isinstance(value, str) else value)]


def image_cluster_centroid_inputs(wildcards):
    """The references and the given centroids; the pool's image embeddings only when k-means
    trains on them (given centroids do not wait for embed_images)."""
    spec = image_cluster_spec(wildcards)
    scorer = POOLS[wildcards.pool]["scorer"]
    reference = spec.get("reference_pool")
    centroids = listed(spec.get("centroids"))
    return {
        "images": [] if centroids else embedding_manifests(wildcards.pool, scorer),
        "reference_images": embedding_manifests(reference, scorer) if reference else [],
        "reference_files": listed(spec.get("reference_embeddings")),
        "centroids": centroids,
    }


def image_clusters_part_inputs(wildcards):
    """One assignment job: its contiguous run of the pool's embed_images chunk manifests."""
    manifests = embedding_manifests(wildcards.pool, POOLS[wildcards.pool]["scorer"])
    return {"images": contiguous_run(manifests, *parse_chunk(wildcards.chunk)),
            "centroids": IMAGE_CLUSTER_CENTROIDS.format(pool=wildcards.pool)}


def image_clusters_parts(wildcards):
    return [IMAGE_CLUSTERS_PART.format(pool=wildcards.pool, chunk=chunk)
            for chunk in chunk_names(pool_jobs(wildcards.pool, "image_clusters"))]


def language_id_spec(wildcards):
    return POOLS[wildcards.pool]["mix"]["language_id"]


def caption_language_inputs(wildcards):
    """The pool's raw captions, and the language-id model file if its backend reads one."""
    return {"raw": RAW_CAPTIONS.format(pool=wildcards.pool),
            "model": listed(language_id_spec(wildcards).get("model"))}


def caption_language_merge_inputs(wildcards):
    """The parts' measurements and counts (and what they were made from, for provenance)."""
    chunks = chunk_names(pool_jobs(wildcards.pool, "caption_language"))
    return {**caption_language_inputs(wildcards),
            "parts": [CAPTION_LANGUAGE_PART.format(pool=wildcards.pool, chunk=c) for c in chunks],
            "counts": [CAPTION_LANGUAGE_PART_COUNTS.format(pool=wildcards.pool, chunk=c)
                       for c in chunks]}


def strategy_spec(wildcards):
    return STRATEGIES[wildcards.strategy]


def subset_inputs(wildcards):
    """The pool's mix table (its manifest); for a strategy with a text filter, also the
    caption_language summary (which language-id model ran, recorded in the subset's)."""
    inputs = {"table": MIX_TABLE.format(pool=wildcards.pool)}
    if strategy_spec(wildcards).get("text_filter"):
        inputs["language"] = CAPTION_LANGUAGE_SUMMARY.format(pool=wildcards.pool)
    columns = strategy_spec(wildcards).get("metadata_filter") or {}
    if columns:  # each kept column it filters on, its own job's folder (mix_metadata_column)
        inputs["metadata"] = [MIX_METADATA_COLUMN.format(pool=wildcards.pool, column=c)
                              for c in columns]
    return inputs


# ---- Published files (assets) ------------------------------------------------------------
def asset_spec(wildcards):
    """The asset fetched to `{assets.data_dir}/{asset_file}`: its name, URL and SHA-256."""
    name = ASSET_FILES[wildcards.asset_file]
    return {"name": name, **assets(config)[name]}


def pool_aliases(wildcards):
    return POOLS[wildcards.pool]["mix"]["sources"]


def train_shard_jobs(wildcards):
    """The jobs that write a strategy's training shards (pools[].jobs.train_shards)."""
    return pool_jobs(wildcards.pool, "train_shards")


def train_shards_inputs(wildcards):
    """In one job: the subset's samples (and the fetch index, for samples without their pool
    shard); in parts: every train_shards_part job's report, which the job joins."""
    pool, strategy = wildcards.pool, wildcards.strategy
    n_jobs = train_shard_jobs(wildcards)
    if n_jobs == 1:
        return {"samples": SUBSET_SAMPLES.format(pool=pool, strategy=strategy),
                "index": FETCH_INDEX.format(pool=pool)}
    return {"reports": [TRAIN_SHARDS_PART.format(pool=pool, strategy=strategy, chunk=c)
                        for c in chunk_names(n_jobs)]}


# ---- Training and evaluation -----------------------------------------------------------
def train_scale_name(pool):
    train = POOLS[pool]["train"]
    if not train:
        raise WorkflowError(f"pool '{pool}' has no train.scale, so it trains no models")
    return train["scale"]


def train_scale(wildcards):
    return train_scale_name(wildcards.pool)


def train_inputs(wildcards):
    pool = wildcards.pool
    inputs = {"manifest": TRAIN_SHARDS.format(pool=pool, strategy=wildcards.strategy)}
    kind = config["train_scales"][train_scale_name(pool)].get("toy_model")
    if kind:
        inputs["toy_model"] = toy_model_config(POOLS[pool]["source"]["world"], kind)
    return inputs


def pool_suite(pool):
    """The evaluation suite of a pool (capmix.suites.Suite)."""
    evaluation = POOLS[pool]["eval"]
    if not evaluation:
        raise WorkflowError(f"pool '{pool}' has no eval.suite, so it evaluates no models")
    return load_suite(config, evaluation["suite"])


def suite_data_dir(wildcards):
    """Task data of the pool's suite: the toy suite is built per toy world."""
    pool = wildcards.pool
    suite = pool_suite(pool)
    if suite.toy:
        return TOY_EVAL_DATA_DIR.format(world=POOLS[pool]["source"]["world"])
    return suite.data_dir


def eval_inputs(wildcards):
    pool, strategy = wildcards.pool, wildcards.strategy
    data_dir = suite_data_dir(wildcards)
    return {
        "checkpoint": CHECKPOINT.format(pool=pool, strategy=strategy),
        "training": TRAINING.format(pool=pool, strategy=strategy),
        "tasks": [EVAL_TASK.format(eval_data_dir=data_dir, data=t.data)
                  for t in pool_suite(pool).tasks],
    }


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


# ---- Findings --------------------------------------------------------------------------
def findings_plan(wildcards):
    """Every finding resolved for the pool: files and fields, or why it is not measured."""
    return plan_findings(config, wildcards.pool)


def findings_inputs(wildcards):
    """The quality and evaluation JSONs the pool's measurable findings compare."""
    return finding_inputs(config, wildcards.pool)


# ---- Analyses --------------------------------------------------------------------------
def analyses_files(pool):
    """The files the pool's analyses read, by role (capmix.analysisplan.plan_analyses)."""
    sets = caption_sets(pool)
    strategies = pool_strategies(pool)
    suite, task, _ = coco_task(config, POOLS[pool]) if POOLS[pool]["eval"] else (None, None, "")
    coco = None
    if task is not None and not suite.toy:
        coco = EVAL_TASK.format(eval_data_dir=suite.data_dir, data=task.data)
    return {
        "scores": pool_scores(pool, sets),
        "captions": {s: caption_manifests(pool, s) for s in sets},
        "subsets": {s: {"summary": SUBSET_SUMMARY.format(pool=pool, strategy=s),
                        "samples": SUBSET_SAMPLES.format(pool=pool, strategy=s)}
                    for s in strategies},
        "mix_table": MIX_TABLE.format(pool=pool) if strategies else None,
        "eval": {s: {"results": EVAL_RESULTS.format(pool=pool, strategy=s),
                     "aggregate": EVAL_AGGREGATE.format(pool=pool, strategy=s)}
                 for s in evaluated_strategies(pool)},
        "coco_task": coco,
    }


def analyses_plan(wildcards):
    """What the pool's analyses compute, from which files, and why the rest is not available."""
    return plan_analyses(config, wildcards.pool, analyses_files(wildcards.pool))


def analyses_inputs(wildcards):
    return plan_inputs(analyses_plan(wildcards))


def analyses_outputs(pool):
    return [ANALYSIS.format(pool=pool, analysis=name) for name in ANALYSES]


# ---- Figures and tables -----------------------------------------------------------------
FIGURES = {entry["id"]: entry for entry in figure_entries(config)}
# Entry id -> its caption (workflow/report/<caption>), rendered by workflow/report/figure.rst.
FIGURE_CAPTIONS = read_captions(config, REPO / "workflow" / "report")


def pool_targets(pool):
    return POOLS[pool]["targets"] or config["targets"]


def figures_files(pool):
    """The result files the pool's figures may read, by kind (capmix.figurespec)."""
    scorer = POOLS[pool]["scorer"]
    return {
        "analyses": {name: ANALYSIS.format(pool=pool, analysis=name) for name in ANALYSES},
        "quality": {s: QUALITY.format(pool=pool, scorer=scorer, caption_set=s)
                    for s in caption_sets(pool)},
        "eval": {s: EVAL_AGGREGATE.format(pool=pool, strategy=s)
                 for s in evaluated_strategies(pool)},
        "eval_lines": {s: EVAL_RESULTS.format(pool=pool, strategy=s)
                       for s in evaluated_strategies(pool)},
        "training": {s: TRAINING.format(pool=pool, strategy=s) for s in trained_strategies(pool)},
        "nocaps_quality": nocaps_quality_files(pool),
        "no_filter_eval": {
            s: EVAL_AGGREGATE.format(pool=pool, strategy=strategy)
            for s, strategy in no_filter_strategies(
                config, POOLS[pool], evaluated_strategies(pool)).items()},
        "fetch": FETCH_REPORT.format(pool=pool),
        "samples": {"index": FETCH_INDEX.format(pool=pool),
                    "table": MIX_TABLE.format(pool=pool) if pool_strategies(pool) else None,
                    "subsets": {s: SUBSET_SAMPLES.format(pool=pool, strategy=s)
                                for s in pool_strategies(pool)}},
        "shards": SHARDS.format(pool=pool),
    }


def nocaps_quality_files(pool):
    """Caption set -> its quality JSON on the pool's NoCaps pool (pools[].findings.pools.nocaps:
    Table 1's CIDEr), for the pool's synthetic caption sets that pool captions too (its raw
    captions are NoCaps' own reference text, not this pool's raw captions)."""
    nocaps = ((POOLS[pool].get("findings") or {}).get("pools") or {}).get("nocaps")
    if nocaps not in POOLS or POOLS[nocaps].get("scorer") is None:
        return {}
    theirs = set(caption_sets(nocaps))
    return {s: QUALITY.format(pool=nocaps, scorer=POOLS[nocaps]["scorer"], caption_set=s)
            for s in caption_sets(pool) if s in theirs and s != RAW}


def figures_plan(wildcards):
    """Every figure and table for the pool: the files it reads, or why it is not drawn."""
    pool = wildcards.pool
    return plan_figures(config, pool, pool_targets(pool), figures_files(pool))


def figures_inputs(wildcards):
    return figure_plan_inputs(figures_plan(wildcards))


def figure_category(wildcards):
    """The report category of a drawn file (its `figure` is the entry id)."""
    return category_heading(FIGURES[wildcards.figure]["category"])


def figure_subcategory(wildcards):
    return FIGURES[wildcards.figure]["paper"]


def figure_indexes():
    """The figure index of every pool with the target `figures` (rule figures)."""
    return [FIGURE_INDEX.format(pool=p) for p in POOLS if "figures" in pool_targets(p)]


# ---- Figure 8 across pools (rule figure_8_pools) ------------------------------------------
# The pools it joins (config figure_8.pools; default: this config's pools that train and
# evaluate). A pool of another config is read from that run's finished file.
FIGURE_8_POOLS = figure_8_pools(config)
FIGURE_8_PNG = f"{POOLS_FIGURE_8}.png"
FIGURE_8_PDF = f"{POOLS_FIGURE_8}.pdf"
FIGURE_8_TABLE = f"{POOLS_FIGURE_8}.csv"
FIGURE_8_CELLS = f"{POOLS_FIGURE_8}.cells.json"
FIGURE_8_CATEGORY = category_heading("paper figure")
FIGURE_8_LABEL = ", ".join(FIGURE_8_POOLS)


def figure_8_absent(wildcards=None):
    """Listed pools that neither this config makes nor an earlier run has made, each with the
    config that makes it: the figure names them under its panels and shows the rest (the
    job re-runs once they exist, as its inputs change)."""
    return _figure_8_absent()


@cache
def _figure_8_absent():
    """figure_8_absent, found once per Snakemake process (it may read every config file)."""
    files = {p: ANALYSIS.format(pool=p, analysis="pool_scaling") for p in FIGURE_8_POOLS}
    return missing_pool_files(files, list(POOLS), os.path.exists,
                              partial(pool_config_files, REPO / "config"))


def figure_8_inputs(wildcards):
    """The pool_scaling JSON of each listed pool this config makes or an earlier run made;
    if there is none, stop here naming the configs that make them (not a bare missing
    input)."""
    absent = figure_8_absent()
    files = [ANALYSIS.format(pool=p, analysis="pool_scaling") for p in FIGURE_8_POOLS
             if p not in absent]
    if not files:
        raise WorkflowError("Figure 8 across pools (rule figure_8_pools, config key "
                            "figure_8.pools) has no pool to show:\n  "
                            + "\n  ".join(absent.values()))
    return files


def figure_8_files():
    """The cross-pool Figure 8's figure and table (rule figures), if any pool is listed."""
    return [FIGURE_8_PNG, FIGURE_8_PDF, FIGURE_8_TABLE] if FIGURE_8_POOLS else []


# ---- Targets: what `rule all` builds ---------------------------------------------------
def pool_strategies(pool):
    return pool_strategy_names(config, POOLS[pool])


def trained_strategies(pool):
    """The strategies a pool trains a CLIP on; none without a training scale."""
    return pool_train_strategies(config, POOLS[pool]) if POOLS[pool]["train"] else []


def evaluated_strategies(pool):
    """The trained strategies, if the pool has a suite to evaluate them on."""
    return trained_strategies(pool) if POOLS[pool]["eval"] else []


def all_caption_manifests(pool):
    return [m for s in caption_sets(pool) for m in caption_manifests(pool, s)]


def pool_file(pattern, only_if=None):
    """Target files: one per pool (those whose `only_if` setting is set, if given)."""

    def files(pool):
        return [pattern.format(pool=pool)] if only_if is None or POOLS[pool][only_if] else []

    return files


def caption_set_files(pattern):
    """Target files: one per caption set of the pool (by its scorer)."""

    def files(pool):
        scorer = POOLS[pool]["scorer"]
        return [pattern.format(pool=pool, scorer=scorer, caption_set=s) for s in caption_sets(pool)]

    return files


def strategy_files(pattern, strategies):
    """Target files: one per strategy of `strategies(pool)`."""

    def files(pool):
        return [pattern.format(pool=pool, strategy=s) for s in strategies(pool)]

    return files


# Target -> its files for a pool, one entry per target the schema allows, in its order.
TARGET_FILES = {
    "metadata": pool_file(METADATA),
    "fetch": pool_file(FETCH_REPORT),
    "captions": all_caption_manifests,
    "scores": caption_set_files(SCORES),
    "quality": caption_set_files(QUALITY),
    "subsets": strategy_files(SUBSET_SUMMARY, pool_strategies),
    "train_shards": strategy_files(TRAIN_SHARDS, pool_strategies),
    "models": strategy_files(TRAINING, trained_strategies),
    "eval": strategy_files(EVAL_AGGREGATE, evaluated_strategies),
    # Only pools that opt in (pools[].findings) check the paper's findings.
    "findings": pool_file(FINDINGS, only_if="findings"),
    "analyses": analyses_outputs,
    "figures": pool_file(FIGURE_INDEX),
}
if list(TARGET_FILES) != TARGETS:
    raise WorkflowError(f"common.smk: TARGET_FILES covers {list(TARGET_FILES)}, but the schema's "
                        f"targets ($defs.target) are {TARGETS}")


def all_targets():
    """Every pool's target files, and Figure 8 across pools where any pool draws figures."""
    files = [f for pool in POOLS for t in pool_targets(pool) for f in TARGET_FILES[t](pool)]
    if any("figures" in pool_targets(pool) for pool in POOLS):
        files += figure_8_files()
    return files
