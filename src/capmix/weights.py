"""Model weights: fetched once into a shared cache by a local rule, loaded offline by GPU jobs.

Hundreds of caption, embed_images and score jobs would otherwise each reach the Hugging Face
Hub when they load their model, and compute nodes often have no network. So rule
``model_weights`` (a local rule: it runs where Snakemake runs, which has the network) fetches
each real captioner's and scorer's weights once into config ``model_weights.cache_dir`` and
writes a record of what it fetched; the GPU jobs take that record as an input, run with the
Hub switched off (:func:`offline_hub`) and load from the cache only (``local_files_only``, or
the cached file itself), failing with :class:`WeightsNotCached` when something is missing.

The cache is the Hugging Face hub cache layout (``models--org--name/snapshots/<commit>/``,
``refs/main``), written by the libraries' own functions: ``huggingface_hub.snapshot_download``
for transformers models, open_clip's ``download_pretrained`` for an open_clip tag (so the
file sits where open_clip looks it up; a tag published only by URL lands as
``{cache_dir}/{file name}``, open_clip's layout for those). One directory serves both
libraries, and an existing hub cache can be pointed at as it is.

What a spec needs is decided from the spec alone (:func:`weights_source`): this module is
imported by the Snakefile and the config checks, so huggingface_hub and open_clip are
imported inside the functions that fetch or look up files.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capmix.provenance import provenance_record, sha256_file, write_json

log = logging.getLogger(__name__)

#: Captioner backends loaded with transformers' ``from_pretrained`` (a Hub repo id or a local
#: directory). With :data:`OPEN_CLIP_BACKENDS` these are the model backends of
#: ``capmix.captioners.BACKENDS`` and the scorers' (a test holds them equal to the schema's).
HF_BACKENDS: tuple[str, ...] = ("hf_blip", "hf_blip2")
#: Backends loaded with open_clip (a built-in model name with a pretrained tag or a checkpoint
#: file, or ``local-dir:PATH``): the CoCa captioner and every scorer.
OPEN_CLIP_BACKENDS: tuple[str, ...] = ("open_clip_coca", "open_clip")
#: The config sections whose entries load weights (captioners, scorers): a record's folder.
WEIGHT_ROLES: tuple[str, ...] = ("captioners", "scorers")
#: The key of a resolved captioner/scorer spec (``common.smk``'s ``resolved_spec``) that says
#: "load from this weights cache, offline". Not a config key: the config says where the cache
#: is once, in ``model_weights.cache_dir``.
CACHE_KEY = "cache_dir"
#: The rule that fills the cache (named in every "not in the cache" error).
RULE = "model_weights"
#: transformers files a captioner loads besides its weights: configs (model, generation,
#: processor, tokenizer) and tokenizer vocabularies (WordPiece/BPE .txt/.json, SentencePiece
#: .model). Hand-listed because the Hub has no "what from_pretrained reads" query.
HF_SUPPORT_PATTERNS: tuple[str, ...] = ("*.json", "*.txt", "*.model")
SAFETENSORS, PYTORCH_BIN = "*.safetensors", "*.bin"

ROLE_NAMES = {"captioners": "captioner", "scorers": "scorer"}


class WeightsNotCached(FileNotFoundError):
    """A model a job loads offline is missing from the weights cache; says which rule fills it."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a captioner's or scorer's weights come from: a transformers repo on the Hub
    (``kind="hf"``, ``model`` = repo id) or an open_clip tag (``kind="open_clip"``,
    ``model`` = the built-in model name, ``pretrained`` = the tag)."""

    kind: str
    model: str
    pretrained: str | None = None

    def describe(self) -> str:
        if self.kind == "hf":
            return f"Hugging Face model '{self.model}'"
        return f"open_clip model '{self.model}' with pretrained tag '{self.pretrained}'"


def is_local_path(value: str) -> bool:
    """A local file or folder rather than a Hub repo id / tag: it exists, or it is written as a
    path (a Hub id is ``org/name``, never absolute, relative to ``.`` or under ``~``)."""
    return value.startswith(("/", "./", "../", "~")) or Path(value).expanduser().exists()


def weights_source(spec: Mapping[str, Any]) -> WeightsSource | None:
    """What a captioner/scorer spec loads from the Hub, or None when it needs nothing fetched:
    a toy stand-in (``toy_model``: trained by the pipeline), released captions, a local
    directory or checkpoint file, an open_clip ``local-dir:`` model or one without a tag.

    Raises ValueError for a spec whose weights cannot be fetched ahead (an open_clip
    ``hf-hub:`` model: open_clip fetches its config and weights itself, at load time).
    """
    backend = spec.get("backend")
    model = spec.get("model")
    if spec.get("toy_model") or backend not in (*HF_BACKENDS, *OPEN_CLIP_BACKENDS) or not model:
        return None  # released captions (or a spec the schema and loaders refuse themselves)
    if backend in HF_BACKENDS:
        return None if is_local_path(model) else WeightsSource("hf", model)
    if model.startswith("local-dir:"):
        return None
    if model.startswith("hf-hub:"):
        raise ValueError(f"open_clip model '{model}': hf-hub: models are fetched by open_clip at "
                         f"load time, which GPU jobs cannot; use the built-in model name with a "
                         f"pretrained tag, or a local-dir: copy")
    pretrained = spec.get("pretrained")
    if not pretrained or is_local_path(pretrained):
        return None
    return WeightsSource("open_clip", model, pretrained)


def weights_cache_dir(config: Mapping[str, Any]) -> str:
    """Config ``model_weights.cache_dir``: the shared cache rule model_weights fills."""
    return str(config["model_weights"]["cache_dir"])


def weights_problems(config: Mapping[str, Any]) -> list[str]:
    """Captioners/scorers whose weights cannot be fetched ahead of the GPU jobs."""
    problems = []
    for role in WEIGHT_ROLES:
        for name, spec in sorted((config.get(role) or {}).items()):
            try:
                weights_source(spec)
            except ValueError as error:
                problems.append(f"config key '{role}.{name}.model': {error}")
    return problems


def not_cached(what: str, cache_dir: Path | str) -> WeightsNotCached:
    """The error of a load that found ``what`` missing from the cache."""
    return WeightsNotCached(
        f"{what} is not in the model weights cache {cache_dir} (config model_weights.cache_dir); "
        f"rule {RULE} fetches it: run `snakemake --until {RULE}` (with the same --configfile) "
        f"where the network is")


# ------------------------------------------------------------------------ GPU jobs: offline


def offline_hub(cache_dir: Path | str | None) -> None:
    """Switch a model job's Hugging Face libraries to offline, on ``cache_dir`` (if given).

    huggingface_hub reads these variables once, when it is imported, so a job calls this
    first; the loaders pass ``cache_dir``/``local_files_only`` (or the cached file) explicitly
    as well, so that a load stays offline even where the variables came too late.
    """
    if "huggingface_hub" in sys.modules:
        log.warning("huggingface_hub was imported before the offline settings; the loaders' "
                    "explicit local_files_only keep loading offline")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if cache_dir is not None:
        # The hub cache itself (HF_HOME would put it under {HF_HOME}/hub).
        os.environ["HF_HUB_CACHE"] = str(Path(cache_dir).resolve())


def cached_hf_snapshot(repo_id: str, cache_dir: Path | str) -> str:
    """The cached snapshot folder of Hub repo ``repo_id`` (its ``refs/main`` commit), found by
    huggingface_hub's ``snapshot_download(local_files_only=True)``; :class:`WeightsNotCached`
    when there is none. Never the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return str(snapshot_download(repo_id, cache_dir=str(cache_dir), local_files_only=True))
    except LocalEntryNotFoundError as error:
        raise not_cached(f"Hugging Face model '{repo_id}'", cache_dir) from error


