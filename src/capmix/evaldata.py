"""Evaluation task data: the task directory layout, writing task directories, fetching them.

Every task is one directory in clip_benchmark's webdataset layout (``classnames.txt``,
``zeroshot_classification_templates.txt``, ``test/nshards.txt``, ``test/N.tar``;
``dataset_type.txt`` = ``retrieval`` for retrieval sets) with capmix's manifest
(:data:`capmix.suites.TASK_MANIFEST`) once it is complete. DataComp's classification sets come
in that layout (``djghosh/wds_*_test``); the Hugging Face retrieval sets and WinoGAViL are
converted to it once, when fetched (:func:`fetch_task`, :func:`write_retrieval_task`,
:func:`write_winogavil_task`), and the toy suite is written in it from the toy world
(:func:`write_toy_task`). Evaluation (:mod:`capmix.evaluate`) then reads local files only,
through one code path, and checks them with :func:`task_shards` and
:func:`check_sample_count`.

The ``eval_data`` rule runs this module in an env without torch: PIL, webdataset, pyarrow and
huggingface_hub are imported inside the functions that use them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capmix.parquetio import stream_batches
from capmix.provenance import sha256_file, write_json
from capmix.suites import TASK_MANIFEST, EvalConfigError, Task


class EvalDataError(ValueError):
    """Evaluation data that is missing or malformed; the message names task and file."""


# ------------------------------------------------------------------------------ the layout


def task_dir(data_dir: Path, task: Task) -> Path:
    """Where one task of a suite lives: its ``data`` directory under the suite's data_dir."""
    return Path(data_dir) / task.data


def task_shards(directory: Path, task: Task) -> list[str]:
    """The task's shard paths (``test/N.tar`` for N < ``test/nshards.txt``), all present.

    Evaluation checks every task with this before the first one runs, so that a missing or
    partial download fails at once, naming the task.
    """
    nshards_file = directory / "test" / "nshards.txt"
    if not nshards_file.is_file():
        raise EvalDataError(f"task '{task.name}': {nshards_file} is missing (fetch the "
                            f"evaluation data first: the eval_data rule)")
    try:
        nshards = int(nshards_file.read_text().strip())
    except ValueError as error:
        raise EvalDataError(f"task '{task.name}': {nshards_file} does not hold a shard "
                            f"count") from error
    shards = [directory / "test" / f"{i}.tar" for i in range(nshards)]
    absent = [str(s) for s in shards if not s.is_file()]
    if absent:
        raise EvalDataError(f"task '{task.name}': {len(absent)} of {nshards} shards missing, "
                            f"e.g. {absent[0]}")
    return [str(s) for s in shards]


def read_task_lines(path: Path, task: Task) -> list[str]:
    """The non-empty, stripped lines of one of a task's text files (class names, templates)."""
    if not path.is_file():
        raise EvalDataError(f"task '{task.name}': {path} is missing")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def expected_size(task: Task, directory: Path) -> int | None:
    """The sample count a task must have: the suite's ``size``, else what capmix wrote."""
    if task.size:
        return int(task.size)
    manifest = directory / TASK_MANIFEST
    if manifest.is_file():
        return int(json.loads(manifest.read_text())["n_samples"])
    return None


def check_sample_count(task: Task, directory: Path, seen: int) -> None:
    """Fail, naming the task, when evaluation read another number of samples than expected."""
    expected = expected_size(task, directory)
    if expected is not None and seen != expected:
        raise EvalDataError(f"task '{task.name}': read {seen} samples from {directory}, "
                            f"expected {expected} (an incomplete download or conversion?)")


# ------------------------------------------------------------------------------ writing tasks


def _source_label(source: Mapping[str, Any]) -> str:
    """A short name of where task rows come from, for error messages."""
    if "repo" in source:
        return f"{source['repo']}@{source.get('revision', 'main')}"
    return ", ".join(f"{k}={v}" for k, v in source.items() if k != "sha256")


