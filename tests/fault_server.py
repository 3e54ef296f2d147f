"""A loopback HTTP server that misbehaves on purpose: the fetch stage's fault suite.

Each path ``/{fault}/{n}.img`` answers with one fault kind of :data:`FAULTS` (status codes,
resets, stalls, truncated and corrupt bodies, HTML with 200, redirects and loops, opt-out
headers, tiny and huge images). It listens on 127.0.0.1 only, logs every request (so a test
can prove what a retry round asked for), stops answering after ``max_requests``, and never
holds a connection longer than ``max_seconds``.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def _image(fmt: str, size: tuple[int, int] = (40, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 60, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds almost no data (a decompression-bomb
    stand-in: refused from its header, it must never reach a decoder)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


PNG, JPEG = _image("PNG"), _image("JPEG")
TINY = _image("PNG", (1, 1))
#: 2,500 x 2,500 (6.25 MP, a few kB as a one-colour PNG): "huge" for a test that sets
#: fetch.max_image_area below it (a real decompression bomb would cost CI gigabytes).
HUGE = _image("PNG", (2500, 2500))
BOMB = _png_header_claiming(30000, 30000)


class FaultServer:
    """Start with ``with FaultServer() as server:``; ``server.url(fault, n)``."""

    def __init__(self, max_requests: int = 2000, max_seconds: float = 5.0) -> None:
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.requests: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                with server._lock:
                    server.requests.append(self.path)
                    over = len(server.requests) > server.max_requests
                if over:
                    self.close_connection = True
                    return
                fault = self.path.strip("/").split("/")[0]
                handler = {**FAULTS, **INWARD_REDIRECTS}.get(fault, FAULTS["not_found"])[0]
                handler(self, server)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, fault: str, n: int = 0) -> str:
        return f"{self.base}/{fault}/{n}.img"

    def requested(self, fault: str) -> int:
        with self._lock:
            return sum(1 for path in self.requests if path.strip("/").split("/")[0] == fault)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


Respond = Callable[[BaseHTTPRequestHandler, FaultServer], None]


def _send(body: bytes, status: int = 200, content_type: str = "image/png",
          headers: dict[str, str] | None = None, length: int | None = None) -> Respond:
    def respond(handler: BaseHTTPRequestHandler, server: FaultServer) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(body)
        if length is not None and length > len(body):
            handler.close_connection = True  # the promised bytes never come
    return respond


def _redirect(to: Callable[[BaseHTTPRequestHandler, FaultServer], str]) -> Respond:
    def respond(handler: BaseHTTPRequestHandler, server: FaultServer) -> None:
        handler.send_response(302)
        handler.send_header("Location", to(handler, server))
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return respond


def _reset(handler: BaseHTTPRequestHandler, server: FaultServer) -> None:
    """Close the socket without a response (a reset / empty reply)."""
    handler.close_connection = True
    handler.connection.shutdown(2)


def _stall(handler: BaseHTTPRequestHandler, server: FaultServer) -> None:
    """No response before the client's timeout (bounded by max_seconds)."""
    time.sleep(server.max_seconds)
    handler.close_connection = True


def _error_then_ok(handler: BaseHTTPRequestHandler, server: FaultServer) -> None:
    """503 on a uid's first request, the image afterwards: a transient failure."""
    first = server.requests.count(handler.path) == 1
    (_send(b"busy", 503, "text/plain") if first else _send(PNG))(handler, server)


def _drip(handler: BaseHTTPRequestHandler, server: FaultServer) -> None:
    """Headers at once, then one byte every 0.2 s: each read is quick, the whole is not."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.send_header("Content-Length", str(len(PNG)))
    handler.end_headers()
    stop = time.monotonic() + server.max_seconds
    for byte in PNG:
        if time.monotonic() > stop:
            break
        try:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
        except OSError:  # the client gave up
            break
        time.sleep(0.2)
    handler.close_connection = True


def _endless(handler: BaseHTTPRequestHandler, server: FaultServer) -> None:
    """No Content-Length and a body that does not end (bounded by max_seconds)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.end_headers()
    stop = time.monotonic() + server.max_seconds
    block = b"\0" * 65536
    while time.monotonic() < stop:
        try:
            handler.wfile.write(block)
        except OSError:
            break
    handler.close_connection = True