def open_clip_hub_files(hf_hub: str) -> tuple[str, list[str]]:
    """An open_clip tag's ``hf_hub`` entry -> (repo id, the files open_clip's
    ``download_pretrained`` takes from it, in its order of preference).

    Mirrors open_clip 3.3.0's ``download_pretrained_from_hf``, which tries a safetensors twin
    of the file first (``_get_safe_alternatives``, private there, hence restated).
    """
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo_id, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    candidates = []
    if filename == HF_WEIGHTS_NAME:
        candidates.append(HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        candidates.append(filename[:-4] + ".safetensors")
    return repo_id, [*candidates, filename]


def pretrained_tag_config(model_name: str, pretrained: str | None) -> dict[str, Any]:
    """open_clip's record of the pretrained tag ``pretrained`` of the built-in ``model_name``
    (weights' source, preprocessing, activation), or ``{}`` when ``pretrained`` is no tag of it
    (None, a checkpoint file, or a ``local-dir:``/``hf-hub:`` model, whose own config rules).

    open_clip looks a name up as a tag before it tries it as a file; so does this.
    """
    from open_clip.factory import parse_model_name
    from open_clip.pretrained import get_pretrained_cfg

    schema, identifier = parse_model_name(model_name)
    if not pretrained or schema is not None:
        return {}
    # open_clip's own clean-up of a built-in name before it looks the tag up.
    return dict(get_pretrained_cfg(identifier.replace("/", "-"), pretrained))


def cached_open_clip_file(model: str, tag: str, tag_config: Mapping[str, Any],
                          cache_dir: Path | str) -> str:
    """The cached weights file of open_clip tag ``tag`` of ``model`` (``tag_config``: open_clip's
    record of it), where open_clip's ``download_pretrained`` put it; never the network."""
    if tag_config.get("file"):
        return str(tag_config["file"])
    if tag_config.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, candidates = open_clip_hub_files(tag_config["hf_hub"])
        for filename in candidates:
            found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir))
            if isinstance(found, str):
                return found
        where = f"{repo_id}: {' or '.join(candidates)}"
    elif tag_config.get("url"):
        path = Path(cache_dir) / os.path.basename(tag_config["url"])
        if path.is_file():
            return str(path)
        where = tag_config["url"]
    else:
        raise ValueError(f"open_clip's record of tag '{tag}' of '{model}' names no weights")
    raise not_cached(f"open_clip model '{model}' with pretrained tag '{tag}' ({where})", cache_dir)