def _field(row: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in row:
        raise EvalDataError(f"{where} has no {key!r} (columns: {', '.join(map(str, row))})")
    return row[key]


def _encode(image: Any, where: str) -> tuple[str, bytes]:
    """(extension, bytes) of an image given as encoded bytes, an HF ``{bytes, path}`` dict or
    a PIL image; encoded bytes are kept as they are, so pixels match the source exactly.

    Rows are third-party data: an image given only as a path is refused (reading it would
    copy this machine's files into the task), and bytes that are no image name ``where``.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Mapping):
        if not isinstance(image.get("bytes"), bytes | bytearray) or not image["bytes"]:
            raise EvalDataError(f"{where}: image without embedded bytes (path "
                                f"{image.get('path')!r}); capmix does not read images by path "
                                f"from dataset rows")
        image = image["bytes"]
    if isinstance(image, bytes | bytearray):
        try:
            with Image.open(io.BytesIO(image)) as opened:
                fmt = (opened.format or "PNG").lower()
        except (UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise EvalDataError(f"{where}: the image bytes do not decode ({error})") from error
        return {"jpeg": "jpg"}.get(fmt, fmt), bytes(image)
    if not isinstance(image, Image.Image):
        raise EvalDataError(f"{where}: the image is a {type(image).__name__}, not image bytes")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "png", buffer.getvalue()


@dataclass
class _TaskWriter:
    """Writes one task directory in clip_benchmark's webdataset layout."""

    directory: Path
    samples_per_shard: int = 10000
    n: int = 0
    _sink: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        (self.directory / "test").mkdir(parents=True, exist_ok=True)
        for stale in (self.directory / "test").glob("*.tar"):
            stale.unlink()

    def write(self, sample: Mapping[str, Any]) -> None:
        import webdataset as wds

        if self._sink is None or self.n % self.samples_per_shard == 0:
            if self._sink is not None:
                self._sink.close()
            shard = self.directory / "test" / f"{self.n // self.samples_per_shard}.tar"
            # fixed int mtime: reproducible bytes, and no PAX header per member (float mtimes)
            self._sink = wds.TarWriter(str(shard), mtime=0)
        self._sink.write({"__key__": f"{self.n:08d}", **sample})
        self.n += 1

    def __enter__(self) -> _TaskWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """After a bad row, close the open shard; the task stays incomplete (no manifest)."""
        if exc_info[0] is not None and self._sink is not None:
            self._sink.close()
            self._sink = None

    def close(self, source: Mapping[str, Any], **files: Sequence[str] | str) -> dict[str, Any]:
        if self._sink is not None:
            self._sink.close()
        nshards = -(-self.n // self.samples_per_shard)
        (self.directory / "test" / "nshards.txt").write_text(f"{nshards}\n")
        for name, content in files.items():
            text = content if isinstance(content, str) else "\n".join(content) + "\n"
            (self.directory / f"{name}.txt").write_text(text, encoding="utf-8")
        manifest = {"n_samples": self.n, "nshards": nshards, "source": dict(source)}
        write_json(self.directory / TASK_MANIFEST, manifest)
        return manifest


def write_retrieval_task(rows: Iterable[Mapping[str, Any]], directory: Path,
                         source: Mapping[str, Any], image_key: str = "image",
                         captions_key: str = "caption") -> dict[str, Any]:
    """Image-text retrieval rows (an image and its list of captions) as a task directory.

    Each sample is the image plus a ``txt`` of its captions, one per line: the layout
    clip_benchmark reads retrieval webdatasets in (``dataset_type.txt`` = ``retrieval``).
    """
    with _TaskWriter(Path(directory)) as writer:
        for number, row in enumerate(rows):
            _write_retrieval_row(writer, row, f"{_source_label(source)}: row {number}",
                                 image_key, captions_key)
    return writer.close(source, dataset_type="retrieval")


def _write_retrieval_row(writer: _TaskWriter, row: Mapping[str, Any], where: str,
                         image_key: str, captions_key: str) -> None:
    captions = _field(row, captions_key, where)
    if isinstance(captions, str):
        captions = [captions]
    if (not isinstance(captions, list) or not captions
            or not all(isinstance(c, str) and c.strip() and "\n" not in c
                       for c in captions)):
        raise EvalDataError(f"{where}: {captions_key} must be a non-empty list of "
                            f"one-line captions, not {captions!r:.200}")
    ext, data = _encode(_field(row, image_key, where), where)
    writer.write({ext: data, "txt": "\n".join(c.strip() for c in captions)})


def write_winogavil_task(rows: Iterable[Mapping[str, Any]], directory: Path,
                         source: Mapping[str, Any]) -> dict[str, Any]:
    """WinoGAViL rows (cue, candidates, associations, candidate_images) as a task directory:
    one sample per instance, its candidate images as ``{i}.png`` and the rest as ``json``."""
    from PIL import Image

    with _TaskWriter(Path(directory)) as writer:
        for number, row in enumerate(rows):
            where = f"{_source_label(source)}: instance {number}"
            candidates = list(_field(row, "candidates", where))
            images = list(_field(row, "candidate_images", where))
            associations = list(_field(row, "associations", where))
            if len(candidates) != len(images) or not set(associations) <= set(candidates):
                raise EvalDataError(f"{where} ({row.get('cue')!r}) has {len(images)} images "
                                    f"for {len(candidates)} candidates, or associations "
                                    f"outside its candidates")
            sample: dict[str, Any] = {"json": {"cue": _field(row, "cue", where),
                                               "candidates": candidates,
                                               "associations": associations}}
            for i, image in enumerate(images):
                _, data = _encode(image, f"{where}, candidate image {i}")
                with Image.open(io.BytesIO(data)) as opened:
                    buffer = io.BytesIO()
                    opened.convert("RGB").save(buffer, format="PNG")
                sample[f"{i}.png"] = buffer.getvalue()
            writer.write(sample)
    return writer.close(source, dataset_type="winogavil")


def write_toy_task(task: Task, world_dir: Path, directory: Path,
                   templates: Sequence[str]) -> dict[str, Any]:
    """One toy-suite task from the toy world's split, in the real suite's layout.

    Classification: each image with its class index (``cls``), the world's class names and
    the suite's templates. Retrieval: each image with all its reference captions.
    """
    import pyarrow.parquet as pq

    from capmix.toyspec import CLASSNAMES

    table = pq.read_table(Path(world_dir) / f"{task.split}.parquet",
                          columns=["uid", "url", "label", "captions"]).to_pylist()
    source = {"toy_world": str(world_dir), "split": task.split}
    paths = [Path(world_dir) / task.split / f"{row['uid']}.png" for row in table]
    if task.protocol == "retrieval":
        return write_retrieval_task(({"image": p.read_bytes(), "caption": row["captions"]}
                                     for p, row in zip(paths, table, strict=True)),
                                    directory, source)
    if task.protocol != "classification":
        raise EvalConfigError(f"toy task '{task.name}': protocol {task.protocol!r} has no toy "
                              f"data (classification or retrieval)")
    with _TaskWriter(Path(directory)) as writer:
        for path, row in zip(paths, table, strict=True):
            if not 0 <= row["label"] < len(CLASSNAMES):
                raise EvalDataError(f"toy task '{task.name}': uid {row['uid']} has label "
                                    f"{row['label']} outside the {len(CLASSNAMES)} classes")
            writer.write({"png": path.read_bytes(), "cls": int(row["label"])})
    return writer.close(source, classnames=list(CLASSNAMES),
                        zeroshot_classification_templates=list(templates))


# ------------------------------------------------------------------------------ fetching


#: Where ``hf_dataset`` sources are read from unless the task names a revision: the Hub's
#: own Parquet export of a dataset repo. The nlphuji sets DataComp loads are script datasets
#: (``datasets`` runs their Python loading script, ``trust_remote_code``); capmix never runs
#: code from a dataset repo, so it reads the same rows from Parquet files instead.
HF_PARQUET_REVISION = "refs/convert/parquet"


def hf_parquet_files(root: Path, split: str, config: str | None = None) -> list[Path]:
    """The Parquet files of one split (and config) in a downloaded Hub dataset snapshot.

    Understands the Hub's two export layouts, ``{config}/{split}/NNNN.parquet`` and
    ``{config}/{name}-{split}[-NNNNN-of-NNNNN].parquet``, and a plain repo's
    ``data/{split}-NNNNN-of-NNNNN.parquet``. Several configs and none chosen is an error: the
    rows would silently mix.
    """
    def in_split(relative: Path) -> bool:
        stem = relative.stem
        return (split in relative.parts[:-1] or stem == split or stem.startswith(f"{split}-")
                or stem.endswith(f"-{split}") or f"-{split}-" in stem)

    files = sorted(p for p in Path(root).rglob("*.parquet")
                   if not any(part.startswith(".") for part in p.relative_to(root).parts)
                   and in_split(p.relative_to(root)))
    if config is not None:
        files = [p for p in files if p.relative_to(root).parts[0] == config]
    configs = sorted({p.relative_to(root).parts[0] for p in files
                      if len(p.relative_to(root).parts) > 1})
    if config is None and len(configs) > 1:
        raise EvalDataError(f"{root}: Parquet files of split {split!r} in several configs "
                            f"({', '.join(configs)}); name one as the task's source.config")
    return files


def iter_parquet_rows(files: Sequence[Path], batch_size: int = 64) -> Iterator[dict[str, Any]]:
    """Rows of Parquet files as dicts, a batch at a time (the Flickr30k export is GBs)."""
    for path in files:
        for batch in stream_batches(path, batch_size):
            yield from batch.to_pylist()


def fetch_task(task: Task, data_dir: Path,
               snapshot_download: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Fetch one real task into ``data_dir`` once; later calls find it complete and return.

    ``wds`` sources (default: DataComp's ``djghosh/{data}``) are Hugging Face dataset repos
    already in the task layout, downloaded with ``huggingface_hub.snapshot_download``
    (resumable; files already there are kept). ``hf_dataset`` sources are the rows DataComp
    loads with ``datasets.load_dataset(repo, split="test")``, read from the repo's Parquet
    files (``source.revision``, default the Hub's export) and converted; images must be
    embedded bytes, never paths. The downloader is a parameter so that tests run without a
    network.
    """
    directory = task_dir(data_dir, task)
    marker = directory / TASK_MANIFEST
    if marker.is_file():
        return json.loads(marker.read_text())
    if snapshot_download is None:
        from huggingface_hub import snapshot_download
    source = dict(task.source or {"type": "wds", "repo": f"djghosh/{task.data}"})
    if source["type"] == "wds":
        snapshot_download(repo_id=source["repo"], repo_type="dataset", local_dir=str(directory))
        shards = task_shards(directory, task)
        manifest = {"n_samples": task.size, "nshards": len(shards), "source": source,
                    "sha256": {Path(s).name: sha256_file(s) for s in shards}}
        write_json(marker, manifest)
        return manifest
    if source["type"] != "hf_dataset":
        raise EvalConfigError(f"task '{task.name}': unknown source type {source['type']!r}")
    source.setdefault("revision", HF_PARQUET_REVISION)
    split = source.setdefault("split", "test")
    # Kept beside the task, not inside it: a half-converted task directory is rebuilt from
    # here without downloading again (snapshot_download keeps complete files).
    download = Path(data_dir) / "hf_parquet" / task.data
    snapshot_download(repo_id=source["repo"], repo_type="dataset", revision=source["revision"],
                      local_dir=str(download), allow_patterns=["*.parquet"])
    files = hf_parquet_files(download, split, source.get("config"))
    if not files:
        raise EvalDataError(
            f"task '{task.name}': {source['repo']} at revision {source['revision']!r} has no "
            f"Parquet files for split {split!r} (looked in {download}). capmix does not run "
            f"dataset loading scripts: set the task's source.revision to a revision with "
            f"Parquet files (the Hub's export, a converted pull request refs/pr/N, or a commit)")
    source["sha256"] = {str(p.relative_to(download)): sha256_file(p) for p in files}
    rows = iter_parquet_rows(files)
    write = write_winogavil_task if task.protocol == "winogavil" else write_retrieval_task
    manifest = write(rows, directory, source)
    if task.size is not None and manifest["n_samples"] != task.size:
        marker.unlink()  # not complete: evaluating it would score a different test set
        raise EvalDataError(f"task '{task.name}': {_source_label(source)} split {split!r} has "
                            f"{manifest['n_samples']} rows, the suite says size {task.size}")
    return manifest
