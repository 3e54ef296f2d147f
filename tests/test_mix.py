"""Filtering and mixing strategies on small tables whose subsets are worked out by hand.

The pool below has ten images u0..u9. Raw CLIP scores fall 0.9, 0.8, ... 0.0; synthetic
scores are scrambled. DataComp's rule for "top f": threshold = the score at position
int(N*f) of the scores sorted high to low, keep score >= threshold -- so top 30% of ten
keeps int(3)+1 = 4 images. Each expectation is derived in the comment above it.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capmix.config import ConfigError, pipeline_config
from capmix.metadatafilter import COLUMN_PATTERN, CONDITIONS, metadata_table_column
from capmix.mix import (
    CHARS_COLUMN,
    CLUSTER_COLUMN,
    LANGUAGE_COLUMN,
    TOKENS_COLUMN,
    CaptionSet,
    ScoreTableError,
    Selection,
    build_mix_table,
    caption_column,
    score_column,
    select,
)
from capmix.mixparts import MixInputs, build_table, part_files, run_subset
from capmix.strategies import (
    StrategyError,
    expand_strategies,
    is_no_filter,
    metadata_filter_users,
    parse_strategy,
    pool_strategy_names,
    strategy_problems,
)
from tests.conftest import REPO

UIDS = [f"{i:032x}" for i in range(10)]
RAW = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
SYN = [0.1, 0.85, 0.2, 0.75, 0.65, 0.35, 0.72, 0.05, 0.6, 0.3]
# Sorted high to low, SYN is .85(u1) .75(u3) .72(u6) .65(u4) .6(u8) .35(u5) .3(u9) .2 .1 .05
IN_CLUSTERS = [True, False, True, True, False, True, True, False, False, True]
# The raw captions as the caption_language stage measures them: u1 is German, u6 Spanish, u2
# has one fastText token, u3 five characters. DataComp's caption filter (English, > 1 token,
# > 5 characters) passes u0 u4 u5 u7 u8 u9.
LANGUAGES = ["en", "de", "en", "en", "en", "en", "es", "en", "en", "en"]
TOKENS = [5, 4, 1, 2, 3, 3, 4, 3, 3, 6]
CHARS = [30, 24, 6, 5, 20, 20, 26, 18, 20, 31]
POOL = {"name": "toy", "mix": {"sources": {"synthetic": "cap/0.75"}}}


def table() -> pd.DataFrame:
    return pd.DataFrame({
        "uid": UIDS,
        score_column("raw"): RAW, caption_column("raw"): [f"raw {i}" for i in range(10)],
        score_column("cap/0.75"): SYN, caption_column("cap/0.75"): [f"syn {i}" for i in range(10)],
        CLUSTER_COLUMN: IN_CLUSTERS,
        LANGUAGE_COLUMN: LANGUAGES, TOKENS_COLUMN: TOKENS, CHARS_COLUMN: CHARS,
    })


def catalogue() -> dict[str, dict]:
    return expand_strategies(pipeline_config()["strategies"])


def run(name: str, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    frame = table() if frame is None else frame
    strategy = parse_strategy(name, catalogue()[name])
    aliases = POOL["mix"]["sources"]
    return select(strategy, frame, resolve=lambda s: aliases.get(s, s)).samples


def chosen(samples: pd.DataFrame) -> list[tuple[int, str]]:
    """(image number, caption kind) pairs, sorted."""
    kinds = {"raw": "raw", "cap/0.75": "syn", "raw+cap/0.75": "concat"}
    return sorted((int(u, 16), kinds[s]) for u, s in zip(samples["uid"], samples["source"],
                                                          strict=True))


def pairs(images: list[int], kind: str) -> list[tuple[int, str]]:
    return [(i, kind) for i in images]


# ------------------------------------------------------------------ every kind of strategy


def test_no_filtering_keeps_every_image_with_its_caption():
    assert chosen(run("raw_no_filter")) == pairs(list(range(10)), "raw")
    assert chosen(run("synthetic_no_filter")) == pairs(list(range(10)), "syn")


def test_top_fraction_uses_datacomps_threshold():
    # Raw sorted: .9 .8 .7 .6 ...; int(10*0.3) = 3 -> threshold .6 -> u0..u3.
    samples = run("raw_top_30")
    assert chosen(samples) == pairs([0, 1, 2, 3], "raw")
    assert set(samples["caption"]) == {"raw 0", "raw 1", "raw 2", "raw 3"}
    # int(10*0.1) = 1 -> threshold .8 -> u0, u1.
    assert chosen(run("raw_top_10")) == pairs([0, 1], "raw")
    # int(10*0.9) = 9 -> threshold 0.0 -> all ten.
    assert chosen(run("raw_top_90")) == pairs(list(range(10)), "raw")
    # Synthetic, top 50%: int(5) -> the 6th highest, .35 -> u1 u3 u6 u4 u8 u5.
    assert chosen(run("synthetic_top_50")) == pairs([1, 3, 4, 5, 6, 8], "syn")


def test_synthetic_captions_for_the_top_by_raw_score():
    # Images chosen by the raw score (u0..u3), trained with their synthetic captions.
    assert chosen(run("synthetic_top_by_raw_30")) == pairs([0, 1, 2, 3], "syn")


def test_raw_top_plus_synthetic_for_all_remaining():
    # Raw for u0..u3, synthetic for the other six: the whole pool, no image twice.
    assert chosen(run("raw_top_synthetic_remaining_30")) == (
        pairs([0, 1, 2, 3], "raw") + pairs([4, 5, 6, 7, 8, 9], "syn"))


def test_raw_top_plus_filtered_synthetic_for_the_remaining():
    # Threshold .6 from the raw top 30%; of the remaining u4..u9 the synthetic captions
    # scoring >= .6 are u4 (.65), u6 (.72) and u8 (.6, equal counts).
    assert chosen(run("raw_top_synthetic_remaining_filtered_30")) == sorted(
        pairs([0, 1, 2, 3], "raw") + pairs([4, 6, 8], "syn"))


def test_synthetic_top_plus_filtered_raw_for_the_remaining():
    # Synthetic top 30%: threshold = 4th highest synthetic = .65 -> u1 u3 u6 u4. Remaining
    # u0 u2 u5 u7 u8 u9 with raw >= .65: u0 (.9) and u2 (.7).
    assert chosen(run("synthetic_top_raw_remaining_filtered_30")) == sorted(
        pairs([1, 3, 4, 6], "syn") + pairs([0, 2], "raw"))


def test_concatenation_for_the_top_then_filtered_synthetic():
    samples = run("concat_top_synthetic_remaining_filtered_30")
    assert chosen(samples) == sorted(pairs([0, 1, 2, 3], "concat") + pairs([4, 6, 8], "syn"))
    concat = samples[samples["source"] == "raw+cap/0.75"].sort_values("uid")
    assert concat["caption"].tolist() == ["raw 0 syn 0", "raw 1 syn 1", "raw 2 syn 2",
                                          "raw 3 syn 3"]


def test_top_raw_plus_top_synthetic_repeats_images_as_pairs(tmp_path):
    # Raw top: u0..u3; synthetic top: u1 u3 u4 u6. u1 and u3 train twice, once per caption.
    samples = run("raw_top_plus_synthetic_top_30")
    assert chosen(samples) == sorted(pairs([0, 1, 2, 3], "raw") + pairs([1, 3, 4, 6], "syn"))
    strategy = parse_strategy("raw_top_plus_synthetic_top_30",
                              catalogue()["raw_top_plus_synthetic_top_30"])
    from capmix.mix import write_subset

    summary = write_subset(strategy, Selection(pa.Table.from_pandas(samples), []), 10, tmp_path, {})
    assert (summary["n_samples"], summary["n_images"], summary["repeated_images"]) == (8, 6, 2)
    assert len(np.load(tmp_path / "uids.npy")) == 6
    # select() also hands over the distinct images (the fast path): same file, same counts.
    frame = table()
    selection = select(strategy, frame, None,
                       lambda s: POOL["mix"]["sources"].get(s, s))
    fast = write_subset(strategy, selection, 10, tmp_path / "fast", {})
    assert (fast["n_images"], fast["repeated_images"]) == (6, 2)
    assert (np.load(tmp_path / "fast" / "uids.npy") == np.load(tmp_path / "uids.npy")).all()


def test_intersection_with_image_clusters():
    # Synthetic top 30% = u1 u3 u4 u6; in clusters: u0 u2 u3 u5 u6 u9 -> u3, u6.
    assert chosen(run("synthetic_top_in1k_30")) == pairs([3, 6], "syn")
    # Raw top 30% = u0..u3 -> u0 u2 u3.
    assert chosen(run("raw_top_in1k_30")) == pairs([0, 2, 3], "raw")
    # Raw u0..u3 + filtered synthetic u4 u6 u8, then the intersection: u0 u2 u3 raw, u6 syn.
    assert chosen(run("raw_top_synthetic_remaining_filtered_in1k_30")) == sorted(
        pairs([0, 2, 3], "raw") + pairs([6], "syn"))


def test_datacomps_image_based_baseline_adds_the_caption_filter():
    # Raw top 30% = u0..u3 (threshold .6, over the whole pool as DataComp's); in clusters
    # u0 u2 u3; caption filter: u2 has one token, u3 five characters -> u0 alone.
    assert chosen(run("raw_top_in1k_datacomp_30")) == pairs([0], "raw")
    # At 90%: threshold 0.0 -> all ten; in clusters u0 u2 u3 u5 u6 u9; caption filter drops
    # u2, u3 (length) and u6 (Spanish) -> u0 u5 u9.
    selection = family_select("raw_top_in1k_datacomp", 0.9, table())
    assert chosen(selection.samples) == pairs([0, 5, 9], "raw")
    assert selection.parts[0]["threshold"] == 0.0
    assert catalogue()["raw_top_in1k_datacomp_30"]["text_filter"] == {
        "language": "en", "min_tokens": 2, "min_chars": 6}


def test_a_text_filter_reads_the_raw_caption_whatever_a_part_trains_with():
    # Synthetic captions for every image, kept if the *raw* caption is English: all but u1, u6.
    spec = {"description": "x", "parts": [{"caption": "synthetic"}],
            "text_filter": {"language": "en"}}
    assert chosen(run_spec("s", spec, table())) == pairs([0, 2, 3, 4, 5, 7, 8, 9], "syn")
    # Length alone: >= 3 tokens and >= 20 characters -> u0 u1 u4 u5 u6 u8 u9.
    spec["text_filter"] = {"min_tokens": 3, "min_chars": 20}
    assert chosen(run_spec("s", spec, table())) == pairs([0, 1, 4, 5, 6, 8, 9], "syn")
    # A table without caption languages cannot run a text filter.
    with pytest.raises(StrategyError, match="no caption languages"):
        run_spec("s", spec, table().drop(columns=[LANGUAGE_COLUMN]))


def datacomp_caption_filter(df: pd.DataFrame, lang_detect_model) -> np.ndarray:
    """mlfoundations/datacomp baselines/apply_filter.py, ``caption_filter``, as it is."""
    import fasttext

    caption_num_words = df.text.apply(lambda x: len(fasttext.tokenize(x)))
    caption_num_chars = df.text.apply(len)

    lang_preds, _ = lang_detect_model.predict(
        [x.replace("\n", " ") for x in df.text.values], k=1
    )
    fasttext_en = [x[0].replace("__label__", "") == "en" for x in lang_preds]

    mask = fasttext_en & (caption_num_words > 1) & (caption_num_chars > 5)

    return mask.to_numpy()


# Raw captions: non-English ones, short ones, and what fastText's tokenizer counts apart from
# str.split() (a newline is a token; a no-break space separates nothing).
DATACOMP_TEXTS = ["a dog runs on the beach", "ein Hund läuft am Strand", "photo",
                  "a cat\n", "un perro corre en la playa", "dog\n", "a red\u00a0car",
                  "the cat is sitting on a chair", "a b c", "two people walking in the park"]


# DataComp's `list & Series` (fasttext_en & ...) draws a pandas FutureWarning; kept as it is.
@pytest.mark.filterwarnings("ignore:Logical ops:FutureWarning")
def test_the_image_based_text_filter_keeps_exactly_what_datacomps_code_keeps(tmp_path):
    """DataComp's ``image_based_intersect_clip_score`` (``image_filter_helper``): score >= the
    pool's top-f threshold, then ``caption_filter``, then the target clusters; against
    capmix's strategy, both with the same fastText model file (a tiny one of lid.176's kind)."""
    fasttext = pytest.importorskip(
        "fasttext", reason="fasttext (fasttext-wheel) not installed: DataComp's caption_filter "
        "needs fasttext.tokenize and a fastText model")
    from capmix.language import FastTextModel, measure_captions
    from tests.tiny_models import make_tiny_fasttext_lid

    model_path = make_tiny_fasttext_lid(tmp_path)
    measured = measure_captions(UIDS, DATACOMP_TEXTS, FastTextModel(model_path))
    frame, _ = build_mix_table(UIDS, {}, caption_text=measured)
    frame = table().drop(columns=[LANGUAGE_COLUMN, TOKENS_COLUMN, CHARS_COLUMN]).merge(
        frame, on="uid")
    lid = fasttext.load_model(str(model_path))
    df = pd.DataFrame({"uid": UIDS, "text": DATACOMP_TEXTS, "score": RAW,
                       "in_target": IN_CLUSTERS})
    caption_ok = datacomp_caption_filter(df, lid)
    # The table covers each way to fail: language (u1, u4), tokens (u2), characters (u5, u8).
    assert caption_ok.tolist() == [True, False, False, True, False, False, True, True, False,
                                   True]
    for fraction in FRACTIONS + [1.0]:
        threshold = -np.sort(-df["score"].values)[min(int(len(df) * fraction), len(df) - 1)]
        kept = df[df["score"] >= threshold]  # df_index = df[key] >= threshold
        kept = kept[datacomp_caption_filter(kept, lid)]  # mask = caption_filter(df, ...)
        expected = sorted(kept.loc[kept["in_target"], "uid"])  # uids in target clusters
        selection = family_select("raw_top_in1k_datacomp", fraction, frame)
        assert sorted(selection.samples["uid"]) == expected, fraction


def test_caption_languages_join_the_table_for_every_fetched_image():
    measured = pd.DataFrame({"uid": UIDS[:3], LANGUAGE_COLUMN: ["en", "de", "en"],
                             TOKENS_COLUMN: [3, 3, 1], CHARS_COLUMN: [10, 10, 3],
                             "raw_language_score": [0.9, 0.8, 0.7]})
    frame, _ = build_mix_table(UIDS[:3], {}, caption_text=measured)
    assert frame[LANGUAGE_COLUMN].tolist() == ["en", "de", "en"]
    with pytest.raises(ScoreTableError, match="caption languages lack 1 fetched uid"):
        build_mix_table(UIDS[:4], {}, caption_text=measured)


def test_fixed_threshold():
    # Synthetic >= .28: u1 u3 u4 u5 u6 u8 u9 (.3 counts).
    assert chosen(run("synthetic_min_0p28")) == pairs([1, 3, 4, 5, 6, 8, 9], "syn")
    # A fixed threshold on the part's own (raw) score: u0..u6.
    spec = {"description": "x", "parts": [{"caption": "raw", "keep": {"min_score": 0.28}}]}
    frame = table()
    samples = select(parse_strategy("raw_own", spec), frame,
                     None).samples
    assert chosen(samples) == pairs([0, 1, 2, 3, 4, 5, 6], "raw")


def test_figure13_trains_one_set_of_images_with_raw_and_with_synthetic_captions():
    """Appendix G: the images whose BLIP2 caption scores >= 0.28, once with their BLIP2 and once
    with their raw captions (both rows 41M). Raw scores would keep u0..u6 instead."""
    raw, synthetic = run("raw_min_0p28"), run("synthetic_min_0p28")
    assert sorted(raw["uid"]) == sorted(synthetic["uid"])
    assert chosen(raw) == pairs([1, 3, 4, 5, 6, 8, 9], "raw")
    assert chosen(synthetic) == pairs([1, 3, 4, 5, 6, 8, 9], "syn")
    assert raw["caption"].str.startswith("raw ").all()
    # The threshold is on the BLIP2 caption's score, so a raw-scored image in u0 (0.9) is out.
    assert "0" * 32 not in set(raw["uid"])


def test_fraction_one_keeps_everything_and_ties_are_kept():
    frame = table()
    frame[score_column("raw")] = [0.5] * 10  # all tied
    spec = {"description": "x", "parts": [{"caption": "raw", "keep": {"top": 0.1}}]}
    strategy = parse_strategy("tied", spec)
    # Every score equals the threshold, so all ten are kept (DataComp's >=).
    assert len(select(strategy, frame, None).samples) == 10
    spec["parts"][0]["keep"]["top"] = 1.0
    assert len(select(parse_strategy("all", spec), table(),
                      None).samples) == 10


def test_summary_reports_thresholds_and_caption_shares(tmp_path):
    frame = table()
    (tmp_path / "table").mkdir()
    frame.to_parquet(tmp_path / "table" / "part-00000.parquet")
    (tmp_path / "table.json").write_text(json.dumps({"parts": ["table/part-00000.parquet"]}))
    name = "raw_top_synthetic_remaining_filtered_30"
    summary = run_subset(name, catalogue()[name], POOL, tmp_path / "table.json",
                         tmp_path / "out")
    assert summary["thresholds"] == [0.6]
    assert summary["n_samples"] == 7 and summary["n_pool"] == 10
    assert summary["caption_kinds"]["raw"] == {"samples": 4, "share": 4 / 7}
    assert summary["caption_kinds"]["synthetic"] == {"samples": 3, "share": 3 / 7}
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["provenance"]["stage"] == "subset"
    assert on_disk["description"].startswith("Raw captions for top %")
    # The uid file, read as DataComp reads it.
    uids = np.load(tmp_path / "out" / "uids.npy")
    assert uids.dtype == np.dtype("u8,u8")
    expected = sorted((int(u[:16], 16), int(u[16:32], 16)) for u in
                      [UIDS[i] for i in (0, 1, 2, 3, 4, 6, 8)])
    assert [tuple(int(x) for x in r) for r in uids] == expected
    samples = pd.read_parquet(tmp_path / "out" / "samples.parquet")
    assert set(samples.columns) >= {"uid", "caption", "source", "part", "score"}


def test_uid_file_in_datacomp_format_for_real_uid_values(tmp_path):
    from capmix.mix import write_subset

    uids = ["ffffffffffffffff0000000000000001", "0000000000000001ffffffffffffffff",
            "80000000000000008000000000000000"]
    samples = pd.DataFrame({"uid": uids, "caption": "c", "source": "raw", "origin": "raw",
                            "part": 0, "score": 0.5})
    strategy = parse_strategy("s", {"description": "s", "parts": [{"caption": "raw"}]})
    write_subset(strategy, Selection(pa.Table.from_pandas(samples), []), 3, tmp_path, {})
    loaded = np.load(tmp_path / "uids.npy")
    by_hand = np.array(sorted((int(u[:16], 16), int(u[16:32], 16)) for u in uids),
                       np.dtype("u8,u8"))
    assert loaded.dtype == by_hand.dtype and (loaded == by_hand).all()
    assert (np.sort(loaded) == loaded).all()


# ------------------------------------------------------------------ the shared table


def write_set(tmp_path, name, uids, scores, captions, missing=None):
    """A caption set as the score and caption stages write it."""
    folder = tmp_path / name.replace("/", "_")
    folder.mkdir()
    pd.DataFrame({
        "uid": uids, "cos": scores, "cos_all": [[s] if s == s else [] for s in scores],
        "missing": missing or [None] * len(uids),
    }).to_parquet(folder / "scores.parquet")
    pd.DataFrame({"uid": uids, "captions": [[c] for c in captions], "status": "ok"}).to_parquet(
        folder / "captions.parquet")
    return CaptionSet(name, folder / "scores.parquet", [folder / "captions.parquet"])


def test_best_caption_across_temperatures(tmp_path):
    uids = UIDS[:3]
    low = write_set(tmp_path, "cap/0.5", uids, [0.2, 0.9, 0.4], ["a0", "a1", "a2"])
    high = write_set(tmp_path, "cap/1.0", uids, [0.3, 0.1, 0.4], ["b0", "b1", "b2"])
    frame, _ = build_mix_table(uids, {"cap/best": [low, high]})
    assert frame[score_column("cap/best")].tolist() == [0.3, 0.9, 0.4]
    assert frame[caption_column("cap/best")].tolist() == ["b0", "a1", "a2"]  # tie -> first
    assert frame["from:cap/best"].astype(str).tolist() == ["cap/1.0", "cap/0.5", "cap/0.5"]


def test_nan_scores_and_missing_uids_fail_with_counts_and_examples(tmp_path):
    uids = UIDS[:5]
    nan_set = write_set(tmp_path, "cap/0.75", uids, [0.1, np.nan, 0.3, np.nan, 0.5],
                        list("abcde"), missing=[None, "caption_failed", None,
                                                "no_image_embedding", None])
    short = write_set(tmp_path, "raw", uids[:3], [0.1, 0.2, 0.3], list("abc"))
    with pytest.raises(ScoreTableError) as error:
        build_mix_table(uids, {"cap/0.75": [nan_set], "raw": [short]})
    text = str(error.value)
    assert "'cap/0.75'" in text and "2 fetched image(s) have no score" in text
    assert UIDS[1] in text and "caption_failed" in text
    assert "'raw'" in text and "2 fetched uid(s) are missing" in text and UIDS[3] in text
    assert "on_missing_score: drop" in text


def test_drop_leaves_unscored_images_out_of_every_strategy(tmp_path):
    uids = UIDS[:5]
    nan_set = write_set(tmp_path, "cap/0.75", uids, [0.1, np.nan, 0.3, 0.4, 0.5], list("abcde"))
    raw = write_set(tmp_path, "raw", uids, [0.5, 0.4, 0.3, 0.2, 0.1], list("vwxyz"))
    frame, report = build_mix_table(uids, {"cap/0.75": [nan_set], "raw": [raw]},
                                    on_missing_score="drop")
    assert frame["uid"].tolist() == [UIDS[i] for i in (0, 2, 3, 4)]
    assert report["dropped"]["total"] == 1 and report["n_pool"] == 4


def test_infinite_scores_are_never_in_a_table(tmp_path):
    """±inf is as unusable as NaN: an error naming it, or dropped like it (never kept)."""
    uids = UIDS[:5]
    inf_set = write_set(tmp_path, "cap/0.75", uids, [0.1, np.inf, 0.3, -np.inf, 0.5],
                        list("abcde"))
    raw = write_set(tmp_path, "raw", uids, [0.5, 0.4, 0.3, 0.2, 0.1], list("vwxyz"))
    with pytest.raises(ScoreTableError, match=r"2 fetched image\(s\) have no score .*"
                                              r"non_finite_score"):
        build_mix_table(uids, {"cap/0.75": [inf_set], "raw": [raw]})
    frame, report = build_mix_table(uids, {"cap/0.75": [inf_set], "raw": [raw]},
                                    on_missing_score="drop")
    assert frame["uid"].tolist() == [UIDS[i] for i in (0, 2, 4)]
    assert np.isfinite(frame[score_column("cap/0.75")]).all()
    assert report["dropped"]["total"] == 2


def test_duplicate_uids_in_a_score_table_always_fail(tmp_path):
    dup = write_set(tmp_path, "raw", [UIDS[0], UIDS[0]], [0.1, 0.2], ["a", "b"])
    with pytest.raises(ScoreTableError, match="appear more than once"):
        build_mix_table([UIDS[0]], {"raw": [dup]}, on_missing_score="drop")


def test_run_mix_table_writes_table_and_report(tmp_path):
    uids = UIDS[:4]
    raw = write_set(tmp_path, "raw", uids, [0.1, 0.4, 0.3, 0.2], list("abcd"))
    index = tmp_path / "index.parquet"
    pd.DataFrame({"uid": uids + [UIDS[9]],
                  "status": ["fetched"] * 4 + ["not_found"]}).to_parquet(index)
    manifest = tmp_path / "raw_manifest.json"
    manifest.write_text(json.dumps({"shards": [{"output": str(raw.caption_files[0].relative_to(
        tmp_path))}]}))
    build_table("toy", {"raw": ["raw"]}, MixInputs.from_manifests(
        index, {"raw": raw.scores}, {"raw": [manifest]}), tmp_path / "t.json")
    frame = pd.read_parquet(part_files(tmp_path / "t.json")[0])
    assert frame["uid"].tolist() == uids  # the failed fetch is not in the pool
    assert frame[score_column("raw")].tolist() == [0.1, 0.4, 0.3, 0.2]
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["n_pool"] == 4 and report["provenance"]["stage"] == "mix_table"


# ------------------------------------------------------------------ config


def test_catalogue_has_every_table5_row_at_every_threshold_and_the_other_baselines():
    names = set(catalogue())
    families = ["raw_top", "synthetic_top", "synthetic_top_by_raw", "raw_top_synthetic_remaining",
                "raw_top_synthetic_remaining_filtered", "synthetic_top_raw_remaining_filtered",
                "concat_top_synthetic_remaining_filtered", "raw_top_plus_synthetic_top",
                "synthetic_top_in1k"]
    for family in families:
        for percent in (10, 20, 30, 50, 75, 90):
            assert f"{family}_{percent}" in names
    assert {"raw_no_filter", "synthetic_no_filter", "synthetic_best_no_filter", "raw_top_in1k_30",
            "raw_top_in1k_datacomp_30",
            "raw_top_synthetic_remaining_filtered_in1k_30", "raw_min_0p28",
            "synthetic_min_0p28"} <= names
    for name, spec in catalogue().items():
        parse_strategy(name, spec)  # every entry is well formed


# Table 3's grid (Appendix C): the temperatures each captioner of Table 1 was trained at;
# T = 0.75 is Table 1. BLIP2 and BLIP2 (finetuned) at 0.75 are the alias strategies.
TABLE3 = {"blip": ("blip_large", ["0.75", "1.0"]),
          "blip2": ("blip2_opt_2.7b", ["0.5", "0.75", "1.0", "1.5"]),
          "blip2_coco": ("blip2_opt_2.7b_coco", ["0.75", "1.0", "1.5"]),
          "coca": ("coca_vit_l_14", ["0.5", "0.75", "1.0"]),
          "coca_coco": ("coca_vit_l_14_coco", ["0.75", "1.0", "1.5"])}
TABLE3_AT_0P75 = {"blip2": "synthetic_no_filter", "blip2_coco": "synthetic_coco_no_filter"}


def names_a_caption_set(spec: dict) -> bool:
    """Whether a strategy names a captioner's caption set rather than a pool alias."""
    return any("/" in c for part in spec["parts"]
               for c in ([part["caption"]] if isinstance(part["caption"], str)
                         else part["caption"]))


