"""Filtering and mixing strategies as data: what a strategy says, and which inputs it needs.

The paper's contribution lives in its strategies. Every baseline it reports (Section 5,
Tables 4 and 5, Figure 2, Appendix G) is a *strategy*: config data built from a few
primitives, never a code branch. A strategy is an ordered list of *parts*; the training set is
the union of the (image, caption) pairs the parts select. A part names

* ``caption``: the caption the selected images train with: a caption *source* (``raw``, a
  synthetic caption set ``captioner/temperature``, ``captioner/best`` = the best-scoring
  synthetic caption across that captioner's temperatures, or a pool alias such as
  ``synthetic``), or a list of sources, concatenated;
* ``images``: ``all`` images of the pool, or the ``remaining`` ones no earlier part chose;
* ``keep``: nothing (keep all), ``top: f`` (the top fraction f of the *pool* by a source's
  CLIP score, which fixes a cosine threshold), ``min_score: t`` (a fixed threshold) or
  ``same_threshold: true`` (the threshold an earlier part set, applied to this part's own
  caption score: the paper's "subject to the same cosine similarity threshold").

A strategy may also intersect its whole result with ImageNet-1k-like image clusters
(``intersect_image_clusters``; see :mod:`capmix.clusters`) and keep only images whose raw
caption passes a text filter (``text_filter``: language id, fastText tokens, characters, as
DataComp's image-based baseline; see :mod:`capmix.textfilter`), and may be a *sweep*: a family
with ``fractions: [...]`` whose parts say ``top: sweep``, expanded to one strategy per
fraction named ``{family}_{percent}`` (``raw_top`` -> ``raw_top_10``, ... ``raw_top_90``).

This module is the light half of mixing: parsing and expanding strategies, which caption
sources and caption sets a pool's strategies need, and the config checks a schema cannot
express. It imports nothing heavier than :mod:`capmix.captionsets`, because the config checker
and the Snakefile read it at start-up, before any job runs. Applying a strategy to a pool's
scores (the exact thresholds, "remaining", concatenation, repeated images) is
:mod:`capmix.mix`, which the mix_table and subset jobs run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from capmix.assetspec import reference_problem
from capmix.captionsets import RAW, caption_set_name, pool_temperatures
from capmix.metadatafilter import MetadataFilter, parse_metadata_filter
from capmix.textfilter import TextFilter, language_id_problems, parse_text_filter

#: The caption source suffix ``captioner/best``: the best-scoring caption over temperatures.
BEST = "best"
#: ``top: sweep``: the part's fraction comes from the family's ``fractions`` list.
SWEEP = "sweep"
KEEP_RULES = ("all", "top", "min_score", "same_threshold")


class StrategyError(ValueError):
    """A strategy whose parts do not make sense together; names the strategy."""


# ------------------------------------------------------------------ strategies as data


@dataclass(frozen=True)
class Keep:
    """Which of a part's candidate images it keeps."""

    rule: str = "all"  # one of KEEP_RULES
    value: float | None = None  # the fraction (top) or the threshold (min_score)
    by: str | None = None  # source whose score decides; None = the part's caption source


@dataclass(frozen=True)
class Part:
    """One step of a strategy: which images it may take, which it keeps, with which caption."""

    caption: tuple[str, ...]  # one source, or several concatenated
    images: str = "all"  # "all" | "remaining"
    keep: Keep = field(default_factory=Keep)

    @property
    def score_source(self) -> str:
        """The source whose CLIP score this part's threshold applies to."""
        return self.keep.by or self.caption[0]

    @property
    def label(self) -> str:
        """The caption as one name (``raw+synthetic`` for a concatenation)."""
        return "+".join(self.caption)


@dataclass(frozen=True)
class Strategy:
    """One concrete strategy (a sweep already expanded), as :func:`parse_strategy` checked it.

    ``family`` and ``fraction`` say which sweep it came from, so that summaries and findings
    can put the fractions of one family side by side.
    """

    name: str
    description: str
    parts: tuple[Part, ...]
    intersect_image_clusters: bool = False
    text_filter: TextFilter | None = None  # on the raw caption, for every part
    metadata_filter: MetadataFilter | None = None  # on kept source columns, for every part
    paper: tuple[str, ...] = ()
    family: str | None = None
    fraction: float | None = None

    def sources(self) -> set[str]:
        """Every caption source the strategy reads (captions and scores)."""
        found = set()
        for part in self.parts:
            found.update(part.caption)
            if part.keep.rule != "all":
                found.add(part.score_source)
        return found


def percent_label(fraction: float) -> str:
    """0.1 -> '10', 0.75 -> '75', 0.125 -> '12p5' (names must be path- and wildcard-safe)."""
    return format(round(fraction * 100, 6), "g").replace(".", "p")


