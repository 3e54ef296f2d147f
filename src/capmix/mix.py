"""Filtering and mixing strategies: which images a CLIP trains on, and with which caption.

The paper's contribution lives here. Every baseline it reports (Section 5, Tables 4 and 5,
Figure 2, Appendix G) is a *strategy*: config data built from a few primitives, never a code
branch. A strategy is an ordered list of *parts*; the training set is the union of the
(image, caption) pairs the parts select. A part names

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
(``intersect_image_clusters``; see :mod:`capmix.clusters`), and may be a *sweep*: a family
with ``fractions: [...]`` whose parts say ``top: sweep``, expanded to one strategy per
fraction named ``{family}_{percent}`` (``raw_top`` -> ``raw_top_10``, ... ``raw_top_90``).

Exact semantics, and the choices the paper leaves open (all documented in README/results):

* A fraction becomes a threshold exactly as DataComp's ``clip_score`` filter does it:
  ``threshold = -np.sort(-s)[int(N * f)]`` over the pool, keep ``s >= threshold`` (so
  ``int(N*f) + 1`` images plus ties). ``f = 1`` keeps everything (DataComp would index past
  the end). The pool is the *fetched* images (those a model can train on); DataComp computes
  its thresholds over the metadata, before download failures.
* "Remaining" means not chosen by any earlier part *before* the cluster intersection; since
  the intersection applies to every part, this is the same as after it.
* A concatenated caption joins its sources with a single space (the paper does not say);
  its threshold is decided by the part's explicit ``by`` source.
* A caption set with several captions per image trains with (and is scored by) its first
  caption; ``captioner/best`` considers every caption of every temperature.
* Pairs, not images: a part with ``images: all`` may choose an image another part chose with a
  different caption ("top % raw + top % BLIP2"), so an image can appear twice; the uid file
  lists it once, the samples table and the training shards twice. Parts that would give the
  same image the same caption twice are not merged either: the config says what it means.

Work shared by all strategies of a pool is done once, by :func:`build_mix_table`: every score
table a pool's strategies need is loaded, checked (NaN or missing uids stop it here, with
counts and examples) and joined into one table, and each source's scores are sorted once.
Each strategy is then its own cheap job reading that table (:func:`select`), so editing one
strategy re-runs only that strategy's subset and what follows from it.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from capmix.captionsets import RAW, caption_set_name, pool_temperatures
from capmix.provenance import provenance_record, write_json, write_parquet_atomic
from capmix.uids import ascending_uid_array, sorted_uid_array

log = logging.getLogger(__name__)

BEST = "best"
SWEEP = "sweep"
CONCAT_SEPARATOR = " "
CLUSTER_COLUMN = "in_image_clusters"
KEEP_RULES = ("all", "top", "min_score", "same_threshold")


class StrategyError(ValueError):
    """A strategy whose parts do not make sense together; names the strategy."""


class ScoreTableError(ValueError):
    """A score table a strategy needs has NaN scores or lacks fetched uids."""


# ------------------------------------------------------------------ strategies as data


@dataclass(frozen=True)
class Keep:
    """Which of a part's candidate images it keeps."""

    rule: str = "all"  # one of KEEP_RULES
    value: float | None = None  # the fraction (top) or the threshold (min_score)
    by: str | None = None  # source whose score decides; None = the part's caption source


@dataclass(frozen=True)
class Part:
    caption: tuple[str, ...]  # one source, or several concatenated
    images: str = "all"  # "all" | "remaining"
    keep: Keep = field(default_factory=Keep)

    @property
    def score_source(self) -> str:
        """The source whose CLIP score this part's threshold applies to."""
        return self.keep.by or self.caption[0]

    @property
    def label(self) -> str:
        return "+".join(self.caption)


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    parts: tuple[Part, ...]
    intersect_image_clusters: bool = False
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
    return Strategy(
        name=name, description=spec.get("description", ""), parts=tuple(parts),
        intersect_image_clusters=bool(spec.get("intersect_image_clusters", False)),
        paper=tuple(spec.get("paper", [])), family=spec.get("family"),
        fraction=spec.get("fraction"),
    )


