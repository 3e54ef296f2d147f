"""Lineage: one provenance record per Snakemake job, and the chain a reviewer walks.

The per-output ``provenance`` blocks (:mod:`capmix.provenance`) say what one file was made
from, but nobody can query them: they are spread over every format the stages write, they
name no job, and they hash inputs, not outputs, so nothing links a file to the job that
made it. This module adds one record per *job*, written by the context manager every entry
script runs its body in (``with job_provenance(snakemake):``):

* the rule, wildcards, params (JSON; what is not JSON is written as its ``str``), threads
  and resources; start and end time (UTC), host, GPU model (only if the job had imported
  torch and CUDA was available: the record never imports torch itself);
* the code: git commit, dirty flag and SHA-256 of ``git diff HEAD``
  (:func:`capmix.provenance.code_version`), and the SHA-256 of the script and of every
  ``capmix`` module the job had imported when it ended, so a copied workflow with no git
  still says which code ran;
* the software *installed* in the job's interpreter (every distribution importlib.metadata
  sees, not the declared pins), stored once per distinct environment under
  ``environments/<sha256>.json`` and referenced by that hash;
* SHA-256 and size of every input *and* output (a directory: a digest over its files'
  relative paths, sizes and hashes, with the per-file list), plus files a script names
  beyond Snakemake's declared ones (:meth:`Job.produced`: per-shard caption parquets behind
  a chunk manifest, fetched shards, a model's weights beside its config).

Records live under ``results/provenance/jobs/<rule>/<sha256 of the sorted output
paths>.json``, written atomically on success; a re-run of the same job replaces its record,
and a failed one removes it (Snakemake deletes a failed job's outputs, so the old record
would describe files that are gone).

From the records, :class:`Lineage` finds the producer of any file (the record whose outputs
hold it, or hold a directory holding it) and :meth:`Lineage.chain` walks producers back
through inputs to files no job made (config files, downloaded metadata, a local table). On a
chain: :func:`check` re-hashes every file and names each that changed, with the job that
made it; :func:`diff` says why two results differ (params, code, inputs, software);
:func:`find_cell` resolves one cell of a table through its ``T.cells.json`` sidecar (the
contract in ``docs/provenance.md``). ``capmix provenance`` (:mod:`capmix.cli`) prints them;
:mod:`capmix.runcrate` exports a chain as a Workflow Run RO-Crate.

Standard library only: every job imports this module, and the CLI should start at once.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from capmix.provenance import (
    REPO_ROOT,
    checksums_from,
    code_version,
    directory_digest,
    directory_files,
    sha256_file,
    write_json,
)

#: The provenance root, relative to the workflow's working directory (``--directory``).
PROVENANCE_DIR = Path("results") / "provenance"
RECORD_FORMAT = "capmix-job-record/1"
ENVIRONMENT_FORMAT = "capmix-environment/1"
CELLS_FORMAT = "capmix-table-cells/1"
#: Files at least this big have their hash cached by (path, size, mtime_ns) under
#: ``hashcache/``, so that a pool's metadata or shards, inputs of many jobs, are read once.
#: Smaller ones are cheaper to hash than to look up. :func:`check` never uses the cache.
CACHE_MIN_BYTES = 1 << 20


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def write_shared_json(path: Path, payload: Any) -> None:
    """Write JSON atomically where parallel jobs may write the same file at once (the hash
    cache, an environment): each through its own temporary file, so no writer renames
    another's half-written one; the last rename wins, and all write the same content."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(payload, out, indent=2, sort_keys=True, default=str)
        out.write("\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ hashing


class Hasher:
    """SHA-256 of files and directories, with an optional cache on disk.

    The cache is keyed by the file's absolute path and validated by its size and
    ``mtime_ns`` (DVC's and make's assumption: a rewrite changes the mtime). One small JSON
    per file, written atomically, so parallel jobs never contend for a shared index.
    """

    def __init__(self, cache_dir: Path | None = None):
        self.cache_dir = cache_dir
        self.memo: dict[tuple[str, int, int], str] = {}

    def _cache_file(self, absolute: str) -> Path:
        assert self.cache_dir is not None
        key = hashlib.sha256(absolute.encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def file(self, path: Path) -> tuple[str, int]:
        """(sha256, bytes) of one file (a symlink: of its target)."""
        stat = path.stat()
        absolute = str(path.resolve())
        key = (absolute, stat.st_size, stat.st_mtime_ns)
        if key in self.memo:
            return self.memo[key], stat.st_size
        cached = None
        if self.cache_dir is not None and stat.st_size >= CACHE_MIN_BYTES:
            try:
                entry = json.loads(self._cache_file(absolute).read_text())
                if (entry["size"], entry["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
                    cached = entry["sha256"]
            except (OSError, ValueError, KeyError):
                cached = None
        digest = cached or sha256_file(path)
        if cached is None and self.cache_dir is not None and stat.st_size >= CACHE_MIN_BYTES:
            write_shared_json(self._cache_file(absolute), {
                "path": absolute, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "sha256": digest})
        self.memo[key] = digest
        return digest, stat.st_size

    def entry(self, path: str | Path, exclude: Iterable[str] = ()) -> dict[str, Any]:
        """A record entry: ``{path, sha256, bytes}`` for a file; for a directory also
        ``kind: directory``, ``files`` and ``members`` (relative path, sha256, bytes each;
        ``exclude``: relative paths left out, listed as ``excluded``); ``missing: true`` if
        there is nothing at ``path``."""
        path = Path(path)
        if path.is_dir():
            members, exclude = [], sorted(set(exclude))
            for file in directory_files(path, exclude):
                digest, size = self.file(path / file)
                members.append({"path": file, "sha256": digest, "bytes": size})
            entry = {"path": str(path), "kind": "directory",
                     "sha256": directory_digest(members),
                     "bytes": sum(m["bytes"] for m in members), "files": len(members),
                     "members": members}
            return {**entry, "excluded": exclude} if exclude else entry
        if path.is_file():
            digest, size = self.file(path)
            return {"path": str(path), "sha256": digest, "bytes": size}
        return {"path": str(path), "missing": True}


# ------------------------------------------------------------------------------ environment


def installed_distributions() -> dict[str, str]:
    """Every distribution importlib.metadata finds (canonical name -> version); the first of
    duplicates, as import would find it."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical_name(name), dist.version)
    return dict(sorted(found.items()))


def canonical_name(name: str) -> str:
    """PEP 503 normalisation (``Open_CLIP.torch`` -> ``open-clip-torch``)."""
    return "-".join(part for part in name.lower().replace("_", "-").replace(".", "-")
                    .split("-") if part)


def environment() -> dict[str, Any]:
    """The software a job ran with, as installed: interpreter and every distribution."""
    return {"format": ENVIRONMENT_FORMAT, "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "distributions": installed_distributions()}


def environment_hash(env: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(env, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def store_environment(root: Path, env: Mapping[str, Any]) -> str:
    """Write ``env`` once under ``root/environments/<sha256>.json``; return the hash."""
    digest = environment_hash(env)
    path = root / "environments" / f"{digest}.json"
    if not path.exists():
        write_shared_json(path, env)
    return digest


def current_environment(root: Path) -> tuple[str, dict[str, Any]]:
    """The hash and contents of this interpreter's environment, stored under ``root``.

    Listing every distribution costs about 0.3 s, paid by every job of a DAG of hundreds.
    The result is reused while the interpreter and the modification times of the folders
    on ``sys.path`` (which installing or removing a distribution changes) are the same.
    """
    folders = [(p, os.stat(p).st_mtime_ns) for p in sys.path if p and os.path.isdir(p)]
    key = hashlib.sha256(json.dumps([sys.executable, platform.python_version(), folders])
                         .encode()).hexdigest()
    pointer = root / "environments" / "by-interpreter" / f"{key}.json"
    try:
        digest = json.loads(pointer.read_text())["sha256"]
        env = json.loads((root / "environments" / f"{digest}.json").read_text())
        if environment_hash(env) == digest:
            return digest, env
    except (OSError, ValueError, KeyError, TypeError):
        pass
    env = environment()
    digest = store_environment(root, env)
    write_shared_json(pointer, {"sha256": digest, "executable": sys.executable,
                                "path": folders})
    return digest, env


# ------------------------------------------------------------------------------ job records


def jsonable(value: Any) -> Any:
    """``value`` as JSON data: what JSON cannot hold becomes its ``str``."""
    return json.loads(json.dumps(value, default=str))


def named_paths(files: Any) -> list[tuple[str | None, str]]:
    """(name, path) of every file of a Snakemake input/output list, in order: the name of
    the named entry a file belongs to (``captions``), else None."""
    names: dict[int, str] = {}
    items = files.items() if hasattr(files, "items") else []
    by_value: dict[str, list[str]] = {}
    for name, value in items:
        for path in ([value] if isinstance(value, str | os.PathLike) else list(value)):
            by_value.setdefault(str(path), []).append(name)
    result = []
    for index, path in enumerate(files):
        taken = by_value.get(str(path))
        names[index] = taken.pop(0) if taken else None
        result.append((names[index], str(path)))
    return result


def gpu_models() -> list[str] | None:
    """The CUDA devices' names, if the job imported torch and CUDA is available; else None.
    torch is never imported here: a CPU job must not pay for it."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken driver must not fail a finished job
        return None


def code_root() -> Path:
    """The checkout whose ``src/capmix`` this process imported (paths in records are
    relative to it)."""
    return REPO_ROOT


def relative_to(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` if it lies inside, else absolute (POSIX)."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(root.resolve()).as_posix()
    except ValueError:
        return absolute.as_posix()


def source_hashes(script: str | Path | None) -> dict[str, Any]:
    """SHA-256 of the script and of every capmix module loaded now, by path from the
    checkout root."""
    root = code_root()
    modules = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if (name == "capmix" or name.startswith("capmix.")) and file and Path(file).is_file():
            modules[relative_to(file, root)] = sha256_file(file)
    found: dict[str, Any] = {"root": str(root), "modules": dict(sorted(modules.items()))}
    if script is not None and Path(script).is_file():
        found["script"] = {"path": relative_to(script, root), "sha256": sha256_file(script)}
    return found


def record_key(outputs: Iterable[str]) -> str:
    """A job's identity on disk: the hash of its sorted output paths (the same job, re-run,
    has the same outputs and so replaces its record)."""
    return hashlib.sha256("\n".join(sorted(outputs)).encode()).hexdigest()


def record_path(root: Path, rule: str, outputs: Iterable[str]) -> Path:
    return root / "jobs" / rule / f"{record_key(outputs)}.json"


class Job:
    """A running job's record in the making (see :func:`job_provenance`)."""

    def __init__(self, sm: Any, script: str | Path | None, workdir: Path):
        self.sm = sm
        self.script = script
        self.workdir = workdir
        self.root = workdir / PROVENANCE_DIR
        self.hasher = Hasher(self.root / "hashcache")
        self.rule = str(sm.rule)
        self.outputs = named_paths(sm.output)
        self.extra_outputs: list[tuple[str, tuple[str, ...]]] = []
        self.extra_inputs: list[str] = []
        self.path = record_path(self.root, self.rule, [self.key(p) for _, p in self.outputs])
        self.started = utc_now()
        self.clock = time.monotonic()
        self.inputs = [self.entry(p, name) for name, p in named_paths(sm.input)]

    def key(self, path: str | Path) -> str:
        return relative_to(path, self.workdir)

    def entry(self, path: str | Path, name: str | None, declared: bool = True,
              exclude: Iterable[str] = ()) -> dict[str, Any]:
        """An input or output entry; the job's own log files are never part of a directory
        (they are written after the record)."""
        logs = [os.path.relpath(log, path) for log in self.sm.log
                if Path(os.path.abspath(log)).is_relative_to(os.path.abspath(path))]
        entry = {**self.hasher.entry(path, [*exclude, *logs]), "path": self.key(path)}
        if name is not None:
            entry["name"] = name
        if not declared:
            entry["declared"] = False
        return entry

    def produced(self, *paths: str | Path, exclude: Iterable[str] = ()) -> None:
        """Files or directories this job wrote beyond its declared outputs (hashed at the
        end, and found by the chain like declared ones); ``exclude``: paths inside a
        directory that are not its data (a log Snakemake writes there)."""
        self.extra_outputs += [(str(p), tuple(exclude)) for p in paths]

    def consumed(self, *paths: str | Path) -> None:
        """Files or directories this job read beyond its declared inputs (hashed now)."""
        self.extra_inputs += [str(p) for p in paths]
        self.inputs += [self.entry(p, None, declared=False) for p in paths]

    def record(self) -> dict[str, Any]:
        """The finished job's record (hashes its outputs now)."""
        sm = self.sm
        outputs = [self.entry(p, name) for name, p in self.outputs]
        declared = {e["path"] for e in outputs}
        outputs += [self.entry(p, None, declared=False, exclude=exclude)
                    for p, exclude in self.extra_outputs if self.key(p) not in declared]
        env_hash, env = current_environment(self.root)
        resources = {k: v for k, v in getattr(sm.resources, "items", dict)()
                     if not k.startswith("_")}
        return {
            "format": RECORD_FORMAT,
            "rule": self.rule,
            "wildcards": jsonable(dict(sm.wildcards.items())),
            "params": jsonable(dict(sm.params.items())),
            "threads": sm.threads,
            "resources": jsonable(resources),
            "inputs": self.inputs,
            "outputs": outputs,
            "log": [self.key(p) for p in sm.log],
            "started": self.started,
            "ended": utc_now(),
            "duration_s": round(time.monotonic() - self.clock, 3),
            "workdir": str(self.workdir),
            "host": {"name": socket.gethostname(), "platform": platform.platform(),
                     "cpus": os.cpu_count(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                     "conda_prefix": os.environ.get("CONDA_PREFIX")},
            "gpu": gpu_models(),
            "code": {**code_version(), **source_hashes(self.script)},
            "environment": {"sha256": env_hash,
                            "python": env["python"], "executable": sys.executable},
        }


def main_script() -> str | None:
    """The running script's path: Snakemake sets ``__file__`` of the script it runs to the
    original file (not its temporary copy with the preamble)."""
    main = sys.modules.get("__main__")
    return getattr(main, "__file__", None)


@contextmanager
def job_provenance(sm: Any, script: str | Path | None = None) -> Iterator[Job]:
    """Run a job's body; on success write its record (see the module docstring).

    ``sm`` is the ``snakemake`` object of a ``script:`` rule; ``script`` defaults to the
    running script. Inputs are hashed on entry (what the job consumed), outputs on exit. On
    an exception nothing is written and the job's previous record, if any, is removed: its
    outputs are deleted by Snakemake.
    """
    job = Job(sm, script or main_script(), Path.cwd())
    try:
        with checksums_from(job.hasher.file):
            yield job
    except BaseException:
        job.path.unlink(missing_ok=True)
        raise
    write_shared_json(job.path, job.record())
    print(f"provenance: {relative_to(job.path, job.workdir)}", file=sys.stderr)


# ------------------------------------------------------------------------------ reading


def job_label(record: Mapping[str, Any]) -> str:
    """``evaluate[pool=toy_smoke, strategy=raw_top_30]``."""
    wildcards = ", ".join(f"{k}={v}" for k, v in sorted(record.get("wildcards", {}).items()))
    return f"{record['rule']}[{wildcards}]" if wildcards else str(record["rule"])


def find_workdir(path: str | Path) -> Path:
    """The working directory whose ``results/provenance`` holds ``path``'s records: the
    nearest folder above ``path`` that has one, else the current directory."""
    start = Path(os.path.abspath(path))
    for folder in [start, *start.parents]:
        if (folder / PROVENANCE_DIR / "jobs").is_dir():
            return folder
    return Path.cwd()


@dataclass
class Producer:
    """Where a file came from: the record, the output entry, and the member if the file
    lies inside a directory output."""

    job: str
    entry: dict[str, Any]
    member: dict[str, Any] | None = None

    @property
    def sha256(self) -> str | None:
        return (self.member or self.entry).get("sha256")


class Lineage:
    """Every job record under one working directory's provenance root."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir).resolve()
        self.root = self.workdir / PROVENANCE_DIR
        self.records: dict[str, dict[str, Any]] = {}
        self.files: dict[str, str] = {}  # record id -> its file
        self.producers: dict[str, Producer] = {}
        self.directories: dict[str, Producer] = {}
        for path in sorted((self.root / "jobs").glob("*/*.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise ValueError(f"{path}: unreadable job record ({error})") from error
            if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
                raise ValueError(f"{path}: not a capmix job record (format "
                                 f"{record.get('format') if isinstance(record, dict) else None}"
                                 f", expected {RECORD_FORMAT})")
            job = f"{path.parent.name}/{path.stem}"
            self.records[job] = record
            self.files[job] = str(path)
        # Newest record wins where two claim one file (a job whose outputs changed leaves
        # its old record behind).
        for job, record in sorted(self.records.items(), key=lambda kv: kv[1].get("ended", "")):
            for entry in record.get("outputs", []):
                self.producers[entry["path"]] = Producer(job, entry)
                if entry.get("kind") == "directory":
                    self.directories[entry["path"]] = Producer(job, entry)
                    for member in entry.get("members", []):
                        self.producers[f"{entry['path']}/{member['path']}"] = Producer(
                            job, entry, member)

    @classmethod
    def of(cls, path: str | Path) -> Lineage:
        return cls(find_workdir(path))

    def key(self, path: str | Path) -> str:
        """A path as records write it: relative to the working directory if inside it."""
        path = Path(path)
        if not path.is_absolute():
            path = Path.cwd() / path
        return relative_to(os.path.normpath(path), self.workdir)

    def absolute(self, key: str) -> Path:
        return Path(key) if Path(key).is_absolute() else self.workdir / key

    def producer(self, key: str) -> Producer | None:
        """The job that made ``key`` (a path as records write it)."""
        if key in self.producers:
            return self.producers[key]
        for parent in Path(key).parents:
            if str(parent) in self.directories:
                return self.directories[str(parent)]
        return None

    def chain(self, paths: Iterable[str | Path]) -> Chain:
        """Every job upstream of ``paths``, and the files no job made."""
        chain = Chain(self, [self.key(p) for p in paths])
        queue = list(chain.targets)
        while queue:
            key = queue.pop(0)
            producer = self.producer(key)
            if producer is None:
                continue
            if producer.job in chain.jobs:
                continue
            record = self.records[producer.job]
            chain.jobs[producer.job] = record
            for entry in record.get("inputs", []):
                upstream = self.producer(entry["path"])
                chain.edges.setdefault(producer.job, []).append(
                    (entry, upstream.job if upstream else None))
                if upstream is None:
                    chain.sources.setdefault(entry["path"], []).append(producer.job)
                else:
                    queue.append(entry["path"])
        return chain


@dataclass
class Chain:
    """The jobs upstream of some target files (breadth first from the targets)."""

    lineage: Lineage
    targets: list[str]
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: job -> (input entry, the job that made it or None) for each of its inputs
    edges: dict[str, list[tuple[dict[str, Any], str | None]]] = field(default_factory=dict)
    #: files no job made -> the jobs that consumed them
    sources: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "workdir": str(self.lineage.workdir),
            "targets": [{"path": t, "job": (p.job if (p := self.lineage.producer(t)) else None)}
                        for t in self.targets],
            "jobs": {job: {"label": job_label(r), "record": self.lineage.files[job],
                           "rule": r["rule"], "wildcards": r.get("wildcards", {}),
                           "started": r.get("started"), "ended": r.get("ended"),
                           "code": {k: r.get("code", {}).get(k) for k in
                                    ("git_commit", "git_dirty", "git_diff_sha256")},
                           "inputs": [{"path": e["path"], "sha256": e.get("sha256"),
                                       "made_by": up} for e, up in self.edges.get(job, [])],
                           "outputs": [{"path": e["path"], "sha256": e.get("sha256")}
                                       for e in r.get("outputs", [])]}
                     for job, r in self.jobs.items()},
            "sources": self.sources,
        }


# ------------------------------------------------------------------------------ check


@dataclass
class Problem:
    """A file of a chain that is not as its record says."""

    path: str
    kind: str  # changed | missing | stale
    job: str | None  # the job that made the file (None: a source no job made)
    recorded: str | None
    current: str | None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check(chain: Chain) -> list[Problem]:
    """Re-hash every file of ``chain`` (no cache) against its records.

    * every output (and every file of a directory output) of every job: ``changed`` or
      ``missing`` since the job made it (a directory also names files added or removed);
    * every source file (no job made it): against the hash each consuming job recorded;
    * ``stale``: a job consumed a version of a file other than the one its producer's record
      holds now (the producer re-ran after it; the number predates the file).
    """
    lineage, hasher, problems = chain.lineage, Hasher(), []

    def current(key: str) -> str | None:
        path = lineage.absolute(key)
        return hasher.file(path)[0] if path.is_file() else None

    for job, record in chain.jobs.items():
        for entry in record.get("outputs", []):
            problems += check_entry(entry, job, lineage.absolute(entry["path"]), current)
    for key, consumers in chain.sources.items():
        for job in consumers:
            entry = next(e for e, _ in chain.edges[job] if e["path"] == key)
            found = check_entry(entry, None, lineage.absolute(key), current)
            for problem in found:
                problem.detail = (problem.detail + "; " if problem.detail else "") + (
                    f"a source (no job made it), as consumed by {job_label(chain.jobs[job])}")
            problems += found
            if found:
                break
    for job, edges in chain.edges.items():
        for entry, upstream in edges:
            if upstream is None or entry.get("sha256") is None:
                continue
            producer = lineage.producer(entry["path"])
            made = producer.sha256 if producer else None
            if made is not None and made != entry["sha256"]:
                problems.append(Problem(
                    entry["path"], "stale", upstream, made, entry["sha256"],
                    f"{job_label(chain.jobs[job])} consumed another version than "
                    f"{job_label(lineage.records[upstream])} made last"))
    unique: dict[tuple[str, str], Problem] = {}
    for problem in problems:
        unique.setdefault((problem.path, problem.kind), problem)
    return list(unique.values())


def check_entry(entry: Mapping[str, Any], job: str | None, path: Path,
                current: Any) -> list[Problem]:
    key = entry["path"]
    if entry.get("missing"):
        return []
    if entry.get("kind") == "directory":
        if not path.is_dir():
            return [Problem(key, "missing", job, entry.get("sha256"), None)]
        problems = []
        members = {m["path"]: m for m in entry.get("members", [])}
        now = set(directory_files(path, entry.get("excluded", ())))
        for name, member in members.items():
            sha = current(f"{key}/{name}") if name in now else None
            if sha is None:
                problems.append(Problem(f"{key}/{name}", "missing", job, member["sha256"], None))
            elif sha != member["sha256"]:
                problems.append(Problem(f"{key}/{name}", "changed", job, member["sha256"], sha))
        problems += [Problem(f"{key}/{name}", "changed", job, None, current(f"{key}/{name}"),
                             "added since the job ran") for name in sorted(now - set(members))]
        return problems
    sha = current(key)
    if sha is None:
        return [Problem(key, "missing", job, entry.get("sha256"), None)]
    if sha != entry.get("sha256"):
        return [Problem(key, "changed", job, entry.get("sha256"), sha)]
    return []


# ------------------------------------------------------------------------------ diff


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (lists stay whole)."""
    if isinstance(value, Mapping) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def changed_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    fa, fb = flatten(a), flatten(b)
    return [{"key": k, "a": fa.get(k), "b": fb.get(k)} for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k)]


def align(a: Chain, b: Chain) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Jobs of two chains paired by rule and wildcards; what is left paired by rule where
    each side has exactly one such job (two strategies' evaluations); the rest unpaired."""
    def ident(record: Mapping[str, Any]) -> str:
        return json.dumps([record["rule"], record.get("wildcards", {})], sort_keys=True)

    by_b = {ident(r): job for job, r in b.jobs.items()}
    pairs, left_a = [], []
    for job, record in a.jobs.items():
        if ident(record) in by_b:
            pairs.append((job, by_b.pop(ident(record))))
        else:
            left_a.append(job)
    left_b = [job for job in b.jobs if job in by_b.values()]
    for rule in sorted({a.jobs[j]["rule"] for j in left_a}):
        ours = [j for j in left_a if a.jobs[j]["rule"] == rule]
        theirs = [j for j in left_b if b.jobs[j]["rule"] == rule]
        if len(ours) == len(theirs) == 1:
            pairs.append((ours[0], theirs[0]))
            left_a.remove(ours[0])
            left_b.remove(theirs[0])
    return pairs, left_a, left_b


def load_environment(lineage: Lineage, digest: str | None) -> dict[str, Any] | None:
    if not digest:
        return None
    path = lineage.root / "environments" / f"{digest}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def diff_jobs(a: Chain, job_a: str, b: Chain, job_b: str) -> dict[str, Any]:
    """How one job of chain ``a`` and its counterpart in ``b`` differ, by category."""
    ra, rb = a.jobs[job_a], b.jobs[job_b]
    out: dict[str, Any] = {"a": job_label(ra), "b": job_label(rb)}
    wildcards = changed_keys(ra.get("wildcards", {}), rb.get("wildcards", {}))
    if wildcards:
        out["wildcards"] = wildcards
    params = changed_keys(ra.get("params", {}), rb.get("params", {}))
    if params:
        out["params"] = params
    ca, cb = ra.get("code", {}), rb.get("code", {})
    code = [{"key": k, "a": ca.get(k), "b": cb.get(k)}
            for k in ("git_commit", "git_dirty", "git_diff_sha256") if ca.get(k) != cb.get(k)]
    sa, sb = ca.get("script") or {}, cb.get("script") or {}
    if sa.get("sha256") != sb.get("sha256"):
        code.append({"key": f"script {sa.get('path') or sb.get('path')}",
                     "a": sa.get("sha256"), "b": sb.get("sha256")})
    ma, mb = ca.get("modules", {}), cb.get("modules", {})
    code += [{"key": f"module {m}", "a": ma.get(m), "b": mb.get(m)}
             for m in sorted(set(ma) | set(mb)) if ma.get(m) != mb.get(m)]
    if code:
        out["code"] = code
    inputs = diff_inputs(ra.get("inputs", []), rb.get("inputs", []))
    if inputs:
        out["inputs"] = inputs
    ea, eb = ra.get("environment", {}), rb.get("environment", {})
    if ea.get("sha256") != eb.get("sha256"):
        env_a = load_environment(a.lineage, ea.get("sha256"))
        env_b = load_environment(b.lineage, eb.get("sha256"))
        if env_a is None or env_b is None:
            out["software"] = [{"key": "environment", "a": ea.get("sha256"),
                                "b": eb.get("sha256")}]
        else:
            software = changed_keys({"python": env_a.get("python")},
                                    {"python": env_b.get("python")})
            da, db = env_a.get("distributions", {}), env_b.get("distributions", {})
            software += [{"key": name, "a": da.get(name), "b": db.get(name)}
                         for name in sorted(set(da) | set(db)) if da.get(name) != db.get(name)]
            out["software"] = software
    host_a, host_b = (ra.get("host") or {}).get("name"), (rb.get("host") or {}).get("name")
    platform_diff = ([{"key": "host", "a": host_a, "b": host_b}] if host_a != host_b else []) \
        + ([{"key": "gpu", "a": ra.get("gpu"), "b": rb.get("gpu")}]
           if ra.get("gpu") != rb.get("gpu") else [])
    if platform_diff:
        out["platform"] = platform_diff
    return out


def diff_inputs(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]
                ) -> list[dict[str, Any]]:
    """Inputs paired by Snakemake name and position within it; differing path or hash."""
    def keyed(entries: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], Mapping[str, Any]]:
        counts: dict[str, int] = {}
        out = {}
        for entry in entries:
            name = str(entry.get("name")) if entry.get("declared", True) else "(undeclared)"
            out[(name, counts.get(name, 0))] = entry
            counts[name] = counts.get(name, 0) + 1
        return out

    ka, kb = keyed(a), keyed(b)
    found = []
    for key in sorted(set(ka) | set(kb), key=lambda k: (k[0], k[1])):
        ea, eb = ka.get(key), kb.get(key)
        if ea is None or eb is None or ea["path"] != eb["path"] \
                or ea.get("sha256") != eb.get("sha256"):
            found.append({"name": key[0] if key[0] != "None" else None,
                          "a": {"path": ea["path"], "sha256": ea.get("sha256")} if ea else None,
                          "b": {"path": eb["path"], "sha256": eb.get("sha256")} if eb else None})
    return found


def diff(a: Chain, b: Chain) -> dict[str, Any]:
    """Why two results differ: their files, then each aligned job that differs in
    wildcards, params, code, inputs, software or platform, and jobs only one side has."""
    la, lb = a.lineage, b.lineage
    results = []
    for ta, tb in zip(a.targets, b.targets, strict=False):
        pa, pb = la.absolute(ta), lb.absolute(tb)
        results.append({"a": ta, "b": tb,
                        "a_sha256": sha256_file(pa) if pa.is_file() else None,
                        "b_sha256": sha256_file(pb) if pb.is_file() else None})
    pairs, only_a, only_b = align(a, b)
    jobs = [d for ja, jb in pairs if len(d := diff_jobs(a, ja, b, jb)) > 2]
    return {"results": results, "jobs": jobs, "jobs_compared": len(pairs),
            "only_a": [job_label(a.jobs[j]) for j in only_a],
            "only_b": [job_label(b.jobs[j]) for j in only_b]}


# ------------------------------------------------------------------------------ table cells


def cells_path(table: str | Path) -> Path:
    """The sidecar of a table: ``T.csv`` -> ``T.cells.json``."""
    table = Path(table)
    return table.with_name(f"{table.name.removesuffix(table.suffix)}.cells.json")


def write_table(table: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]],
                cells: Sequence[Mapping[str, Any]]) -> None:
    """Write ``T.csv`` and its ``T.cells.json`` (the contract in docs/provenance.md).

    The first column holds the row labels; each cell dict has ``row``, ``column``,
    ``sources`` (paths of the results the value came from) and optionally ``field`` (the
    dotted key in the source) and ``key`` (the same as a list, when a part has a dot).
    """
    from io import StringIO

    from capmix.provenance import write_text_atomic

    table = Path(table)
    columns, labels = set(header), {str(r[0]) for r in rows}
    for cell in cells:
        if cell["column"] not in columns or cell["row"] not in labels:
            raise ValueError(f"{table}: cell ({cell['row']!r}, {cell['column']!r}) is not in "
                             "the table")
    buffer = StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(table, buffer.getvalue())
    write_json(cells_path(table), {"format": CELLS_FORMAT, "table": table.name,
                                   "cells": [dict(c) for c in cells]})


def find_cell(table: str | Path, row: str, column: str) -> dict[str, Any]:
    """One cell of a table, from its sidecar, with its value from the CSV.

    LookupError names the table and the rows and columns it has, when there is no such cell.
    """
    table = Path(table)
    sidecar = table if table.name.endswith(".cells.json") else cells_path(table)
    try:
        cells = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LookupError(f"{table}: no cell sidecar {sidecar.name} (a table says where its "
                          "cells came from in T.cells.json; docs/provenance.md)") from None
    csv_path = sidecar.with_name(cells["table"])
    matches = [c for c in cells["cells"] if c["row"] == row and c["column"] == column]
    if not matches:
        matches = [c for c in cells["cells"] if c["row"].lower() == row.lower()
                   and c["column"].lower() == column.lower()]
    if not matches:
        rows = sorted({c["row"] for c in cells["cells"]})
        columns = sorted({c["column"] for c in cells["cells"]})
        raise LookupError(f"{csv_path}: no cell at row {row!r}, column {column!r} (rows: "
                          f"{', '.join(rows)}; columns with sources: {', '.join(columns)})")
    cell = dict(matches[0])
    cell["table"] = str(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            for line in reader:
                if line and line[0] == cell["row"] and cell["column"] in header:
                    cell["value"] = line[header.index(cell["column"])]
    except (OSError, StopIteration):
        cell["value"] = None
    return cell


# ------------------------------------------------------------------------------ rendering


def short(sha: str | None) -> str:
    return sha[:12] if sha else "-"


def human_bytes(size: int | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    return f"{size} B"


def describe_code(code: Mapping[str, Any]) -> str:
    commit = code.get("git_commit")
    if not commit:
        text = "no git"
    else:
        text = f"commit {commit[:10]}"
        if code.get("git_dirty"):
            text += f" dirty (diff {short(code.get('git_diff_sha256'))})"
    script = code.get("script") or {}
    if script:
        text += f", {Path(script['path']).name} {short(script.get('sha256'))}"
    return text + f", {len(code.get('modules', {}))} capmix modules hashed"


def render_chain(chain: Chain, max_files: int = 6) -> str:
    """The chain as an indented tree from the targets to the sources; a job met again is
    named, not repeated."""
    lineage, lines, shown = chain.lineage, [], set()

    def files(entries: Sequence[Mapping[str, Any]]) -> str:
        names = [f"{e['path']} ({short(e.get('sha256'))})" for e in entries[:max_files]]
        if len(entries) > max_files:
            names.append(f"... {len(entries) - max_files} more")
        return ", ".join(names) or "nothing"

    def visit(job: str, depth: int) -> None:
        pad = "  " * depth
        record = chain.jobs[job]
        if job in shown:
            lines.append(f"{pad}- {job_label(record)} (above)")
            return
        shown.add(job)
        lines.append(f"{pad}- {job_label(record)}  {record.get('started', '?')[:19]}Z, "
                     f"{record.get('duration_s', '?')} s on {record.get('host', {}).get('name')}"
                     + (f", GPU {', '.join(record['gpu'])}" if record.get("gpu") else ""))
        lines.append(f"{pad}    code: {describe_code(record.get('code', {}))}; "
                     f"environment {short(record.get('environment', {}).get('sha256'))}")
        lines.append(f"{pad}    record: {relative_to(lineage.files[job], lineage.workdir)}")
        lines.append(f"{pad}    consumed: {files(record.get('inputs', []))}")
        lines.append(f"{pad}    produced: {files(record.get('outputs', []))}")
        for entry, upstream in chain.edges.get(job, []):
            if upstream is None:
                lines.append(f"{pad}  - source {entry['path']} ({short(entry.get('sha256'))}): "
                             "no job made it")
        for upstream in dict.fromkeys(u for _, u in chain.edges.get(job, []) if u):
            visit(upstream, depth + 1)

    for target in chain.targets:
        producer = lineage.producer(target)
        path = lineage.absolute(target)
        size = path.stat().st_size if path.is_file() else None
        if producer is None:
            lines.append(f"{target}: no job record made it (a source, or made outside the "
                         f"workflow; records under {lineage.root})")
            continue
        lines.append(f"{target} ({human_bytes(size)}, sha256 {short(producer.sha256)} as made)")
        visit(producer.job, 0)
    lines.append(f"{len(chain.jobs)} jobs; sources (made by no job): "
                 + (", ".join(sorted(chain.sources)) or "none"))
    return "\n".join(lines)


def render_problems(chain: Chain, problems: Sequence[Problem]) -> str:
    if not problems:
        return (f"OK: every file of {len(chain.jobs)} jobs and {len(chain.sources)} sources "
                "has the hash its record holds")
    lines = []
    for p in problems:
        made = (f"made by {job_label(chain.lineage.records[p.job])}"
                f" ({chain.lineage.records[p.job].get('ended', '?')[:19]}Z)"
                if p.job else "made by no job")
        lines.append(f"{p.kind.upper()}: {p.path} ({made}); recorded {short(p.recorded)}, "
                     f"now {short(p.current)}" + (f"; {p.detail}" if p.detail else ""))
    return "\n".join(lines)


def render_diff(result: Mapping[str, Any]) -> str:
    lines = []
    for r in result["results"]:
        same = "same bytes" if r["a_sha256"] == r["b_sha256"] else "differ"
        lines.append(f"A {r['a']} ({short(r['a_sha256'])}) vs B {r['b']} "
                     f"({short(r['b_sha256'])}): {same}")
    for job in result["jobs"]:
        lines.append(f"{job['a']}" + (f" vs {job['b']}" if job["b"] != job["a"] else "") + ":")
        for category in ("wildcards", "params", "code", "inputs", "software", "platform"):
            for item in job.get(category, []):
                if category == "inputs":
                    a, b = item["a"] or {}, item["b"] or {}
                    lines.append(f"  input {item['name'] or ''}: A {a.get('path')} "
                                 f"({short(a.get('sha256'))}) vs B {b.get('path')} "
                                 f"({short(b.get('sha256'))})")
                else:
                    lines.append(f"  {category[:-1] if category.endswith('s') else category} "
                                 f"{item['key']}: A {item['a']!r} vs B {item['b']!r}")
    if result["only_a"]:
        lines.append("only in A's chain: " + ", ".join(result["only_a"]))
    if result["only_b"]:
        lines.append("only in B's chain: " + ", ".join(result["only_b"]))
    if not result["jobs"] and not result["only_a"] and not result["only_b"]:
        lines.append(f"no differences in {result['jobs_compared']} aligned jobs")
    return "\n".join(lines)
