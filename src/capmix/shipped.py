"""Captions a source ships in its own metadata, as a caption set beside the raw one.

Some datasets come with synthetic captions already made: LAION-COCO's ``top_caption`` (the
BLIP caption its authors ranked best by CLIP, with that CLIP score in ``all_similarities``)
and CaptionNet's BLIP captions. Re-running BLIP to get them back would cost GPU-days and
would not be *their* captions; the paper's Figure 13 trains on exactly the shipped ones.

A captioner with backend :data:`BACKEND` names the metadata column that holds the caption
(``column``) and, optionally, one that holds a score the source computed for it
(``score_column``; a list column such as LAION-COCO's ``all_similarities`` gives its
largest value, see :func:`shipped_score`). The caption job joins the pool's fetched uids to
that column of the normalised metadata (``results/{pool}/metadata``), so the set has the
per-shard layout of every other caption set and every later stage (scoring, mixing,
training) reads it alike.
The metadata stage checks the columns are there and kept (``required_columns``), so a wrong
name stops the run before anything is fetched.

Like the ``released`` backend (:mod:`capmix.released`) it runs no model: its one temperature
is nominal (the shipped captions' decoding is the source's); a shipped captioner must list
exactly one (:func:`temperature_problems`).

A light module (standard library only at import): the Snakefile and the config checker read
its constants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: The captioner ``backend`` that reads captions shipped in the metadata (the schema lists it
#: with the model backends and ``released``; a test holds them equal).
BACKEND = "shipped"
#: The column the shipped score is copied to in the caption set's per-shard parquets.
SCORE_COLUMN = "shipped_score"
#: How many example uids a report lists.
EXAMPLES = 5


def shipped_columns(spec: Mapping[str, Any]) -> dict[str, str]:
    """The metadata columns a shipped captioner reads, by role: ``caption`` and, when it
    has one, ``score``."""
    columns = {"caption": str(spec["column"])}
    if spec.get("score_column"):
        columns["score"] = str(spec["score_column"])
    return columns


def required_columns(pool_index: int, pool: Mapping[str, Any],
                     captioners: Mapping[str, Any]) -> dict[str, str]:
    """Config key -> metadata column, for every shipped captioner a pool runs: the metadata
    stage checks each is present and kept (its ``required`` argument)."""
    wanted: dict[str, str] = {}
    for name in pool.get("captioners") or []:
        spec = captioners.get(name) or {}
        if spec.get("backend") != BACKEND:
            continue
        for role, column in shipped_columns(spec).items():
            key = "column" if role == "caption" else "score_column"
            wanted[f"captioners.{name}.{key} (pools[{pool_index}])"] = column
    return wanted


def temperature_problems(config: Mapping[str, Any]) -> list[str]:
    """A shipped captioner has exactly one (nominal) temperature: several would be several
    copies of one caption set, scored and mixed as if they differed."""
    problems = []
    for name, spec in (config.get("captioners") or {}).items():
        if (spec or {}).get("backend") == BACKEND and len(spec.get("temperatures") or []) != 1:
            problems.append(f"config key 'captioners.{name}.temperatures': a shipped captioner "
                            f"reads one metadata column, so it has exactly one (nominal) "
                            f"temperature, not {spec.get('temperatures')}")
    return problems


def shipped_score(value: Any) -> float | None:
    """A shipped score as one number. A list (LAION-COCO's ``all_similarities``, one per
    caption in ``all_captions``) gives its largest: the shipped caption is the one its source
    ranked best, so its own score is the list's maximum."""
    if isinstance(value, (list, tuple)):
        numbers = [float(v) for v in value if v is not None]
        return max(numbers) if numbers else None
    return None if value is None else float(value)


def join_shipped(uids: Sequence[str], metadata_parts: Sequence[Path],
                 spec: Mapping[str, Any]) -> tuple[dict[str, tuple[str | None, float | None]],
                                                    dict[str, Any]]:
    """The shipped caption (and score) of each uid, and a report of what did not join.

    Returns ``{uid: (caption, score)}`` for the uids whose caption is a non-empty string, and
    a report: n_pool, n_joined, n_without_caption (uid absent, or its caption null or blank),
    examples, the columns read and the parts. Only the wanted columns of each part are read
    (a metadata part of LAION-COCO carries lists of captions per row).
    """
    import pyarrow.parquet as pq

    columns = shipped_columns(spec)
    wanted = set(uids)
    found: dict[str, tuple[str | None, float | None]] = {}
    for part in metadata_parts:
        names = ["uid", *columns.values()]
        schema = pq.read_schema(part)
        missing = [c for c in names if c not in schema.names]
        if missing:
            raise ValueError(f"{part}: shipped captioner column(s) {missing} missing (columns: "
                             f"{schema.names}); keep them in the source's keep_columns")
        table = pq.read_table(part, columns=names).to_pydict()
        scores = table.get(columns.get("score", ""), [None] * len(table["uid"]))
        for uid, caption, score in zip(table["uid"], table[columns["caption"]], scores,
                                       strict=True):
            if uid in wanted and isinstance(caption, str) and caption.strip():
                found[uid] = (caption, shipped_score(score))
    without = [u for u in uids if u not in found]
    report = {
        "n_pool": len(uids),
        "n_joined": len(found),
        "n_without_caption": len(without),
        "examples_without_caption": without[:EXAMPLES],
        "columns": columns,
        "parts": [str(p) for p in metadata_parts],
    }
    return found, report