# ------------------------------------------------------------------ sources of a pool


def pool_mix(pool: Mapping[str, Any]) -> Mapping[str, Any]:
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


def pool_needs_clusters(config: Mapping[str, Any], pool: Mapping[str, Any]) -> bool:
    expanded = expand_strategies(config.get("strategies", {}))
    return any(expanded[n].get("intersect_image_clusters", False)
               for n in pool_strategy_names(config, pool))


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
            if strategy.intersect_image_clusters and not mix.get("image_clusters"):
                problems.append(f"{where}.image_clusters': strategy '{name}' intersects with "
                                f"ImageNet-like image clusters, but pool '{pool['name']}' "
                                "configures none (reference_pool or reference_embeddings)")
        clusters = mix.get("image_clusters") or {}
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


# ------------------------------------------------------------------ the shared pool table


def score_column(source: str) -> str:
    return f"score:{source}"


def caption_column(source: str) -> str:
    return f"caption:{source}"


def origin_column(source: str) -> str:
    return f"from:{source}"


def _sorted_key(source: str) -> str:
    # npz member names are file names: keep them free of '/'.
    return source.replace("/", "@")


@dataclass
class CaptionSet:
    """One caption set's scores and captions, as the score and caption stages wrote them."""

    name: str
    scores: Path  # results/{pool}/scores/{scorer}/{set}.parquet
    caption_files: Sequence[Path]  # per-shard caption parquets (uid, captions, status)


def _read_caption_set(caption_set: CaptionSet, best: bool) -> pd.DataFrame:
    """uid -> (score, caption) of one set: the first caption, or the best one if ``best``."""
    scores = pq.read_table(caption_set.scores,
                           columns=["uid", "cos", "cos_all", "missing"]).to_pandas()
    captions = pd.concat([pd.read_parquet(f, columns=["uid", "captions"])
                          for f in caption_set.caption_files], ignore_index=True)
    # Duplicate uids in the score table are reported by check_scores, not here.
    frame = scores.merge(captions.drop_duplicates("uid"), on="uid", how="left")
    if best:
        pick = [int(np.argmax(c)) if c is not None and len(c) else 0 for c in frame["cos_all"]]
        frame["score"] = [float(c[i]) if c is not None and len(c) else np.nan
                          for c, i in zip(frame["cos_all"], pick, strict=True)]
    else:
        pick = [0] * len(frame)
        frame["score"] = frame["cos"].astype("float64")
    frame["caption"] = [t[i] if t is not None and len(t) > i else None
                        for t, i in zip(frame["captions"], pick, strict=True)]
    return frame[["uid", "score", "caption", "missing"]]


def _examples(values: Iterable[Any], n: int = 3) -> list[Any]:
    return list(values)[:n]


def check_scores(set_name: str, path: Path, frame: pd.DataFrame, pool_uids: pd.Index) -> dict:
    """Problems of one score table against the fetched pool (empty dict if none)."""
    problems: dict[str, Any] = {}
    duplicated = frame["uid"][frame["uid"].duplicated()]
    if len(duplicated):
        problems["duplicate_uids"] = {"count": int(duplicated.nunique()),
                                      "examples": _examples(duplicated.unique())}
    present = frame.drop_duplicates("uid").set_index("uid")
    missing = pool_uids.difference(present.index)
    if len(missing):
        problems["missing_uids"] = {"count": int(len(missing)),
                                    "examples": _examples(sorted(missing))}
    known = present.reindex(pool_uids.intersection(present.index))
    bad = known[~np.isfinite(known["score"].to_numpy(dtype="float64")) | known["caption"].isna()]
    if len(bad):
        scores = bad["score"].to_numpy(dtype="float64")
        fallback = np.where(np.isnan(scores), "nan_score",
                            np.where(np.isinf(scores), "non_finite_score", "no_caption"))
        reasons = Counter(str(r) if isinstance(r, str) else str(f)
                          for r, f in zip(bad["missing"], fallback, strict=True))
        problems["nan_scores"] = {"count": int(len(bad)), "examples": _examples(bad.index),
                                  "reasons": dict(reasons)}
    return problems