def names_shipped_captions(spec: dict) -> bool:
    """Whether a strategy trains on the `shipped` alias: captions only some sources ship."""
    return any("shipped" in ([part["caption"]] if isinstance(part["caption"], str)
                             else part["caption"]) for part in spec["parts"])


def test_default_pool_runs_every_strategy_that_serves_every_pool():
    """Every strategy whose captions are pool aliases runs on the toy default; the ones that
    name the paper's captioners (Table 1/3) are the medium config's; the ones on captions a
    source ships (Figure 13's BLIP) are LAION-COCO's."""
    config = pipeline_config()
    shipped = {n for n, spec in catalogue().items() if names_shipped_captions(spec)}
    generic = {n for n, spec in catalogue().items()
               if not names_a_caption_set(spec)} - shipped
    assert set(pool_strategy_names(config, config["pools"][0])) == generic
    medium = pipeline_config(REPO / "config" / "datacomp_medium.yaml")
    named = set(catalogue()) - generic - shipped
    assert named <= set(pool_strategy_names(medium, medium["pools"][0]))
    laion_coco = pipeline_config(REPO / "config" / "laion_coco.yaml")
    assert shipped and shipped <= set(pool_strategy_names(laion_coco, laion_coco["pools"][0]))


def test_table3_has_one_no_filter_strategy_per_captioner_and_temperature():
    catalogue_ = catalogue()
    for tag, (captioner, temperatures) in TABLE3.items():
        for t in temperatures:
            name = (TABLE3_AT_0P75[tag] if t == "0.75" and tag in TABLE3_AT_0P75
                    else f"{tag}_t{t.replace('.', 'p')}_no_filter")
            strategy = parse_strategy(name, catalogue_[name])
            (part,) = strategy.parts
            assert part.keep.rule == "all" and part.images == "all"
            if name not in TABLE3_AT_0P75.values():
                assert part.caption == (f"{captioner}/{t}",)
            if t == "0.75":
                assert any(p.startswith("Table 1") for p in strategy.paper), name
    named = {n for n, spec in catalogue_.items() if names_a_caption_set(spec)}
    assert len(named) == sum(len(t) for _, t in TABLE3.values()) - len(TABLE3_AT_0P75) == 13


