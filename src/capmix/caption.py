"""Caption stage: synthetic captions for every fetched image, shard by shard.

One job captions the shards of one chunk of a pool with one captioner at one
temperature (``results/{pool}/captions/{captioner}/{temperature}/``). Per shard
it writes one parquet (uid, key, captions, caption, status, error) atomically;
a killed job re-run skips complete shards and redoes the rest, and since each
shard's sampling seed is derived from (seed, pool, captioner, temperature,
shard), a redone shard gets the same captions it would have got the first time.

Images are decoded and preprocessed in DataLoader worker processes, so the
model loop only moves tensors; an image that does not decode is recorded as a
per-uid failure, not skipped silently.

torch and the captioner backends are imported where captioning runs, not at module level:
the raw-caption, quality and mixing jobs use this module's file helpers (``caption_files``,
``raw_caption_sets``) and would otherwise each pay ~2 s of torch import (bench/default_run.py).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from capmix.modelrun import resolve_device
from capmix.provenance import provenance_record, write_json
from capmix.shards import (
    ROWS_PER_RANGE,
    Progress,
    ShardTask,
    check_loader_fits,
    fetched_rows,
    is_complete,
    listed_shard_files,
    plan_ranges,
    plan_tasks,
    read_shard,
    shard_loader,
    stable_seed,
    write_parquet_atomic,
)

if TYPE_CHECKING:
    from capmix.captioners import Captioner, Decoding

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSettings:
    """How a model stage runs (not what it computes): batch, device, precision, workers,
    prefetch, and the GPUs its job requested (Snakemake resource ``gpu``, from config
    ``resources.<stage>``).

    ``batch_size`` is what the model sees per call: for captioning, *sequences* per
    ``generate`` call (images x ``num_captions``; see :func:`images_per_batch`), because
    the decoder's KV cache grows with every sequence; for image embeddings, images.
    ``prefetch_factor`` is torch's DataLoader's: batches in flight per worker, each held
    in /dev/shm (checked at job start, ``capmix.shards.check_loader_fits``).
    ``gpus`` comes from the job, not from the stage's config entry: with device ``auto`` it
    decides whether a job that sees no GPU may run on the CPU (no request: a laptop) or must
    fail (:meth:`torch_device`).
    """

    batch_size: int = 64
    device: str = "auto"
    precision: str = "fp32"
    workers: int = 2
    gpus: int = 0
    prefetch_factor: int = 2  # torch's default

    @classmethod
    def from_config(cls, settings: Mapping[str, Any], gpus: int | None = 0) -> RunSettings:
        """The config's stage settings (``caption``, ``score``) for a job that requested
        ``gpus`` (None: none)."""
        return cls(**{k: settings[k] for k in ("batch_size", "device", "precision", "workers",
                                               "prefetch_factor") if k in settings},
                   gpus=gpus or 0)

    def torch_device(self, who: str) -> str:
        """The device a model runs on; a job that asked for a GPU and sees none fails here,
        naming ``who`` (:func:`capmix.modelrun.resolve_device`)."""
        return resolve_device(self.device, self.gpus, who)


def images_per_batch(batch_size: int, num_captions: int) -> int:
    """Images per DataLoader batch so that a ``generate`` call samples about ``batch_size``
    sequences: each image is decoded ``num_captions`` times (HF ``num_return_sequences``,
    CoCa's ``repeat_interleave``). At least one image, whatever ``num_captions`` is."""
    return max(1, batch_size // num_captions)


def decoding_for(spec: Mapping[str, Any], temperature: float) -> Decoding:
    from capmix.captioners import Decoding

    params = dict(spec.get("decoding", {}))
    return Decoding(temperature=float(temperature), **params)


def caption_task(captioner: Captioner, task: ShardTask, decoding: Decoding, seed: int,
                 settings: RunSettings) -> pd.DataFrame:
    """Caption one shard; one row per uid of the shard."""
    samples = read_shard(task)
    loader = shard_loader(samples, captioner.preprocess,
                          images_per_batch(settings.batch_size, decoding.num_captions),
                          settings.workers, settings.prefetch_factor)
    captions: dict[int, list[str]] = {}
    errors: dict[int, str] = {}
    for batch_number, (positions, pixels, failed) in enumerate(loader):
        errors.update(dict(failed))
        if pixels is not None:
            texts = captioner.generate(pixels, decoding, seed=stable_seed(seed, batch_number))
            captions.update(zip(positions, texts, strict=True))
    rows = []
    for i, sample in enumerate(samples):
        texts = captions.get(i, [])
        rows.append({"uid": sample.uid, "key": sample.key, "captions": texts,
                     "caption": texts[0] if texts else None,
                     "status": "ok" if i in captions else "undecodable",
                     "error": errors.get(i)})
    return pd.DataFrame(rows)


def caption_pool(pool: str, captioner_name: str, spec: Mapping[str, Any], temperature: float,
                 index_path: Path, shards_dir: Path, out_dir: Path, manifest_path: Path,
                 settings: RunSettings, seed: int, chunk: int = 0, n_chunks: int = 1,
                 captioner: Captioner | None = None) -> dict[str, Any]:
    """Caption every unfinished shard of one chunk; write the chunk manifest.

    The device is settled first: a job that asked for a GPU and sees none fails before it
    reads a shard or loads the captioner."""
    device = settings.torch_device(f"caption {pool}/{captioner_name}@{temperature}")
    decoding = decoding_for(spec, temperature)
    tasks = plan_tasks(index_path, shards_dir, out_dir, ".parquet", chunk, n_chunks)
    todo = [t for t in tasks if not is_complete(t.output, t.uids)]
    log.info("%s/%s@%s chunk %d/%d: %d shards, %d already done", pool, captioner_name,
             temperature, chunk, n_chunks, len(tasks), len(tasks) - len(todo))
    if todo and captioner is None:
        from capmix.captioners import load_captioner

        captioner = load_captioner({**spec, "name": captioner_name},
                                   device=device,
                                   precision=settings.precision)
    if todo:
        assert captioner is not None
        check_loader_fits(captioner.preprocess,
                          images_per_batch(settings.batch_size, decoding.num_captions),
                          settings.workers, settings.prefetch_factor, "caption")
    progress = Progress(f"caption {captioner_name}@{temperature}", len(tasks),
                        sum(len(t.uids) for t in tasks))
    for task in tasks:
        if task not in todo:
            progress.update(len(task.uids), skipped=True)
            continue
        shard_seed = stable_seed(seed, pool, captioner_name, temperature, task.shard)
        frame = caption_task(captioner, task, decoding, shard_seed, settings)
        write_parquet_atomic(frame, task.output, {
            "pool": pool, "captioner": captioner_name, "spec": dict(spec),
            "decoding": asdict(decoding), "seed": shard_seed, "shard": task.shard})
        progress.update(len(frame))

    summary = summarise(tasks)
    manifest = {
        "pool": pool, "captioner": captioner_name, "temperature": temperature,
        "chunk": chunk, "n_chunks": n_chunks, "decoding": asdict(decoding),
        "settings": asdict(settings), **summary,
        "shards": [{"shard": t.shard, "output": str(t.output.relative_to(out_dir)),
                    "samples": len(t.uids)} for t in tasks],
        "provenance": provenance_record(
            "caption", inputs=[index_path], params={"spec": dict(spec), "seed": seed},
            packages=("torch", "transformers", "open_clip_torch")),
    }
    write_json(manifest_path, manifest)
    return manifest


def summarise(tasks: list[ShardTask]) -> dict[str, Any]:
    frames = [pd.read_parquet(t.output, columns=["status"]) for t in tasks]
    statuses = pd.concat(frames)["status"] if frames else pd.Series(dtype=str)
    return {"n_images": int(len(statuses)), "n_captioned": int((statuses == "ok").sum()),
            "failures": {k: int(v) for k, v in statuses[statuses != "ok"].value_counts().items()}}


def add_summaries(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Two :func:`summarise` results as one (a pool summarised range by range)."""
    failures = dict(total["failures"])
    for status, count in part["failures"].items():
        failures[status] = failures.get(status, 0) + count
    return {"n_images": total["n_images"] + part["n_images"],
            "n_captioned": total["n_captioned"] + part["n_captioned"],
            "failures": dict(sorted(failures.items(), key=lambda kv: (-kv[1], kv[0])))}


def caption_released(pool: str, captioner_name: str, spec: Mapping[str, Any], temperature: float,
                     index_path: Path, shards_dir: Path, out_dir: Path, manifest_path: Path,
                     download_dir: Path, chunk: int = 0, n_chunks: int = 1,
                     hub: Any = None) -> dict[str, Any]:
    """The paper's released captions as a caption set, in the same per-shard layout.

    Rows of the pool without a released caption are kept with status
    ``no_released_caption`` and counted in the manifest, never dropped silently.
    """
    from capmix.released import download_released, join_released

    files = download_released(spec["repo"], temperature, download_dir, hub=hub)
    tasks = plan_tasks(index_path, shards_dir, out_dir, ".parquet", chunk, n_chunks)
    keys = fetched_rows(index_path, [t.shard for t in tasks], ["uid", "key"]).to_pandas()
    keys = keys.set_index("uid")["key"]
    uids = [u for t in tasks for u in t.uids]
    columns = spec.get("columns", {})
    joined, report = join_released(uids, files, uid_column=columns.get("uid", "uid"),
                                   caption_column=columns.get("caption", "text"))
    captions = joined.set_index("uid")["caption"]
    for task in tasks:
        found = captions.reindex(list(task.uids))
        frame = pd.DataFrame({
            "uid": list(task.uids), "key": keys.reindex(list(task.uids)).to_numpy(),
            "captions": [[c] if isinstance(c, str) else [] for c in found],
            "caption": found.where(found.notna(), None).to_numpy(),
            "status": np.where(found.notna(), "ok", "no_released_caption"),
            "error": None,
        })
        write_parquet_atomic(frame, task.output, {"pool": pool, "captioner": captioner_name,
                                                  "released": spec["repo"],
                                                  "temperature": temperature})
    manifest = {
        "pool": pool, "captioner": captioner_name, "temperature": temperature, "chunk": chunk,
        "n_chunks": n_chunks, "released": spec["repo"], "join": report, **summarise(tasks),
        "shards": [{"shard": t.shard, "output": str(t.output.relative_to(out_dir)),
                    "samples": len(t.uids)} for t in tasks],
        "provenance": provenance_record("caption", inputs=[index_path, *files],
                                        params={"spec": dict(spec)},
                                        packages=("huggingface_hub",)),
    }
    write_json(manifest_path, manifest)
    return manifest


def caption_shipped(pool: str, captioner_name: str, spec: Mapping[str, Any], temperature: float,
                    index_path: Path, shards_dir: Path, out_dir: Path, manifest_path: Path,
                    metadata_dir: Path, chunk: int = 0, n_chunks: int = 1) -> dict[str, Any]:
    """Captions the source ships in a metadata column (:mod:`capmix.shipped`) as a caption
    set, in the same per-shard layout; the shipped score, if any, rides along in
    ``shipped_score``. A fetched image without a shipped caption is kept with status
    ``no_shipped_caption`` and counted in the manifest, never dropped silently."""
    from capmix.shipped import BACKEND, SCORE_COLUMN, join_shipped
    from capmix.sources import metadata_parts

    tasks = plan_tasks(index_path, shards_dir, out_dir, ".parquet", chunk, n_chunks)
    keys = fetched_rows(index_path, [t.shard for t in tasks], ["uid", "key"]).to_pandas()
    keys = keys.set_index("uid")["key"]
    uids = [u for t in tasks for u in t.uids]
    parts = metadata_parts(metadata_dir)
    found, report = join_shipped(uids, parts, spec)
    for task in tasks:
        rows = [found.get(u, (None, None)) for u in task.uids]
        frame = pd.DataFrame({
            "uid": list(task.uids), "key": keys.reindex(list(task.uids)).to_numpy(),
            "captions": [[c] if c is not None else [] for c, _ in rows],
            "caption": [c for c, _ in rows],
            "status": ["ok" if c is not None else "no_shipped_caption" for c, _ in rows],
            "error": None,
            SCORE_COLUMN: pd.array([s for _, s in rows], dtype="Float64"),
        })
        write_parquet_atomic(frame, task.output, {"pool": pool, "captioner": captioner_name,
                                                  BACKEND: spec["column"],
                                                  "temperature": temperature})
    manifest = {
        "pool": pool, "captioner": captioner_name, "temperature": temperature, "chunk": chunk,
        "n_chunks": n_chunks, BACKEND: dict(spec), "join": report, **summarise(tasks),
        "shards": [{"shard": t.shard, "output": str(t.output.relative_to(out_dir)),
                    "samples": len(t.uids)} for t in tasks],
        "provenance": provenance_record("caption", inputs=[index_path, *parts],
                                        params={"spec": dict(spec)}),
    }
    write_json(manifest_path, manifest)
    return manifest


def raw_caption_sets(pool: str, index_path: Path, shards_dir: Path, out_dir: Path,
                     manifest_path: Path, rows_per_range: int = ROWS_PER_RANGE) -> dict[str, Any]:
    """The raw (web) captions, as img2dataset stored them beside each image.

    One job for the whole pool, walking it range by range (:func:`capmix.shards.plan_ranges`):
    it holds one range's uids and statuses at a time, plus the manifest's list of shards."""
    summary: dict[str, Any] = {"n_images": 0, "n_captioned": 0, "failures": {}}
    listed = []
    for tasks in plan_ranges(index_path, shards_dir, out_dir, ".parquet", rows_per_range):
        for task in tasks:
            if is_complete(task.output, task.uids):
                continue
            samples = read_shard(task)
            frame = pd.DataFrame({
                "uid": [s.uid for s in samples], "key": [s.key for s in samples],
                "captions": [[s.text] for s in samples], "caption": [s.text for s in samples],
                "status": "ok", "error": None,
            })
            write_parquet_atomic(frame, task.output, {"pool": pool, "captioner": "raw"})
        summary = add_summaries(summary, summarise(tasks))
        listed += [{"shard": t.shard, "output": str(t.output.relative_to(out_dir)),
                    "samples": len(t.uids)} for t in tasks]
        log.info("raw captions of %s: %d shards, %d images so far", pool, len(listed),
                 summary["n_images"])
    manifest = {
        "pool": pool, "captioner": "raw", **summary,
        "shards": listed,
        "provenance": provenance_record("raw_captions", inputs=[index_path]),
    }
    write_json(manifest_path, manifest)
    return manifest


def caption_files(manifest_paths: Sequence[Path]) -> list[Path]:
    """The per-shard caption parquets listed by caption manifests (a set's, or chunks')."""
    return listed_shard_files(manifest_paths)


#: Keys a caption set's manifest copies from its chunks' (equal in every chunk of the set).
SET_KEYS = ("captioner", "temperature", "decoding", "released", "shipped")


def merge_caption_chunks(pool: str, chunk_manifests: Sequence[Path],
                         manifest_path: Path) -> dict[str, Any]:
    """The caption_merge rule: a synthetic caption set's chunk manifests as one manifest, in the
    raw captions' format (``shards: [{shard, output, samples}]``, outputs relative to it, sorted
    by shard; counts summed), so every consumer reads one manifest per caption set.

    Reads only the chunk manifests (no caption file): its memory follows the set's shards. A
    shard listed by two chunks is an error naming it and both manifests.
    """
    shards: list[dict[str, Any]] = []
    listed_by: dict[str, Path] = {}
    failures: Counter[str] = Counter()
    n_images = n_captioned = 0
    first: dict[str, Any] = {}
    for path in chunk_manifests:
        chunk = json.loads(Path(path).read_text())
        first = first or chunk
        for entry in chunk["shards"]:
            shard = entry["shard"]
            if shard in listed_by:
                raise ValueError(f"{pool}: shard {shard} is listed by two caption chunks, "
                                 f"{listed_by[shard]} and {path}")
            listed_by[shard] = Path(path)
            output = os.path.relpath(Path(path).parent / entry["output"], manifest_path.parent)
            shards.append({**entry, "output": output})
        n_images += int(chunk["n_images"])
        n_captioned += int(chunk["n_captioned"])
        failures.update({k: int(v) for k, v in chunk["failures"].items()})
    manifest = {
        "pool": pool, **{k: first[k] for k in SET_KEYS if k in first},
        "chunks": [os.path.relpath(p, manifest_path.parent) for p in chunk_manifests],
        "n_images": n_images, "n_captioned": n_captioned,
        "failures": dict(sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))),
        "shards": sorted(shards, key=lambda entry: entry["shard"]),
        "provenance": provenance_record("caption_merge", inputs=list(chunk_manifests)),
    }
    write_json(manifest_path, manifest)
    return manifest
