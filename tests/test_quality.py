import math

import pandas as pd
import pytest

from capmix.quality import (
    attribute_accuracy,
    caption_set_quality,
    cider,
    sampled_unique_ngrams,
    tokenize,
    unique_ngrams,
)


def test_tokenize_is_ptb_like():
    assert tokenize("A Red-Circle, on a white background.") == [
        "a", "red", "circle", "on", "a", "white", "background"]


def test_unique_trigrams_counted_by_hand():
    # "a red circle" -> (a red circle); "a red circle on white" -> +2 new trigrams
    texts = ["a red circle", "A red circle on white", "two"]
    assert unique_ngrams(texts, 3) == 3
    assert unique_ngrams(texts, 1) == 6  # a red circle on white two


def test_cider_rewards_matching_references():
    references = {"1": ["a red circle on a white background"],
                  "2": ["a blue square on a black background"],
                  "3": ["a green star on a gray background"]}
    exact = cider({k: v[0] for k, v in references.items()}, references)
    wrong = cider({"1": "a blue star", "2": "a green circle", "3": "a red square"}, references)
    assert exact == pytest.approx(10.0)  # CIDEr-D of identical captions (x10 scale)
    assert wrong < 1.0 < exact
    with pytest.raises(ValueError, match="without references"):
        cider({"4": "x"}, references)


def test_caption_set_quality_columns():
    captions = pd.DataFrame({"uid": ["1", "2", "3"],
                             "caption": ["a red circle", "a red circle", None]})
    scores = pd.DataFrame({"uid": ["1", "2", "3"], "cos": [0.2, -0.1, float("nan")],
                           "clip_s": [0.5, 0.0, float("nan")]})
    result = caption_set_quality(captions, scores, {"1": ["a red circle"], "2": ["a red disc"]})
    assert result["n_captions"] == 2
    assert result["unique_trigrams"] == 1
    assert math.isclose(result["mean_cos"], 0.05)
    assert math.isclose(result["clip_s"], 0.25)
    assert result["cider_n"] == 2 and result["cider"] > 0


def test_trigrams_at_equal_sample_size_are_seeded_and_bounded():
    texts = [f"a red circle number {i}" for i in range(50)]
    assert sampled_unique_ngrams(texts, 100, seed=0) == unique_ngrams(texts, 3)
    small = sampled_unique_ngrams(texts, 10, seed=0)
    # "a red circle" and "red circle number" are shared; "circle number {i}" is per text
    assert small == 2 + 10
    assert sampled_unique_ngrams(texts, 10, seed=0) == small
    captions = pd.DataFrame({"uid": [f"{i:02d}" for i in range(50)], "caption": texts})
    result = caption_set_quality(captions.iloc[::-1], trigram_sample_size=10, seed=3)
    again = caption_set_quality(captions, trigram_sample_size=10, seed=3)
    assert result["unique_trigrams"] == again["unique_trigrams"] == 12
    assert result["trigram_sample_size"] == 10
    # Table 1 counts on 1M captions: a smaller set is counted whole.
    whole = caption_set_quality(captions)
    assert whole["unique_trigrams"] == unique_ngrams(texts, 3) == 52
    assert whole["trigram_sample_size"] == 50


def test_attribute_accuracy_on_known_captions():
    truth = pd.DataFrame({
        "uid": ["1", "2", "3", "4"],
        "shape": ["hexagon", "circle", "star", "ring"],
        "colour": ["brown", "red", "yellow", "pink"],
        "size": ["small", "large", "medium", "small"],
        "position": ["top left", "left", "center", "bottom"],
        "background": ["striped gray", "white", "gray", "black"],
    })
    captions = pd.DataFrame({"uid": ["1", "2", "3", "4", "5"], "caption": [
        "A small brown hexagon in the top left corner of a striped gray background",
        "a red polygon on a pink background.",   # supercategory: shape named, not rightly
        "Italien - Ligurien",                     # names nothing
        None,                                     # no caption: not counted
        "a blue square",                          # not a scene image: not counted
    ]})
    result = attribute_accuracy(captions, truth)
    assert result["n"] == 3
    assert result["shape"] == {"mentioned": 2 / 3, "correct": 1 / 3, "precision": 0.5}
    # "pink" names the background, not the object
    assert result["colour"] == {"mentioned": 2 / 3, "correct": 2 / 3, "precision": 1.0}
    assert result["size"] == {"mentioned": 1 / 3, "correct": 1 / 3, "precision": 1.0}
    assert result["position"] == {"mentioned": 1 / 3, "correct": 1 / 3, "precision": 1.0}
    assert result["background"] == {"mentioned": 2 / 3, "correct": 1 / 3, "precision": 0.5}
    quality = caption_set_quality(captions, truth=truth)
    assert quality["attributes"] == result
    assert "attributes" not in caption_set_quality(captions)
