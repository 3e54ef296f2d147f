"""Shared fixtures: tiny image-text tables in the real formats, on local disk."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from capmix.fetch import FetchSettings, fetch_pool
from capmix.sources import build_metadata, source_files

REPO = Path(__file__).resolve().parents[1]

# img2dataset checks for a newer albumentations over the network on import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

#: Test files that take minutes (whole DAGs, a SLURM cluster, training), longest first. They
#: are collected first so that `pytest -n 2 --dist loadfile` starts them at once: in name
#: order test_workflow.py's DAGs came last and ran alone for the last ~12 minutes of a 20-minute
#: clean-clone run, the other worker idle.
LONG_FILES = ("test_workflow.py", "test_slurm.py", "test_captionnet.py", "test_toymodels.py",
              "test_train.py", "test_kill9.py", "test_toyworld.py", "test_websources.py",
              "test_evaluate.py", "test_fetch_faults.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long files first (LONG_FILES' order), the rest as collected (a stable sort)."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))


def write_image(path: Path, size: tuple[int, int] = (48, 40), colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def image_table(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    """8 rows: 5 good images, 2 dead file:// URLs, 1 corrupt image."""
    web = tmp_path / "web"
    rows = []
    for i in range(5):
        path = write_image(web / f"good{i}.png", colour=(40 * i, 100, 50))
        rows.append({"uid": f"{i:032x}", "url": path.as_uri(), "text": f"good image {i}"})
    for i in range(2):
        rows.append({"uid": f"{0xd0 + i:032x}", "url": (web / f"dead{i}.png").as_uri(),
                     "text": f"dead link {i}"})
    corrupt = web / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    rows.append({"uid": f"{0xc0:032x}", "url": corrupt.as_uri(), "text": "corrupt"})
    return pd.DataFrame(rows), web


@pytest.fixture(scope="session")
def fetched_pool_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 images in 4 shards of 3, fetched once per session with img2dataset (file:// URLs)."""
    tmp_path = tmp_path_factory.mktemp("fetched_pool")
    rows = []
    for i in range(12):
        path = write_image(tmp_path / "web" / f"{i}.png", colour=(20 * i, 50, 200 - 10 * i))
        rows.append({"uid": f"{i:032x}", "url": path.as_uri(), "text": f"raw caption {i}"})
    table = tmp_path / "t.parquet"
    pd.DataFrame(rows).to_parquet(table, index=False)
    source = {"type": "table", "path": str(table), "format": "auto", "keep_columns": [],
              "allow_local_urls": True}
    build_metadata("p", source, source_files(source, [table]), tmp_path / "metadata")
    fetch_pool("p", tmp_path / "metadata", tmp_path / "shards", tmp_path / "index.parquet",
               tmp_path / "report.json",
               FetchSettings(image_size=16, samples_per_shard=3, retries=0,
                             threads_per_process=2, encode_format="png",
                             allow_internal_addresses=True), processes=1)
    return tmp_path


@pytest.fixture
def fetched_pool(fetched_pool_template: Path, tmp_path: Path) -> Path:
    """A private copy of the fetched pool (tests modify shards and outputs)."""
    import shutil

    return Path(shutil.copytree(fetched_pool_template, tmp_path / "pool"))


def copy_workflow(root: Path, extra: tuple[str, ...] = ()) -> Path:
    """A copy of the workflow (Snakefile, rules, config, package, envs, ``extra``) in root, so
    that test runs never touch the checkout's results/."""
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "src", "envs", *extra):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, root / name)
    return root
