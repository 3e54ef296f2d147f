"""Per-URL limits img2dataset 1.47 does not have: a body-size cap, a total deadline per URL,
and the image area checked from the file header before anything is decoded.

Why not img2dataset alone: its ``download_image`` reads the whole body with one
``response.read()`` (no size limit; its ``timeout`` bounds each socket read, so a server that
drips a byte every few seconds is read for ever) and its ``max_image_area`` is checked after
OpenCV has decoded the image (a 30,000 x 30,000 PNG of a few kB decodes to 2.7 GB first).
Third-party URLs are hostile, so these bounds are ours.

How, without forking img2dataset: ``capmix.fetch`` hands img2dataset a
:class:`GuardedDownloader` (its ``Downloader`` with the limits attached) in place of its own.
img2dataset pickles the downloader into each worker process; unpickling it imports this
module, and every call installs :func:`guarded_download_image` as
``img2dataset.downloader.download_image``, the function its shard loop calls per URL. The
replacement is img2dataset's own function (same request, user agent and opt-out check) with
the limits added; img2dataset is pinned (requirements/lock.txt), and tests/test_fetch_faults.py
drives both through a misbehaving server.
"""

from __future__ import annotations

import io
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import img2dataset.downloader as img2dataset_downloader
from img2dataset.downloader import Downloader, is_disallowed

#: Bytes read per socket read while streaming a body.
CHUNK_BYTES = 64 * 1024
#: img2dataset's user agent, kept so that servers see the same client as before.
USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"


@dataclass(frozen=True)
class UrlLimits:
    """What one URL may cost: body bytes, seconds in all, decoded pixels."""

    max_body_bytes: int
    deadline_s: float
    max_image_area: int


#: The limits of the shard this worker process is downloading (set by GuardedDownloader).
_limits: UrlLimits | None = None


def _oversized(data: bytes, max_image_area: int) -> str | None:
    """Why the image is too large to decode, from its header alone; None if it is not (or if
    PIL cannot read the header: img2dataset's decoder then decides)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError as error:  # PIL refuses > 2x its own limit
        return f"image area too large: {error} (from the header, not decoded)"
    except Exception:  # noqa: BLE001 - not an image PIL knows
        return None
    if width * height > max_image_area:
        return (f"image area too large: {width}x{height} > {max_image_area} pixels (from the "
                f"header, not decoded)")
    return None


def guarded_download_image(row: tuple[int, str], timeout: int, user_agent_token: str | None,
                           disallowed_header_directives: list[str] | None,
                           ) -> tuple[int, io.BytesIO | None, str | None]:
    """img2dataset's ``download_image`` with the :class:`UrlLimits` of this process."""
    key, url = row
    limits = _limits
    started = time.monotonic()
    agent = USER_AGENT
    if user_agent_token:
        agent += (f" (compatible; {user_agent_token}; "
                  "+https://github.com/rom1504/img2dataset)")
    try:
        request = urllib.request.Request(url, data=None, headers={"User-Agent": agent})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if disallowed_header_directives and is_disallowed(
                    response.headers, user_agent_token, disallowed_header_directives):
                return key, None, "Use of image disallowed by X-Robots-Tag directive"
            if limits is None:
                return key, io.BytesIO(response.read()), None
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limits.max_body_bytes:
                return key, None, (f"body too large: Content-Length {declared} > "
                                   f"{limits.max_body_bytes} bytes")
            body = bytearray()
            while True:
                if time.monotonic() - started > limits.deadline_s:
                    return key, None, (f"deadline exceeded: more than {limits.deadline_s:g} s "
                                       f"for the whole download ({len(body)} bytes read)")
                chunk = response.read1(CHUNK_BYTES)  # one socket read: the deadline is checked
                if not chunk:
                    break
                body += chunk
                if len(body) > limits.max_body_bytes:
                    return key, None, (f"body too large: more than {limits.max_body_bytes} "
                                       f"bytes")
            if declared.isdigit() and len(body) < int(declared):  # the server closed early
                return key, None, (f"IncompleteRead({len(body)} bytes read, "
                                   f"{int(declared) - len(body)} more expected)")
        oversized = _oversized(bytes(body), limits.max_image_area)
        if oversized:
            return key, None, oversized
        return key, io.BytesIO(bytes(body)), None
    except Exception as error:  # noqa: BLE001 - img2dataset's contract: the message is the reason
        return key, None, str(error)


class GuardedDownloader(Downloader):
    """img2dataset's Downloader, downloading each URL with :func:`guarded_download_image`."""

    def __init__(self, *args: Any, limits: UrlLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits

    def __call__(self, row: Any) -> Any:
        global _limits
        _limits = self.limits
        img2dataset_downloader.download_image = guarded_download_image
        return super().__call__(row)