def describe_score_problems(set_name: str, path: Path, problems: Mapping[str, Any],
                            n_pool: int) -> str:
    lines = [f"score table of caption set '{set_name}' ({path}), pool of {n_pool} fetched images:"]
    if "nan_scores" in problems:
        p = problems["nan_scores"]
        lines.append(f"  {p['count']} fetched image(s) have no score or caption (NaN), e.g. "
                     f"{p['examples']} (reasons: {p['reasons']})")
    if "missing_uids" in problems:
        p = problems["missing_uids"]
        lines.append(f"  {p['count']} fetched uid(s) are missing from the table, e.g. "
                     f"{p['examples']}")
    if "duplicate_uids" in problems:
        p = problems["duplicate_uids"]
        lines.append(f"  {p['count']} uid(s) appear more than once, e.g. {p['examples']}")
    return "\n".join(lines)


def build_mix_table(pool_uids: Sequence[str], sources: Mapping[str, Sequence[CaptionSet]],
                    image_clusters: pd.DataFrame | None = None,
                    on_missing_score: str = "error") -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per usable pool image: every source's score and caption, sorted by uid.

    ``sources`` maps a concrete source to its caption sets (one, or every temperature for
    ``captioner/best``). Scores with NaN or missing uids raise :class:`ScoreTableError`
    naming the set, the counts and examples, unless ``on_missing_score == "drop"``: then those
    images leave the pool (for every strategy, so all strategies share one pool) and the
    report counts them. Duplicate uids always raise.
    """
    pool_index = pd.Index(sorted(set(pool_uids)), name="uid")
    table = pd.DataFrame(index=pool_index)
    report: dict[str, Any] = {"n_fetched": int(len(pool_index)), "sources": {}, "dropped": {}}
    unusable = pd.Index([], dtype=object)
    errors: list[str] = []
    for source, sets in sources.items():
        best = source.endswith(f"/{BEST}")
        frames = []
        for caption_set in sets:
            frame = _read_caption_set(caption_set, best)
            problems = check_scores(caption_set.name, caption_set.scores, frame, pool_index)
            if problems.get("duplicate_uids") or (problems and on_missing_score == "error"):
                errors.append(describe_score_problems(caption_set.name, caption_set.scores,
                                                      problems, len(pool_index)))
                continue
            if problems:
                # usable = a finite score and a caption; ±inf are as unusable as NaN
                usable = np.isfinite(frame["score"].to_numpy(dtype="float64")) & frame[
                    "caption"].notna().to_numpy()
                lost = pool_index.difference(pd.Index(frame.loc[usable, "uid"]))
                report["dropped"][caption_set.name] = {k: v["count"] for k, v in
                                                       problems.items()}
                unusable = unusable.union(lost)
            frame = frame.drop_duplicates("uid").set_index("uid").reindex(pool_index)
            frame["from"] = caption_set.name
            frames.append(frame)
        if len(frames) != len(sets):
            continue
        if best:
            stacked = np.stack([f["score"].to_numpy(dtype="float64") for f in frames])
            winner = np.argmax(np.where(np.isfinite(stacked), stacked, -np.inf), axis=0)
            rows = np.arange(len(pool_index))
            table[score_column(source)] = stacked[winner, rows]
            captions = np.stack([f["caption"].to_numpy(dtype=object) for f in frames])
            table[caption_column(source)] = captions[winner, rows]
            table[origin_column(source)] = pd.Categorical.from_codes(
                winner, categories=[s.name for s in sets])
        else:
            table[score_column(source)] = frames[0]["score"].to_numpy(dtype="float64")
            table[caption_column(source)] = frames[0]["caption"].to_numpy(dtype=object)
    if errors:
        raise ScoreTableError(
            "cannot mix: the scores are incomplete\n" + "\n".join(errors) + "\n(nothing was "
            "written; fix the scores, or set pools[].mix.on_missing_score: drop to leave those "
            "images out of every strategy)")
    if image_clusters is not None:
        clusters = image_clusters.set_index("uid")[CLUSTER_COLUMN]
        absent = pool_index.difference(clusters.index)
        if len(absent):
            raise ScoreTableError(f"image clusters lack {len(absent)} fetched uid(s), e.g. "
                                  f"{_examples(sorted(absent))}")
        table[CLUSTER_COLUMN] = clusters.reindex(pool_index).to_numpy(dtype=bool)
    if len(unusable):
        report["dropped"]["total"] = int(len(unusable))
        table = table.drop(index=unusable)
    table = table.reset_index()
    for source in sources:
        scores = table[score_column(source)]
        report["sources"][source] = {
            "caption_sets": [s.name for s in sources[source]],
            "mean_score": float(scores.mean()) if len(scores) else None,
        }
    report["n_pool"] = int(len(table))
    return table, report


def sort_scores(table: pd.DataFrame, sources: Iterable[str]) -> dict[str, np.ndarray]:
    """Each source's scores over the pool, sorted descending: the one sort all fractions use."""
    return {s: -np.sort(-table[score_column(s)].to_numpy(dtype="float64")) for s in sources}


