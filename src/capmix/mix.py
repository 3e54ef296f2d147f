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
* A metadata filter (:mod:`capmix.metadatafilter`: LAION's NSFW tag, RedCaps' subreddit) reads
  the columns the source ships and the metadata stage kept, joined to each part of the table
  as ``meta:<column>`` by the strategy's subset job (:func:`with_metadata_columns`); like the
  text filter it applies to every part, after a ``top`` threshold is computed over the whole
  pool, and a missing value passes no condition.
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
counts and examples) and joined into one table. A pool's table is held in uid-range parts
(:mod:`capmix.mixparts` runs these functions part by part), so a strategy's thresholds come
from :func:`capmix.thresholds.part_thresholds` over the parts, :func:`select` applies them to
one part at a time, and :class:`SubsetWriter` appends each part's selection to the subset's
files. Each strategy is its own job, so editing one strategy re-runs only that strategy's
subset and what follows from it.
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
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from capmix.captionsets import RAW
from capmix.metadatafilter import MetadataFilter, metadata_table_column
from capmix.provenance import write_json
from capmix.strategies import BEST, Strategy, StrategyError
from capmix.textfilter import TextFilter
from capmix.thresholds import part_thresholds
from capmix.uids import UID_PAIR_DTYPE, arrow_uids_to_pairs, ascending_pairs

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


@dataclass
class CaptionSet:
    """One caption set's scores and captions, as the score and caption stages wrote them."""

    name: str
    scores: Path  # results/{pool}/scores/{scorer}/{set}.parquet
    caption_files: Sequence[Path]  # per-shard caption parquets (uid, captions, status)
    # The score table an error names, where ``scores`` holds one part of it (capmix.mixparts).
    reported_as: Path | None = None


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
                errors.append(describe_score_problems(
                    caption_set.name, caption_set.reported_as or caption_set.scores, problems,
                    len(pool_index)))
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


def threshold_needs(strategy: Strategy,
                    resolve: Callable[[str], str] = lambda s: s) -> dict[str, list[float]]:
    """Concrete score source -> the fractions the strategy keeps the top of by it."""
    needs: dict[str, set[float]] = {}
    for part in strategy.parts:
        if part.keep.rule == "top":
            assert part.keep.value is not None
            needs.setdefault(resolve(part.score_source), set()).add(float(part.keep.value))
    return {source: sorted(fractions) for source, fractions in sorted(needs.items())}


def pool_thresholds(read_parts: Callable[[], Iterable[pa.Table | pd.DataFrame]],
                    needs: Mapping[str, Sequence[float]]) -> dict[str, dict[float, float]]:
    """Source -> fraction -> DataComp's threshold over the whole pool, whose table
    ``read_parts()`` yields part by part (each time it is called; the parts need only the
    score columns of ``needs``). Exact: :func:`capmix.thresholds.part_thresholds`."""
    by_column = {score_column(source): list(fractions) for source, fractions in needs.items()}

    def columns() -> Iterable[dict[str, np.ndarray]]:
        for part in read_parts():
            yield {c: np.asarray(part[c], dtype="float64") for c in by_column}

    found = part_thresholds(columns, by_column)
    return {source: found[score_column(source)] for source in needs}


# ------------------------------------------------------------------ one strategy


def as_arrow(table: pa.Table | pd.DataFrame) -> pa.Table:
    """A mix table (or part) as Arrow: select works on Arrow columns, so a part's captions are
    taken and written without a Python object per row."""
    return table if isinstance(table, pa.Table) else pa.Table.from_pandas(table,
                                                                          preserve_index=False)


def _numbers(table: pa.Table, column: str, dtype: str) -> np.ndarray:
    return np.asarray(table.column(column), dtype=dtype)