def test_unknown_caption_source_fails_at_validation_naming_the_strategy():
    with pytest.raises(ConfigError) as error:
        pipeline_config(overrides={"strategies": {"mine": {
            "description": "x", "parts": [{"caption": "toy_captioner/0.33"}]}}})
    assert "strategies.mine" in str(error.value) and "0.33" in str(error.value)
    with pytest.raises(ConfigError) as error:
        pipeline_config(overrides={"strategies": {"mine": {
            "description": "x", "parts": [{"caption": "nosuch/0.75"}]}}})
    assert "strategies.mine" in str(error.value) and "nosuch" in str(error.value)
    config = pipeline_config()
    pools = config["pools"]
    pools[0]["mix"]["strategies"] = ["mine"]
    with pytest.raises(ConfigError) as error:
        pipeline_config(overrides={"pools": pools, "strategies": {"mine": {
            "description": "x", "parts": [{"caption": "synthtic"}]}}})
    assert "strategy 'mine'" in str(error.value) and "'synthtic'" in str(error.value)


@pytest.mark.parametrize("fraction", [0, 1.5, -0.2])
def test_out_of_range_fraction_fails_at_validation_naming_the_strategy(fraction):
    with pytest.raises(ConfigError) as error:
        pipeline_config(overrides={"strategies": {"mine": {
            "description": "x", "parts": [{"caption": "raw", "keep": {"top": fraction}}]}}})
    assert "strategies.mine.parts[0].keep.top" in str(error.value).replace(".0.", "[0].")
    with pytest.raises(ConfigError) as error:
        pipeline_config(overrides={"strategies": {"mine": {
            "description": "x", "fractions": [0.3, fraction],
            "parts": [{"caption": "raw", "keep": {"top": "sweep"}}]}}})
    assert "strategies.mine.fractions" in str(error.value)


