"""Why a URL was not fetched: the per-uid failure reasons of the fetch, and which of them a new
round asks for again.

Its own light module (standard library only) because the config checker validates
``fetch.retry_reasons`` against this list at start-up, and must not import the fetch stage
(pandas, pyarrow, img2dataset) to do so.
"""

from __future__ import annotations

import re

#: (reason, regex on img2dataset's error message), first match wins.
DOWNLOAD_REASONS: tuple[tuple[str, str], ...] = (
    ("not_found", r"No such file|HTTP Error 404|Not Found|HTTP Error 410"),
    ("forbidden", r"HTTP Error 40[13]|Forbidden|Unauthorized"),
    ("opted_out", r"X-Robots-Tag|disallowed"),
    ("redirect_loop", r"infinite loop"),
    ("body_too_large", r"body too large"),
    ("deadline_exceeded", r"deadline exceeded"),
    ("too_large", r"area too large"),
    ("redirect_refused", r"Redirection to url .* is not allowed"),
    ("internal_address", r"internal address"),
    ("local_file_refused", r"local file refused"),
    ("rate_limited", r"HTTP Error 429"),
    ("server_error", r"HTTP Error 5\d\d"),
    ("timeout", r"timed out|[Tt]imeout"),
    ("http_error", r"HTTP Error"),
    ("truncated_body", r"IncompleteRead"),
    ("connection_error", r"urlopen error|Connection|Name or service|getaddrinfo|SSL|"
                         r"Remote end closed|BrokenPipe|reset by peer"),
)
RESIZE_REASONS: tuple[tuple[str, str], ...] = (
    ("undecodable_image", r"decod|cannot identify|truncated|imdecode|loadsave"),
    ("too_small", r"too small"),
    ("too_large", r"area too large"),
    ("bad_aspect_ratio", r"aspect ratio"),
)
#: Every per-uid failure reason the fetch reports (index.parquet, report.json).
FAILURE_REASONS: tuple[str, ...] = tuple(dict.fromkeys((
    *(reason for reason, _ in DOWNLOAD_REASONS), "download_error",
    *(reason for reason, _ in RESIZE_REASONS), "resize_error",
    "missing_in_shard", "not_attempted",
)))
#: Failures a new fetch round asks for again by default: those the next request may not
#: repeat. A 404, an opt-out header or an image that does not decode would only cost the
#: server another request (``fetch.retry_reasons`` changes the list).
RETRYABLE_REASONS: tuple[str, ...] = (
    "rate_limited", "server_error", "timeout", "deadline_exceeded", "truncated_body",
    "connection_error",
    "download_error", "missing_in_shard", "not_attempted",
)

def failure_reason(status: str, message: str | None) -> str:
    """Map img2dataset's status and error text to a short, countable reason."""
    if status == "success":
        return "fetched"
    message = message or ""
    table = RESIZE_REASONS if status == "failed_to_resize" else DOWNLOAD_REASONS
    for reason, pattern in table:
        if re.search(pattern, message):
            return reason
    return "resize_error" if status == "failed_to_resize" else "download_error"
