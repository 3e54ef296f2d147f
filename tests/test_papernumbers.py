"""The paper's numbers as data (capmix.papernumbers, config/paper_numbers.yaml): the file parses,
every entry names its table or figure, row and column, no cell of a table went missing, the
capmix names it uses exist, spot values equal the paper's text, the paper's numbers agree with
each other, tolerances decide comparisons, and a broken file fails naming the entry and key."""

from __future__ import annotations

import copy
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from capmix.papernumbers import (
    DEFAULT_PATH,
    PaperNumbers,
    PaperNumbersError,
    derivation_problems,
    evaluate_formula,
    load,
    normalised,
    printed_number,
    reference_problems,
)
from tests.conftest import REPO

#: Numbers per table and figure, counted by hand against the seed text (each table's comment
#: in the file says how). Result cells are the tables' own cells ('-' cells not counted).
RESULT_CELLS = {
    "Table 1": 30,    # 5 captioners x 6 columns
    "Table 2": 8,     # 8 rows x 1 column
    "Table 3": 30,    # 5 captioners x 2 metrics x 4 temperatures = 40, minus 10 '-'
    "Table 4": 78,    # (8 + 10 + 8) rows x 3 columns
    "Table 5": 162,   # 2 x 6 thresholds + 9 strategies x 3 lines x 6 fractions - 12 '-'
    "Table 6": 63,    # 3 gender groups x 3 models x 7 races
    "Figure 13": 15,  # 5 rows x 3 columns
    "Figure 4": 2,    # the caption's mean similarities, 0.251 vs 0.208
}
#: Every entry per table/figure: the cells above plus settings, claims and context numbers.
ALL_ENTRIES = {
    "Table 1": 30, "Table 2": 10, "Table 3": 30, "Table 4": 86, "Table 5": 162, "Table 6": 63,
    "Figure 13": 20, "Section 3": 5, "Section 4": 1, "Figure 3": 1, "Figure 4": 3, "Figure 6": 5,
    "Figure 7": 1, "Figure 8": 3, "Figure 10": 3, "Figure 11": 1, "Appendix G": 2,
    "Appendix B": 22,
}
#: The paper's asterisks (numbers from earlier work), per table.
ASTERISKS = {"Table 1": 4, "Table 4": 27, "Table 5": 18}
WHERE = re.compile(r"^(Abstract|Section [1-8](\.[0-9])?|Table [1-6]|Figure [1-9][0-9]?|"
                   r"Appendix [A-H])$")


@pytest.fixture(scope="module")
def numbers() -> PaperNumbers:
    return load()


@pytest.fixture(scope="module")
def shipped_document() -> dict:
    return yaml.safe_load(DEFAULT_PATH.read_text())


@pytest.fixture
def document(shipped_document) -> dict:
    """A fresh copy of the shipped file's data, for a test to break."""
    return copy.deepcopy(shipped_document)


def shipped_config() -> tuple[dict, set[str]]:
    """The catalogue, scales and captioners capmix ships, and every pool name of config/."""
    config: dict = {}
    for name in ("strategies", "train_scales", "config"):
        config.update(yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text()))
    pools = {pool["name"] for path in (REPO / "config").glob("*.yaml")
             for pool in (yaml.safe_load(path.read_text()) or {}).get("pools") or []}
    return config, pools


# ------------------------------------------------------------------ the file


def test_the_file_parses_and_every_entry_names_its_table_or_figure(numbers):
    assert numbers.paper["arxiv"] == "2307.10350"
    assert re.fullmatch(r"v[0-9]+|unknown", numbers.paper["version"])
    assert numbers.paper["version_basis"]
    for entry in numbers.entries:
        assert WHERE.match(entry.where), entry.id
        assert entry.row.strip() and entry.column.strip(), entry.id
        assert entry.printed.strip(), entry.id


