"""Caption-set quality: the columns of the paper's Table 1.

* **CIDEr** against reference captions, where a set has them (pycocoevalcap's
  CIDEr-D scorer). pycocoevalcap's own PTB tokenizer shells out to Java
  (Stanford CoreNLP); we tokenise in Python instead (lowercase, punctuation
  split off and dropped, as PTBTokenizer does for COCO captions), which keeps
  the stage pure-Python. Scores on real benchmarks can differ from the
  official ones in the third digit; the tokenizer is recorded with the result.
* **CLIP-S** (2.5 * max(cos, 0)) and **mean cosine similarity**, from the
  scoring stage.
* **Number of unique trigrams** (a diversity measure, also Figure 5's x-axis), counted as the
  paper's Table 1 counts it: on a seeded random sample of a fixed number of captions (1M in
  the paper; config ``quality.trigram_sample_size``), so that sets of different sizes compare
  at equal sample size (trigram counts grow with n), and so that a 128M-caption set is not
  held as a set of all its trigrams (tens of GB in Python).
* **Ground-truth attributes** (toy world only): how often the set names each attribute of
  the image's main object (shape, colour, size, position, background) at all, and rightly
  (:func:`capmix.toycaptions.attributes_named`): a column no real benchmark can give.

The rule reads a caption set a row group at a time (:func:`streamed_caption_set_quality`,
equal to :func:`caption_set_quality` on the whole set): at DataComp large a set is 1.28B
captions, which no job holds (issue 18).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: PTBTokenizer's punctuation removed before COCO caption scoring.
_PUNCTUATION = re.compile(r"[\"'`.,:;!?()\[\]{}\-_/\\|*&^%$#@~+=<>]+")


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens without punctuation (PTB-style, no Java)."""
    return _PUNCTUATION.sub(" ", text.lower()).split()


def ngrams(text: str, n: int = 3) -> list[tuple[str, ...]]:
    """The word n-grams of one text, in order (:func:`tokenize`'s words)."""
    words = tokenize(text)
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def unique_ngrams(texts: Iterable[str], n: int = 3) -> int:
    """Number of distinct word n-grams over all texts (n-grams do not cross texts)."""
    seen: set[tuple[str, ...]] = set()
    for text in texts:
        seen.update(ngrams(text, n))
    return len(seen)


