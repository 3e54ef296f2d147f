"""Published files a run needs, by name: where each comes from and where it lands.

DataComp's image-based baseline reads files DataComp publishes (``baselines/utils.py``,
``download``): the ImageNet-1k train images' OpenAI CLIP ViT-L/14 embeddings
(``in1k_clip_vit_l14_0`` .. ``_4``), the pool's k-means centroids per scale
(``{small,medium,large,xlarge}_centroids``) and fastText's language-id model (``lid.176.bin``).
``config/assets.yaml`` lists them (URL, SHA-256, file name) under ``assets.files``; the
``download_asset`` rule fetches one into ``assets.data_dir`` and checks its SHA-256, so that
a DataComp config plans its whole run on a fresh clone.

A pool names an asset where it names a file (``image_clusters.reference_embeddings``,
``image_clusters.centroids``, ``language_id.model``): ``asset:NAME`` is
``{assets.data_dir}/{file}``; any other value is a path used as it is. A file already in
``data_dir`` is used as it is (Snakemake fetches only missing ones); the ``.pt`` names are
those of DataComp's own cache (``~/.cache/datacomp/{name}.pt``).

A light module (standard library only): the config checker and the Snakefile read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: How a config value names an asset instead of a path.
ASSET_PREFIX = "asset:"


def asset_name(value: str) -> str | None:
    """``asset:NAME`` -> NAME; a plain path -> None."""
    return value[len(ASSET_PREFIX):] if value.startswith(ASSET_PREFIX) else None


def assets(config: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    return (config.get("assets") or {}).get("files") or {}


def assets_dir(config: Mapping[str, Any]) -> str:
    return str((config.get("assets") or {}).get("data_dir", "results/assets")).rstrip("/")


def asset_path(config: Mapping[str, Any], name: str) -> str:
    """Where asset ``name`` lives (and where ``download_asset`` puts it)."""
    return f"{assets_dir(config)}/{assets(config)[name]['file']}"


def resolve_file(config: Mapping[str, Any], value: str) -> str:
    """A file a config names: ``asset:NAME`` resolved, a path as it is."""
    name = asset_name(value)
    return value if name is None else asset_path(config, name)


def asset_files(config: Mapping[str, Any]) -> dict[str, str]:
    """File name (under ``data_dir``) -> asset name, for every asset."""
    return {spec["file"]: name for name, spec in assets(config).items()}


def reference_problem(config: Mapping[str, Any], value: str) -> str | None:
    """Why a file value names an unknown asset (None if it is a path or a known asset)."""
    name = asset_name(value)
    if name is None or name in assets(config):
        return None
    return (f"unknown asset '{name}' (allowed: asset:NAME for a name under assets.files: "
            f"{', '.join(sorted(assets(config))) or 'none defined'}; or a path)")


def asset_problems(config: Mapping[str, Any]) -> list[str]:
    """Two assets that would land in one file."""
    problems = []
    seen: dict[str, str] = {}
    for name, spec in sorted(assets(config).items()):
        other = seen.setdefault(spec["file"], name)
        if other != name:
            problems.append(f"config key 'assets.files.{name}.file': '{spec['file']}' is also "
                            f"the file of asset '{other}'")
    return problems
