"""Entry point of rule toy_world: draw the toy world for one world name."""

from pathlib import Path

from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.toyworld import generate_world

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
with job_provenance(sm) as job:
    world_dir = Path(sm.output.manifest).parent
    generate_world(world_dir, sm.params.spec, sm.params.seed, workers=sm.threads)
    # The images the pool's URLs point at lie beside the declared splits.
    job.produced(world_dir)
