import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from capmix.config import ConfigError, pipeline_config, validate_config
from capmix.findings import (
    SAME_MEASUREMENT,
    compute_findings,
    finding_inputs,
    format_value,
    main,
    plan_findings,
    read_documents,
    write_findings,
)
from tests.conftest import REPO
from tests.test_config import base_config

# Two toy pools, as config/smoke.yaml's: one that trains and evaluates three strategies and
# states findings, and a NoCaps-like pool it reads CIDEr from (role `nocaps`).
POOLS = [
    {"name": "toy_p", "source": {"type": "toy", "world": "smoke"},
     "captioners": ["toy_captioner", "toy_captioner_coco"], "scorer": "toy_clip",
     "mix": {"sources": {"synthetic": "toy_captioner/0.75"},
             "strategies": ["raw_no_filter", "synthetic_no_filter", "raw_top"]},
     "train": {"scale": "toy_smoke",
               "strategies": ["raw_no_filter", "synthetic_no_filter", "raw_top_30"]},
     "eval": {"suite": "toy"},
     "findings": {"aliases": {"synthetic": "toy_captioner/0.75",
                              "coco": "toy_captioner_coco/0.75"},
                  "pools": {"nocaps": "toy_p_nocaps"}}},
    {"name": "toy_p_nocaps", "source": {"type": "toy", "world": "smoke", "split": "nocaps"},
     "captioners": ["toy_captioner", "toy_captioner_coco"], "scorer": "toy_clip",
     "references_column": "captions"},
]
ONE_TEMPERATURE = {"toy_captioner": {"temperatures": [0.75]},
                   "toy_captioner_coco": {"temperatures": [0.75]}}


def ev(strategy, metric):
    return {"eval": strategy, "metric": metric}


def q(caption_set, metric, pool=None):
    return {"quality": caption_set, "metric": metric, **({"pool": pool} if pool else {})}


def cmp(a, expect, b):
    return {"a": a, "expect": expect, "b": b}


def finding(*comparisons):
    return {"paper": "Table 0", "claim": "a test claim", "compare": list(comparisons)}


FINDINGS = {
    "HOLDS": finding(cmp(ev("synthetic_no_filter", "Average"), "greater",
                         ev("raw_no_filter", "Average"))),
    "FAILS": finding(cmp(ev("synthetic_no_filter", "toy retrieval"), "greater",
                         ev("raw_no_filter", "toy retrieval"))),
    "LESS": finding(cmp(q("coco", "clip_s"), "less", q("synthetic", "clip_s"))),
    "DOTTED": finding(cmp(q("raw", "attributes.shape.correct"), "less",
                          q("toy_captioner/0.75", "attributes.shape.correct"))),
    "ROLE": finding(cmp(q("coco", "cider", "nocaps"), "greater",
                        q("synthetic", "cider", "nocaps"))),
    "MISSING": finding(cmp(q("raw", "unique_trigrams"), "greater",
                           q("synthetic", "unique_trigrams")),
                       cmp(ev("raw_top_30", "ImageNet"), "greater",
                           ev("raw_no_filter", "ImageNet"))),
    "UNDEFINED": finding(cmp(q("synthetic_t_high", "mean_cos"), "less",
                             q("synthetic", "mean_cos", "elsewhere"))),
    "NOT_TRAINED": finding(cmp(ev("raw_top_50", "Average"), "greater",
                               ev("no_such_strategy", "Average"))),
    "MIXED": finding(cmp(ev("raw_no_filter", "Average"), "greater",
                         ev("synthetic_no_filter", "Average")),
                     cmp(q("raw", "unique_trigrams"), "greater",
                         q("synthetic", "unique_trigrams"))),
    "TIE": finding(cmp(q("raw", "n_captions"), "greater", q("synthetic", "n_captions"))),
}


@pytest.fixture(scope="module")
def pool_config():
    config = pipeline_config(overrides={"pools": POOLS, "captioners": ONE_TEMPERATURE})
    config["findings"] = copy.deepcopy(FINDINGS)
    return config