def test_ids_are_unique_and_stable(numbers):
    ids = [e.id for e in numbers.entries]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9_]*", i) for i in ids)


def test_no_cell_went_missing(numbers):
    """Counts per table equal the cells counted by hand: a dropped row fails here."""
    results = Counter(e.where for e in numbers.entries if e.kind == "result")
    assert dict(results) == RESULT_CELLS
    assert dict(Counter(e.where for e in numbers.entries)) == ALL_ENTRIES
    # Table 5 per strategy family: 3 lines x 6 fractions, less the paper's '-' cells.
    families = Counter(e.capmix["strategy"].rsplit("_", 1)[0] for e in numbers.table("Table 5")
                       if e.capmix["metric"] != "threshold")
    assert families == {"raw_top": 18, "synthetic_top": 18, "synthetic_top_by_raw": 18,
                        "raw_top_synthetic_remaining": 18,
                        "raw_top_synthetic_remaining_filtered": 18,
                        "synthetic_top_raw_remaining_filtered": 18,
                        "concat_top_synthetic_remaining_filtered": 18,
                        "raw_top_plus_synthetic_top": 12, "synthetic_top_in1k": 12}
    # Table 4 per scale: 8, 10 and 8 rows of 3 cells.
    assert Counter(e.capmix["scale"] for e in numbers.table("Table 4") if e.kind == "result") \
        == {"small": 24, "medium": 30, "large": 24}


def test_asterisks_are_flagged_prior_work(numbers):
    starred = Counter(e.where for e in numbers.entries if e.printed.endswith("*"))
    assert dict(starred) == ASTERISKS
    assert all(e.prior_work for e in numbers.entries if e.printed.endswith("*"))


def test_every_tolerance_has_a_source_and_is_used(numbers):
    used = {e.metric for e in numbers.entries if e.metric}
    assert used == set(numbers.tolerances)
    for tolerance in numbers.tolerances.values():
        assert tolerance.source.strip() and tolerance.description.strip()
        assert (tolerance.absolute is None) != (tolerance.relative is None)
    assert numbers.tolerance("ImageNet").absolute == 0.01
    assert numbers.tolerance("Average").absolute == 0.01


# ------------------------------------------------------------------ against capmix


def test_every_capmix_name_exists_and_every_setting_is_capmix_s():
    """strategy/versus, scale, captioner, pool name real config entries; each setting with a
    config_key equals capmix's value (the provenance audit of the paper's parameters)."""
    config, pools = shipped_config()
    assert reference_problems(load(), config, pools) == []


def test_reference_problems_name_the_entry_and_key(numbers, document, tmp_path):
    config, pools = shipped_config()
    entry = next(e for e in document["entries"] if e["id"] == "t2_raw_top_30")
    entry["capmix"]["strategy"] = "raw_top_33"
    setting = next(e for e in document["entries"] if e["id"] == "b_small_lr")
    setting["value"], setting["printed"] = 0.001, "1e-3"
    path = tmp_path / "numbers.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    found = reference_problems(load(path), config, pools)
    assert "entry 't2_raw_top_30', key 'capmix.strategy': unknown strategy 'raw_top_33'" in found
    assert any(p.startswith("entry 'b_small_lr': the paper says 1e-3, capmix's "
                            "config/train_scales.yaml:train_scales.small.lr is 0.0005")
               for p in found)


def test_the_38_scored_tasks_are_datacomp_s_suite(numbers):
    suites = yaml.safe_load((REPO / "config" / "eval_suites.yaml").read_text())["eval_suites"]
    scored = [t for t in suites["datacomp"]["tasks"] if t.get("main_metric", "acc1") is not None]
    assert len(scored) == numbers.by_id("s3_eval_tasks").value == 38


# ------------------------------------------------------------------ spot checks (the seed text)


