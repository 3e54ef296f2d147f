"""Per-URL limits img2dataset 1.47 does not have: a body-size cap, a total deadline per URL,
the image area checked from the file header before anything is decoded, and no request (or
redirect) to this machine or its private networks unless the source allows local URLs; a
``file://`` URL only under the folders the source names (a CaptionNet ``imagenet_dir``) when
it does not.

Why not img2dataset alone: its ``download_image`` reads the whole body with one
``response.read()`` (no size limit; its ``timeout`` bounds each socket read, so a server that
drips a byte every few seconds is read for ever) and its ``max_image_area`` is checked after
OpenCV has decoded the image (a 30,000 x 30,000 PNG of a few kB decodes to 2.7 GB first);
and it follows any URL or redirect, to ``http://127.0.0.1:.../`` or a cloud metadata service
(``169.254.169.254``) as readily as to the web, and urllib follows redirects to ``ftp://``.
Third-party URLs are hostile, so these bounds are ours.

The address check resolves the host before the request; a DNS server that answers a public
address to the check and an internal one to the connection a moment later (DNS rebinding)
is not caught. Run fetch jobs where the network itself confines them if that matters.

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
import ipaddress
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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
    #: True: URLs may reach loopback/private/link-local hosts and use file:// (the source's
    #: ``allow_local_urls``); False: only http(s) to public addresses, redirects included,
    #: and file:// to files under ``local_roots``.
    allow_internal: bool = False
    #: Absolute folders whose files a ``file://`` URL may read when ``allow_internal`` is
    #: False (``capmix.sourcespec.local_file_roots``: a CaptionNet ``imagenet_dir``).
    local_roots: tuple[str, ...] = ()


#: The limits of the shard this worker process is downloading (set by GuardedDownloader).
_limits: UrlLimits | None = None


def set_limits(limits: UrlLimits | None) -> None:
    """Set the limits :func:`guarded_download_image` applies in this process (None: none)."""
    global _limits
    _limits = limits


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


class RefusedUrl(Exception):
    """A URL or redirect the limits refuse; the message is the per-uid failure reason."""


def is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is this machine or a network that is not the public internet:
    loopback, private, link-local (cloud metadata), shared, reserved, multicast, unspecified.
    An IPv4-mapped IPv6 address is judged by its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def check_url(url: str) -> None:
    """Refuse (:class:`RefusedUrl`) a URL that is not http(s) or whose host resolves to an
    internal address. A host that does not resolve passes: the request then fails as a
    connection error, as it would have."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme.lower() not in ("http", "https"):
        raise RefusedUrl(f"Redirection to url {url!r} is not allowed: scheme "
                         f"{parsed.scheme!r} (http and https only)")
    host = parsed.hostname or ""
    try:
        resolved = socket.getaddrinfo(host, parsed.port or None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError):
        return
    for *_, sockaddr in resolved:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if is_internal(address):
            raise RefusedUrl(f"internal address: {host} resolves to {address} (a source may "
                             f"reach local or private hosts only with allow_local_urls: true)")


def check_local_file(url: str, roots: Sequence[str]) -> Path:
    """The file a ``file://`` URL names, if it lies under one of ``roots`` once links and
    ``..`` are resolved; otherwise :class:`RefusedUrl`. A URL naming another host, or with a
    query or fragment (which urllib would read as part of the file name), is refused too.
    The caller opens the returned path, not the URL, so what was checked is what is read."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.netloc not in ("", "localhost") or parsed.query or parsed.fragment:
        raise RefusedUrl(f"local file refused: {url[:200]!r} (a file:// URL with a host, query "
                         f"or fragment)")
    path = Path(urllib.request.url2pathname(parsed.path)).resolve()
    if any(path.is_relative_to(Path(root).resolve()) for root in roots):
        return path
    raise RefusedUrl(f"local file refused: {url[:200]!r} is {path}, outside "
                     f"{[str(r) for r in roots] or 'every allowed folder'} (a source reads "
                     f"local files only under its imagenet_dir, or anywhere with "
                     f"allow_local_urls: true)")


class _ConfinedRedirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handling, each new location checked by :func:`check_url` first."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> Any:
        check_url(urllib.parse.urljoin(req.full_url, newurl))
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(request: urllib.request.Request, timeout: int, limits: UrlLimits | None) -> Any:
    if limits is None or limits.allow_internal:
        return urllib.request.urlopen(request, timeout=timeout)
    if urllib.parse.urlsplit(request.full_url).scheme.lower() == "file":
        path = check_local_file(request.full_url, limits.local_roots)
        return urllib.request.urlopen(path.as_uri(), timeout=timeout)
    check_url(request.full_url)
    return urllib.request.build_opener(_ConfinedRedirects()).open(request, timeout=timeout)


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
        with _open(request, timeout, limits) as response:
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
        set_limits(self.limits)
        img2dataset_downloader.download_image = guarded_download_image
        return super().__call__(row)