def aggregate(average, imagenet, retrieval, missing=None):
    """An eval aggregate JSON as capmix.suites.aggregate writes it (the fields read)."""
    return {"aggregates": {"Average": average, "ImageNet": imagenet, "Retrieval": retrieval},
            "main_metrics": {"toy ImageNet": imagenet, "toy retrieval": retrieval},
            "missing": missing or {}, "toy": True}


def write_results(root: Path, scale: float = 1.0) -> None:
    """Tiny results of both pools at the exact paths the pipeline writes."""
    files = {
        "toy_p/eval/synthetic_no_filter.aggregate.json": aggregate(0.5 * scale, 0.4, 0.2),
        "toy_p/eval/raw_no_filter.aggregate.json": aggregate(0.3 * scale, 0.3, 0.25),
        "toy_p/eval/raw_top_30.aggregate.json":
            aggregate(None, None, 0.1, {"Average": ["toy ImageNet"],
                                        "ImageNet": ["toy ImageNet"]}),
        "toy_p/quality/toy_clip/raw.json":
            {"mean_cos": 0.3, "clip_s": 1.0, "n_captions": 10,
             "attributes": {"shape": {"correct": 0.4}}},
        "toy_p/quality/toy_clip/toy_captioner/0.75.json":
            {"mean_cos": 0.6, "clip_s": 1.7, "n_captions": 10,
             "attributes": {"shape": {"correct": 0.9}}},
        "toy_p/quality/toy_clip/toy_captioner_coco/0.75.json":
            {"mean_cos": 0.5, "clip_s": 1.5, "n_captions": 10},
        "toy_p_nocaps/quality/toy_clip/toy_captioner/0.75.json": {"cider": 0.4},
        "toy_p_nocaps/quality/toy_clip/toy_captioner_coco/0.75.json": {"cider": 0.8},
    }
    for name, payload in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload))


def by_id(table):
    return {f["id"]: f for f in table["findings"]}


def test_plan_resolves_aliases_roles_metrics_and_files(pool_config, tmp_path):
    results = str(tmp_path / "results")
    plan = by_id(plan_findings(pool_config, "toy_p", results))
    role = plan["ROLE"]["comparisons"][0]
    assert role["a"]["file"] == (
        f"{results}/toy_p_nocaps/quality/toy_clip/toy_captioner_coco/0.75.json")
    assert role["b"]["caption_set"] == "toy_captioner/0.75" and role["a"]["pool"] == "toy_p_nocaps"
    assert role["a"]["key"] == ["cider"] and role["a"]["label"] == "captions coco [nocaps]: cider"
    dotted = plan["DOTTED"]["comparisons"][0]
    assert dotted["a"]["file"] == f"{results}/toy_p/quality/toy_clip/raw.json"
    assert dotted["b"]["key"] == ["attributes", "shape", "correct"]
    # An aggregate is read from `aggregates`, a task from `main_metrics`.
    assert plan["HOLDS"]["comparisons"][0]["a"]["key"] == ["aggregates", "Average"]
    assert plan["FAILS"]["comparisons"][0]["b"] == {
        "label": "model raw_no_filter: toy retrieval", "quantity": ev("raw_no_filter",
                                                                      "toy retrieval"),
        "pool": "toy_p", "strategy": "raw_no_filter", "reason": None,
        "file": f"{results}/toy_p/eval/raw_no_filter.aggregate.json",
        "key": ["main_metrics", "toy retrieval"]}
    # What the pool does not define or train is not measured, with the reason.
    undefined = plan["UNDEFINED"]["comparisons"][0]
    assert undefined["a"]["reason"] == ("alias 'synthetic_t_high' is not defined for pool "
                                        "'toy_p' (pools[].findings.aliases)")
    assert "pool role 'elsewhere' is not defined for pool 'toy_p'" in undefined["b"]["reason"]
    not_trained = plan["NOT_TRAINED"]["comparisons"][0]
    assert "'raw_top_50' is not trained by pool 'toy_p'" in not_trained["a"]["reason"]
    assert "'no_such_strategy' is not in the strategy catalogue" in not_trained["b"]["reason"]
    # The rule reads exactly the files of measurable quantities.
    assert finding_inputs(pool_config, "toy_p", results) == sorted(
        f"{results}/{name}" for name in [
            "toy_p/eval/synthetic_no_filter.aggregate.json",
            "toy_p/eval/raw_no_filter.aggregate.json", "toy_p/eval/raw_top_30.aggregate.json",
            "toy_p/quality/toy_clip/raw.json", "toy_p/quality/toy_clip/toy_captioner/0.75.json",
            "toy_p/quality/toy_clip/toy_captioner_coco/0.75.json",
            "toy_p_nocaps/quality/toy_clip/toy_captioner/0.75.json",
            "toy_p_nocaps/quality/toy_clip/toy_captioner_coco/0.75.json"])