def _slow_png(handler: BaseHTTPRequestHandler, server: FaultServer) -> None:
    """A good image after 0.4 s: a fetch slow enough to be killed part-way."""
    time.sleep(0.4)
    _send(PNG)(handler, server)


#: fault -> (how the server answers, the fetch's per-uid reason for it).
FAULTS: dict[str, tuple[Respond, str]] = {
    "png": (_send(PNG), "fetched"),
    "jpeg": (_send(JPEG, content_type="image/jpeg"), "fetched"),
    "wrong_content_type": (_send(PNG, content_type="text/html"), "fetched"),
    "redirect": (_redirect(lambda h, s: s.url("png", 1)), "fetched"),
    "not_found": (_send(b"no", 404, "text/plain"), "not_found"),
    "gone": (_send(b"gone", 410, "text/plain"), "not_found"),
    "unauthorized": (_send(b"no", 401, "text/plain"), "forbidden"),
    "forbidden": (_send(b"no", 403, "text/plain"), "forbidden"),
    "teapot": (_send(b"no", 418, "text/plain"), "http_error"),
    "too_many_requests": (_send(b"slow down", 429, "text/plain"), "rate_limited"),
    "server_error": (_send(b"oops", 500, "text/plain"), "server_error"),
    "unavailable": (_send(b"busy", 503, "text/plain"), "server_error"),
    "reset": (_reset, "connection_error"),
    "stall": (_stall, "timeout"),
    "truncated_body": (_send(PNG[:40], length=len(PNG)), "truncated_body"),
    "corrupt_image": (_send(PNG[:16] + b"garbage" * 20), "undecodable_image"),
    "html_with_200": (_send(b"<html><body>Image not found</body></html>", 200, "text/html"),
                      "undecodable_image"),
    "empty_with_200": (_send(b""), "undecodable_image"),
    "short_content_length": (_send(PNG, length=20), "undecodable_image"),
    "redirect_loop": (_redirect(lambda h, s: h.path), "redirect_loop"),
    "redirect_to_file": (_redirect(lambda h, s: "file:///etc/hostname"), "redirect_refused"),
    "opt_out_header": (_send(PNG, headers={"X-Robots-Tag": "noai"}), "opted_out"),
    "tiny_image": (_send(TINY), "too_small"),
    "huge_image": (_send(HUGE), "too_large"),
    "transient_503": (_error_then_ok, "fetched"),
    "drip": (_drip, "deadline_exceeded"),
    "huge_content_length": (_send(PNG, length=10**12), "body_too_large"),
    "endless_body": (_endless, "body_too_large"),
    "bomb_header": (_send(BOMB), "too_large"),
    "slow_png": (_slow_png, "fetched"),
}


#: Redirects from a (public-looking) server to this machine or a private network, and the
#: reason a source without ``allow_local_urls`` gives them; kept out of FAULTS, whose suite
#: runs with local URLs allowed (the server itself is on 127.0.0.1).
INWARD_REDIRECTS: dict[str, tuple[Respond, str]] = {
    "redirect_to_metadata_service": (
        _redirect(lambda h, s: "http://169.254.169.254/latest/meta-data/"), "internal_address"),
    "redirect_to_other_loopback": (
        _redirect(lambda h, s: s.base.replace("127.0.0.1", "127.0.0.2") + "/png/1.img"),
        "internal_address"),
    "redirect_to_private_network": (_redirect(lambda h, s: "http://10.1.2.3/x.png"),
                                    "internal_address"),
    "redirect_to_ipv6_loopback": (_redirect(lambda h, s: "http://[::1]:9/x.png"),
                                  "internal_address"),
    "redirect_to_mapped_loopback": (_redirect(lambda h, s: "http://[::ffff:127.0.0.1]:9/x.png"),
                                    "internal_address"),
    "redirect_to_ftp": (_redirect(lambda h, s: "ftp://example.org/x.png"), "redirect_refused"),
    "redirect_to_file": FAULTS["redirect_to_file"],
}
