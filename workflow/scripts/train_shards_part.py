"""Entry point of rule train_shards_part: one run of pool shards' training shards."""

from pathlib import Path

from capmix.lineage import job_provenance
from capmix.logs import setup_logging
from capmix.provenance import provenance_record
from capmix.reshard import job_files, run_reshard_job

if __name__ == "__main__":
    sm = snakemake  # noqa: F821
    setup_logging(sm.log[0])
    with job_provenance(sm) as job:
        scatter, chunk = Path(sm.input.scatter), sm.wildcards.chunk
        report = run_reshard_job(
            scatter, chunk, Path(sm.params.shards), Path(sm.params.out),
            Path(sm.output.report), workers=sm.threads,
            provenance=provenance_record(
                "train_shards_part", inputs=job_files(scatter, chunk), params={"chunk": chunk},
                packages=("numpy", "pandas", "pyarrow", "webdataset")))
        # its shards (not declared: a killed job resumes them), not the other jobs'
        job.produced(*[Path(sm.params.out) / name for name in report["shards"]])
