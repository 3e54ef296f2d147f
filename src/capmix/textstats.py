"""Caption text statistics behind the paper's Figures 3, 5 and 12.

The paper measures caption sets by their text alone in three ways, and every count here is
taken on words as the quality stage takes them (:func:`capmix.quality.tokenize`: lowercase,
PTB punctuation dropped), so that a figure's trigram count and Table 1's are the same kind of
number:

* **Words per caption and grounding ratio** (Figure 3, on a seeded 1M sample of each training
  set). The grounding ratio is Vokenization's (Tan & Bansal 2020, the paper's [49]): the share
  of a caption's tokens that name visual concepts, "with the vocabulary defined by MS-COCO".
  :func:`coco_vocabulary` builds that vocabulary from MS-COCO captions (every word that occurs
  at least ``min_count`` times, less English stop words, which every caption has whatever it
  shows); the toy world's is its own object and attribute words
  (:func:`capmix.toyspec.visual_words`). Per caption the ratio is visual tokens / tokens
  (a caption with no tokens has none); the set's pooled ratio, all visual tokens over all
  tokens, is Vokenization's dataset-level number and is reported beside the per-caption mean.
* **Unique trigrams on a subset whose size scales with the training set** (Figure 5's
  diversity axis): :func:`scaled_sample_size` takes the same share of every training set of a
  pool, so a set twice as large is sampled twice as deep, as the paper says; the share is
  ``pool_sample_size / n_pool`` (1.28M of the 128M medium pool, the 1% sample of Figure 4),
  capped at 1.
* **Unique nouns and unique trigrams against subset size** (Figure 12): one seeded
  permutation of the images, read in order, so each subset holds the smaller ones
  (:func:`diversity_curve`); raw and synthetic captions of the same images get the same
  permutation when passed in the same uid order.

Nouns: the paper tags parts of speech with NLTK, whose tagger model is not on PyPI (it is
downloaded from NLTK's data server at run time). We tag with pattern's Brill tagger as
``textblob`` ships it, model and lexicon inside the PyPI package (:data:`NOUN_TAGGER`), and
count a word as a noun when it is tagged NN, NNS, NNP or NNPS; how far its noun counts are
from NLTK's is measured by ``bench/noun_tagger.py`` (README, "Analyses").
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np

from capmix.quality import ngrams, sample_indices, tokenize, unique_ngrams

#: Penn Treebank tags counted as nouns (common and proper, singular and plural).
NOUN_TAGS: frozenset[str] = frozenset({"NN", "NNS", "NNP", "NNPS"})
#: The part-of-speech tagger :func:`nouns` runs, as results record it.
NOUN_TAGGER = "pattern Brill tagger as shipped in textblob (textblob.en.taggers.PatternTagger)"
#: Where each caption statistic takes its words from, as results record it.
TOKENIZER = "capmix.quality.tokenize (lowercase, PTB punctuation dropped)"


# ------------------------------------------------------------------------------ per caption


def words_per_caption(texts: Iterable[str]) -> np.ndarray:
    """Number of words of each caption (Figure 3, left)."""
    return np.fromiter((len(tokenize(t)) for t in texts), dtype=np.int64)


def grounding_ratios(texts: Iterable[str], vocabulary: frozenset[str]) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    """Per caption, its visual tokens and its tokens (Figure 3, right: their quotient)."""
    visual, total = [], []
    for text in texts:
        words = tokenize(text)
        visual.append(sum(1 for w in words if w in vocabulary))
        total.append(len(words))
    return np.asarray(visual, dtype=np.int64), np.asarray(total, dtype=np.int64)


def histogram(values: np.ndarray, edges: np.ndarray) -> dict[str, Any]:
    """Counts of ``values`` in fixed bins (the last bin closed), with what falls outside.

    Fixed edges, not edges fitted to the data, so that the histograms of two caption sets
    are drawn on the same bins and their counts compare bin by bin.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    counts, _ = np.histogram(values, bins=edges)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts],
            "below": int((values < edges[0]).sum()), "above": int((values > edges[-1]).sum()),
            "n": int(values.size)}


