"""Entry point of rule download_metadata: fetch a remote source's metadata once."""

from pathlib import Path

from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.sources import download_source

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
with job_provenance(sm) as job:
    download_source(sm.params.source, Path(sm.output[0]).parent, workers=sm.threads)
    # The downloaded files lie beside the record the rule declares.
    job.produced(Path(sm.output[0]).parent)
