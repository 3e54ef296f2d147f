import math

import pandas as pd
import pytest

from capmix.quality import caption_set_quality, cider, tokenize, unique_ngrams


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