def bin_edges(low: float, high: float, width: float) -> np.ndarray:
    """Edges from ``low`` to ``high`` in steps of ``width`` (a whole number of bins)."""
    n = round((high - low) / width)
    if n < 1 or not math.isclose(low + n * width, high, rel_tol=0, abs_tol=1e-9):
        raise ValueError(f"bins from {low} to {high} do not divide into steps of {width}")
    return np.linspace(low, high, n + 1)


def summary(values: np.ndarray) -> dict[str, float | None]:
    """Mean, quartiles and extremes of the finite ``values`` (None for none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return {k: None for k in ("mean", "min", "q1", "median", "q3", "max")}
    q1, median, q3 = np.quantile(values, [0.25, 0.5, 0.75])
    return {"mean": float(values.mean()), "min": float(values.min()), "q1": float(q1),
            "median": float(median), "q3": float(q3), "max": float(values.max())}


def caption_stats(texts: Sequence[str], vocabulary: frozenset[str],
                  ratio_edges: np.ndarray) -> dict[str, Any]:
    """Figure 3 for one set of captions: words per caption and grounding ratios.

    ``words.counts`` maps a word count to how many captions have it (the whole distribution,
    exact); the per-caption grounding ratios are binned on ``ratio_edges``. Captions without
    a token have no ratio (``grounding.no_tokens`` counts them).
    """
    words = words_per_caption(texts)
    visual, total = grounding_ratios(texts, vocabulary)
    has_tokens = total > 0
    ratios = visual[has_tokens] / total[has_tokens]
    counts = Counter(int(w) for w in words)
    return {
        "n_captions": len(texts),
        "words": {**summary(words), "counts": {str(k): counts[k] for k in sorted(counts)}},
        "grounding": {**summary(ratios),
                      "pooled": float(visual.sum() / total.sum()) if total.sum() else None,
                      "visual_tokens": int(visual.sum()), "tokens": int(total.sum()),
                      "no_tokens": int((~has_tokens).sum()),
                      "histogram": histogram(ratios, ratio_edges)},
    }


# ------------------------------------------------------------------------------ vocabularies


@cache
def stop_words() -> frozenset[str]:
    """English stop words (scikit-learn's list of 318): function words every caption uses,
    whatever its image shows, so they are not visual vocabulary."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def coco_vocabulary(captions: Iterable[str], min_count: int,
                    excluded: frozenset[str] = frozenset()) -> frozenset[str]:
    """The visual vocabulary "defined by MS-COCO": words of MS-COCO captions that occur at
    least ``min_count`` times (rare words are typos and names), less ``excluded`` (stop
    words, :func:`stop_words`) and tokens without a letter (numbers)."""
    counts = Counter(w for text in captions for w in tokenize(text))
    return frozenset(w for w, c in counts.items()
                     if c >= min_count and w not in excluded and any(ch.isalpha() for ch in w))


def toy_vocabulary() -> frozenset[str]:
    """The toy world's visual vocabulary: its shapes, colours, sizes, positions, backgrounds
    and fills (:func:`capmix.toyspec.visual_words`)."""
    from capmix.toyspec import visual_words

    return visual_words()


# ------------------------------------------------------------------------------ nouns


@cache
def _pattern_tagger() -> Any:
    from textblob.en.taggers import PatternTagger

    return PatternTagger()


def nouns(text: str) -> list[str]:
    """The nouns of a caption, lowercased, as :data:`NOUN_TAGGER` tags them (the text is
    tagged as written: case tells proper nouns apart)."""
    return [word.lower() for word, tag in _pattern_tagger().tag(text)
            if tag in NOUN_TAGS and any(ch.isalpha() for ch in word)]