@pytest.mark.parametrize(("where", "row", "column", "value", "printed"), [
    ("Table 5", "Cosine similarity threshold / Raw captions", "10%", 0.295, "0.295"),
    ("Table 5", "Cosine similarity threshold / BLIP2 captions", "10%", 0.315, "0.315"),
    ("Table 5", "Cosine similarity threshold / BLIP2 captions", "90%", 0.187, "0.187"),
    ("Figure 13", "BLIP2", "ImageNet accuracy", 0.293, "29.3"),
    ("Figure 13", "Raw (CLIP score ≥ 0.28)", "Dataset size", 41_000_000, "41M"),
    ("Table 1", "BLIP2, ViT-g", "NoCaps CIDEr [51]", 0.806, "80.6"),
    ("Table 1", "OpenCLIP-CoCa, ViT-L/14", "No. of unique trigrams", 4_450_000, "4.45×10^6"),
    ("Table 2", "BLIP2 (no filtering)", "Flickr and MS-COCO retrieval", 0.417, "41.7"),
    ("Table 3", "OpenCLIP-CoCa (finetuned) / Average accuracy", "T=1.0", 0.374, "0.374"),
    ("Table 4", "large scale / Raw captions (top 30% intersect IN1k)", "ImageNet accuracy", 0.631,
     "0.631*"),
    ("Table 4", "small scale / Raw captions (top 30%)", "Training set size", 3_800_000, "3.8M*"),
    ("Table 5", "BLIP2 captions - top % intersect with examples from IN1k clustering / "
                "Training set size", "90%", 27_100_000, "27.1M"),
    ("Table 6", "Female / BLIP2 (top 30%)", "East Asian", 0.784, "78.4"),
    ("Table 6", "Overall / Raw (top 30%) + BLIP2 (70%, filtered)", "Latino/Hispanic", 0.729,
     "72.9"),
])
def test_spot_values_are_the_paper_s(numbers, where, row, column, value, printed):
    entry = numbers.entry(where, row, column)
    assert entry.value == pytest.approx(value, rel=1e-12)
    assert entry.printed == printed


def test_figure_values_the_text_states(numbers):
    assert numbers.by_id("f4_blip2_mean_cos").value == 0.251
    assert numbers.by_id("f4_raw_mean_cos").value == 0.208
    assert numbers.by_id("f6_tasks_improved").value == 23
    assert numbers.by_id("f10_tasks_improved").value == 30
    assert numbers.by_id("f6_average_gain").value == pytest.approx(0.028)
    assert numbers.by_id("b_clip_large_pool_hours").value == 725
    assert numbers.by_id("b_blip2_large_pool_hours").value == 4740
    assert numbers.by_id("f7_retrieval_ratio").bound == "lower"


def test_the_coca_cider_ambiguity_is_recorded(numbers):
    entry = numbers.by_id("t1_coca_cider")
    assert entry.ambiguous and entry.prior_work and entry.value == 0.354
    assert "0.354" in entry.note


# ------------------------------------------------------------------ the paper against itself


def test_stated_numbers_follow_from_the_cells_they_name(numbers):
    """'2% on ImageNet' is 0.317 - 0.297, '75%' is (29.3 - 20.5) / (32.3 - 20.5), 725 A100
    hours is 1.28B / 490 per second: within one unit of the last printed digit."""
    assert derivation_problems(numbers) == []


def test_a_run_in_several_tables_has_one_number(numbers):
    """The same (strategy, scale, dataset, metric) printed in Tables 1, 3, 4 and 5 agrees (within
    the coarser printed digit: Table 4's 38M* is Table 5's 38.4M*)."""
    seen: dict[tuple, list] = {}
    for e in numbers.entries:
        if e.kind == "result" and e.capmix.get("strategy") and "group" not in e.capmix:
            key = (e.capmix["strategy"], e.capmix.get("scale"), e.capmix.get("dataset"),
                   e.metric)
            seen.setdefault(key, []).append(e)
    shared = {k: v for k, v in seen.items() if len({e.where for e in v}) > 1}
    assert len(shared) >= 15
    for key, entries in shared.items():
        step = max(normalised(e.printed, e.printed_scale)[1] for e in entries)
        values = [e.value for e in entries]
        assert max(values) - min(values) <= step + 1e-9, (key, [e.id for e in entries])


