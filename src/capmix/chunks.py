"""Chunk names: how a stage's shards are split into jobs (and a mix table into parts).

A stage with ``jobs: n`` (config ``caption.jobs``, ``score.jobs``, or a pool's own
``pools[].jobs``) runs n jobs per pool; job i takes the i-th of n contiguous runs of the
pool's shards, balanced by fetched images (capmix.shards.plan_tasks); jobs over a list of
files take contiguous runs of it (:func:`contiguous_run`). Job i is named ``chunk{i}of{n}``
in its output paths and its ``{chunk}`` wildcard. This module is the one place that builds
such names (the workflow's inputs), constrains them (its wildcard constraint) and parses them
(the jobs' scripts). Imports nothing heavy: the workflow reads it at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

_NUMBER = "[0-9]+"
#: The ``{chunk}`` wildcard's constraint: a chunk name, nothing else.
CHUNK_PATTERN = f"chunk{_NUMBER}of{_NUMBER}"
_CHUNK = re.compile(f"chunk({_NUMBER})of({_NUMBER})")


def chunk_name(chunk: int, n_chunks: int) -> str:
    """The name of job ``chunk`` of ``n_chunks``: ``chunk0of4``."""
    return f"chunk{chunk}of{n_chunks}"


def chunk_names(n_chunks: int) -> list[str]:
    """Every chunk of a stage that runs ``n_chunks`` jobs per pool, in order."""
    return [chunk_name(i, n_chunks) for i in range(n_chunks)]


def contiguous_run(items: Sequence[T], chunk: int, n_chunks: int) -> list[T]:
    """The ``chunk``-th of ``n_chunks`` contiguous runs of ``items`` (empty when there are more
    jobs than items): jobs over a stage's files in order, so their outputs, joined in job
    order, list the rows in the files' order (a reduce then equals the one-job result)."""
    if not 0 <= chunk < n_chunks:
        raise ValueError(f"chunk {chunk} is outside 0..{n_chunks - 1}")
    return list(items[len(items) * chunk // n_chunks:len(items) * (chunk + 1) // n_chunks])


def parse_chunk(name: str) -> tuple[int, int]:
    """``chunk0of4`` -> ``(0, 4)``; anything else is a ValueError naming it."""
    match = _CHUNK.fullmatch(name)
    if match is None:
        raise ValueError(f"not a chunk name: {name!r} (expected chunk<i>of<n>)")
    chunk, n_chunks = map(int, match.groups())
    return chunk, n_chunks


#: The ``{table_part}`` wildcard's constraint: a mix-table part name (capmix.mixparts).
TABLE_PART_PATTERN = "part-[0-9]{5}"
_TABLE_PART = re.compile("part-([0-9]{5})")


def table_part_name(part: int) -> str:
    """Part ``part`` of a pool's mix table: ``part-00003`` (its file, ``part-00003.parquet``)."""
    return f"part-{part:05d}"


def table_part_names(n_parts: int) -> list[str]:
    """Every part of a mix table held in ``n_parts`` parts, in uid order."""
    return [table_part_name(i) for i in range(n_parts)]


def parse_table_part(name: str) -> int:
    """``part-00003`` -> 3; anything else is a ValueError naming it."""
    match = _TABLE_PART.fullmatch(name)
    if match is None:
        raise ValueError(f"not a mix-table part name: {name!r} (expected part-NNNNN)")
    return int(match.group(1))
