"""Tables 1 and 5 on hand-made result files (capmix.tables): Table 1's CIDEr from the pool's
NoCaps pool and its ImageNet and Flickr columns from each caption set's no-filter model, each
cell with its source and field; Table 5 as the paper's grid of fractions; and what the plan
(capmix.figurespec) and the strategy catalogue (capmix.strategies) hand them."""

import csv
import json
from pathlib import Path

import pytest

from capmix import figures, figurespec, tables
from capmix.config import pipeline_config
from capmix.lineage import find_cell
from capmix.strategies import no_filter_strategies


def write(path: Path, document: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return str(path)


def table_entry(entry_id: str, plot: str, reads: dict, **options) -> dict:
    paper = entry_id.replace("table_", "Table ")
    return {"id": entry_id, "paper": paper, "kind": "table", "category": "table",
            "plot": plot, "options": options, "configs": ["default"], "caption": "x.rst",
            "reads": reads, "reason": None}


def plan_for(entry: dict, toy: bool, pool: str = "datacomp_medium", scale: str = "medium"):
    return {"pool": pool, "toy": toy, "train_scale": scale, "entries": [entry]}


# ------------------------------------------------------------------------------ Table 1


def table_1_inputs(tmp_path: Path, toy: bool = False) -> dict:
    blip2, coca = "blip2_opt_2.7b/0.75", "coca_vit_l_14/0.75"
    quality = {
        s: write(tmp_path / f"quality/{s}.json",
                 {"pool": "datacomp_medium", "clip_s": 0.7, "mean_cos": 0.25,
                  "unique_trigrams": 2_700_000})
        for s in (blip2, coca)}
    nocaps = {blip2: write(tmp_path / f"nocaps/{blip2}.json",
                           {"pool": "nocaps_val", "cider": 0.8, "clip_s": 0.9})}
    model = {"strategy": "synthetic_no_filter", "toy": toy,
             "aggregates": {"ImageNet": 0.28, "Average": 0.35, "Retrieval": 0.4}}
    if not toy:
        model["main_metrics"] = {"Flickr": 0.5, "ImageNet 1k": 0.28}
    models = {blip2: write(tmp_path / "eval/synthetic_no_filter.aggregate.json", model)}
    return table_entry("table_1", "quality_table", {
        "quality": quality, "nocaps_quality": nocaps, "no_filter_eval": models})


def test_table_1_cider_from_the_nocaps_pool_and_the_no_filter_models_accuracy(tmp_path):
    spec = table_1_inputs(tmp_path)
    index = figures.run_figures(plan_for(spec, toy=False), tmp_path / "files",
                                tmp_path / "index.json")
    assert index["entries"]["table_1"]["status"] == "drawn"
    csv_path = tmp_path / "files/table_1.csv"
    header = csv_path.read_text().splitlines()[0].split(",")
    ours = [h for h in header if h.endswith("(ours)")]
    assert ours == ["NoCaps CIDEr (ours)", "CLIP-S (ours)", "Cosine similarity (ours)",
                    "No. of unique trigrams (ours)", "ImageNet accuracy (ours)",
                    "Flickr retrieval (ours)"]
    row = "blip2_opt_2.7b/0.75"
    cider = find_cell(csv_path, row, "NoCaps CIDEr (ours)")
    assert (cider["value"], cider["field"]) == ("0.8", "cider")
    assert cider["sources"] == [str(tmp_path / "nocaps/blip2_opt_2.7b/0.75.json")]
    # the pool's own quality JSON still gives CLIP-S (not the NoCaps pool's)
    clip_s = find_cell(csv_path, row, "CLIP-S (ours)")
    assert clip_s["value"] == "0.7"
    assert clip_s["sources"] == [str(tmp_path / "quality/blip2_opt_2.7b/0.75.json")]
    aggregate = str(tmp_path / "eval/synthetic_no_filter.aggregate.json")
    imagenet = find_cell(csv_path, row, "ImageNet accuracy (ours)")
    assert (imagenet["value"], imagenet["field"], imagenet["sources"]) == (
        "0.28", "aggregates.ImageNet", [aggregate])
    flickr = find_cell(csv_path, row, "Flickr retrieval (ours)")
    assert (flickr["value"], flickr["field"], flickr["sources"]) == (
        "0.5", "main_metrics.Flickr", [aggregate])
    # the paper's numbers: BLIP2's row (CIDEr on nocaps_val, models by strategy at medium)
    assert find_cell(csv_path, row, "NoCaps CIDEr (paper)")["value"] == "80.6"
    assert find_cell(csv_path, row, "ImageNet accuracy (paper)")["value"] == "0.281"
    assert find_cell(csv_path, row, "Flickr retrieval (paper)")["value"] == "0.507"
    # CoCa's row has no NoCaps file and no model: those cells are empty
    table = tables.quality_table(spec, plan_for(spec, toy=False), None)
    coca = dict(table.rows)["coca_vit_l_14/0.75"]
    assert set(coca) == {"CLIP-S", "Cosine similarity", "No. of unique trigrams"}
    with open(csv_path, newline="") as handle:
        written = {r["Caption set"]: r for r in csv.DictReader(handle)}
    assert written["coca_vit_l_14/0.75"]["NoCaps CIDEr (ours)"] == ""
    assert written["coca_vit_l_14/0.75"]["ImageNet accuracy (ours)"] == ""
    assert written["coca_vit_l_14/0.75"]["CLIP-S (ours)"] == "0.7"


def test_table_1_on_a_toy_pool_and_without_the_optional_reads(tmp_path):
    spec = table_1_inputs(tmp_path, toy=True)
    table = tables.quality_table(spec, plan_for(spec, toy=True, pool="toy"), None)
    # the toy suite's one retrieval task stands in for Flickr, in a column that says so
    assert "Flickr retrieval" not in table.columns
    flickr = dict(table.rows)["blip2_opt_2.7b/0.75"][tables.TOY_RETRIEVAL_COLUMN]
    assert (flickr.value, flickr.field) == (0.4, "aggregates.Retrieval")
    bare = {**spec, "reads": {"quality": spec["reads"]["quality"]}}
    table = tables.quality_table(bare, plan_for(bare, toy=True, pool="toy"), None)
    assert table.columns == ["CLIP-S", "Cosine similarity", "No. of unique trigrams"]


def test_plan_passes_table_1_its_optional_reads_only_where_the_pool_has_them():
    config = pipeline_config()
    nocaps = {"toy_captioner/0.75": "n.json"}
    models = {"raw": "e_raw.json", "toy_captioner/0.75": "e_syn.json"}
    files = {"analyses": {}, "quality": {"raw": "q.json"}, "eval": {}, "eval_lines": {},
             "training": {}, "fetch": "f.json", "nocaps_quality": nocaps, "no_filter_eval": models}
    plan = figurespec.plan_figures(config, "toy_default", config["targets"], files)
    table_1 = {e["id"]: e for e in plan["entries"]}["table_1"]
    assert table_1["reason"] is None
    assert table_1["reads"] == {"quality": {"raw": "q.json"}, "nocaps_quality": nocaps,
                                "no_filter_eval": models}
    assert {"n.json", "e_raw.json", "e_syn.json"} <= set(figurespec.plan_inputs(plan))
    # a pool without a NoCaps pool or evaluation (the NoCaps pool itself) still draws it
    files = {**files, "nocaps_quality": {}, "no_filter_eval": {}}
    plan = figurespec.plan_figures(config, "toy_default_nocaps", ["quality", "figures"], files)
    table_1 = {e["id"]: e for e in plan["entries"]}["table_1"]
    assert table_1["reason"] is None and table_1["reads"] == {"quality": {"raw": "q.json"}}


def test_no_filter_strategies_map_caption_sets_through_the_pools_aliases():
    config = pipeline_config()
    pool = {p["name"]: p for p in config["pools"]}["toy_default"]
    assert no_filter_strategies(config, pool) == {
        "raw": "raw_no_filter", "toy_captioner/0.75": "synthetic_no_filter",
        "toy_captioner_coco/0.75": "synthetic_coco_no_filter"}
    # only among the strategies given (the evaluated ones); top % and best are not "no filter"
    assert no_filter_strategies(config, pool, ["raw_top_30", "synthetic_best_no_filter",
                                               "synthetic_no_filter"]) == {
        "toy_captioner/0.75": "synthetic_no_filter"}


# ------------------------------------------------------------------------------ Table 5


def table_5_inputs(tmp_path: Path) -> dict:
    def row(strategy, family, fraction, n, thresholds):
        return {"strategy": strategy, "family": family, "fraction": fraction,
                "n_samples": n, "share_of_pool": n / 1000, "thresholds": thresholds}

    rows = [row("my_sweep_10", "my_sweep", 0.1, 90, [0.4]),
            row("raw_no_filter", "raw_no_filter", None, 1000, None),
            row("raw_top_10", "raw_top", 0.1, 100, [0.3]),
            row("raw_top_30", "raw_top", 0.3, 300, [0.25]),
            row("raw_top_plus_synthetic_top_30", "raw_top_plus_synthetic_top", 0.3, 550,
                [0.25, 0.28])]
    analysis = write(tmp_path / "analyses/subset_table.json",
                     {"available": True, "reason": None, "rows": rows})
    aggregate = write(tmp_path / "eval/raw_top_30.aggregate.json",
                      {"aggregates": {"ImageNet": 0.28, "Average": 0.33}})
    return table_entry("table_5", "subset_table",
                       {"analyses": {"subset_table": analysis},
                        "eval": {"raw_top_30": aggregate, "raw_no_filter": aggregate}},
                       where="Table 5", layout="grid")


def test_table_5_is_the_papers_grid_of_fractions(tmp_path):
    spec = table_5_inputs(tmp_path)
    plan = plan_for(spec, toy=False)
    figures.run_figures(plan, tmp_path / "files", tmp_path / "index.json")
    csv_path = tmp_path / "files/table_5.csv"
    header = csv_path.read_text().splitlines()[0].split(",")
    assert [h for h in header if h.endswith("(ours)")] == ["10% (ours)", "30% (ours)"]
    table = tables.subset_table(spec, plan, figures.load_paper_numbers())
    labels = [label for label, _ in table.rows]
    assert labels == [
        "Only raw captions / Training set size", "Cosine similarity threshold / Raw captions",
        "Only raw captions / ImageNet accuracy", "Only raw captions / Average accuracy",
        "Top % raw captions + top % BLIP2 captions / Training set size",
        "Top % raw captions + top % BLIP2 captions / Threshold",
        "my_sweep / Training set size", "my_sweep / Threshold"]
    by_label = dict(table.rows)
    assert {k: c.value for k, c in by_label["Only raw captions / Training set size"].items()} \
        == {"10%": 100, "30%": 300}
    assert set(by_label["Only raw captions / ImageNet accuracy"]) == {"30%"}
    size = find_cell(csv_path, "Only raw captions / Training set size", "30% (ours)")
    assert (size["value"], size["field"]) == ("300", "rows.3.n_samples")
    threshold = find_cell(csv_path, "Cosine similarity threshold / Raw captions", "10% (ours)")
    assert (threshold["value"], threshold["field"]) == ("0.3", "rows.2.thresholds.0")
    both = find_cell(csv_path, "Top % raw captions + top % BLIP2 captions / Threshold",
                     "30% (ours)")
    assert (both["value"], both["field"]) == ("0.25, 0.28", "rows.4.thresholds")
    imagenet = find_cell(csv_path, "Only raw captions / ImageNet accuracy", "30% (ours)")
    assert imagenet["field"] == "aggregates.ImageNet"
    assert imagenet["sources"] == [str(tmp_path / "eval/raw_top_30.aggregate.json")]
    paper = find_cell(csv_path, "Only raw captions / ImageNet accuracy", "30% (paper)")
    assert paper["value"] == "0.273*"
    # strategies without a fraction are Table 4's, not the grid's
    assert not any("raw_no_filter" in label for label in labels)


def test_table_5_on_a_toy_pool_labels_rows_by_family_and_table_4_keeps_its_rows(tmp_path):
    spec = table_5_inputs(tmp_path)
    table = tables.subset_table(spec, plan_for(spec, toy=True, pool="toy"), None)
    assert table.columns == ["10%", "30%"]
    assert [label for label, _ in table.rows][:2] == ["my_sweep / Training set size",
                                                      "my_sweep / Threshold"]
    flat = {**spec, "options": {"where": "Table 4"}}
    table = tables.subset_table(flat, plan_for(flat, toy=True, pool="toy"), None)
    assert [label for label, _ in table.rows][:3] == ["my_sweep_10", "raw_no_filter",
                                                      "raw_top_10"]
    assert "Share of the pool" in table.columns


def test_table_5_without_any_sweep_is_not_available(tmp_path):
    analysis = write(tmp_path / "subset_table.json", {"available": True, "rows": [
        {"strategy": "raw_no_filter", "family": "raw_no_filter", "fraction": None,
         "n_samples": 10, "thresholds": None}]})
    spec = table_entry("table_5", "subset_table", {"analyses": {"subset_table": analysis}},
                       where="Table 5", layout="grid")
    with pytest.raises(tables.NotAvailable, match="no strategy with fractions"):
        tables.subset_table(spec, plan_for(spec, toy=True), None)
