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


def attribute_accuracy(captions: pd.DataFrame, truth: pd.DataFrame) -> dict[str, Any]:
    """Toy world: per ground-truth attribute, the share of captions naming it, naming it
    right, and the share right among those naming it.

    ``truth``: uid + the columns of :data:`capmix.toycaptions.GROUND_TRUTH_ATTRIBUTES` for the
    images that show a scene (junk images have no attributes to name). Only images with a
    caption count.
    """
    from capmix.toycaptions import GROUND_TRUTH_ATTRIBUTES, attributes_named

    joined = truth.merge(captions.dropna(subset=["caption"]), on="uid", how="inner")
    named = {a: [0, 0] for a in GROUND_TRUTH_ATTRIBUTES}
    for row in joined.to_dict("records"):
        for attribute, (mentioned, right) in attributes_named(row["caption"], row).items():
            named[attribute][0] += mentioned
            named[attribute][1] += right
    n = len(joined)
    return {
        "n": n,
        **{a: {"mentioned": m / n if n else None, "correct": r / n if n else None,
               "precision": r / m if m else None} for a, (m, r) in named.items()},
    }


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


def write_quality(pool: str, caption_set: str, caption_files: Sequence[Path], scores_path: Path,
                  metadata_dir: Path, references_column: str | None, out_path: Path,
                  trigram_sample_size: int, seed: int) -> dict:
    """The quality rule: measures of one caption set, with references (and, in the toy world,
    the ground truth) from the metadata."""
    import pyarrow.parquet as pq

    from capmix.provenance import provenance_record, write_json
    from capmix.sources import metadata_parts
    from capmix.toycaptions import GROUND_TRUTH_ATTRIBUTES

    captions = pd.concat([pd.read_parquet(f, columns=["uid", "caption"]) for f in caption_files],
                         ignore_index=True)
    scores = pd.read_parquet(scores_path, columns=["uid", "cos", "clip_s"])
    # One read of the metadata: the references (where the pool has them) and, in the toy
    # world, the ground truth of the scene images.
    parts = metadata_parts(metadata_dir)
    names = set(pq.read_schema(parts[0]).names) if parts else set()
    truth_columns = ["image_kind", *GROUND_TRUTH_ATTRIBUTES]
    toy = set(truth_columns) <= names
    columns = ["uid", *([references_column] if references_column else []),
               *(truth_columns if toy else [])]
    table = None
    if len(columns) > 1:  # nothing to read for a real pool without references
        table = pd.concat([pd.read_parquet(p, columns=columns) for p in parts],
                          ignore_index=True)
    references = None
    if references_column:
        references = {u: list(r) for u, r in zip(table["uid"], table[references_column],
                                                  strict=True)}
    truth = None
    if toy:
        scenes = table[table["image_kind"] == "scene"]
        truth = scenes[["uid", *GROUND_TRUTH_ATTRIBUTES]]
    result = {"pool": pool, "caption_set": caption_set,
              **({"toy": True} if truth is not None else {}),
              **caption_set_quality(captions, scores, references, trigram_sample_size, seed,
                                    truth),
              "provenance": provenance_record(
                  "quality", inputs=[scores_path],
                  params={"trigram_sample_size": trigram_sample_size, "seed": seed})}
    write_json(out_path, result)
    return result