def text_filter_mask(table: pa.Table | pd.DataFrame, text_filter: TextFilter) -> np.ndarray:
    """The images whose raw caption passes a text filter (DataComp's ``caption_filter``:
    ``fasttext_en & (caption_num_words > 1) & (caption_num_chars > 5)`` for language 'en',
    2 tokens, 6 characters)."""
    table = as_arrow(table)
    mask = _numbers(table, TOKENS_COLUMN, "int64") >= text_filter.min_tokens
    mask &= _numbers(table, CHARS_COLUMN, "int64") >= text_filter.min_chars
    if text_filter.language is not None:
        same = pc.fill_null(pc.equal(table.column(LANGUAGE_COLUMN), text_filter.language), False)
        mask &= np.asarray(same, dtype=bool)
    return mask


def metadata_filter_mask(table: pa.Table | pd.DataFrame,
                         metadata_filter: MetadataFilter) -> np.ndarray:
    """The images whose kept metadata columns pass every condition of a metadata filter
    (:mod:`capmix.metadatafilter`); a null value passes none."""
    table = as_arrow(table)
    mask = np.ones(table.num_rows, dtype=bool)
    for condition in metadata_filter.conditions:
        name = metadata_table_column(condition.column)
        if name not in table.column_names:
            raise StrategyError(f"the pool table has no metadata column '{condition.column}' "
                                "(the subset job joins the columns its metadata_filter names: "
                                "with_metadata_columns)")
        values = table.column(name)
        passing = pc.invert(pc.is_null(values))
        if condition.values_in is not None or condition.values_not_in is not None:
            texts = pc.cast(values, pa.string())
            if condition.values_in is not None:
                passing = pc.and_(passing, pc.is_in(texts, pa.array(condition.values_in,
                                                                    pa.string())))
            if condition.values_not_in is not None:
                passing = pc.and_(passing, pc.invert(pc.is_in(
                    texts, pa.array(condition.values_not_in, pa.string()))))
        if condition.numeric:
            try:
                numbers = pc.cast(values, pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                raise StrategyError(f"metadata column '{condition.column}' ({values.type}) is "
                                    f"not numeric, but the filter asks min/max: {error}"
                                    ) from error
            if condition.minimum is not None:
                passing = pc.and_(passing, pc.greater_equal(numbers, condition.minimum))
            if condition.maximum is not None:
                passing = pc.and_(passing, pc.less_equal(numbers, condition.maximum))
        mask &= np.asarray(pc.fill_null(passing, False), dtype=bool)
    return mask


def with_metadata_columns(part: pa.Table, columns: Mapping[str, pa.Table]) -> pa.Table:
    """One part of a mix table with kept metadata columns joined by uid as ``meta:<column>``
    (``columns``: column -> a table of uid and that column covering at least the part's uids,
    as :func:`capmix.mixparts.run_metadata_column` scatters them). The part keeps its row
    order; a fetched uid the metadata lacks raises :class:`ScoreTableError`."""
    uids = np.asarray(part.column("uid").to_pylist(), dtype=object)
    for column, side in columns.items():
        index = pd.Index(side.column("uid").to_pylist())
        if not index.is_unique:
            raise ScoreTableError(f"metadata column '{column}': a uid is listed twice, e.g. "
                                  f"{_examples(index[index.duplicated()])}")
        positions = index.get_indexer(uids)
        if (positions < 0).any():
            raise ScoreTableError(f"metadata column '{column}' lacks "
                                  f"{int((positions < 0).sum())} fetched uid(s), e.g. "
                                  f"{_examples(uids[positions < 0])}")
        part = part.append_column(metadata_table_column(column),
                                  side.column(column).take(pa.array(positions)))
    return part


#: The mix table's column naming the fetched shard that holds each image (from the fetch
#: index), carried into a subset's samples so that resharding finds each image's pool shard
#: part by part, without the fetch index (capmix.reshard).
SHARD_COLUMN = "shard"
#: samples.parquet's columns (fixed, so that parts with no rows write the same schema);
#: ``shard`` is null where the mix table has none (tables built before it carried it).
SAMPLES_SCHEMA = pa.schema([("uid", pa.string()), ("caption", pa.string()),
                            ("source", pa.string()), ("origin", pa.string()),
                            ("part", pa.int16()), ("score", pa.float64()),
                            (SHARD_COLUMN, pa.string())])


@dataclass
class Selection:
    """What a strategy chose: one row per training sample, and each part's threshold."""

    rows: pa.Table  # SAMPLES_SCHEMA: uid, caption, source, origin, part, score, shard
    parts: list[dict[str, Any]]
    # The distinct images chosen, in the table's (uid-sorted) order. Kept because deriving it
    # from the samples hashes every uid: at 12.8M rows that was ~90% of a subset's time.
    image_uids: pa.Array | None = None

    @property
    def samples(self) -> pd.DataFrame:
        return self.rows.to_pandas()


def select(strategy: Strategy, table: pa.Table | pd.DataFrame,
           thresholds: Mapping[str, Mapping[float, float]] | None = None,
           resolve: Callable[[str], str] = lambda s: s) -> Selection:
    """Apply a strategy to a pool table (from :func:`build_mix_table`), or to one part of it.

    ``thresholds`` (source -> fraction -> threshold, from :func:`pool_thresholds`) are the
    pool's: a part of the pool must be given them. Without, ``table`` is the whole pool and
    they are computed from it.
    """
    table = as_arrow(table)
    if thresholds is None:
        thresholds = pool_thresholds(lambda: [table], threshold_needs(strategy, resolve))
    n = table.num_rows
    names = set(table.column_names)
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
            threshold = thresholds[by][float(part.keep.value)]
        elif part.keep.rule == "min_score":
            threshold = part.keep.value
        elif part.keep.rule == "same_threshold":
            threshold = first_threshold
        if threshold is not None:
            mask &= _numbers(table, score_column(by), "float64") >= threshold
            if first_threshold is None:
                first_threshold = threshold
        chosen |= mask
        masks.append(mask)
        parts.append({"part": i, "caption": [resolve(s) for s in part.caption],
                      "images": part.images, "keep": part.keep.rule,
                      "value": part.keep.value, "by": by if threshold is not None else None,
                      "threshold": threshold})
    if strategy.intersect_image_clusters:
        if CLUSTER_COLUMN not in names:
            raise StrategyError(f"strategy '{strategy.name}' intersects with image clusters, "
                                "but the pool table has none")
        in_clusters = _numbers(table, CLUSTER_COLUMN, "bool")
        masks = [m & in_clusters for m in masks]
    if strategy.text_filter is not None:
        if any(c not in names for c in CAPTION_TEXT_COLUMNS):
            raise StrategyError(f"strategy '{strategy.name}' filters by the raw caption, but the "
                                "pool table has no caption languages")
        passing = text_filter_mask(table, strategy.text_filter)
        masks = [m & passing for m in masks]
    if strategy.metadata_filter is not None:
        passing = metadata_filter_mask(table, strategy.metadata_filter)
        masks = [m & passing for m in masks]
    chunks = []
    uids = table.column("uid")
    shards = (table.column(SHARD_COLUMN) if SHARD_COLUMN in names
              else pa.nulls(n, pa.string()))
    any_part = np.zeros(n, dtype=bool)
    for mask in masks:
        any_part |= mask
    for i, (part, mask) in enumerate(zip(strategy.parts, masks, strict=True)):
        rows = np.flatnonzero(mask)
        take = pa.array(rows, type=pa.int64())
        sources = [resolve(s) for s in part.caption]
        caption = table.column(caption_column(sources[0])).take(take)
        for other in sources[1:]:
            caption = pc.binary_join_element_wise(
                caption, table.column(caption_column(other)).take(take), CONCAT_SEPARATOR)
        label = "+".join(sources)
        if len(sources) == 1 and origin_column(sources[0]) in names:
            origin = table.column(origin_column(sources[0])).take(take).cast(pa.string())
        else:
            origin = pa.repeat(label, len(rows))
        chunks.append(pa.table({
            "uid": uids.take(take), "caption": caption, "source": pa.repeat(label, len(rows)),
            "origin": origin, "part": np.full(len(rows), i, dtype="int16"),
            "score": _numbers(table, score_column(resolve(part.score_source)), "float64")[rows],
            SHARD_COLUMN: shards.take(take).cast(pa.string()),
        }).cast(SAMPLES_SCHEMA))
        parts[i]["n_selected"] = int(len(rows))
    samples = pa.concat_tables(chunks) if chunks else SAMPLES_SCHEMA.empty_table()
    return Selection(samples, parts, uids.take(pa.array(np.flatnonzero(any_part),
                                                        type=pa.int64())))


def source_kind(label: str) -> str:
    if "+" in label:
        return "concatenated"
    return "raw" if label == RAW else "synthetic"


@dataclass
class Tally:
    """What a subset's summary counts, summed over the parts of the pool it was chosen from."""

    n_samples: int = 0
    n_images: int = 0
    sources: Counter = field(default_factory=Counter)
    parts: list[dict[str, Any]] = field(default_factory=list)

    def add(self, selection: Selection) -> None:
        rows = selection.rows
        self.n_samples += rows.num_rows
        self.n_images += (len(selection.image_uids) if selection.image_uids is not None
                          else len(pc.unique(rows.column("uid"))))
        self.sources.update({str(c["values"]): int(c["counts"])
                             for c in pc.value_counts(rows.column("source")).to_pylist()})
        if not self.parts:  # thresholds are the pool's, the same in every part
            self.parts = [{**p, "n_selected": 0} for p in selection.parts]
        for mine, theirs in zip(self.parts, selection.parts, strict=True):
            mine["n_selected"] += int(theirs.get("n_selected", 0))


def summarise(strategy: Strategy, tally: Tally, n_pool: int,
              language_id: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A subset's summary; ``language_id`` describes the model that identified the raw
    captions' languages (for a strategy with a text filter)."""
    kinds = Counter({k: 0 for k in ("raw", "synthetic", "concatenated")})
    for label, count in tally.sources.items():
        kinds[source_kind(str(label))] += int(count)
    total = tally.n_samples
    n_images = tally.n_images
    return {
        "strategy": strategy.name, "family": strategy.family, "fraction": strategy.fraction,
        "description": strategy.description, "paper": list(strategy.paper),
        "intersect_image_clusters": strategy.intersect_image_clusters,
        "text_filter": (None if strategy.text_filter is None else
                        {**strategy.text_filter.as_dict(),
                         "language_id": dict(language_id) if language_id else None}),
        "metadata_filter": (None if strategy.metadata_filter is None
                            else strategy.metadata_filter.as_dict()),
        "n_pool": int(n_pool), "n_samples": total, "n_images": n_images,
        "repeated_images": total - n_images,
        "share_of_pool": (n_images / n_pool) if n_pool else None,
        "parts": tally.parts,
        # The thresholds the strategy sets (a "same threshold" part repeats one of them).
        "thresholds": [p["threshold"] for p in tally.parts
                       if p["keep"] in ("top", "min_score")],
        "sources": dict(sorted(tally.sources.items())),
        "caption_kinds": {k: {"samples": v, "share": (v / total) if total else None}
                          for k, v in kinds.items()},
    }


class SubsetWriter:
    """A subset's files, written selection by selection (one per part of the pool, in uid
    order): uids.npy (DataComp format), samples.parquet (the chosen captions), summary.json.

    Memory holds one part's selection: samples go to the parquet as a row group per part, and
    the uid pairs to a raw file that :meth:`close` turns into the ``.npy`` (the count is known
    only then). Nothing is in place until :meth:`close` renames the files.
    """

    def __init__(self, strategy: Strategy, out_dir: Path):
        self.strategy = strategy
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.tally = Tally()
        schema = SAMPLES_SCHEMA.with_metadata(
            {b"capmix": json.dumps({"strategy": strategy.name}, sort_keys=True).encode()})
        self._samples_tmp = self.out_dir / "samples.parquet.tmp"
        self._samples = pq.ParquetWriter(self._samples_tmp, schema)
        self._schema = schema
        self._pairs_tmp = self.out_dir / "uids.pairs.tmp"
        self._pairs = open(self._pairs_tmp, "wb")  # noqa: SIM115 (closed in close())
        self._n_pairs = 0
        self._last: tuple[int, int] | None = None

    def add(self, selection: Selection) -> None:
        """Append one part's selection; parts must come in ascending uid order."""
        uids = (selection.image_uids if selection.image_uids is not None
                else selection.rows.column("uid"))
        pairs = ascending_pairs(arrow_uids_to_pairs(uids))
        if len(pairs) and self._last is not None and not (
                (int(pairs[0]["f0"]), int(pairs[0]["f1"])) > self._last):
            raise ValueError(f"subset '{self.strategy.name}': a part's uids do not follow the "
                             "previous part's (the mix table's parts must be uid ranges, in "
                             "order)")
        if len(pairs):
            self._last = (int(pairs[-1]["f0"]), int(pairs[-1]["f1"]))
        self._pairs.write(pairs.tobytes())
        self._n_pairs += len(pairs)
        rows = selection.rows
        if SHARD_COLUMN not in rows.column_names:  # a selection from a table without shards
            rows = rows.append_column(SHARD_COLUMN, pa.nulls(rows.num_rows, pa.string()))
        self._samples.write_table(rows.select(self._schema.names).cast(self._schema))
        self.tally.add(selection)

    def abort(self) -> None:
        """Remove what was written (a job that fails leaves no half files beside its outputs,
        which Snakemake removes)."""
        for handle in (self._samples, self._pairs):
            try:
                handle.close()
            except OSError:
                pass
        for path in (self._samples_tmp, self._pairs_tmp, self.out_dir / "uids.tmp.npy"):
            path.unlink(missing_ok=True)

    def close(self, n_pool: int, provenance: dict[str, Any],
              language_id: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Put the files in place; return the summary."""
        self._samples.close()
        self._pairs.close()
        uids_tmp = self.out_dir / "uids.tmp.npy"
        if self._n_pairs == 0:
            np.save(uids_tmp, np.zeros(0, dtype=UID_PAIR_DTYPE))
        else:
            # np.lib.format writes the same header np.save does; the pairs are copied in
            # bounded chunks.
            out = np.lib.format.open_memmap(uids_tmp, mode="w+", dtype=UID_PAIR_DTYPE,
                                            shape=(self._n_pairs,))
            step = 1 << 22
            for start in range(0, self._n_pairs, step):
                count = min(step, self._n_pairs - start)
                out[start:start + count] = np.fromfile(
                    self._pairs_tmp, dtype=UID_PAIR_DTYPE, count=count,
                    offset=start * UID_PAIR_DTYPE.itemsize)
            out.flush()
            del out
        self._pairs_tmp.unlink()
        os.replace(uids_tmp, self.out_dir / "uids.npy")
        os.replace(self._samples_tmp, self.out_dir / "samples.parquet")
        summary = summarise(self.strategy, self.tally, n_pool, language_id)
        write_json(self.out_dir / "summary.json", {**summary, "provenance": provenance})
        return summary


def write_subset(strategy: Strategy, selection: Selection, n_pool: int, out_dir: Path,
                 provenance: dict[str, Any],
                 language_id: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A subset chosen from a whole pool in memory: :class:`SubsetWriter` with one part."""
    writer = SubsetWriter(strategy, out_dir)
    try:
        writer.add(selection)
        return writer.close(n_pool, provenance, language_id)
    except BaseException:
        writer.abort()
        raise


def strategy_columns(strategy: Strategy, resolve: Callable[[str], str],
                     available: Iterable[str]) -> list[str]:
    """The mix-table columns a strategy reads (``available``: the table's columns)."""
    sources = sorted({resolve(s) for s in strategy.sources()})
    columns = ["uid"] + [score_column(s) for s in sources] + [caption_column(s) for s in sources]
    names = set(available)
    columns += [origin_column(s) for s in sources if origin_column(s) in names]
    if strategy.intersect_image_clusters:
        columns.append(CLUSTER_COLUMN)
    if strategy.text_filter is not None:
        columns += list(CAPTION_TEXT_COLUMNS)
    if SHARD_COLUMN in names:
        columns.append(SHARD_COLUMN)
    return columns
