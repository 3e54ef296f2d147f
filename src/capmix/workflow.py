"""Helpers the Snakefile calls at start-up."""

from __future__ import annotations

import os
from pathlib import Path


def export_package_path(src_dir: Path) -> None:
    """Let every job import capmix from this checkout.

    Jobs run in the venv (editable install), in a per-rule conda env from
    ``envs/`` (which does not install capmix), or on SLURM nodes (which inherit
    the submitting environment); putting ``src/`` on PYTHONPATH covers all three.
    """
    current = os.environ.get("PYTHONPATH")
    parts = [str(src_dir)] + ([current] if current else [])
    if current is None or str(src_dir) not in current.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(parts)


def report_requested(argv: list[str]) -> bool:
    """Whether Snakemake was started to make a report (``--report [FILE]``)."""
    return any(arg == "--report" or arg.startswith("--report=") for arg in argv[1:])
