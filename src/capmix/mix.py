"""Mixing jobs: apply filtering and mixing strategies to a pool's scores and captions.

What a strategy *says* (parts, keep rules, sweeps, caption sources) is data, parsed and
checked by :mod:`capmix.strategies`; this module is what the mix_table and subset jobs run
with it: the shared pool table, one strategy's selection, and the files a subset writes.

Exact semantics, and the choices the paper leaves open (all documented in README/results):

* A fraction becomes a threshold exactly as DataComp's ``clip_score`` filter does it:
  ``threshold = -np.sort(-s)[int(N * f)]`` over the pool, keep ``s >= threshold`` (so
  ``int(N*f) + 1`` images plus ties). ``f = 1`` keeps everything (DataComp would index past
  the end). The pool is the *fetched* images (those a model can train on); DataComp computes
  its thresholds over the metadata, before download failures.
* "Remaining" means not chosen by any earlier part *before* the cluster intersection and the
  text filter; since both apply to every part, this is the same as after them.
* A text filter (DataComp's image-based caption filter; :mod:`capmix.textfilter`) reads the
  pool's *raw* caption of each image, whatever caption a part trains with: its language id,
  fastText tokens and characters, measured once per pool by the ``caption_language`` stage.
  As in DataComp, a ``top`` threshold is still computed over the whole pool, before the filter.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from capmix.captionsets import RAW
from capmix.provenance import provenance_record, write_json, write_parquet_atomic
from capmix.strategies import (
    BEST,
    Strategy,
    StrategyError,
    parse_strategy,
    pool_mix,
    resolve_source,
)
from capmix.textfilter import TextFilter
from capmix.uids import ascending_uid_array, sorted_uid_array

log = logging.getLogger(__name__)

#: What joins the sources of a concatenated caption (the paper does not say).
CONCAT_SEPARATOR = " "
#: The mix table's column saying whether an image lies in the ImageNet-like image clusters.
CLUSTER_COLUMN = "in_image_clusters"
#: The mix table's columns measuring each image's raw caption, for text filters (written by the
#: caption_language stage, :mod:`capmix.language`): its language id, its fastText tokens and
#: its characters.
LANGUAGE_COLUMN = "raw_language"
TOKENS_COLUMN = "raw_tokens"
CHARS_COLUMN = "raw_chars"
CAPTION_TEXT_COLUMNS = (LANGUAGE_COLUMN, TOKENS_COLUMN, CHARS_COLUMN)


class ScoreTableError(ValueError):
    """A score table a strategy needs has NaN scores or lacks fetched uids."""


# ------------------------------------------------------------------ the shared pool table


def score_column(source: str) -> str:
    """The mix table's column of a source's CLIP scores."""
    return f"score:{source}"


def caption_column(source: str) -> str:
    """The mix table's column of a source's captions (the ones a selected image trains with)."""
    return f"caption:{source}"


def origin_column(source: str) -> str:
    """The mix table's column naming the caption set each ``captioner/best`` caption came from."""
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
                    on_missing_score: str = "error",
                    caption_text: pd.DataFrame | None = None,
                    ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per usable pool image: every source's score and caption, sorted by uid.

    ``sources`` maps a concrete source to its caption sets (one, or every temperature for
    ``captioner/best``). ``image_clusters`` (uid, :data:`CLUSTER_COLUMN`) and
    ``caption_text`` (uid, :data:`CAPTION_TEXT_COLUMNS`) add their columns and must cover
    every fetched uid. Scores with NaN or missing uids raise :class:`ScoreTableError`
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
    if caption_text is not None:
        measured = caption_text.drop_duplicates("uid").set_index("uid")
        absent = pool_index.difference(measured.index)
        if len(absent):
            raise ScoreTableError(f"caption languages lack {len(absent)} fetched uid(s), e.g. "
                                  f"{_examples(sorted(absent))}")
        for column in CAPTION_TEXT_COLUMNS:
            table[column] = measured[column].reindex(pool_index).to_numpy()
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


def text_filter_mask(table: pd.DataFrame, text_filter: TextFilter) -> np.ndarray:
    """The images whose raw caption passes a text filter (DataComp's ``caption_filter``:
    ``fasttext_en & (caption_num_words > 1) & (caption_num_chars > 5)`` for language 'en',
    2 tokens, 6 characters)."""
    mask = table[TOKENS_COLUMN].to_numpy(dtype="int64") >= text_filter.min_tokens
    mask &= table[CHARS_COLUMN].to_numpy(dtype="int64") >= text_filter.min_chars
    if text_filter.language is not None:
        mask &= table[LANGUAGE_COLUMN].to_numpy(dtype=object) == text_filter.language
    return mask


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
    if strategy.text_filter is not None:
        if any(c not in table for c in CAPTION_TEXT_COLUMNS):
            raise StrategyError(f"strategy '{strategy.name}' filters by the raw caption, but the "
                                "pool table has no caption languages")
        passing = text_filter_mask(table, strategy.text_filter)
        masks = [m & passing for m in masks]
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


