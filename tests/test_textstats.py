"""Caption text statistics (Figures 3, 5, 12), each on captions counted by hand."""

import numpy as np
import pytest

from capmix.quality import sample_indices, sampled_unique_ngrams, unique_ngrams
from capmix.textstats import (
    bin_edges,
    caption_stats,
    coco_vocabulary,
    diversity_curve,
    grounding_ratios,
    histogram,
    nouns,
    sampled_unique_trigrams,
    scaled_sample_size,
    stop_words,
    subset_sizes,
    toy_vocabulary,
    unique_nouns,
    words_per_caption,
)

VOCABULARY = frozenset({"red", "circle", "white"})


def test_words_per_caption_counts_tokens_as_quality_does():
    # punctuation is dropped, "red-circle" is two words
    assert words_per_caption(["A red-circle.", "", "two words"]).tolist() == [3, 0, 2]


def test_grounding_ratio_counted_by_hand():
    visual, total = grounding_ratios(["A red circle on white", "Image not found", ""],
                                     VOCABULARY)
    assert visual.tolist() == [3, 0, 0]
    assert total.tolist() == [5, 3, 0]


def test_caption_stats_by_hand():
    texts = ["A red circle on white", "Image not found", "", "red circle"]
    stats = caption_stats(texts, VOCABULARY, np.array([0.0, 0.5, 1.0]))
    assert stats["n_captions"] == 4
    # words: 5, 3, 0, 2
    assert stats["words"]["counts"] == {"0": 1, "2": 1, "3": 1, "5": 1}
    assert stats["words"]["mean"] == pytest.approx(2.5)
    grounding = stats["grounding"]
    # ratios 3/5, 0/3 and 2/2; the empty caption has none
    assert grounding["no_tokens"] == 1
    assert grounding["mean"] == pytest.approx((0.6 + 0.0 + 1.0) / 3)
    assert grounding["pooled"] == pytest.approx(5 / 10)
    assert (grounding["visual_tokens"], grounding["tokens"]) == (5, 10)
    assert grounding["histogram"]["counts"] == [1, 2]  # 0.0 | 0.6, 1.0 (last bin closed)


def test_histogram_fixed_edges_and_overflow():
    edges = bin_edges(-1.0, 1.0, 0.5)
    assert edges.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    h = histogram(np.array([-0.75, 0.1, 0.2, 0.5, 1.0, 1.5, np.nan]), edges)
    assert h["counts"] == [1, 0, 2, 2]
    assert (h["below"], h["above"], h["n"]) == (0, 1, 6)
    with pytest.raises(ValueError, match="do not divide"):
        bin_edges(0.0, 1.0, 0.3)


def test_coco_vocabulary_keeps_frequent_content_words():
    captions = ["A dog on the grass.", "A dog and a cat", "2 cats", "the grass 2"]
    vocabulary = coco_vocabulary(captions, min_count=2, excluded=stop_words())
    # dog x2, grass x2 kept; cat x1, cats x1 too rare; a/the/on/and stop words; 2 no letter
    assert vocabulary == {"dog", "grass"}


def test_toy_vocabulary_is_the_worlds_visual_words():
    vocabulary = toy_vocabulary()
    assert {"circle", "red", "striped"} <= vocabulary
    assert "picture" not in vocabulary


def test_nouns_and_unique_nouns():
    assert nouns("a dog runs on the beach") == ["dog", "beach"]
    # dog, beach, cat (and "dog" again)
    assert unique_nouns(["a dog on the beach", "the dog and a cat"]) == 3


def test_sample_indices_shared_with_table1_trigrams():
    assert sample_indices(3, 5, 0).tolist() == [0, 1, 2]
    picked = sample_indices(10, 4, 7)
    assert len(set(picked.tolist())) == 4
    texts = [f"w{i} x{i} y{i}" for i in range(10)]  # one trigram each
    assert sampled_unique_trigrams(texts, 4, 7) == sampled_unique_ngrams(texts, 4, 7) == 4


def test_scaled_sample_size_takes_the_same_share_of_every_set():
    # pool of 1,000, 100 sampled from a pool-sized set: 10% of every set, rounded up
    assert scaled_sample_size(1000, 1000, 100) == 100
    assert scaled_sample_size(250, 1000, 100) == 25
    assert scaled_sample_size(3, 1000, 100) == 1
    assert scaled_sample_size(250, 100, 1000) == 250  # a sample larger than the pool: all
    with pytest.raises(ValueError):
        scaled_sample_size(1, 0, 1)


def test_subset_sizes_log_spaced_up_to_the_set():
    assert subset_sizes(10_000, 100, 10**7, 3) == [100, 1000, 10_000]
    assert subset_sizes(10**9, 100, 10**4, 3) == [100, 1000, 10_000]
    assert subset_sizes(50, 100, 10**7, 3) == [50]
    assert subset_sizes(0, 100, 10**7, 3) == []


def test_diversity_curve_nested_subsets_counted_by_hand():
    texts = ["a red circle", "a red circle", "a red circle on white", "the blue square"]
    curve = diversity_curve(texts, [1, 2, 4], seed=3)
    order = np.random.default_rng(3).permutation(len(texts))
    for point in curve:
        first = [texts[i] for i in order[:point["size"]]]
        assert point["unique_trigrams"] == unique_ngrams(first, 3)
        assert point["unique_nouns"] == unique_nouns(first)
    # all four: trigrams a red circle, red circle on, circle on white, the blue square;
    # nouns circle, square (the tagger reads "on white" as an adjective)
    assert curve[-1] == {"size": 4, "unique_trigrams": 4, "unique_nouns": 2}
    assert [p["unique_trigrams"] for p in curve] == sorted(p["unique_trigrams"] for p in curve)
    assert "unique_nouns" not in diversity_curve(texts, [4], 0, count_nouns=False)[0]