def write_mix_table(table: pd.DataFrame, sorted_scores: Mapping[str, np.ndarray],
                    table_path: Path, sorted_path: Path, report_path: Path,
                    report: dict[str, Any], provenance: dict[str, Any]) -> None:
    write_parquet_atomic(table, table_path, {"stage": "mix_table"})
    sorted_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sorted_path.with_name(sorted_path.name + ".tmp.npz")
    np.savez(tmp, **{_sorted_key(s): v for s, v in sorted_scores.items()})
    os.replace(tmp, sorted_path)
    write_json(report_path, {**report, "provenance": provenance})


def load_sorted_scores(path: Path, sources: Iterable[str]) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {s: np.asarray(data[_sorted_key(s)]) for s in sources}


# ------------------------------------------------------------------ one strategy


def fraction_threshold(sorted_desc: np.ndarray, fraction: float) -> float:
    """DataComp's clip_score threshold: ``-np.sort(-s)[int(N * f)]`` (f = 1 keeps all)."""
    if len(sorted_desc) == 0:
        return float("inf")
    return float(sorted_desc[min(int(len(sorted_desc) * fraction), len(sorted_desc) - 1)])


@dataclass
class Selection:
    """What a strategy chose: one row per training sample, and each part's threshold."""

    samples: pd.DataFrame  # uid, caption, source, part, score
    parts: list[dict[str, Any]]
    # The distinct images chosen, in the table's (uid-sorted) order. Kept because deriving it
    # from ``samples`` hashes every uid string: at 12.8M rows that was ~90% of a subset's time.
    image_uids: np.ndarray | None = None