def test_table_3_at_t075_is_table_1(numbers):
    for short in ("blip", "blip2", "blip2_coco", "coca", "coca_coco"):
        assert numbers.by_id(f"t3_{short}_t0p75_imagenet").value == \
            numbers.by_id(f"t1_{short}_imagenet").value


def test_table_6_overall_is_the_mean_of_male_and_female(numbers):
    """Confirms the flattened rows landed in the right gender block and race column."""
    table = numbers.table("Table 6")
    overall = [e for e in table if e.row.startswith("Overall / ")]
    assert len(overall) == 21
    for e in overall:
        model = e.row.split(" / ", 1)[1]
        male = numbers.entry("Table 6", f"Male / {model}", e.column).value
        female = numbers.entry("Table 6", f"Female / {model}", e.column).value
        assert abs(e.value - (male + female) / 2) <= 0.001, e.id


# ------------------------------------------------------------------ lookups and comparisons


def test_lookups_and_their_errors(numbers):
    assert len(numbers.table("Table 2")) == 10
    assert numbers.entry("Table 5", "Only raw captions / ImageNet accuracy", "30%").value == 0.273
    with pytest.raises(KeyError, match="no entries for 'Table 9'.*Table 1"):
        numbers.table("Table 9")
    with pytest.raises(KeyError, match=r"Table 5 has no row 'Only raw' \(rows: .*Only raw capt"):
        numbers.entry("Table 5", "Only raw", "30%")
    with pytest.raises(KeyError, match="has no column '35%' \\(columns: 10%; 20%"):
        numbers.entry("Table 5", "Only raw captions / ImageNet accuracy", "35%")
    with pytest.raises(KeyError, match="no entry with id 'nope'"):
        numbers.by_id("nope")


def test_compare_uses_the_metric_s_tolerance(numbers):
    within = numbers.compare(0.283, 0.273, "ImageNet")
    assert within.difference == pytest.approx(0.01) and within.within and within.tolerance == 0.01
    assert not numbers.compare(0.2845, 0.273, "ImageNet").within
    assert numbers.compare(0.263, 0.273, "Average").within
    # Relative: unique trigrams within 5% of 2.82e6.
    assert numbers.compare(2.9e6, 2.82e6, "unique_trigrams").within
    assert not numbers.compare(3.0e6, 2.82e6, "unique_trigrams").within
    assert numbers.compare(2.9e6, 2.82e6, "unique_trigrams").tolerance == pytest.approx(0.141e6)
    with pytest.raises(KeyError, match="no tolerance for metric 'imagenet'.*ImageNet"):
        numbers.compare(0.3, 0.3, "imagenet")


def test_compare_entry_bounds_and_toy(numbers):
    entry = numbers.by_id("t5_raw_top_10_imagenet")
    assert numbers.compare_entry(0.205, entry).within
    assert numbers.compare_entry(0.21, "t5_raw_top_10_imagenet").difference == pytest.approx(0.012)
    # "more than 1.5x": a lower bound holds as an inequality.
    assert not numbers.compare_entry(1.45, "f7_retrieval_ratio").within
    assert numbers.compare_entry(1.62, "f7_retrieval_ratio").within
    # Toy world: ours alone, labelled toy, no paper number and no verdict.
    toy = numbers.compare_entry(0.53, entry, toy=True)
    assert toy.toy and toy.ours == 0.53 and toy.paper is None and toy.within is None
    assert toy.as_dict()["toy"] is True
    with pytest.raises(KeyError, match="'b_openai_gpus' has no capmix metric"):
        numbers.compare_entry(300, "b_openai_gpus")