@pytest.mark.parametrize("parts, problem", [
    ([{"caption": "raw", "keep": {"same_threshold": True}}], "no earlier part sets one"),
    ([{"caption": "raw", "images": "remaining"}], "no earlier part chose"),
    ([{"caption": ["raw", "synthetic"], "keep": {"top": 0.3}}], "say which source"),
    ([{"caption": "raw", "keep": {"top": "sweep"}}], "no 'fractions'"),
])
def test_strategies_that_do_not_make_sense_fail_at_validation(parts, problem):
    with pytest.raises(ConfigError) as error:
        pipeline_config(overrides={"strategies": {"odd": {"description": "x", "parts": parts}}})
    assert "strategies.odd" in str(error.value) and problem in str(error.value)


def test_language_id_and_assets_are_checked_where_a_pool_names_them():
    config = pipeline_config()
    pools = config["pools"]
    pools[0]["mix"]["language_id"] = {"backend": "fasttext"}
    with pytest.raises(ConfigError, match=r"pools\[0\]\.mix\.language_id\.model'.*needs a "
                                          "model file"):
        pipeline_config(overrides={"pools": pools})
    pools[0]["mix"]["language_id"] = {"backend": "fasttext", "model": "asset:lid_177"}
    with pytest.raises(ConfigError, match=r"language_id\.model': unknown asset 'lid_177'"):
        pipeline_config(overrides={"pools": pools})
    pools[0]["mix"]["language_id"] = {"backend": "langid", "model": "asset:fasttext_lid_176"}
    with pytest.raises(ConfigError, match="ships its own model"):
        pipeline_config(overrides={"pools": pools})


