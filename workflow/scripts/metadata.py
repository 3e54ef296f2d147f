"""Entry point of rule metadata: check and normalise a pool's source metadata."""

from pathlib import Path

from capmix.captionnet import build_captionnet_metadata
from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.sources import build_metadata, source_files

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
with job_provenance(sm):
    if sm.params.source["type"] == "captionnet":
        build_captionnet_metadata(sm.wildcards.pool, sm.params.source, Path(sm.input[0]),
                                  Path(sm.output[0]), required=sm.params.required)
    else:
        build_metadata(
            sm.wildcards.pool,
            sm.params.source,
            source_files(sm.params.source, [Path(p) for p in sm.input]),
            Path(sm.output[0]),
            required=sm.params.required,
        )