# ------------------------------------------------------------------------ rule model_weights


def hf_patterns(repo_files: Sequence[str]) -> tuple[list[str], list[str]]:
    """``snapshot_download``'s (allow, ignore) patterns for a transformers model: the support
    files and one weights format, safetensors when the repo has them (transformers loads them
    first), else PyTorch ``.bin`` — not both (BLIP2-OPT-2.7B ships each, 15 GB apiece)."""
    safetensors = any(name.endswith(".safetensors") for name in repo_files)
    weights = SAFETENSORS if safetensors else PYTORCH_BIN
    ignore = ["*.bin.index.json"] if safetensors else []
    return [*HF_SUPPORT_PATTERNS, weights], ignore


def file_entries(paths: Sequence[Path], cache_dir: Path) -> list[dict[str, Any]]:
    """Each file's path (under the cache), SHA-256 and size, as the record lists them."""
    return [{"path": os.path.relpath(path, cache_dir), "sha256": sha256_file(path),
             "bytes": os.path.getsize(path)} for path in sorted(paths)]


def snapshot_revision(path: Path, cache_dir: Path) -> str | None:
    """The commit of a file in the hub cache layout (``models--*/snapshots/<commit>/...``)."""
    parts = Path(os.path.relpath(path, cache_dir)).parts
    if len(parts) > 3 and parts[0].startswith("models--") and parts[1] == "snapshots":
        return parts[2]
    return None


def fetch_weights(role: str, name: str, spec: Mapping[str, Any], cache_dir: Path,
                  record_path: Path, hub: Any = None,
                  download_pretrained: Callable[..., str] | None = None) -> dict[str, Any]:
    """Fetch the weights captioner/scorer ``name`` (config ``role``) loads into ``cache_dir``
    and write the record (``record_path``): model, revision, files with SHA-256 and size.

    ``hub`` is anything with huggingface_hub's ``list_repo_files`` and ``snapshot_download``
    (default: the module); ``download_pretrained`` is open_clip's (the default). Tests pass
    stand-ins; fetching something already cached costs the libraries' checks only.
    """
    who = f"{ROLE_NAMES.get(role, role)} '{name}'"
    source = weights_source(spec)
    if source is None:
        raise ValueError(f"{who}: loads nothing from the Hub (a toy stand-in, a local model or "
                         f"released captions), so rule {RULE} has nothing to fetch")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("%s: fetching %s into %s", who, source.describe(), cache_dir)
    record: dict[str, Any] = {"role": role, "name": name, "kind": source.kind,
                              "model": source.model, "pretrained": source.pretrained,
                              "cache_dir": str(cache_dir)}
    if source.kind == "hf":
        if hub is None:
            import huggingface_hub as hub
        allow, ignore = hf_patterns(hub.list_repo_files(source.model))
        snapshot = Path(hub.snapshot_download(source.model, cache_dir=str(cache_dir),
                                              allow_patterns=allow, ignore_patterns=ignore))
        files = [p for p in snapshot.rglob("*") if p.is_file()]
        record.update(repo_id=source.model, revision=snapshot.name, allow_patterns=allow,
                      ignore_patterns=ignore)
    else:
        tag_config = pretrained_tag_config(source.model, source.pretrained)
        if not tag_config:
            raise ValueError(f"{who}: '{source.pretrained}' is not a pretrained tag of open_clip "
                             f"model '{source.model}' (open_clip.list_pretrained_tags_by_model "
                             f"lists its tags)")
        if download_pretrained is None:
            import open_clip

            download_pretrained = open_clip.download_pretrained
        path = Path(download_pretrained(dict(tag_config), cache_dir=str(cache_dir)))
        files = [path]
        record.update(hf_hub=tag_config.get("hf_hub") or None,
                      url=tag_config.get("url") or None,
                      revision=snapshot_revision(path, cache_dir),
                      quick_gelu=bool(tag_config.get("quick_gelu")))
    if not files:
        raise WeightsNotCached(f"{who}: fetching {source.describe()} left no files in "
                               f"{cache_dir}")
    record["files"] = file_entries(files, cache_dir)
    record["provenance"] = provenance_record(
        RULE, params={"role": role, "name": name, "spec": dict(spec)},
        packages=("huggingface_hub", "open_clip_torch", "transformers"))
    write_json(record_path, record)
    log.info("%s: %d files, revision %s", who, len(files), record.get("revision"))
    return record
