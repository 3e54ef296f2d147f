"""Entry point of rule subset: one strategy of one pool (uid file, captions, summary), part by
part of the pool's mix table."""

from pathlib import Path

from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.mixparts import run_subset

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        # the kept columns' folders a metadata_filter reads (one name: Snakemake gives a str)
        metadata = sm.input.metadata if "metadata" in sm.input.keys() else []
        folders = [Path(d) for d in ([metadata] if isinstance(metadata, str) else metadata)]
        run_subset(sm.wildcards.strategy, sm.params.spec, {"mix": {"sources": sm.params.aliases}},
                   Path(sm.input.table), Path(sm.output.summary).parent,
                   language_summary=Path(sm.input.language) if "language" in sm.input.keys()
                   else None,
                   metadata_columns={folder.name: folder for folder in folders})
