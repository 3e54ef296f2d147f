"""Shared fixtures: tiny image-text tables in the real formats, on local disk."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# img2dataset checks for a newer albumentations over the network on import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


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