def test_table_holds_fails_and_says_why_not_measured(pool_config, tmp_path):
    results = tmp_path / "results"
    write_results(results)
    plan = plan_findings(pool_config, "toy_p", str(results))
    table = write_findings(plan, tmp_path / "findings.json", tmp_path / "findings.md")
    found = by_id(table)
    holds = found["HOLDS"]["comparisons"][0]
    assert (holds["a"]["value"], holds["relation"], holds["b"]["value"]) == (0.5, ">", 0.3)
    assert found["HOLDS"]["holds"] is True and holds["holds"] is True
    assert found["FAILS"]["holds"] is False  # 0.2 > 0.25 does not hold (a task metric)
    assert found["LESS"]["holds"] is True  # 1.5 < 1.7
    assert found["DOTTED"]["comparisons"][0]["a"]["value"] == 0.4
    assert found["DOTTED"]["holds"] is True
    assert found["ROLE"]["holds"] is True  # CIDEr 0.8 > 0.4 on the nocaps pool
    assert found["TIE"]["holds"] is False  # strictly greater
    missing = found["MISSING"]
    assert missing["holds"] is None and [c["holds"] for c in missing["comparisons"]] == [None, None]
    assert "no field unique_trigrams" in missing["comparisons"][0]["reason"]
    assert missing["comparisons"][1]["a"]["reason"].endswith(
        "raw_top_30.aggregate.json: aggregates.ImageNet is null (tasks missing: toy ImageNet)")
    assert missing["reason"].startswith("comparison 1: a: ")
    assert found["UNDEFINED"]["holds"] is None and found["NOT_TRAINED"]["holds"] is None
    # One measured comparison fails: the finding fails, whatever the unmeasured one shows.
    assert found["MIXED"]["holds"] is False
    assert table["summary"] == {"holds": 4, "fails": 3, "not_measured": 3, "total": 10}
    written = json.loads((tmp_path / "findings.json").read_text())
    assert written["toy"] is True and written["pool"] == "toy_p" and written["seed"] == 0
    assert "Toy-world measurements" in written["note"]
    assert written["provenance"]["stage"] == "findings"
    assert len(written["provenance"]["inputs"]) == 8
    markdown = (tmp_path / "findings.md").read_text()
    assert "Toy-world measurements" in markdown
    assert ("| HOLDS | Table 0 | model synthetic_no_filter: Average | 0.5 | > | "
            "model raw_no_filter: Average | 0.3 | yes |") in markdown
    assert "| FAILS | Table 0 | a test claim | no |" in markdown
    assert "- UNDEFINED, comparison 1: a: alias 'synthetic_t_high'" in markdown


