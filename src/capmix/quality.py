"""Caption-set quality: the columns of the paper's Table 1.

* **CIDEr** against reference captions, where a set has them (pycocoevalcap's
  CIDEr-D scorer). pycocoevalcap's own PTB tokenizer shells out to Java
  (Stanford CoreNLP); we tokenise in Python instead (lowercase, punctuation
  split off and dropped, as PTBTokenizer does for COCO captions), which keeps
  the stage pure-Python. Scores on real benchmarks can differ from the
  official ones in the third digit; the tokenizer is recorded with the result.
* **CLIP-S** (2.5 * max(cos, 0)) and **mean cosine similarity**, from the
  scoring stage.
* **Number of unique trigrams** of the caption set (a diversity measure, also
  Figure 5's x-axis).
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


def unique_ngrams(texts: Iterable[str], n: int = 3) -> int:
    """Number of distinct word n-grams over all texts (n-grams do not cross texts)."""
    seen: set[tuple[str, ...]] = set()
    for text in texts:
        words = tokenize(text)
        seen.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
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


def caption_set_quality(captions: pd.DataFrame, scores: pd.DataFrame | None = None,
                        references: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Table 1's columns for one caption set.

    ``captions``: uid, caption (first caption per image; None if missing).
    ``scores``: uid, cos, clip_s (from the scoring stage), optional.
    ``references``: uid -> reference captions, optional (CIDEr only where given).
    """
    texts = captions.dropna(subset=["caption"])
    result: dict[str, Any] = {
        "n_captions": int(len(texts)),
        "unique_trigrams": unique_ngrams(texts["caption"], 3),
        "mean_words": float(np.mean([len(tokenize(t)) for t in texts["caption"]]))
        if len(texts) else None,
    }
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
                  metadata_dir: Path, references_column: str | None, out_path: Path) -> dict:
    """The quality rule: measures of one caption set, with references from the metadata."""
    from capmix.provenance import provenance_record, write_json
    from capmix.sources import metadata_parts

    captions = pd.concat([pd.read_parquet(f, columns=["uid", "caption"]) for f in caption_files],
                         ignore_index=True)
    scores = pd.read_parquet(scores_path, columns=["uid", "cos", "clip_s"])
    references = None
    if references_column:
        frames = [pd.read_parquet(p, columns=["uid", references_column])
                  for p in metadata_parts(metadata_dir)]
        table = pd.concat(frames, ignore_index=True)
        references = {u: list(r) for u, r in zip(table["uid"], table[references_column],
                                                  strict=True)}
    result = {"pool": pool, "caption_set": caption_set,
              **caption_set_quality(captions, scores, references),
              "provenance": provenance_record("quality", inputs=[scores_path])}
    write_json(out_path, result)
    return result