def select(strategy: Strategy, table: pd.DataFrame, sorted_scores: Mapping[str, np.ndarray],
           resolve: Callable[[str], str] = lambda s: s) -> Selection:
    """Apply a strategy to a pool table (from :func:`build_mix_table`).

    ``sorted_scores`` holds each score source sorted descending over the same table (from
    :func:`sort_scores`), so a fraction costs one lookup.
    """
    n = len(table)
    chosen = np.zeros(n, dtype=bool)
    first_threshold: float | None = None
    masks: list[np.ndarray] = []
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(strategy.parts):
        mask = np.ones(n, dtype=bool) if part.images == "all" else ~chosen
        by = resolve(part.score_source)
        threshold: float | None = None
        if part.keep.rule == "top":
            assert part.keep.value is not None
            threshold = fraction_threshold(sorted_scores[by], part.keep.value)
        elif part.keep.rule == "min_score":
            threshold = part.keep.value
        elif part.keep.rule == "same_threshold":
            threshold = first_threshold
        if threshold is not None:
            mask &= table[score_column(by)].to_numpy(dtype="float64") >= threshold
            if first_threshold is None:
                first_threshold = threshold
        chosen |= mask
        masks.append(mask)
        parts.append({"part": i, "caption": [resolve(s) for s in part.caption],
                      "images": part.images, "keep": part.keep.rule,
                      "value": part.keep.value, "by": by if threshold is not None else None,
                      "threshold": threshold})
    if strategy.intersect_image_clusters:
        if CLUSTER_COLUMN not in table:
            raise StrategyError(f"strategy '{strategy.name}' intersects with image clusters, "
                                "but the pool table has none")
        in_clusters = table[CLUSTER_COLUMN].to_numpy(dtype=bool)
        masks = [m & in_clusters for m in masks]
    frames = []
    uids = table["uid"].to_numpy()
    any_part = np.zeros(n, dtype=bool)
    for mask in masks:
        any_part |= mask
    for i, (part, mask) in enumerate(zip(strategy.parts, masks, strict=True)):
        rows = np.flatnonzero(mask)
        sources = [resolve(s) for s in part.caption]
        caption = table[caption_column(sources[0])].to_numpy()[rows].astype(object)
        for other in sources[1:]:
            caption = caption + CONCAT_SEPARATOR + table[caption_column(other)].to_numpy()[
                rows].astype(object)
        label = "+".join(sources)
        origin = (table[origin_column(sources[0])].astype(str).to_numpy()[rows]
                  if len(sources) == 1 and origin_column(sources[0]) in table else label)
        frames.append(pd.DataFrame({
            "uid": uids[rows], "caption": caption, "source": label, "origin": origin,
            "part": np.full(len(rows), i, dtype="int16"),
            "score": table[score_column(resolve(part.score_source))].to_numpy()[rows],
        }))
        parts[i]["n_selected"] = int(len(rows))
    samples = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["uid", "caption", "source", "origin", "part", "score"])
    return Selection(samples, parts, uids[any_part])


def source_kind(label: str) -> str:
    if "+" in label:
        return "concatenated"
    return "raw" if label == RAW else "synthetic"


def summarise(strategy: Strategy, selection: Selection, n_pool: int) -> dict[str, Any]:
    samples = selection.samples
    by_source = samples["source"].value_counts().sort_index()
    kinds = Counter({k: 0 for k in ("raw", "synthetic", "concatenated")})
    for label, count in by_source.items():
        kinds[source_kind(str(label))] += int(count)
    total = int(len(samples))
    n_images = (len(selection.image_uids) if selection.image_uids is not None
                else int(samples["uid"].nunique()))
    return {
        "strategy": strategy.name, "family": strategy.family, "fraction": strategy.fraction,
        "description": strategy.description, "paper": list(strategy.paper),
        "intersect_image_clusters": strategy.intersect_image_clusters,
        "n_pool": int(n_pool), "n_samples": total, "n_images": n_images,
        "repeated_images": total - n_images,
        "share_of_pool": (n_images / n_pool) if n_pool else None,
        "parts": selection.parts,
        # The thresholds the strategy sets (a "same threshold" part repeats one of them).
        "thresholds": [p["threshold"] for p in selection.parts
                       if p["keep"] in ("top", "min_score")],
        "sources": {str(k): int(v) for k, v in by_source.items()},
        "caption_kinds": {k: {"samples": v, "share": (v / total) if total else None}
                          for k, v in kinds.items()},
    }


