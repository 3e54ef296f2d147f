"""The download_asset stage: one published file (:mod:`capmix.assetspec`), checked by SHA-256.

The file is streamed to ``{out}.part`` and renamed into place only when its SHA-256 equals
the one ``config/assets.yaml`` records (DataComp's, from its ``baselines/utils.py``), so a
cut or altered download never reaches a later stage. Only http(s) URLs are fetched (the
schema asks for https); each read waits at most ``timeout`` seconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class AssetError(RuntimeError):
    """A download that failed or does not match its recorded SHA-256."""


def download_asset(name: str, spec: Mapping[str, Any], out_path: Path,
                   timeout: float = 60.0) -> dict[str, Any]:
    """Fetch asset ``name`` (``url``, ``sha256``) to ``out_path``; returns a record of it."""
    import requests

    url, expected = spec["url"], spec["sha256"].lower()
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise AssetError(f"asset '{name}': only http(s) URLs are fetched, not {url!r}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    part = out_path.with_name(out_path.name + ".part")
    digest = hashlib.sha256()
    size = 0
    started = time.monotonic()
    log.info("asset '%s': downloading %s to %s", name, url, out_path)
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            response.raise_for_status()
            with open(part, "wb") as out:
                for block in response.iter_content(CHUNK):
                    out.write(block)
                    digest.update(block)
                    size += len(block)
    except requests.RequestException as error:
        part.unlink(missing_ok=True)
        raise AssetError(f"asset '{name}': cannot download {url}: {error}") from error
    got = digest.hexdigest()
    if got != expected:
        part.unlink(missing_ok=True)
        raise AssetError(f"asset '{name}': {url} has SHA-256 {got} ({size} bytes), but the "
                         f"config records {expected}; nothing was written")
    os.replace(part, out_path)
    record = {"asset": name, "url": url, "path": str(out_path), "sha256": got, "bytes": size,
              "seconds": round(time.monotonic() - started, 3)}
    log.info("asset '%s': %s", name, record)
    return record
