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


def _split_caption_set(tmp_path, n=2000, files=5, seed=0):
    """A caption set of ``n`` hex-uid captions in ``files`` shards (row groups of 150 rows),
    not sorted across shards, with missing captions and a uid twice; its scores beside."""
    import numpy as np

    rng = np.random.default_rng(seed)
    uids = [f"{u:032x}" for u in rng.integers(0, 2**63, n)]
    uids[7] = uids[1500]  # a uid in two shards
    words = ["red", "blue", "circle", "square", "on", "white", "a", "small", "star"]
    captions = [None if rng.random() < 0.1 else
                " ".join(rng.choice(words, size=rng.integers(1, 7))) for _ in range(n)]
    frame = pd.DataFrame({"uid": uids, "caption": captions})
    paths = []
    for i, chunk in enumerate(np.array_split(np.arange(n), files)):
        path = tmp_path / f"shard_{i}.parquet"
        frame.iloc[chunk].to_parquet(path, row_group_size=150)
        paths.append(path)
    cos = rng.uniform(-0.2, 0.5, n).astype("float32")
    cos[::13] = np.nan
    scores = pd.DataFrame({"uid": uids, "cos": cos,
                           "clip_s": 2.5 * np.maximum(cos.astype("float64"), 0)})
    scores.to_parquet(tmp_path / "scores.parquet", row_group_size=300)
    return frame, scores, paths


@pytest.mark.parametrize("sample_size", [50, 1000, 5000])
def test_streamed_quality_equals_the_whole_set(tmp_path, sample_size):
    from capmix.quality import streamed_caption_set_quality

    frame, scores, paths = _split_caption_set(tmp_path)
    references = {frame["uid"][i]: ["a red circle on white"] for i in range(0, 2000, 97)}
    truth = pd.DataFrame({"uid": frame["uid"][:300], "shape": "circle", "colour": "red",
                          "size": "small", "position": "center", "background": "white"})
    whole = caption_set_quality(frame, scores, references, sample_size, seed=5, truth=truth)
    streamed = streamed_caption_set_quality(paths, tmp_path / "scores.parquet", references,
                                            sample_size, seed=5, truth=truth)
    for key in ("mean_cos", "clip_s"):
        assert streamed.pop(key) == pytest.approx(whole.pop(key), rel=1e-6)
    assert streamed == whole
    assert whole["trigram_sample_size"] == min(sample_size, whole["n_captions"])


def test_streamed_sample_is_the_same_captions_with_tiny_buckets(tmp_path, monkeypatch):
    """Buckets of ~2 uids: the gathering pass ranks within many buckets, ties included."""
    import capmix.uidorder
    from capmix.quality import streamed_caption_set_quality

    monkeypatch.setattr(capmix.uidorder, "TARGET_BUCKET_ROWS", 2)
    frame, _, paths = _split_caption_set(tmp_path, seed=3)
    for size in (1, 333):
        assert streamed_caption_set_quality(paths, trigram_sample_size=size, seed=9) == \
            caption_set_quality(frame, trigram_sample_size=size, seed=9)


def test_streamed_quality_names_a_missing_or_invalid_file(tmp_path):
    from capmix.quality import streamed_caption_set_quality

    _, _, paths = _split_caption_set(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        streamed_caption_set_quality([*paths, tmp_path / "nope.parquet"])
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    with pytest.raises(ValueError, match="broken.parquet"):
        streamed_caption_set_quality([paths[0], broken])
    pd.DataFrame({"uid": ["not-a-uid"], "caption": ["a red circle"]}).to_parquet(
        tmp_path / "bad_uid.parquet")
    with pytest.raises(ValueError, match="bad_uid.parquet.*not-a-uid"):
        streamed_caption_set_quality([paths[0], tmp_path / "bad_uid.parquet"])
    with pytest.raises(FileNotFoundError, match="missing_scores.parquet"):
        streamed_caption_set_quality(paths, tmp_path / "missing_scores.parquet")