def unique_nouns(texts: Iterable[str]) -> int:
    """Number of distinct nouns over all texts."""
    return len({n for text in texts for n in nouns(text)})


# ------------------------------------------------------------------------------ diversity


def scaled_sample_size(n_samples: int, n_pool: int, pool_sample_size: int) -> int:
    """Figure 5's subset of a training set: the same share of every set of the pool,
    ``pool_sample_size / n_pool`` (at most all of it), so its size scales with the set's."""
    if n_pool <= 0:
        raise ValueError(f"a pool of {n_pool} images has no training sets to sample")
    share = min(1.0, pool_sample_size / n_pool)
    return min(n_samples, math.ceil(n_samples * share))


def sampled_unique_trigrams(texts: Sequence[str], size: int, seed: int) -> int:
    """Distinct trigrams of a seeded sample of ``size`` texts (:func:`sample_indices`)."""
    return unique_ngrams((texts[int(i)] for i in sample_indices(len(texts), size, seed)), 3)


def subset_sizes(n: int, min_size: int, max_size: int, points: int) -> list[int]:
    """Figure 12's x-axis: up to ``points`` subset sizes spaced evenly on a log scale from
    ``min_size`` to ``min(n, max_size)``, which is always the last."""
    top = min(n, max_size)
    if top <= 0:
        return []
    if top <= min_size or points < 2:
        return [top]
    sizes = np.geomspace(min_size, top, points)
    return sorted({int(round(s)) for s in sizes[:-1]} | {top})


def nested_order(n: int, sizes: Sequence[int], seed: int) -> np.ndarray:
    """The first ``max(sizes)`` positions (of ``n``) of :func:`diversity_curve`'s seeded
    permutation: the images its subsets hold, in the order they join.

    The whole permutation is drawn (8 bytes per image, transiently): a prefix of numpy's
    shuffle cannot be drawn alone, and the same seed must give the same subsets as before.
    """
    wanted = sorted(s for s in set(sizes) if 0 < s <= n)
    order = np.random.default_rng(seed).permutation(n)
    return order[:wanted[-1]].copy() if wanted else order[:0].copy()


def diversity_curve(texts: Sequence[str], sizes: Sequence[int], seed: int,
                    count_nouns: bool = True) -> list[dict[str, int]]:
    """Unique trigrams (and nouns) in growing random subsets of ``texts`` (Figure 12).

    One seeded permutation is read in order and the counts are taken as it passes each size,
    so every subset contains the smaller ones and the curve costs one pass.
    """
    order = nested_order(len(texts), sizes, seed)
    return curve_in_order([texts[int(i)] for i in order], sizes, len(texts), count_nouns)


def curve_in_order(picked: Sequence[str], sizes: Sequence[int], n: int,
                   count_nouns: bool = True) -> list[dict[str, int]]:
    """:func:`diversity_curve` from the texts its permutation picks (:func:`nested_order`),
    in order, of a set of ``n``: the analyses read only those texts of a pool."""
    wanted = sorted(s for s in set(sizes) if 0 < s <= n)
    trigrams: set[tuple[str, ...]] = set()
    noun_set: set[str] = set()
    tagged: set[str] = set()  # a caption seen again adds no noun: tag each text once
    points: list[dict[str, int]] = []
    done = 0
    for size in wanted:
        for text in picked[done:size]:
            trigrams.update(ngrams(text, 3))
            if count_nouns and text not in tagged:
                tagged.add(text)
                noun_set.update(nouns(text))
        done = size
        point = {"size": size, "unique_trigrams": len(trigrams)}
        if count_nouns:
            point["unique_nouns"] = len(noun_set)
        points.append(point)
    return points


def text_settings() -> Mapping[str, str]:
    """How the counts here were taken, for a result file to record."""
    return {"tokenizer": TOKENIZER, "noun_tagger": NOUN_TAGGER,
            "noun_tags": ", ".join(sorted(NOUN_TAGS))}
