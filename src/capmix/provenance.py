"""Provenance helpers: what produced a result file.

Every manifest and report a stage writes carries the code version, the
versions of the libraries that did the work, and checksums of its inputs, so
a reviewer can trace a number back without trusting file names.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from capmix import __version__

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Files Snakemake itself puts into directory outputs after the job: not the job's data.
IGNORED_NAMES = frozenset({".snakemake_timestamp"})


def sha256_file(path: Path | str, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def code_version() -> dict[str, Any]:
    """capmix version plus the git commit of the checkout, whether it was dirty, and the
    SHA-256 of ``git diff HEAD`` (tracked files): two dirty runs of one commit ran the same
    code only if their diff hashes agree. Outside a git checkout (a copied workflow, an
    unpacked release) all three are None; the per-file hashes of a job record
    (:mod:`capmix.lineage`) still say which code ran."""
    info: dict[str, Any] = {"capmix": __version__}
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        diff = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "diff", "--binary", "HEAD"],
            capture_output=True, check=True, timeout=60,
        ).stdout
        info.update(git_commit=commit, git_dirty=bool(dirty),
                    git_diff_sha256=hashlib.sha256(diff).hexdigest() if dirty else None)
    except (OSError, subprocess.SubprocessError):
        info.update(git_commit=None, git_dirty=None, git_diff_sha256=None)
    return info


def software_versions(packages: Iterable[str]) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


#: While a job runs (:func:`capmix.lineage.job_provenance`), the job's hasher: the job record
#: hashes every input on entry, so a provenance block taking its checksums from the same hasher
#: reads each input once per job, not twice (a pool's shards and metadata are large).
_job_hasher: Callable[[Path], tuple[str, int]] | None = None


@contextmanager
def checksums_from(hasher: Callable[[Path], tuple[str, int]]) -> Iterator[None]:
    """Within the block, :func:`file_checksum` asks ``hasher`` (path -> (sha256, bytes))."""
    global _job_hasher
    previous, _job_hasher = _job_hasher, hasher
    try:
        yield
    finally:
        _job_hasher = previous


def file_checksum(path: Path | str) -> tuple[str, int]:
    """(sha256, bytes) of a file: from the running job's hasher when there is one (its
    results are shared with the job record), else read now."""
    path = Path(path)
    if _job_hasher is not None:
        return _job_hasher(path)
    return sha256_file(path), path.stat().st_size


def directory_files(directory: Path, exclude: Iterable[str] = ()) -> list[str]:
    """Every file under ``directory`` (relative POSIX paths, sorted), Snakemake's markers,
    half-written ``*.tmp`` files and ``exclude`` left out."""
    found, exclude = [], set(exclude)
    for folder, dirs, files in os.walk(directory):
        dirs.sort()
        for name in files:
            relative = Path(folder, name).relative_to(directory).as_posix()
            if name in IGNORED_NAMES or name.endswith(".tmp") or relative in exclude:
                continue
            found.append(relative)
    return sorted(found)


def directory_digest(members: Iterable[Mapping[str, Any]]) -> str:
    """One hash for a directory: over each file's relative path, size and SHA-256, sorted
    (so it changes when a file is added, removed, renamed or edited, and not with mtimes)."""
    digest = hashlib.sha256()
    for member in sorted(members, key=lambda m: m["path"]):
        digest.update(f"{member['path']}\0{member['bytes']}\0{member['sha256']}\n".encode())
    return digest.hexdigest()


def _input_entry(path: Path | str) -> dict[str, Any]:
    """{path, sha256, bytes}; a directory (a mix table's parts) is hashed as the job record
    hashes one (:func:`directory_digest` over its files)."""
    path = Path(path)
    if path.is_dir():
        members = []
        for name in directory_files(path):
            digest, size = file_checksum(path / name)
            members.append({"path": name, "sha256": digest, "bytes": size})
        return {"path": str(path), "kind": "directory", "sha256": directory_digest(members),
                "bytes": sum(m["bytes"] for m in members), "files": len(members)}
    digest, size = file_checksum(path)
    return {"path": str(path), "sha256": digest, "bytes": size}


def provenance_record(
    stage: str,
    inputs: Iterable[Path | str] = (),
    params: dict[str, Any] | None = None,
    packages: Iterable[str] = ("numpy", "pandas", "pyarrow"),
) -> dict[str, Any]:
    """A provenance block: stage, code, software, parameters and input checksums."""
    return {
        "stage": stage,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": code_version(),
        "software": software_versions(packages),
        "host": {"platform": platform.platform(), "argv0": os.path.basename(sys.argv[0])},
        "params": params or {},
        "inputs": [_input_entry(p) for p in inputs],
    }


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write text atomically (temp file + rename), so a killed job never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path | str, payload: Any) -> None:
    """Write JSON atomically (:func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet_atomic(frame: pd.DataFrame, path: Path, tags: dict[str, Any]) -> None:
    """Write a parquet with ``tags`` (provenance) in its key-value metadata; rename into place.

    pyarrow is imported here, not with the module: every stage, and the config checker,
    imports this module for its JSON and hashing helpers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"capmix": json.dumps(tags, sort_keys=True).encode()})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def frame_schema(frame: pd.DataFrame, types: Mapping[str, Any]) -> Any:
    """The arrow schema ``write_parquet_atomic`` gives ``frame``, with each column's type fixed
    by ``types`` (column -> pyarrow type): an empty part then has the same schema as a full one
    (an empty object column would be arrow's null type), pandas metadata included."""
    import pyarrow as pa

    return pa.Table.from_pandas(frame[list(types)], schema=pa.schema(list(types.items())),
                                preserve_index=False).schema


def concat_parquet_atomic(files: Sequence[Path], path: Path, schema: Any,
                          tags: dict[str, Any],
                          visit: Callable[[Any, Path], None] | None = None) -> int:
    """Stream the rows of per-job parquet ``files``, in order, into one parquet at ``path``
    with ``schema`` and ``tags`` (as :func:`write_parquet_atomic` writes one frame): one record
    batch in memory at a time; ``visit(table, file)`` sees each batch, as a table (a reduce
    counts with it).
    A file without a column of the schema is a KeyError naming it. Returns the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from capmix.parquetio import open_streaming, stream_batches

    path.parent.mkdir(parents=True, exist_ok=True)
    schema = schema.with_metadata({**(schema.metadata or {}),
                                   b"capmix": json.dumps(tags, sort_keys=True).encode()})
    tmp = path.with_name(path.name + ".tmp")
    rows = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        for file in files:
            parquet = open_streaming(file)
            missing = [n for n in schema.names if n not in parquet.schema_arrow.names]
            if missing:
                raise KeyError(f"{file}: no column(s) {missing}")
            for batch in stream_batches(parquet, 1 << 20, schema.names):
                table = pa.Table.from_batches([batch]).cast(schema.remove_metadata())
                if visit is not None:
                    visit(table, Path(file))
                writer.write_table(table.replace_schema_metadata(schema.metadata))
                rows += table.num_rows
    os.replace(tmp, path)
    return rows