def cider(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> float:
    """Corpus CIDEr-D of candidate captions against their references (keys must match)."""
    from pycocoevalcap.cider.cider import Cider

    keys = sorted(candidates)
    missing = [k for k in keys if not references.get(k)]
    if missing:
        raise ValueError(f"{len(missing)} candidate(s) without references, e.g. {missing[:3]}")
    if not keys:
        raise ValueError("no candidates to score")
    res = {k: [" ".join(tokenize(candidates[k]))] for k in keys}
    gts = {k: [" ".join(tokenize(r)) for r in references[k]] for k in keys}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def sample_indices(n: int, size: int, seed: int) -> np.ndarray:
    """Positions of a seeded random sample of ``size`` of ``n`` items (all, in order, if
    ``n <= size``), without replacement.

    Every seeded sample of caption texts (Table 1's trigram count here, the figures' caption
    statistics in :mod:`capmix.textstats`) draws through this one function, so that the same
    seed and size pick the same captions everywhere.
    """
    if n <= size:
        return np.arange(n)
    return np.random.default_rng(seed).choice(n, size=size, replace=False)


def sampled_unique_ngrams(texts: Sequence[str], size: int, seed: int, n: int = 3) -> int:
    """Distinct n-grams of a seeded random sample of ``size`` texts (all if fewer).

    The sample depends on the seed and the order of ``texts`` only, so callers pass texts in a
    stable order (by uid).
    """
    return unique_ngrams((texts[int(i)] for i in sample_indices(len(texts), size, seed)), n)


def attribute_counts(captions: pd.DataFrame,
                     truth: pd.DataFrame) -> tuple[int, dict[str, list[int]]]:
    """Toy world: the images with a caption and a truth, and per attribute how many captions
    name it and name it right (summed over a caption set's files by the streaming path)."""
    from capmix.toycaptions import GROUND_TRUTH_ATTRIBUTES, attributes_named

    joined = truth.merge(captions.dropna(subset=["caption"]), on="uid", how="inner")
    named = {a: [0, 0] for a in GROUND_TRUTH_ATTRIBUTES}
    for row in joined.to_dict("records"):
        for attribute, (mentioned, right) in attributes_named(row["caption"], row).items():
            named[attribute][0] += mentioned
            named[attribute][1] += right
    return len(joined), named


def attribute_shares(n: int, named: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """:func:`attribute_accuracy`'s result from :func:`attribute_counts`' counts."""
    return {
        "n": n,
        **{a: {"mentioned": m / n if n else None, "correct": r / n if n else None,
               "precision": r / m if m else None} for a, (m, r) in named.items()},
    }


def attribute_accuracy(captions: pd.DataFrame, truth: pd.DataFrame) -> dict[str, Any]:
    """Toy world: per ground-truth attribute, the share of captions naming it, naming it
    right, and the share right among those naming it.

    ``truth``: uid + the columns of :data:`capmix.toycaptions.GROUND_TRUTH_ATTRIBUTES` for the
    images that show a scene (junk images have no attributes to name). Only images with a
    caption count.
    """
    return attribute_shares(*attribute_counts(captions, truth))


def caption_set_quality(captions: pd.DataFrame, scores: pd.DataFrame | None = None,
                        references: Mapping[str, Sequence[str]] | None = None,
                        trigram_sample_size: int = 1_000_000, seed: int = 0,
                        truth: pd.DataFrame | None = None) -> dict[str, Any]:
    """Table 1's columns for one caption set.

    ``captions``: uid, caption (first caption per image; None if missing).
    ``scores``: uid, cos, clip_s (from the scoring stage), optional.
    ``references``: uid -> reference captions, optional (CIDEr only where given).
    ``trigram_sample_size``/``seed``: the sample ``unique_trigrams`` is counted on (Table 1:
    1M captions; all of them if the set is smaller), ``trigram_sample_size`` in the result.
    ``truth``: toy ground truth (see :func:`attribute_accuracy`), optional.
    """
    texts = captions.dropna(subset=["caption"]).sort_values("uid", kind="stable")
    result: dict[str, Any] = {
        "n_captions": int(len(texts)),
        "unique_trigrams": sampled_unique_ngrams(list(texts["caption"]), trigram_sample_size,
                                                 seed),
        "trigram_sample_size": min(trigram_sample_size, int(len(texts))),
        "mean_words": float(np.mean([len(tokenize(t)) for t in texts["caption"]]))
        if len(texts) else None,
    }
    if truth is not None:
        result["attributes"] = attribute_accuracy(texts, truth)
    if scores is not None:
        scored = scores.dropna(subset=["cos"])
        result["mean_cos"] = float(scored["cos"].mean()) if len(scored) else None
        result["clip_s"] = float(scored["clip_s"].mean()) if len(scored) else None
    if references is not None:
        candidates = {u: c for u, c in zip(texts["uid"], texts["caption"], strict=True)
                      if u in references}
        result["cider"] = cider(candidates, references) if candidates else None
        result["cider_n"] = len(candidates)
        result["cider_tokenizer"] = "capmix.quality.tokenize (PTB-style, no Java)"
    return result


def score_means(scores_path: Path) -> dict[str, float | None]:
    """Mean cosine and CLIP-S of a scores parquet, from sums streamed a batch at a time (as
    :func:`caption_set_quality`: over the rows with a cosine; CLIP-S skips its own NaN).
    Sums are float64 (pandas sums a float32 column in float32), so the means agree with the
    whole-table ones to float rounding. A missing or unreadable file is named."""
    import pyarrow as pa

    from capmix.parquetio import stream_batches

    if not Path(scores_path).is_file():
        raise FileNotFoundError(f"{scores_path}: no such file (the caption set's scores)")
    rows = cos_sum = clip_sum = 0.0
    clip_rows = 0
    try:
        batches = stream_batches(scores_path, columns=["cos", "clip_s"])
        for batch in batches:
            cos = np.asarray(batch.column(0).to_numpy(zero_copy_only=False), dtype=np.float64)
            clip = np.asarray(batch.column(1).to_numpy(zero_copy_only=False), dtype=np.float64)
            scored = ~np.isnan(cos)
            clip = clip[scored]
            rows += int(scored.sum())
            cos_sum += float(cos[scored].sum())
            clip_sum += float(np.nansum(clip))
            clip_rows += int((~np.isnan(clip)).sum())
    except (pa.ArrowException, OSError, KeyError) as error:
        raise ValueError(f"{scores_path}: cannot read columns cos, clip_s ({error})") from error
    if not rows:
        return {"mean_cos": None, "clip_s": None}
    return {"mean_cos": cos_sum / rows,
            "clip_s": clip_sum / clip_rows if clip_rows else float("nan")}


def streamed_caption_set_quality(caption_files: Sequence[Path], scores_path: Path | None = None,
                                 references: Mapping[str, Sequence[str]] | None = None,
                                 trigram_sample_size: int = 1_000_000, seed: int = 0,
                                 truth: pd.DataFrame | None = None) -> dict[str, Any]:
    """:func:`caption_set_quality` of a caption set held in files, read a row group at a time.

    Equal to the whole-set result (the means to float rounding, :func:`score_means`): the
    trigram sample is the same ``sample_indices`` positions of the captions in uid order
    (ties in file order, as the stable sort), found by :mod:`capmix.uidorder` without sorting
    the set; a set of at most ``trigram_sample_size`` captions is counted whole in the first
    pass. CIDEr candidates are the rows whose uid has references (a uid twice: its last row,
    as the dict of the sorted set), attributes are summed over the rows with a truth.
    Memory: one row group, the trigrams of the sample (and the sample's captions), the
    references or truth, and :class:`capmix.uidorder.UidOrder`'s counters.
    """
    from capmix.uidorder import UidOrder, iter_pieces, pieces, take, uid_keys

    found = pieces(caption_files)
    order = UidOrder(sum(p.rows for p in found))
    n = words = 0
    trigrams: set[tuple[str, ...]] | None = set()
    candidates: dict[str, str] = {}
    attributes: tuple[int, dict[str, list[int]]] | None = None
    columns = ["uid", "caption"]
    for index, table in iter_pieces(found, columns):
        kept = table.filter(pa_mask(np.asarray(table.column("caption").is_valid())))
        order.count(uid_keys(kept.column("uid"), found[index].path))
        texts = kept.column("caption").to_pylist()
        n += len(texts)
        words += sum(len(tokenize(t)) for t in texts)
        if trigrams is not None:
            if n <= trigram_sample_size:
                for text in texts:
                    trigrams.update(ngrams(text, 3))
            else:  # more captions than the sample: counted on the sample, passes 2 and 3
                trigrams = None
        if references is not None or truth is not None:
            uids = kept.column("uid").to_pylist()
            if references is not None:
                candidates.update((u, c) for u, c in zip(uids, texts, strict=True)
                                  if u in references)
            if truth is not None:
                counted = attribute_counts(pd.DataFrame({"uid": uids, "caption": texts}), truth)
                if attributes is None:
                    attributes = counted
                else:
                    attributes = (attributes[0] + counted[0],
                                  {a: [m + counted[1][a][0], r + counted[1][a][1]]
                                   for a, (m, r) in attributes[1].items()})
    if trigrams is None:
        order.want(sample_indices(n, trigram_sample_size, seed))
        for index, table in iter_pieces(found, columns):
            valid = np.asarray(table.column("caption").is_valid())
            order.gather(index, uid_keys(table.column("uid").filter(pa_mask(valid)),
                                         found[index].path), np.flatnonzero(valid))
        piece, row = order.picks()
        trigrams = set()
        for text in take(found, piece, row, "caption"):
            trigrams.update(ngrams(text, 3))
    result: dict[str, Any] = {
        "n_captions": n,
        "unique_trigrams": len(trigrams),
        "trigram_sample_size": min(trigram_sample_size, n),
        "mean_words": float(words / n) if n else None,
    }
    if truth is not None:
        if attributes is None:  # no piece: nothing named
            from capmix.toycaptions import GROUND_TRUTH_ATTRIBUTES

            attributes = (0, {a: [0, 0] for a in GROUND_TRUTH_ATTRIBUTES})
        result["attributes"] = attribute_shares(*attributes)
    if scores_path is not None:
        result.update(score_means(scores_path))
    if references is not None:
        result["cider"] = cider(candidates, references) if candidates else None
        result["cider_n"] = len(candidates)
        result["cider_tokenizer"] = "capmix.quality.tokenize (PTB-style, no Java)"
    return result


def pa_mask(valid: np.ndarray) -> Any:
    """A numpy boolean mask as an Arrow one (for ``filter``)."""
    import pyarrow as pa

    return pa.array(valid, type=pa.bool_())


def write_quality(pool: str, caption_set: str, caption_files: Sequence[Path], scores_path: Path,
                  metadata_dir: Path, references_column: str | None, out_path: Path,
                  trigram_sample_size: int, seed: int) -> dict:
    """The quality rule: measures of one caption set, with references (and, in the toy world,
    the ground truth) from the metadata."""
    import pyarrow.parquet as pq

    from capmix.provenance import provenance_record, write_json
    from capmix.sources import metadata_parts
    from capmix.toycaptions import GROUND_TRUTH_ATTRIBUTES

    # One read of the metadata, a part at a time: the references (where the pool has them)
    # and, in the toy world, the ground truth of the scene images; nothing for a real pool
    # without references. Only those rows are kept (an eval pool's few thousand, or the toy's).
    parts = metadata_parts(metadata_dir)
    names = set(pq.read_schema(parts[0]).names) if parts else set()
    truth_columns = ["image_kind", *GROUND_TRUTH_ATTRIBUTES]
    toy = set(truth_columns) <= names
    columns = ["uid", *([references_column] if references_column else []),
               *(truth_columns if toy else [])]
    references: dict[str, list[str]] | None = {} if references_column else None
    scenes = []
    if len(columns) > 1:
        for part in parts:
            table = pd.read_parquet(part, columns=columns)
            if references is not None:
                references.update((u, list(r)) for u, r in
                                  zip(table["uid"], table[references_column], strict=True))
            if toy:
                scenes.append(table.loc[table["image_kind"] == "scene",
                                        ["uid", *GROUND_TRUTH_ATTRIBUTES]])
    truth = pd.concat(scenes, ignore_index=True) if toy else None
    result = {"pool": pool, "caption_set": caption_set,
              **({"toy": True} if truth is not None else {}),
              **streamed_caption_set_quality(caption_files, scores_path, references,
                                             trigram_sample_size, seed, truth),
              "provenance": provenance_record(
                  "quality", inputs=[scores_path],
                  params={"trigram_sample_size": trigram_sample_size, "seed": seed})}
    write_json(out_path, result)
    return result
