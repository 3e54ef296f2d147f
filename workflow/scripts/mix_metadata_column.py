"""Entry point of rule mix_metadata_column: one kept source column of a pool's metadata, in the
mix table's uid-range parts, for the strategies that filter on it."""

from pathlib import Path

from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.mixparts import run_metadata_column
from capmix.strategies import metadata_filter_users

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm):
        pool = next(p for p in sm.config["pools"] if p["name"] == sm.wildcards.pool)
        # which strategies read the column: for the error message only, so not a parameter
        # (adding a strategy on this column must not rebuild it)
        used_by = metadata_filter_users(sm.config, pool).get(sm.wildcards.column, [])
        run_metadata_column(sm.wildcards.pool, sm.wildcards.column, Path(sm.input.metadata),
                            sm.params.table_parts, Path(sm.output[0]), used_by)