def write_subset(strategy: Strategy, selection: Selection, n_pool: int, out_dir: Path,
                 provenance: dict[str, Any]) -> dict[str, Any]:
    """uids.npy (DataComp format), samples.parquet (the chosen captions), summary.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    uids_path = out_dir / "uids.npy"
    tmp = out_dir / "uids.tmp.npy"
    if selection.image_uids is not None:
        np.save(tmp, ascending_uid_array(selection.image_uids))
    else:
        np.save(tmp, sorted_uid_array(selection.samples["uid"].unique()))
    os.replace(tmp, uids_path)
    write_parquet_atomic(selection.samples, out_dir / "samples.parquet",
                         {"strategy": strategy.name})
    summary = summarise(strategy, selection, n_pool)
    write_json(out_dir / "summary.json", {**summary, "provenance": provenance})
    return summary


def run_subset(name: str, spec: Mapping[str, Any], pool: Mapping[str, Any], table_path: Path,
               sorted_path: Path, out_dir: Path) -> dict[str, Any]:
    """The subset rule: one strategy of one pool."""
    strategy = parse_strategy(name, spec)

    def resolve(source: str) -> str:
        return resolve_source(source, pool)

    sources = sorted({resolve(s) for s in strategy.sources()})
    columns = ["uid"] + [score_column(s) for s in sources] + [caption_column(s) for s in sources]
    available = set(pq.read_schema(table_path).names)
    columns += [origin_column(s) for s in sources if origin_column(s) in available]
    if strategy.intersect_image_clusters:
        columns.append(CLUSTER_COLUMN)
    table = pd.read_parquet(table_path, columns=columns)
    scored = [s for p in strategy.parts if p.keep.rule in ("top",)
              for s in [resolve(p.score_source)]]
    sorted_scores = load_sorted_scores(sorted_path, sorted(set(scored)))
    selection = select(strategy, table, sorted_scores, resolve)
    provenance = provenance_record("subset", inputs=[table_path],
                                   params={"strategy": json.loads(json.dumps(spec)),
                                           "pool_sources": dict(pool_mix(pool).get("sources",
                                                                                   {}))})
    summary = write_subset(strategy, selection, len(table), out_dir, provenance)
    log.info("%s: %d samples (%d images) of %d; thresholds %s", name, summary["n_samples"],
             summary["n_images"], len(table), summary["thresholds"])
    return summary


def run_mix_table(pool: str, sources: Mapping[str, Sequence[str]],
                  score_paths: Mapping[str, str | Path],
                  caption_manifests: Mapping[str, Sequence[str | Path]], index_path: Path,
                  table_path: Path, sorted_path: Path, report_path: Path,
                  clusters_path: Path | None = None,
                  on_missing_score: str = "error") -> dict[str, Any]:
    """The mix_table rule: load, check, join and sort every score the pool's strategies use."""
    from capmix.caption import caption_files

    index = pq.read_table(index_path, columns=["uid", "status"]).to_pandas()
    fetched = index.loc[index["status"] == "fetched", "uid"].tolist()
    sets = {
        source: [CaptionSet(s, Path(score_paths[s]),
                            caption_files([Path(p) for p in caption_manifests[s]]))
                 for s in source_sets]
        for source, source_sets in sources.items()
    }
    clusters = pd.read_parquet(clusters_path) if clusters_path is not None else None
    table, report = build_mix_table(fetched, sets, clusters, on_missing_score)
    sorted_scores = sort_scores(table, sources)
    inputs = [index_path, *(Path(p) for p in score_paths.values())]
    if clusters_path is not None:
        inputs.append(clusters_path)
    provenance = provenance_record("mix_table", inputs=inputs,
                                   params={"sources": {k: list(v) for k, v in sources.items()},
                                           "on_missing_score": on_missing_score})
    write_mix_table(table, sorted_scores, table_path, sorted_path, report_path,
                    {"pool": pool, **report}, provenance)
    log.info("%s: mix table of %d images, sources %s", pool, len(table), sorted(sources))
    return report
