"""Sample identifiers.

Every stage keys its files by ``uid``: 32 lowercase hex characters, as in
DataComp. Sources that ship uids keep them; sources without one get a uid
derived from their content, so re-reading the same table always gives the same
uids and a uid never depends on row order or file layout.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from fractions import Fraction

import numpy as np

UID_PATTERN = re.compile(r"^[0-9a-f]{32}$")

#: DataComp's subset file format: one ``(high, low)`` pair of uint64 per uid.
UID_PAIR_DTYPE = np.dtype("u8,u8")


def derive_uid(url: str, text: str) -> str:
    """Stable uid for a row whose source has none.

    ``md5(utf8(url) + b"\\n" + utf8(text))`` as 32 hex characters. Both fields take
    part because a URL alone is not unique in image-text tables (one image, many
    captions); two rows with the same URL *and* text are true duplicates and are
    reported as such by the metadata checks. md5 is used for its 128-bit width
    (exactly a DataComp uid), not for security.
    """
    digest = hashlib.md5(url.encode("utf-8") + b"\n" + text.encode("utf-8"))
    return digest.hexdigest()


def derive_key_uid(key: str) -> str:
    """Stable uid for a row whose source names each sample by its own key (YFCC100M's photo
    id, RedCaps' image_id, LAION's SAMPLE_ID, COCO's image id): ``md5(utf8(key))`` as 32 hex
    characters. Unlike :func:`derive_uid` it survives a caption edit or a moved URL, and two
    rows with one key are reported as duplicates by the metadata checks."""
    return hashlib.md5(key.encode("utf-8")).hexdigest()


def is_valid_uid(uid: object) -> bool:
    """True for a 32-character lowercase hex string."""
    return isinstance(uid, str) and UID_PATTERN.match(uid) is not None


def uids_to_pairs(uids: Sequence[str]) -> np.ndarray:
    """Convert uids to DataComp's ``u8,u8`` records (unsorted, in input order).

    Equivalent to ``(int(uid[:16], 16), int(uid[16:], 16))`` per uid, done in one
    ``bytes.fromhex`` so millions of uids convert in seconds.
    """
    if len(uids) == 0:
        return np.zeros(0, dtype=UID_PAIR_DTYPE)
    raw = np.frombuffer(bytes.fromhex("".join(uids)), dtype=">u8").reshape(-1, 2)
    pairs = np.empty(len(uids), dtype=UID_PAIR_DTYPE)
    pairs["f0"] = raw[:, 0]
    pairs["f1"] = raw[:, 1]
    return pairs


_HEX_VALUES = np.full(256, 255, dtype=np.uint8)
_HEX_VALUES[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)


def arrow_uids_to_pairs(uids: object) -> np.ndarray:
    """:func:`uids_to_pairs` for a pyarrow string array (or chunked array), decoded from its
    character buffer with numpy: no Python string per uid (the mix jobs convert hundreds of
    millions). A value that is not 32 lowercase hex digits is a ValueError naming it."""
    import pyarrow as pa

    if isinstance(uids, pa.ChunkedArray):
        uids = uids.combine_chunks()
    assert isinstance(uids, pa.Array)
    n = len(uids)
    if n == 0:
        return np.zeros(0, dtype=UID_PAIR_DTYPE)
    uids = uids.cast(pa.string())
    offsets = np.frombuffer(uids.buffers()[1], dtype=np.int32)[uids.offset:uids.offset + n + 1]
    data = np.frombuffer(uids.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    wrong = (np.diff(offsets) != 32) if not uids.null_count else np.ones(n, dtype=bool)
    digits = _HEX_VALUES[data].reshape(n, 32) if not wrong.any() else None
    if digits is not None:
        wrong = (digits == 255).any(axis=1)
    if wrong.any():
        for row, uid in enumerate(uids.to_pylist()):
            if not is_valid_uid(uid):
                raise ValueError(f"uid {uid!r} (row {row}) is not 32 lowercase hex digits")
    assert digits is not None
    octets = np.ascontiguousarray((digits[:, 0::2] << 4) | digits[:, 1::2])
    words = octets.view(">u8").reshape(n, 2)
    pairs = np.empty(n, dtype=UID_PAIR_DTYPE)
    pairs["f0"] = words[:, 0]
    pairs["f1"] = words[:, 1]
    return pairs


def ascending_pairs(pairs: np.ndarray) -> np.ndarray:
    """Uid pairs as a subset file holds them: sorted and distinct (checked in linear time,
    sorted only if they are not already)."""
    high, low = pairs["f0"], pairs["f1"]
    ascending = (high[1:] > high[:-1]) | ((high[1:] == high[:-1]) & (low[1:] > low[:-1]))
    return pairs if ascending.all() else np.unique(pairs)


def pairs_to_uids(pairs: np.ndarray) -> list[str]:
    """Inverse of :func:`uids_to_pairs`."""
    highs, lows = pairs["f0"].tolist(), pairs["f1"].tolist()
    return [f"{hi:016x}{lo:016x}" for hi, lo in zip(highs, lows, strict=True)]


def duplicate_positions(pairs: np.ndarray) -> list[np.ndarray]:
    """Group positions of repeated uids: one array of input positions per repeated uid.

    Sorting 16-byte records is what makes this scale to a DataComp pool
    (1.28B uids need ~20 GB for the pairs); a Python set of strings would need
    several times that.
    """
    if len(pairs) < 2:
        return []
    order = np.argsort(pairs, kind="stable")
    ordered = pairs[order]
    same_as_next = ordered[1:] == ordered[:-1]
    if not same_as_next.any():
        return []
    groups: list[np.ndarray] = []
    starts = np.flatnonzero(same_as_next & ~np.concatenate(([False], same_as_next[:-1])))
    for start in starts:
        end = start + 1
        while end < len(same_as_next) and same_as_next[end]:
            end += 1
        groups.append(order[start : end + 1])
    return groups


def repeats(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every later occurrence of a repeated uid, with its uid's first occurrence.

    Returns ``(later, first)``: the input positions of every occurrence but the first of each
    repeated uid (ascending), and for each the position of that uid's first occurrence. One
    stable sort of the 16-byte records, no Python loop, so a source that repeats millions of
    rows (LAION's exact duplicates) is handled in the memory :func:`duplicate_positions` uses.
    """
    if len(pairs) < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    order = np.argsort(pairs, kind="stable")
    ordered = pairs[order]
    same_as_previous = np.zeros(len(pairs), dtype=bool)
    same_as_previous[1:] = ordered[1:] == ordered[:-1]
    del ordered
    # the sorted index where each run of one uid starts, carried along the run
    run_start = np.arange(len(pairs))
    run_start[same_as_previous] = 0
    np.maximum.accumulate(run_start, out=run_start)
    later = order[same_as_previous]
    first = order[run_start[same_as_previous]]
    by_position = np.argsort(later, kind="stable")
    return later[by_position].astype(np.int64), first[by_position].astype(np.int64)


def uid_sample_mask(pairs: np.ndarray, fraction: float) -> np.ndarray:
    """The uids in the first ``fraction`` of the uid space: ``high 64 bits / 2**64 <
    fraction``, exactly (the bound is computed in integers, not floats).

    A uid is a hash (md5, or DataComp's), so this keeps a uniform random ``fraction`` of any
    pool, decided by each uid alone: the same rows whatever the file order, the file layout
    or the machine, and a sample of f is inside any sample of a larger f.
    """
    if fraction >= 1:
        return np.ones(len(pairs), dtype=bool)
    bound = math.ceil(Fraction(fraction) * 2**64)  # high < bound  <=>  high / 2**64 < fraction
    return pairs["f0"] < np.uint64(bound)


def ascending_uid_array(uids: Sequence[str]) -> np.ndarray:
    """:func:`sorted_uid_array` for uids that are probably sorted and distinct already.

    Checking order is linear; sorting 16-byte records is not (13 s for 6M at DataComp small
    scale), so a uid-sorted table's selection skips the sort. Anything else is sorted.
    """
    return ascending_pairs(uids_to_pairs(uids))


def sorted_uid_array(uids: Iterable[str]) -> np.ndarray:
    """DataComp subset file content: sorted ``u8,u8`` records (save with ``np.save``)."""
    pairs = uids_to_pairs(list(uids))
    pairs.sort()
    return pairs
