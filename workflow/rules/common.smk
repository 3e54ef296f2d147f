# Start-up: validate the config against the schema (defaults filled in), check
# cross-references, and helpers that turn config data into file paths.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(workflow.basedir)
# Jobs (local, conda or SLURM) import the package from this checkout.
sys.path.insert(0, str(REPO / "src"))

from capmix.config import check_references, explain_errors, load_schema  # noqa: E402
from capmix.sources import needs_download  # noqa: E402
from capmix.toyworld import SPLITS  # noqa: E402
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
TOY_WORLDS = config["toy_worlds"]
TOY_SPLITS = SPLITS


wildcard_constraints:
    pool="|".join(POOLS) or "no_pool",
    world="[a-z][a-z0-9_]*",


def res(stage, key):
    """A stage's resource setting (config `resources`, defaults from the schema)."""
    return config["resources"][stage][key]


def pool_source(wildcards):
    return POOLS[wildcards.pool]["source"]


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


TARGET_FILES = {
    "metadata": "results/{pool}/metadata",
    "fetch": "results/{pool}/fetch/report.json",
}


def all_targets():
    return [TARGET_FILES[t].format(pool=pool) for pool in POOLS for t in config["targets"]]
