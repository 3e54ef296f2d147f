"""Entry point of rule toy_world: draw the toy world for one world name."""

from pathlib import Path

from capmix.logs import setup_logging
from capmix.toyworld import generate_world

setup_logging(snakemake.log[0])  # noqa: F821
generate_world(
    Path(snakemake.output.manifest).parent,  # noqa: F821
    snakemake.params.spec,  # noqa: F821
    snakemake.params.seed,  # noqa: F821
    workers=snakemake.threads,  # noqa: F821
)
