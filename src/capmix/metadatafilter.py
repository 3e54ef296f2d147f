"""A strategy's filter on columns the source ships (LAION's NSFW, RedCaps' subreddit), as data.

Web datasets ship columns about each sample besides url and caption: LAION-400M its ``NSFW``
tag (UNLIKELY, UNSURE, NSFW) and ``similarity``, LAION-5B ``punsafe`` and ``pwatermark``,
RedCaps its ``subreddit``, YFCC its tags. The metadata stage keeps the ones a source lists in
``keep_columns``; a strategy may keep only the images whose kept columns pass conditions::

    metadata_filter:
      NSFW: {in: [UNLIKELY]}          # the value, as text, is one of these
      subreddit: {not_in: [pics]}     # ... is none of these
      pwatermark: {max: 0.8}          # a number at most this (min: at least)

Semantics (documented in README "Strategies", applied by :func:`capmix.mix.select`):

* every condition of every column must hold (and); ``in``/``not_in`` compare the value as
  text (so ``{in: [1]}`` matches the integer 1 and the string "1"), ``min``/``max`` as a number
  (a column that is not numeric stops the subset job, naming it);
* a missing value (null) passes no condition: it is unknown, so it is not shown to be safe;
* like a text filter, the filter applies to every part of the strategy, and ``top`` fractions
  are still of the whole pool (DataComp computes its thresholds before its other filters).

Each column a pool's strategies filter on gets one job (rule mix_metadata_column,
:func:`capmix.mixparts.run_metadata_column`) that writes it in the mix table's uid-range parts,
beside the table rather than in it: adding a strategy with a filter rebuilds neither the table
nor the other strategies' subsets. The strategy's subset job joins it to each part of the
table as ``meta:<column>`` (:func:`metadata_table_column`).

A light module (standard library only): the config checker and the Snakefile read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The conditions a column may state (the schema lists exactly these; a test holds them equal).
CONDITIONS: tuple[str, ...] = ("in", "not_in", "min", "max")
#: The names a filtered column may have (schema ``metadata_filter.propertyNames``; a test holds
#: them equal): each column is a folder and a Snakemake wildcard of its own job.
COLUMN_PATTERN = "[A-Za-z0-9_][A-Za-z0-9_.-]*"
#: Prefix of a filtered metadata column in the mix table (a kept column could be called
#: ``uid`` or ``score:raw``; the prefix keeps it apart from the table's own columns).
TABLE_PREFIX = "meta:"


@dataclass(frozen=True)
class ColumnCondition:
    """What one metadata column's value must be."""

    column: str
    values_in: tuple[str, ...] | None = None
    values_not_in: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def numeric(self) -> bool:
        return self.minimum is not None or self.maximum is not None

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.values_in is not None:
            found["in"] = list(self.values_in)
        if self.values_not_in is not None:
            found["not_in"] = list(self.values_not_in)
        if self.minimum is not None:
            found["min"] = self.minimum
        if self.maximum is not None:
            found["max"] = self.maximum
        return found


@dataclass(frozen=True)
class MetadataFilter:
    """Every column condition a strategy's images must pass."""

    conditions: tuple[ColumnCondition, ...]

    @property
    def columns(self) -> list[str]:
        return [c.column for c in self.conditions]

    def as_dict(self) -> dict[str, Any]:
        return {c.column: c.as_dict() for c in self.conditions}


def _texts(values: Any) -> tuple[str, ...] | None:
    return None if values is None else tuple(str(v) for v in values)


def parse_metadata_filter(spec: Mapping[str, Any] | None) -> MetadataFilter | None:
    """A strategy's ``metadata_filter`` (schema-validated) as a :class:`MetadataFilter`;
    a condition that can hold for no value (``min`` above ``max``) raises ValueError."""
    if not spec:
        return None
    conditions = []
    for column, condition in spec.items():
        minimum, maximum = condition.get("min"), condition.get("max")
        if minimum is not None and maximum is not None and float(minimum) > float(maximum):
            raise ValueError(f"metadata_filter column '{column}': min {minimum} is above max "
                             f"{maximum}: no value passes")
        conditions.append(ColumnCondition(
            column=str(column), values_in=_texts(condition.get("in")),
            values_not_in=_texts(condition.get("not_in")),
            minimum=None if minimum is None else float(minimum),
            maximum=None if maximum is None else float(maximum)))
    return MetadataFilter(tuple(conditions))


def metadata_table_column(column: str) -> str:
    """The mix table's column holding metadata column ``column``."""
    return TABLE_PREFIX + column
