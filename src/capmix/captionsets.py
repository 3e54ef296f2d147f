"""Caption-set names: which (captioner, temperature) sets a pool captions, scores and mixes.

One place for the fact, read by the workflow (which jobs to run), the mixing stage (what a
source reads) and the findings (what an alias means). A caption set is ``raw`` or
``{captioner}/{temperature}`` with the temperature as a float (``1`` -> ``1.0``). A pool runs
each of its captioners at the captioner's ``temperatures``, unless the pool's
``temperatures`` names a subset for it (e.g. a NoCaps-like pool that only needs the
temperature Table 1 compares at).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RAW = "raw"


def caption_set_name(captioner: str, temperature: float) -> str:
    """``captioner/temperature`` as it appears in paths and aliases (0.75, 1.0, ...)."""
    return f"{captioner}/{float(temperature)}"


def pool_temperatures(captioners: Mapping[str, Any], pool: Mapping[str, Any],
                      captioner: str) -> list[float]:
    """The temperatures a pool runs a captioner at: the pool's subset, else all of them."""
    chosen = (pool.get("temperatures") or {}).get(captioner)
    if chosen is None:
        chosen = (captioners.get(captioner) or {}).get("temperatures") or []
    return [float(t) for t in chosen]


def pool_caption_sets(captioners: Mapping[str, Any], pool: Mapping[str, Any]) -> list[str]:
    """``raw`` plus every (captioner, temperature) set the pool captions."""
    return [RAW] + [caption_set_name(name, t) for name in pool.get("captioners") or []
                    for t in pool_temperatures(captioners, pool, name)]


def temperature_problems(config: Mapping[str, Any]) -> list[str]:
    """A pool's ``temperatures`` must name its own captioners and temperatures they have."""
    problems = []
    captioners = config.get("captioners") or {}
    for index, pool in enumerate(config.get("pools") or []):
        for name, chosen in (pool.get("temperatures") or {}).items():
            where = f"config key 'pools[{index}].temperatures.{name}'"
            if name not in (pool.get("captioners") or []):
                problems.append(f"{where}: '{name}' is not a captioner of pool "
                                f"'{pool['name']}' (allowed: "
                                f"{', '.join(pool.get('captioners') or []) or 'none'})")
                continue
            allowed = [float(t) for t in (captioners.get(name) or {}).get("temperatures") or []]
            for t in chosen:
                if float(t) not in allowed:
                    problems.append(f"{where}: captioner '{name}' has no temperature {t} "
                                    f"(allowed: {', '.join(map(str, allowed))})")
    return problems
