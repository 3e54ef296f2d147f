"""Entry point of rule download_asset: one published file, checked against its SHA-256."""

from pathlib import Path

from capmix.assets import download_asset
from capmix.lineage import job_provenance
from capmix.logs import setup_logging

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        spec = dict(sm.params.spec)
        download_asset(spec["name"], spec, Path(sm.output.asset))