def test_csv_table_says_where_each_value_came_from(pool_config, tmp_path):
    """findings.csv + findings.cells.json: the cell contract of docs/provenance.md."""
    import csv

    from capmix.lineage import find_cell

    results = tmp_path / "results"
    write_results(results)
    plan = plan_findings(pool_config, "toy_p", str(results))
    write_findings(plan, tmp_path / "f.json", tmp_path / "f.md", tmp_path / "findings.csv")
    rows = list(csv.DictReader((tmp_path / "findings.csv").open()))
    assert rows[0]["row"] == "HOLDS.1" and float(rows[0]["ours a"]) == 0.5
    cell = find_cell(tmp_path / "findings.csv", "DOTTED.1", "ours a")
    assert cell["sources"] == [f"{results}/toy_p/quality/toy_clip/raw.json"]
    assert cell["field"] == "attributes.shape.correct" and float(cell["value"]) == 0.4
    holds = find_cell(tmp_path / "findings.csv", "HOLDS.1", "holds")
    assert holds["value"] == "yes" and len(holds["sources"]) == 2
    sidecar = json.loads((tmp_path / "findings.cells.json").read_text())
    assert sidecar["table"] == "findings.csv"
    # What the pool cannot measure has no source: no cell names one.
    assert not [c for c in sidecar["cells"] if c["row"] == "UNDEFINED.1"
                and c["column"] == "ours a"]


def test_same_measurement_and_unreadable_files_are_not_measured(pool_config, tmp_path):
    config = copy.deepcopy(pool_config)
    config["findings"] = {"SAME": finding(cmp(q("synthetic", "mean_cos"), "greater",
                                              q("toy_captioner/0.75", "mean_cos"))),
                          "BROKEN": finding(cmp(q("raw", "mean_cos"), "greater",
                                                q("coco", "mean_cos")))}
    results = tmp_path / "results"
    write_results(results)
    (results / "toy_p/quality/toy_clip/raw.json").write_text("{not json")
    plan = plan_findings(config, "toy_p", str(results))
    assert finding_inputs(config, "toy_p", str(results)) == [
        f"{results}/toy_p/quality/toy_clip/raw.json",
        f"{results}/toy_p/quality/toy_clip/toy_captioner_coco/0.75.json"]
    found = by_id(compute_findings(plan, read_documents([
        f"{results}/toy_p/quality/toy_clip/raw.json",
        f"{results}/toy_p/quality/toy_clip/toy_captioner_coco/0.75.json"])))
    assert found["SAME"]["holds"] is None
    assert found["SAME"]["comparisons"][0]["reason"] == SAME_MEASUREMENT
    assert found["BROKEN"]["holds"] is None
    assert "raw.json is unreadable" in found["BROKEN"]["comparisons"][0]["a"]["reason"]


def test_combine_three_seeds(pool_config, tmp_path, capsys):
    paths = []
    for seed, scale in enumerate([1.0, 1.2, 0.5]):
        config = copy.deepcopy(pool_config)
        config["seed"] = seed
        results = tmp_path / f"seed{seed}" / "results"
        write_results(results, scale)
        if seed == 2:  # this seed lost one file: its quantities are not measured
            (results / "toy_p/eval/raw_no_filter.aggregate.json").unlink()
        plan = plan_findings(config, "toy_p", str(results))
        paths.append(str(results / "toy_p/findings.json"))
        write_findings(plan, Path(paths[-1]), results / "toy_p/findings.md")
    prefix = tmp_path / "across" / "findings_seeds"
    prefix.parent.mkdir()
    assert main(["combine", str(prefix), *paths]) == 0
    printed = capsys.readouterr().out
    combined = json.loads(prefix.with_suffix(".json").read_text())
    assert printed == prefix.with_suffix(".md").read_text()
    assert combined["toy"] is True and combined["n_files"] == 3
    assert [f["seed"] for f in combined["files"]] == [0, 1, 2]
    found = by_id(combined)
    average = found["HOLDS"]["comparisons"][0]
    # synthetic Average: 0.5, 0.6, 0.25 -> mean 0.45, sample sd sqrt(0.0325)
    assert average["a"]["n"] == 3 and average["a"]["values"] == pytest.approx([0.5, 0.6, 0.25])
    assert average["a"]["mean"] == pytest.approx(0.45)
    assert average["a"]["std"] == pytest.approx(math.sqrt(0.0325))
    # raw Average: 0.3, 0.36, missing -> n 2
    assert average["b"]["n"] == 2 and average["b"]["values"][2] is None
    assert average["b"]["mean"] == pytest.approx(0.33)
    assert average["b"]["std"] == pytest.approx(math.sqrt(0.0018))
    assert (average["seeds_measured"], average["seeds_holding"]) == (2, 2)
    assert (found["HOLDS"]["seeds_measured"], found["HOLDS"]["seeds_holding"]) == (2, 2)
    assert (found["LESS"]["seeds_measured"], found["LESS"]["seeds_holding"]) == (3, 3)
    assert (found["FAILS"]["seeds_measured"], found["FAILS"]["seeds_holding"]) == (2, 0)
    assert found["UNDEFINED"]["seeds_measured"] == 0
    assert found["UNDEFINED"]["comparisons"][0]["a"] == {
        "label": "captions synthetic_t_high: mean_cos", "mean": None, "std": None, "n": 0,
        "values": [None, None, None]}
    assert "Toy-world measurements" in printed
    assert "| 0.45 ± 0.18 (n=3) | > |" in printed
    assert "| HOLDS | Table 0 | a test claim | 2/2 (1 not measured) |" in printed