def summarise(strategy: Strategy, selection: Selection, n_pool: int,
              language_id: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A subset's summary; ``language_id`` describes the model that identified the raw
    captions' languages (for a strategy with a text filter)."""
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
        "text_filter": (None if strategy.text_filter is None else
                        {**strategy.text_filter.as_dict(),
                         "language_id": dict(language_id) if language_id else None}),
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
                 provenance: dict[str, Any],
                 language_id: Mapping[str, Any] | None = None) -> dict[str, Any]:
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
    summary = summarise(strategy, selection, n_pool, language_id)
    write_json(out_dir / "summary.json", {**summary, "provenance": provenance})
    return summary


def run_subset(name: str, spec: Mapping[str, Any], pool: Mapping[str, Any], table_path: Path,
               sorted_path: Path, out_dir: Path,
               language_summary: Path | None = None) -> dict[str, Any]:
    """The subset rule: one strategy of one pool. ``language_summary`` is the pool's
    caption_language summary (which language-id model ran), for a strategy with a text
    filter."""
    strategy = parse_strategy(name, spec)

    def resolve(source: str) -> str:
        return resolve_source(source, pool)

    sources = sorted({resolve(s) for s in strategy.sources()})
    columns = ["uid"] + [score_column(s) for s in sources] + [caption_column(s) for s in sources]
    available = set(pq.read_schema(table_path).names)
    columns += [origin_column(s) for s in sources if origin_column(s) in available]
    if strategy.intersect_image_clusters:
        columns.append(CLUSTER_COLUMN)
    if strategy.text_filter is not None:
        columns += list(CAPTION_TEXT_COLUMNS)
    table = pd.read_parquet(table_path, columns=columns)
    scored = [s for p in strategy.parts if p.keep.rule in ("top",)
              for s in [resolve(p.score_source)]]
    sorted_scores = load_sorted_scores(sorted_path, sorted(set(scored)))
    selection = select(strategy, table, sorted_scores, resolve)
    language_id = None
    inputs = [table_path]
    if strategy.text_filter is not None and language_summary is not None:
        language_id = json.loads(Path(language_summary).read_text())["language_id"]
        inputs.append(language_summary)
    provenance = provenance_record("subset", inputs=inputs,
                                   params={"strategy": json.loads(json.dumps(spec)),
                                           "pool_sources": dict(pool_mix(pool).get("sources",
                                                                                   {}))})
    summary = write_subset(strategy, selection, len(table), out_dir, provenance, language_id)
    log.info("%s: %d samples (%d images) of %d; thresholds %s", name, summary["n_samples"],
             summary["n_images"], len(table), summary["thresholds"])
    return summary


def run_mix_table(pool: str, sources: Mapping[str, Sequence[str]],
                  score_paths: Mapping[str, str | Path],
                  caption_manifests: Mapping[str, Sequence[str | Path]], index_path: Path,
                  table_path: Path, sorted_path: Path, report_path: Path,
                  clusters_path: Path | None = None,
                  on_missing_score: str = "error",
                  caption_text_path: Path | None = None) -> dict[str, Any]:
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
    caption_text = (pd.read_parquet(caption_text_path, columns=["uid", *CAPTION_TEXT_COLUMNS])
                    if caption_text_path is not None else None)
    table, report = build_mix_table(fetched, sets, clusters, on_missing_score, caption_text)
    sorted_scores = sort_scores(table, sources)
    inputs = [index_path, *(Path(p) for p in score_paths.values())]
    if clusters_path is not None:
        inputs.append(clusters_path)
    if caption_text_path is not None:
        inputs.append(caption_text_path)
    provenance = provenance_record("mix_table", inputs=inputs,
                                   params={"sources": {k: list(v) for k, v in sources.items()},
                                           "on_missing_score": on_missing_score})
    write_mix_table(table, sorted_scores, table_path, sorted_path, report_path,
                    {"pool": pool, **report}, provenance)
    log.info("%s: mix table of %d images, sources %s", pool, len(table), sorted(sources))
    return report