@pytest.mark.parametrize(("printed", "number", "step", "percent"), [
    ("0.273", 0.273, 0.001, False), ("12.8M*", 12.8e6, 1e5, False), ("2.8%", 2.8, 0.1, True),
    ("2.82×10^6", 2.82e6, 1e4, False), ("4,740", 4740, 10, False), ("86,000", 86000, 1000, False),
    ("5e-4", 5e-4, 1e-4, False), ("2×", 2, 1, False), ("-0.7%", -0.7, 0.1, True),
    ("±0.2%", 0.2, 0.1, True), ("1.28B*", 1.28e9, 1e7, False),
])
def test_printed_numbers(printed, number, step, percent):
    got = printed_number(printed)
    assert got[0] == pytest.approx(number) and got[1] == pytest.approx(step)
    assert got[2] is percent


def test_formulas_are_arithmetic_only():
    gap = evaluate_formula("(a - c) / (b - c)", [0.293, 0.323, 0.205])
    assert gap == pytest.approx(0.7458, abs=1e-4)
    with pytest.raises(ValueError, match="only"):
        evaluate_formula("__import__('os')", [1.0])
    with pytest.raises(ValueError, match="only"):
        evaluate_formula("a ** b", [2.0, 3.0])


# ------------------------------------------------------------------ a broken file


def write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "paper_numbers.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    return path


def entry_of(document: dict, entry_id: str) -> dict:
    return next(e for e in document["entries"] if e["id"] == entry_id)


@pytest.mark.parametrize(("breakage", "message"), [
    (lambda d: entry_of(d, "t5_threshold_raw_10").update(value=0.259),
     r"entry 't5_threshold_raw_10' \(entries\[\d+\]\), key 'value': 0.259 is not what '0.295' "
     r"prints"),
    (lambda d: entry_of(d, "t6_male_raw_top_30_black").pop("where"),
     r"entry 't6_male_raw_top_30_black' \(entries\[\d+\]\), key '\(the entry\)': 'where' is a "
     r"required property"),
    (lambda d: entry_of(d, "t2_raw_top_30")["capmix"].update(metric="Retrieval"),
     r"entry 't2_raw_top_30' \(entries\[\d+\]\), key 'capmix.metric': 'Retrieval' has no "
     r"tolerance \(allowed: ImageNet, "),
    (lambda d: entry_of(d, "t2_raw_top_30").update(id="t2_raw_no_filter"),
     r"key 'id': 't2_raw_no_filter' is also entries\[\d+\]'s id"),
    (lambda d: entry_of(d, "t4_small_raw_no_filter_imagenet").pop("source"),
     r"key 'source': '0.025\*' carries the paper's asterisk"),
    (lambda d: entry_of(d, "abs_imagenet_gain").update(derived_from=["t4_medium_nope"]),
     r"entry 'abs_imagenet_gain' \(entries\[\d+\]\), key 'derived_from\[0\]': no entry with id "
     r"'t4_medium_nope'"),
    (lambda d: entry_of(d, "t1_blip2_flickr").update(where="Tabel 1"),
     r"entry 't1_blip2_flickr' \(entries\[\d+\]\), key 'where': 'Tabel 1' does not match"),
    (lambda d: d["tolerances"]["ImageNet"].pop("source"),
     r"key 'tolerances.ImageNet': 'source' is a required property"),
])
def test_a_broken_file_names_the_entry_and_key(document, tmp_path, breakage, message):
    breakage(document)
    with pytest.raises(PaperNumbersError, match=message) as raised:
        load(write(tmp_path, document))
    assert str(tmp_path) in str(raised.value)


def test_a_file_that_is_not_yaml(tmp_path):
    path = tmp_path / "paper_numbers.yaml"
    path.write_text("entries: [\n")
    with pytest.raises(PaperNumbersError, match="paper_numbers.yaml: not YAML"):
        load(path)
