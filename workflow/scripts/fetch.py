"""Entry point of rule fetch: one img2dataset round and the per-uid accounting.

img2dataset starts worker processes with the "spawn" method, which re-imports
this file as ``__mp_main__`` in every worker; the ``__main__`` guard keeps the
workers from running the stage again (they have no ``snakemake`` object).
"""

from pathlib import Path

from capmix.fetch import FetchSettings, fetch_pool
from capmix.logs import setup_logging

if __name__ == "__main__":
    setup_logging(snakemake.log[0])  # noqa: F821
    fetch_pool(
        snakemake.wildcards.pool,  # noqa: F821
        Path(snakemake.input[0]),  # noqa: F821
        Path(snakemake.params.shards),  # noqa: F821
        Path(snakemake.output.index),  # noqa: F821
        Path(snakemake.output.report),  # noqa: F821
        FetchSettings.from_config(snakemake.params.settings,  # noqa: F821
                                  snakemake.params.source_type,  # noqa: F821
                                  snakemake.params.allow_local_urls),  # noqa: F821
        processes=snakemake.threads,  # noqa: F821
    )