def _uses_sweep(spec: Mapping[str, Any]) -> bool:
    """Whether some part of a spec takes its fraction from the family's sweep."""
    return any(part.get("keep", {}).get("top") == SWEEP for part in spec.get("parts", []))


def expand_strategies(strategies: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Concrete strategies by name: each sweep family becomes one strategy per fraction."""
    expanded: dict[str, dict[str, Any]] = {}
    for family, spec in strategies.items():
        fractions = spec.get("fractions")
        if not fractions:
            expanded[family] = {**spec, "family": family}
            continue
        for fraction in fractions:
            name = f"{family}_{percent_label(fraction)}"
            parts = []
            for part in spec["parts"]:
                keep = dict(part.get("keep", {}))
                if keep.get("top") == SWEEP:
                    keep["top"] = fraction
                parts.append({**part, "keep": keep})
            concrete = {k: v for k, v in spec.items() if k != "fractions"}
            expanded[name] = {**concrete, "parts": parts, "family": family,
                              "fraction": fraction}
    return expanded


def parse_strategy(name: str, spec: Mapping[str, Any]) -> Strategy:
    """A schema-validated strategy spec as a :class:`Strategy`; semantic problems raise."""
    def fail(problem: str) -> StrategyError:
        return StrategyError(f"strategy '{name}': {problem}")

    parts: list[Part] = []
    have_threshold = False
    for i, raw_part in enumerate(spec["parts"]):
        caption = raw_part["caption"]
        caption = (caption,) if isinstance(caption, str) else tuple(caption)
        keep_spec = dict(raw_part.get("keep", {}))
        by = keep_spec.pop("by", None)
        rules = [r for r in ("top", "min_score", "same_threshold") if r in keep_spec]
        if len(rules) > 1:
            raise fail(f"part {i} keeps by more than one rule {rules}; choose one")
        rule = rules[0] if rules else "all"
        value = keep_spec.get(rule) if rule in ("top", "min_score") else None
        if value == SWEEP:
            raise fail(f"part {i} says 'top: sweep' but the strategy has no 'fractions' list")
        if rule == "same_threshold" and not have_threshold:
            raise fail(f"part {i} keeps the same threshold, but no earlier part sets one "
                       "(with 'top' or 'min_score')")
        if rule == "all" and by is not None:
            raise fail(f"part {i} names a score source 'by: {by}' but keeps every image")
        if len(caption) > 1 and rule != "all" and by is None:
            raise fail(f"part {i} concatenates {list(caption)}: say which source's score "
                       "decides with 'keep: {by: ...}'")
        images = raw_part.get("images", "all")
        if images == "remaining" and i == 0:
            raise fail("part 0 takes the 'remaining' images, but no earlier part chose any")
        have_threshold = have_threshold or rule in ("top", "min_score")
        parts.append(Part(caption, images, Keep(rule, None if value is None else float(value),
                                                by)))
    if spec.get("fractions") is not None and not _uses_sweep(spec):
        raise fail("has 'fractions' but no part says 'top: sweep'")
    try:
        metadata_filter = parse_metadata_filter(spec.get("metadata_filter"))
    except ValueError as error:
        raise fail(str(error)) from error
    return Strategy(
        name=name, description=spec.get("description", ""), parts=tuple(parts),
        intersect_image_clusters=bool(spec.get("intersect_image_clusters", False)),
        text_filter=parse_text_filter(spec.get("text_filter")),
        metadata_filter=metadata_filter,
        paper=tuple(spec.get("paper", [])), family=spec.get("family"),
        fraction=spec.get("fraction"),
    )


# ------------------------------------------------------------------ sources of a pool


def pool_mix(pool: Mapping[str, Any]) -> Mapping[str, Any]:
    """A pool's ``mix`` settings; a pool without them mixes nothing (an empty mapping)."""
    return pool.get("mix") or {}


def pool_strategy_names(config: Mapping[str, Any], pool: Mapping[str, Any]) -> list[str]:
    """The concrete strategies a pool runs: listed families expand to all their fractions."""
    strategies = config.get("strategies", {})
    expanded = expand_strategies(strategies)
    names: list[str] = []
    for listed in pool_mix(pool).get("strategies", []):
        if listed in strategies and strategies[listed].get("fractions"):
            names += [n for n, s in expanded.items() if s["family"] == listed]
        else:
            names.append(listed)
    return list(dict.fromkeys(names))


def resolve_source(source: str, pool: Mapping[str, Any]) -> str:
    """A pool alias (e.g. ``synthetic``) to a concrete source; concrete ones pass through."""
    return str(pool_mix(pool).get("sources", {}).get(source, source))


def source_caption_sets(source: str, captioners: Mapping[str, Any],
                        pool: Mapping[str, Any] | None = None) -> list[str]:
    """Caption sets a concrete source reads: ``X/best`` reads every temperature X runs at in
    the pool (:func:`capmix.captionsets.pool_temperatures`)."""
    if source == RAW:
        return [RAW]
    captioner, _, which = source.rpartition("/")
    if which == BEST:
        return [caption_set_name(captioner, t)
                for t in pool_temperatures(captioners, pool or {}, captioner)]
    return [source]


def pool_sources(config: Mapping[str, Any], pool: Mapping[str, Any]) -> dict[str, list[str]]:
    """Concrete source -> caption sets, for every source the pool's strategies use."""
    expanded = expand_strategies(config.get("strategies", {}))
    sources: set[str] = set()
    for name in pool_strategy_names(config, pool):
        strategy = parse_strategy(name, expanded[name])
        sources.update(resolve_source(s, pool) for s in strategy.sources())
    return {s: source_caption_sets(s, config["captioners"], pool) for s in sorted(sources)}


def is_no_filter(strategy: Strategy) -> bool:
    """Whether a strategy trains on every image of the pool with one caption source and
    nothing filtered (``raw_no_filter``, ``synthetic_no_filter``, Table 1's rows)."""
    return (len(strategy.parts) == 1 and strategy.parts[0].images == "all"
            and strategy.parts[0].keep.rule == "all" and len(strategy.parts[0].caption) == 1
            and not strategy.intersect_image_clusters and strategy.text_filter is None
            and strategy.metadata_filter is None)


def no_filter_strategies(config: Mapping[str, Any], pool: Mapping[str, Any],
                         names: list[str] | None = None) -> dict[str, str]:
    """Caption set -> the pool's no-filter strategy (:func:`is_no_filter`) that trains on
    it, among ``names`` (default: the pool's strategies), the first in their order where
    several do. The strategy's source is resolved through the pool's aliases
    (``synthetic`` -> ``toy_captioner/0.75``); a ``captioner/best`` source spans several
    caption sets and is left out."""
    expanded = expand_strategies(config.get("strategies", {}))
    found: dict[str, str] = {}
    for name in pool_strategy_names(config, pool) if names is None else names:
        if name not in expanded:
            continue
        strategy = parse_strategy(name, expanded[name])
        if not is_no_filter(strategy):
            continue
        source = resolve_source(strategy.parts[0].caption[0], pool)
        sets = source_caption_sets(source, config.get("captioners", {}), pool)
        if len(sets) == 1 and not source.endswith(f"/{BEST}"):
            found.setdefault(sets[0], name)
    return found


def pool_needs_clusters(config: Mapping[str, Any], pool: Mapping[str, Any]) -> bool:
    """Whether some strategy of the pool intersects with image clusters (so the workflow
    must compute them before the pool's mix table)."""
    expanded = expand_strategies(config.get("strategies", {}))
    return any(expanded[n].get("intersect_image_clusters", False)
               for n in pool_strategy_names(config, pool))


def pool_filters_captions(config: Mapping[str, Any], pool: Mapping[str, Any]) -> bool:
    """Whether some strategy of the pool has a ``text_filter`` (so the workflow must measure
    each raw caption, its language included, before the pool's mix table: the
    ``caption_language`` stage)."""
    expanded = expand_strategies(config.get("strategies", {}))
    return any(expanded.get(n, {}).get("text_filter") for n in pool_strategy_names(config, pool))


def metadata_filter_users(config: Mapping[str, Any],
                          pool: Mapping[str, Any]) -> dict[str, list[str]]:
    """Kept column -> the pool's strategies that filter on it (``metadata_filter``), to name
    them when the column is missing."""
    expanded = expand_strategies(config.get("strategies", {}))
    users: dict[str, list[str]] = {}
    for name in pool_strategy_names(config, pool):
        for column in (expanded.get(name, {}).get("metadata_filter") or {}):
            users.setdefault(str(column), []).append(name)
    return users


def _source_problem(source: str, pool: Mapping[str, Any] | None,
                    captioners: Mapping[str, Any], aliases: set[str]) -> str | None:
    """Why a source name is unknown (None if it is fine)."""
    if source == RAW:
        return None
    if pool is not None:
        source = resolve_source(source, pool)
        if source == RAW:
            return None
    elif source in aliases or "/" not in source:
        return None  # an alias: checked in every pool that runs the strategy
    captioner, _, which = source.rpartition("/")
    known = pool["captioners"] if pool is not None else list(captioners)
    if captioner not in known:
        where = f"pool '{pool['name']}'" if pool is not None else "the config"
        return (f"unknown caption source '{source}' (allowed: 'raw', an alias of "
                f"pools[].mix.sources, or 'captioner/temperature' or 'captioner/best' for a "
                f"captioner of {where}: {', '.join(known) or 'none'})")
    if which == BEST:
        return None
    temperatures = pool_temperatures(captioners, pool or {}, captioner)
    try:
        temperature = float(which)
    except ValueError:
        temperature = None
    if temperature not in temperatures:
        return (f"caption source '{source}': captioner '{captioner}' has no temperature "
                f"'{which}' (allowed: {', '.join(str(t) for t in temperatures)} or 'best')")
    return None


def strategy_problems(config: Mapping[str, Any]) -> list[str]:
    """Config checks a schema cannot express: each names the strategy or pool key."""
    problems: list[str] = []
    strategies = config.get("strategies", {})
    captioners = config.get("captioners", {})
    expanded = expand_strategies(strategies)
    parsed: dict[str, Strategy] = {}
    for name, spec in expanded.items():
        try:
            parsed[name] = parse_strategy(name, spec)
        except StrategyError as error:
            problems.append(f"config key 'strategies.{spec['family']}': {error}")
    families = {}
    for name, spec in expanded.items():
        families.setdefault(spec["family"], []).append(name)
    pools = config.get("pools", [])
    aliases = {a for pool in pools for a in pool_mix(pool).get("sources", {})}
    used: set[str] = set()
    pool_names = {p["name"]: p for p in pools}
    for index, pool in enumerate(pools):
        where = f"config key 'pools[{index}].mix"
        mix = pool_mix(pool)
        for alias, target in mix.get("sources", {}).items():
            problem = _source_problem(target, pool, captioners, set())
            if problem:
                problems.append(f"{where}.sources.{alias}': {problem}")
        for listed in mix.get("strategies", []):
            if listed not in expanded and listed not in strategies:
                problems.append(f"{where}.strategies': unknown strategy '{listed}' (allowed: a "
                                f"name or family under 'strategies': "
                                f"{', '.join(sorted(strategies)) or 'none defined'})")
        for name in pool_strategy_names(config, pool):
            if name not in parsed:
                continue
            used.add(name)
            strategy = parsed[name]
            for source in sorted(strategy.sources()):
                problem = _source_problem(source, pool, captioners, aliases)
                if problem:
                    problems.append(f"config key 'strategies.{strategy.family}': strategy "
                                    f"'{name}' in pool '{pool['name']}': {problem}")
            kept = (pool.get("source") or {}).get("keep_columns")
            for column in (strategy.metadata_filter.columns if strategy.metadata_filter
                           else []):
                if isinstance(kept, list) and column not in kept:
                    problems.append(f"config key 'pools[{index}].source.keep_columns': strategy "
                                    f"'{name}' filters on metadata column '{column}', which "
                                    f"pool '{pool['name']}' does not keep (it keeps {kept})")
            if strategy.intersect_image_clusters and not mix.get("image_clusters"):
                problems.append(f"{where}.image_clusters': strategy '{name}' intersects with "
                                f"ImageNet-like image clusters, but pool '{pool['name']}' "
                                "configures none (reference_pool or reference_embeddings)")
        clusters = mix.get("image_clusters") or {}
        language_id = mix.get("language_id") or {}
        if pool_filters_captions(config, pool):
            problems += language_id_problems(f"{where}.language_id", language_id)
        files = {"image_clusters.centroids": clusters.get("centroids"),
                 "language_id.model": language_id.get("model")}
        references = clusters.get("reference_embeddings") or []
        for i, value in enumerate([references] if isinstance(references, str) else references):
            files[f"image_clusters.reference_embeddings[{i}]"] = value
        for key, value in files.items():
            problem = reference_problem(config, value) if value is not None else None
            if problem:
                problems.append(f"{where}.{key}': {problem}")
        if clusters and ("reference_pool" in clusters) == ("reference_embeddings" in clusters):
            problems.append(f"{where}.image_clusters': give exactly one of reference_pool (a "
                            "pool of ImageNet-like images) or reference_embeddings (a file)")
        reference = clusters.get("reference_pool")
        if reference is not None:
            other = pool_names.get(reference)
            if other is None:
                problems.append(f"{where}.image_clusters.reference_pool': unknown pool "
                                f"'{reference}' (allowed: {', '.join(sorted(pool_names))})")
            elif other.get("scorer") != pool.get("scorer"):
                problems.append(f"{where}.image_clusters.reference_pool': pool '{reference}' "
                                f"embeds images with scorer '{other.get('scorer')}', pool "
                                f"'{pool['name']}' with '{pool.get('scorer')}': they must match")
        if mix.get("strategies") and pool.get("scorer") is None:
            problems.append(f"{where}.strategies': pool '{pool['name']}' has strategies but "
                            "no scorer")
    for name, strategy in parsed.items():
        if name in used:
            continue
        for source in sorted(strategy.sources()):
            problem = _source_problem(source, None, captioners, aliases)
            if problem:
                problems.append(f"config key 'strategies.{strategy.family}': strategy "
                                f"'{name}': {problem}")
    return problems
