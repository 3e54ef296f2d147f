"""Entry point of rule metadata: check and normalise a pool's source metadata."""

from pathlib import Path

from capmix.logs import setup_logging
from capmix.sources import build_metadata, source_files

setup_logging(snakemake.log[0])  # noqa: F821
source = snakemake.params.source  # noqa: F821
build_metadata(
    snakemake.wildcards.pool,  # noqa: F821
    source,
    source_files(source, [Path(p) for p in snakemake.input]),  # noqa: F821
    Path(snakemake.output[0]),  # noqa: F821
    required=snakemake.params.required,  # noqa: F821
)
