"""Entry point of rule download_metadata: fetch a remote source's metadata once."""

from pathlib import Path

from capmix.logs import setup_logging
from capmix.sources import download_source

setup_logging(snakemake.log[0])  # noqa: F821
download_source(
    snakemake.params.source,  # noqa: F821
    Path(snakemake.output[0]).parent,  # noqa: F821
    workers=snakemake.threads,  # noqa: F821
)