def test_the_schema_allows_exactly_the_language_id_backends():
    from capmix.config import load_schema
    from capmix.textfilter import LANGUAGE_ID_BACKENDS

    language_id = load_schema()["$defs"]["pool_mix"]["properties"]["language_id"]
    assert language_id["properties"]["backend"]["enum"] == list(LANGUAGE_ID_BACKENDS)
    assert language_id["properties"]["backend"]["default"] == LANGUAGE_ID_BACKENDS[0]


def test_intersection_without_clusters_configured_fails():
    config = pipeline_config()
    pools = config["pools"]
    pools[0]["mix"]["image_clusters"] = None
    with pytest.raises(ConfigError, match="configures none"):
        pipeline_config(overrides={"pools": pools})


# ------------------------------------------------------------------ properties (hypothesis)

scores = st.floats(min_value=-1, max_value=1, allow_nan=False, width=32)


@st.composite
def pools(draw):
    n = draw(st.integers(min_value=1, max_value=60))
    raw = draw(st.lists(scores, min_size=n, max_size=n))
    syn = draw(st.lists(scores, min_size=n, max_size=n))
    clusters = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    frame = pd.DataFrame({
        "uid": [f"{i:032x}" for i in range(n)],
        score_column("raw"): raw, caption_column("raw"): [f"r{i}" for i in range(n)],
        score_column("cap/0.75"): syn, caption_column("cap/0.75"): [f"s{i}" for i in range(n)],
        CLUSTER_COLUMN: clusters,
    })
    return frame