def test_combine_refuses_different_catalogues(pool_config, tmp_path, capsys):
    paths = []
    for index, expect in enumerate(["greater", "less"]):
        config = copy.deepcopy(pool_config)
        config["findings"] = {"F": finding(cmp(q("raw", "mean_cos"), expect,
                                               q("coco", "mean_cos")))}
        path = tmp_path / f"{index}.json"
        write_findings(plan_findings(config, "toy_p", str(tmp_path)), path,
                       tmp_path / f"{index}.md")
        paths.append(str(path))
    assert main(["combine", str(tmp_path / "out"), *paths]) == 2
    assert "1.json: finding F compares" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_values_are_rounded_to_three_significant_digits():
    assert [format_value(v) for v in (0.10549, 0.047512, 1.0271, 12.345, 1162, 1162.4, 0.0,
                                      None)] == [
        "0.105", "0.0475", "1.03", "12.3", "1162", "1162", "0", "n/a"]


def expect_error(config, *fragments):
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_catalogue_errors_name_the_finding_and_key():
    config = base_config()
    config["findings"]["F1"]["compare"][0]["expect"] = "bigger"
    expect_error(config, "'findings.F1.compare[0].expect'", "'bigger'", "'greater', 'less'")
    config = base_config()
    config["findings"]["F2"]["compare"][0]["a"] = {"eval": "raw_top_30", "quality": "raw",
                                                   "metric": "Average"}
    expect_error(config, "'findings.F2.compare[0].a'", "key eval or key quality")
    config = base_config()
    config["findings"]["F5"]["compare"][0]["b"]["metric"] = "mean cos"
    expect_error(config, "'findings.F5.compare[0].b.metric'", "'mean cos'", "pattern")
    config = base_config()
    config["findings"]["F3"]["compare"][1]["b"] = config["findings"]["F3"]["compare"][1]["a"]
    expect_error(config, "'findings.F3.compare[1]': a and b are the same quantity "
                         "(model raw_top_synthetic_remaining_filtered_30: toy retrieval)")


def test_pool_findings_errors_name_the_key_and_value():
    config = base_config()
    config["pools"][0]["findings"]["pools"]["nocaps"] = "nowhere"
    expect_error(config, "'pools[0].findings.pools.nocaps': unknown pool 'nowhere'")
    config = base_config()
    config["pools"][0]["findings"]["aliases"]["synthetic"] = "toy_captioner/0.3"
    expect_error(config, "'pools[0].findings.aliases.synthetic': 'toy_captioner/0.3' is not a "
                         "caption set of pool 'toy_default'", "toy_captioner/0.75")
    config = base_config()
    config["pools"][0]["findings"]["aliases"]["raw"] = "toy_captioner/0.75"
    expect_error(config, "'pools[0].findings.aliases'", "(allowed: anything but 'raw')")


def test_findings_and_config_checks_import_no_model_code():
    code = ("import sys; from capmix.config import pipeline_config; import capmix.findings; "
            "pipeline_config(); print(sorted({'torch', 'open_clip'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"