FRACTIONS = [0.1, 0.2, 0.3, 0.5, 0.75, 0.9]


def family_run(family: str, fraction: float, frame: pd.DataFrame) -> pd.DataFrame:
    return family_select(family, fraction, frame).samples


def family_select(family: str, fraction: float, frame: pd.DataFrame) -> Selection:
    spec = expand_strategies({family: {**pipeline_strategies()[family], "fractions": [fraction]}})
    name, concrete = next(iter(spec.items()))
    return select_spec(name, concrete, frame)


def run_spec(name, spec, frame):
    return select_spec(name, spec, frame).samples


def select_spec(name, spec, frame) -> Selection:
    aliases = POOL["mix"]["sources"]
    return select(parse_strategy(name, spec), frame, None,
                  lambda s: aliases.get(s, s))


_STRATEGIES: dict = {}


def pipeline_strategies() -> dict:
    if not _STRATEGIES:
        _STRATEGIES.update(pipeline_config()["strategies"])
    return _STRATEGIES


PROPERTY_SETTINGS = settings(max_examples=60, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(pools())
def test_mixing_never_repeats_an_image_and_grows_with_the_fraction(frame):
    for family in ("raw_top", "raw_top_synthetic_remaining",
                   "raw_top_synthetic_remaining_filtered", "synthetic_top_raw_remaining_filtered",
                   "concat_top_synthetic_remaining_filtered", "synthetic_top_in1k"):
        sizes = []
        for fraction in FRACTIONS:
            samples = family_run(family, fraction, frame)
            assert not samples["uid"].duplicated().any(), (family, fraction)
            sizes.append(len(samples))
        assert sizes == sorted(sizes), (family, sizes)


@PROPERTY_SETTINGS
@given(pools(), st.sampled_from(FRACTIONS))
def test_set_algebra_of_the_mixing_strategies(frame, fraction):
    n = len(frame)
    raw = frame[score_column("raw")].to_numpy()
    syn = frame[score_column("cap/0.75")].to_numpy()
    threshold = np.sort(raw)[::-1][min(int(n * fraction), n - 1)]
    raw_top = set(frame["uid"][raw >= threshold])
    # Top f keeps at least int(N*f)+1 images (more only on ties).
    top = family_run("raw_top", fraction, frame)
    assert set(top["uid"]) == raw_top and len(top) >= min(int(n * fraction) + 1, n)
    # Raw top + synthetic for all the rest is the whole pool, each image once.
    everything = family_run("raw_top_synthetic_remaining", fraction, frame)
    assert sorted(everything["uid"]) == sorted(frame["uid"])
    assert set(everything.loc[everything["source"] == "raw", "uid"]) == raw_top
    # Filtering the rest by the same threshold: the union of two threshold sets.
    filtered = family_run("raw_top_synthetic_remaining_filtered", fraction, frame)
    assert set(filtered["uid"]) == raw_top | set(frame["uid"][syn >= threshold])
    assert set(map(tuple, filtered[["uid", "source"]].to_numpy())) <= set(
        map(tuple, everything[["uid", "source"]].to_numpy()))
    # Pairs: raw top + synthetic top counts both; images are the union.
    both = family_run("raw_top_plus_synthetic_top", fraction, frame)
    syn_top = family_run("synthetic_top", fraction, frame)
    assert len(both) == len(top) + len(syn_top)
    assert set(both["uid"]) == raw_top | set(syn_top["uid"])
    # Intersecting with clusters only removes images outside them.
    in1k = family_run("synthetic_top_in1k", fraction, frame)
    in_clusters = set(frame["uid"][frame[CLUSTER_COLUMN]])
    assert set(in1k["uid"]) == set(syn_top["uid"]) & in_clusters
    # The distinct images a selection reports are its samples' uids, sorted, each once.
    for family in ("raw_top_plus_synthetic_top", "synthetic_top_in1k"):
        selection = family_select(family, fraction, frame)
        assert selection.image_uids.to_pylist() == sorted(set(selection.samples["uid"]))


def test_the_schema_allows_exactly_the_keep_rules():
    """A part's ``keep`` keys in the schema are the keep rules (``all`` = no key), plus ``by``."""
    from capmix.config import load_schema
    from capmix.strategies import KEEP_RULES

    keys = set(load_schema()["$defs"]["strategy_part"]["properties"]["keep"]["properties"])
    assert keys == {*KEEP_RULES, "by"} - {"all"}


# ------------------------------------------------------------------ metadata filters


# A kept source column per image, as the mix table carries it (meta:<column>): LAION's NSFW tag
# (u3 unknown) and a watermark probability (u8 unknown).
NSFW = ["UNLIKELY", "UNLIKELY", "NSFW", None, "UNSURE", "UNLIKELY", "UNLIKELY", "NSFW",
        "UNLIKELY", "UNLIKELY"]
WATERMARK = [0.1, 0.9, 0.2, 0.3, 0.5, 0.05, 0.8, 0.4, None, 0.6]


def metadata_table() -> pd.DataFrame:
    frame = table()
    frame[metadata_table_column("NSFW")] = NSFW
    frame[metadata_table_column("pwatermark")] = WATERMARK
    return frame


def test_a_metadata_filter_keeps_images_whose_kept_columns_pass():
    # NSFW UNLIKELY: u0 u1 u5 u6 u8 u9 (u3's tag is missing: not shown to be safe).
    spec = {"description": "x", "parts": [{"caption": "synthetic"}],
            "metadata_filter": {"NSFW": {"in": ["UNLIKELY"]}}}
    assert chosen(run_spec("s", spec, metadata_table())) == pairs([0, 1, 5, 6, 8, 9], "syn")
    # Not tagged NSFW (u0 u1 u4 u5 u6 u8 u9: u3's missing tag passes no condition) and a
    # watermark probability of at most 0.5 (u0 u2 u3 u4 u5 u7; u8's is missing): u0 u4 u5.
    spec["metadata_filter"] = {"NSFW": {"not_in": ["NSFW"]}, "pwatermark": {"max": 0.5}}
    assert chosen(run_spec("s", spec, metadata_table())) == pairs([0, 4, 5], "syn")
    spec["metadata_filter"] = {"pwatermark": {"min": 0.5, "max": 0.8}}  # both inclusive
    assert chosen(run_spec("s", spec, metadata_table())) == pairs([4, 6, 9], "syn")


def test_a_metadata_filter_comes_after_the_pools_threshold_and_applies_to_every_part():
    # Raw top 30% = u0..u3 at threshold 0.6 over the whole pool; NSFW UNLIKELY leaves u0 u1.
    # The remaining images (u4..u9) take synthetic captions at the same threshold: u4 (.65),
    # u6 (.72), u8 (.6); of those UNLIKELY: u6 u8.
    spec = {"description": "x", "metadata_filter": {"NSFW": {"in": ["UNLIKELY"]}},
            "parts": [{"caption": "raw", "keep": {"top": 0.3}},
                      {"caption": "synthetic", "images": "remaining",
                       "keep": {"same_threshold": True}}]}
    selection = select_spec("s", spec, metadata_table())
    assert chosen(selection.samples) == pairs([0, 1], "raw") + pairs([6, 8], "syn")
    assert selection.parts[0]["threshold"] == 0.6


def test_a_metadata_filter_compares_listed_values_as_text():
    frame = metadata_table()
    frame[metadata_table_column("NSFW")] = pd.array([1, 0, 2, 1, None, 1, 0, 0, 1, 1],
                                                    dtype="Int64")
    spec = {"description": "x", "parts": [{"caption": "raw"}],
            "metadata_filter": {"NSFW": {"in": [1, "2"]}}}
    assert chosen(run_spec("s", spec, frame)) == pairs([0, 2, 3, 5, 8, 9], "raw")
    # the same integers as floats (as pandas reads an integer column with nulls) too
    frame[metadata_table_column("NSFW")] = frame[metadata_table_column("NSFW")].astype(float)
    assert chosen(run_spec("s", spec, frame)) == pairs([0, 2, 3, 5, 8, 9], "raw")


def test_a_metadata_filter_names_what_it_cannot_read():
    spec = {"description": "x", "parts": [{"caption": "raw"}],
            "metadata_filter": {"NSFW": {"min": 0.5}}}
    with pytest.raises(StrategyError, match="'NSFW'.*not numeric"):
        run_spec("s", spec, metadata_table())
    spec["metadata_filter"] = {"subreddit": {"in": ["pics"]}}
    with pytest.raises(StrategyError, match="no metadata column 'subreddit'"):
        run_spec("s", spec, metadata_table())
    with pytest.raises(StrategyError, match="strategy 's'.*min 0.9 is above max 0.1"):
        parse_strategy("s", {"description": "x", "parts": [{"caption": "raw"}],
                             "metadata_filter": {"p": {"min": 0.9, "max": 0.1}}})


def test_a_metadata_filter_is_checked_against_the_pools_kept_columns():
    config = pipeline_config()
    config["strategies"]["safe"] = {"description": "x", "parts": [{"caption": "raw"}],
                                    "metadata_filter": {"NSFW": {"in": ["UNLIKELY"]}}}
    pool = {"name": "web", "source": {"type": "table", "path": "x.parquet",
                                      "keep_columns": ["similarity"]},
            "captioners": [], "scorer": "toy_clip",
            "mix": {"strategies": ["safe"]}}
    config["pools"] = [pool]
    problems = strategy_problems(config)
    assert any("pools[0].source.keep_columns" in p and "'NSFW'" in p for p in problems)
    assert metadata_filter_users(config, pool) == {"NSFW": ["safe"]}
    pool["source"]["keep_columns"] = ["similarity", "NSFW"]
    assert not any("keep_columns" in p for p in strategy_problems(config))
    # a filtered strategy is not a "no filter" one (Table 1's rows)
    assert not is_no_filter(parse_strategy("safe", config["strategies"]["safe"]))


def test_the_schemas_metadata_conditions_are_the_modules():
    import yaml

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    conditions = schema["$defs"]["strategy"]["properties"]["metadata_filter"][
        "additionalProperties"]["properties"]
    assert tuple(conditions) == CONDITIONS
    names = schema["$defs"]["strategy"]["properties"]["metadata_filter"]["propertyNames"]
    assert names["pattern"] == f"^{COLUMN_PATTERN}$"
