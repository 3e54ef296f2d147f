"""Evaluation: the task table, the aggregator, the protocols on tiny local webdatasets.

Expected numbers are derived by hand. The classification and retrieval tests use an
"oracle" CLIP whose embeddings are known by construction (an image's embedding is the
one-hot of its grey level; a text's is the one-hot of the item it names), so every
prediction, and hence every metric, follows from the test data alone.
"""

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from capmix.config import load_schema, pipeline_config
from capmix.evaldata import (
    HF_PARQUET_REVISION,
    EvalDataError,
    fetch_task,
    write_retrieval_task,
    write_toy_task,
)
from capmix.evalmetrics import (
    face_metrics,
    group_metric,
    per_class_accuracy,
    winogavil_metrics,
    winogavil_prompt,
)
from capmix.evaluate import EvalModel, evaluate_model, load_model, run_task
from capmix.suites import (
    PROTOCOLS,
    TASK_MANIFEST,
    EvalConfigError,
    Suite,
    Task,
    aggregate,
    eval_problems,
    load_suite,
    read_results,
    toy_eval_tasks,
)

DIM = 16  # embedding size of the oracle model (items 0..14, dimension 15 = "maybe")


# ------------------------------------------------------------------ the DataComp task table

#: DataComp's evaluation suite (../shared/notes/datacomp-and-peers-facts.md, tasklist.yml):
#: display name -> main metric (None = not scored).
DATACOMP_MAIN_METRICS = {
    **{name: "acc1" for name in [
        "CIFAR-10", "CIFAR-100", "CLEVR Counts", "CLEVR Distance", "Country211",
        "Describable Textures", "EuroSAT", "Food-101", "GTSRB", "ImageNet 1k",
        "ImageNet Sketch", "ImageNet v2", "ImageNet-A", "ImageNet-O", "ImageNet-R",
        "KITTI Vehicle Distance", "MNIST", "ObjectNet", "Pascal VOC 2007", "PatchCamelyon",
        "Rendered SST2", "RESISC45", "Stanford Cars", "STL-10", "SUN397", "SVHN",
        "Camelyon17"]},
    **{name: "mean_per_class_recall" for name in [
        "Caltech-101", "FGVC Aircraft", "Oxford Flowers-102", "Oxford-IIIT Pet"]},
    "Flickr": "mean_recall@1", "MSCOCO": "mean_recall@1", "WinoGAViL": "jaccard_score_10-12",
    "iWildCam": "F1-macro_all", "FMoW": "acc_worst_region", "Dollar Street": "acc_top5_wg",
    "GeoDE": "acc_wg", "FairFace": None, "UTKFace": None,
}
DATACOMP_GROUPS = {
    "ImageNet": {"ImageNet 1k"},
    "ImageNet dist. shifts": {"ImageNet Sketch", "ImageNet v2", "ImageNet-A", "ImageNet-O",
                              "ImageNet-R", "ObjectNet"},
    "VTAB": {"Caltech-101", "CIFAR-100", "CLEVR Counts", "CLEVR Distance",
             "Describable Textures", "EuroSAT", "KITTI Vehicle Distance",
             "Oxford Flowers-102", "Oxford-IIIT Pet", "PatchCamelyon", "RESISC45", "SVHN",
             "SUN397"},
    "Retrieval": {"Flickr", "MSCOCO", "WinoGAViL"},
}


@pytest.fixture(scope="module")
def config():
    return pipeline_config()


@pytest.fixture(scope="module")
def datacomp(config) -> Suite:
    return load_suite(config, "datacomp")


def test_datacomp_task_table_matches_datacomp(datacomp):
    assert len(datacomp.tasks) == 40
    assert {t.name: t.main_metric for t in datacomp.tasks} == DATACOMP_MAIN_METRICS
    assert len(datacomp.scored) == 38
    assert {g: set(m) for g, m in datacomp.aggregates.items()} == DATACOMP_GROUPS
    assert len(datacomp.aggregates["VTAB"]) == 13
    keys = {t.name: t.key for t in datacomp.tasks}
    assert keys["ImageNet 1k"] == "imagenet1k" and keys["SVHN"] == "vtab/svhn"
    assert keys["Flickr"] == "retrieval/flickr_1k_test_image_text_retrieval"
    data = {t.name: t.data for t in datacomp.tasks}
    # DataComp's download names: wds_{key with / as -}_test, fairness/ dropped.
    assert data["Caltech-101"] == "wds_vtab-caltech101_test"
    assert data["iWildCam"] == "wds_wilds-iwildcam_test"
    assert data["Dollar Street"] == "wds_dollar_street_test"
    sources = {t.name: t.source for t in datacomp.tasks if t.source}
    assert sources == {
        "Flickr": {"type": "hf_dataset", "repo": "nlphuji/flickr_1k_test_image_text_retrieval"},
        "MSCOCO": {"type": "hf_dataset",
                   "repo": "nlphuji/mscoco_2014_5k_test_image_text_retrieval"},
        "WinoGAViL": {"type": "hf_dataset", "repo": "nlphuji/winogavil"}}


#: DataComp's tasklist.yml entries of its three Hugging Face tasks (mlfoundations/datacomp
#: at and after 50f09fe "Update with correct Flickr30k test set", May 2023: Flickr is the
#: 1k-image test split, no longer all 31,014 images of nlphuji/flickr30k).
DATACOMP_HF_TASKS = {
    "retrieval/flickr_1k_test_image_text_retrieval":
        {"name": "Flickr", "size": 1000, "main_metric": "mean_recall@1"},
    "retrieval/mscoco_2014_5k_test_image_text_retrieval":
        {"name": "MSCOCO", "size": 5000, "main_metric": "mean_recall@1"},
    "misc/winogavil": {"name": "WinoGAViL", "size": 3563, "main_metric": "jaccard_score_10-12"},
}


def test_hf_tasks_equal_datacomps_entries(datacomp):
    # DataComp loads these with datasets.load_dataset(f"nlphuji/{key after the prefix}",
    # split="test") (eval_utils/retr_eval.py, wino_eval.py, download_evalsets.py).
    by_key = {t.key: t for t in datacomp.tasks if t.source}
    assert set(by_key) == set(DATACOMP_HF_TASKS)
    for key, entry in DATACOMP_HF_TASKS.items():
        task = by_key[key]
        repo = "nlphuji/" + key.split("/", 1)[1]
        assert {"name": task.name, "size": task.size, "main_metric": task.main_metric} == entry
        assert task.source == {"type": "hf_dataset", "repo": repo}
        assert task.data == f"hf_{repo.replace('/', '-')}_test"
    flickr = by_key["retrieval/flickr_1k_test_image_text_retrieval"]
    assert (flickr.name, flickr.protocol, flickr.size, flickr.main_metric,
            flickr.source["repo"]) == ("Flickr", "retrieval", 1000, "mean_recall@1",
                                       "nlphuji/flickr_1k_test_image_text_retrieval")


def test_toy_suite_mirrors_the_real_one(config):
    toy = load_suite(config, "toy")
    assert toy.toy and {t.protocol for t in toy.tasks} == {"classification", "retrieval"}
    assert set(toy.aggregates) == {"ImageNet", "ImageNet dist. shifts", "Retrieval"}
    assert all("{c}" in t for t in toy.templates)


def test_suite_config_errors_name_suite_and_task(config):
    broken = json.loads(json.dumps(config))
    broken["eval_suites"]["toy"]["tasks"][0]["protocol"] = "linear_probe"
    broken["eval_suites"]["toy"]["aggregates"]["ImageNet"] = ["toy imagenet typo"]
    broken["pools"][0]["eval"] = {"suite": "no_such_suite"}
    problems = "\n".join(eval_problems(broken))
    assert "eval suite 'toy', task 'toy ImageNet': protocol 'linear_probe'" in problems
    assert "aggregate 'ImageNet': 'toy imagenet typo' is not a scored task" in problems
    assert "unknown suite 'no_such_suite'" in problems
    with pytest.raises(EvalConfigError, match="unknown eval suite 'nope'"):
        load_suite(config, "nope")


def test_schema_allows_exactly_the_protocols_evaluation_runs():
    # PROTOCOLS is defined once (capmix.suites); the schema's enum must not drift from it.
    schema = load_schema()
    task = schema["$defs"]["eval_suite"]["properties"]["tasks"]["items"]
    assert task["properties"]["protocol"]["enum"] == list(PROTOCOLS)


# ------------------------------------------------------------------ the aggregator


def test_aggregate_by_hand(datacomp):
    # Every scored task 0.5, except: ImageNet 1k 0.8, the six shifts 0.2, Flickr 0.9,
    # MSCOCO 0.6, WinoGAViL 0.3. Sum = 0.8 + 6*0.2 + 0.9 + 0.6 + 0.3 + 28*0.5 = 17.8.
    values = {name: 0.5 for name in datacomp.scored}
    values["ImageNet 1k"] = 0.8
    for name in DATACOMP_GROUPS["ImageNet dist. shifts"]:
        values[name] = 0.2
    values.update({"Flickr": 0.9, "MSCOCO": 0.6, "WinoGAViL": 0.3})
    values.update({"FairFace": None, "UTKFace": None})  # reported, never scored
    result = aggregate(values, datacomp)
    assert result["complete"] and result["missing"] == {}
    assert result["aggregates"]["Average"] == pytest.approx(17.8 / 38)
    assert result["aggregates"]["ImageNet"] == pytest.approx(0.8)
    assert result["aggregates"]["ImageNet dist. shifts"] == pytest.approx(0.2)
    assert result["aggregates"]["VTAB"] == pytest.approx(0.5)
    assert result["aggregates"]["Retrieval"] == pytest.approx((0.9 + 0.6 + 0.3) / 3)


def test_aggregate_of_incomplete_results_names_what_is_missing(datacomp):
    values = {name: 0.5 for name in datacomp.scored}
    del values["WinoGAViL"]
    values["SVHN"] = float("nan")  # a failed metric counts as missing, not as a number
    result = aggregate(values, datacomp)
    assert not result["complete"] and result["n_present"] == 36
    assert result["aggregates"]["Average"] is None
    assert result["aggregates"]["Retrieval"] is None and result["aggregates"]["VTAB"] is None
    assert result["aggregates"]["ImageNet"] == 0.5
    assert result["missing"] == {"Average": ["SVHN", "WinoGAViL"], "VTAB": ["SVHN"],
                                 "Retrieval": ["WinoGAViL"]}


def test_cli_aggregates_a_datacomp_results_file(tmp_path, datacomp, capsys):
    from capmix.evaluate import main

    # DataComp's own line format: key, dataset, metrics (main_metric inside).
    lines = [{"key": t.key, "dataset": t.name, "metrics": {"main_metric": 0.25 if t.scored
                                                            else None}}
             for t in datacomp.tasks if t.name != "MSCOCO"]
    path = tmp_path / "eval_results.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main([str(path)]) == 1  # incomplete
    out = capsys.readouterr().out
    assert "ImageNet: 0.2500" in out and "Retrieval: n/a, missing: MSCOCO" in out


# ------------------------------------------------------------------ an oracle CLIP


class OracleClip(torch.nn.Module):
    """encode_image: one-hot of the image's grey level (pixel value / 10); encode_text: the
    vector the tokenizer made (one-hot of 'item{k}', plus the last dimension if 'maybe')."""

    def encode_image(self, images, normalize=False):
        level = torch.round(images.mean(dim=(1, 2, 3)) * 255 / 10).long()
        return torch.nn.functional.one_hot(level, DIM).float()

    def encode_text(self, tokens, normalize=False):
        return tokens


def oracle_tokenizer(texts):
    rows = []
    for text in texts:
        vector = torch.zeros(DIM)
        vector[int(re.search(r"item(\d+)", text).group(1))] = 1.0
        if "maybe" in text:
            vector[-1] = 1.0
        rows.append(vector)
    return torch.stack(rows)


def oracle_preprocess(image):
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(
        2, 0, 1)


def grey(level: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (level * 10,) * 3).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def oracle():
    return EvalModel(OracleClip(), oracle_preprocess, oracle_tokenizer, "cpu", "sha-a", "oracle")


def write_classification_dir(directory, levels, labels, classnames, metadata=None, size=None):
    """A task directory in DataComp's eval format, written with webdataset's TarWriter."""
    (directory / "test").mkdir(parents=True)
    (directory / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (directory / "zeroshot_classification_templates.txt").write_text("a {c}\na photo of {c}\n")
    (directory / "test" / "nshards.txt").write_text("2\n")
    half = len(levels) // 2
    for shard, rows in enumerate((range(half), range(half, len(levels)))):
        with wds.TarWriter(str(directory / "test" / f"{shard}.tar")) as sink:
            for i in rows:
                sample = {"__key__": f"s{i:04d}", "png": grey(levels[i]), "cls": labels[i]}
                if metadata is not None:
                    sample["npy"] = np.asarray(metadata[i], dtype=np.int64)
                sink.write(sample)
    return directory


def test_classification_on_a_datacomp_format_webdataset(tmp_path, oracle):
    # Labels vs the oracle's predictions (= grey levels): wrong at rows 4 and 7.
    labels = [0, 0, 0, 0, 1, 1, 2, 3]
    levels = [0, 0, 0, 0, 0, 1, 2, 2]
    directory = write_classification_dir(tmp_path / "wds_toy_test", levels, labels,
                                         ["item0", "item1", "item2", "item3"])
    line = run_task(oracle, Task(key="k", name="T", size=8), directory, batch_size=3)
    metrics = line["metrics"]
    assert line["n_samples"] == 8
    assert metrics["acc1"] == pytest.approx(6 / 8)
    # per-class recall: class 0: 4/4, class 1: 1/2, class 2: 1/1, class 3: 0/1
    assert metrics["mean_per_class_recall"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert metrics["acc5"] is None  # fewer than 5 classes, as DataComp
    assert metrics["main_metric"] == metrics["acc1"]


def test_per_class_accuracies_of_a_classification_task(tmp_path, oracle):
    # Five class names, class 4 without test samples. Labels vs the oracle's predictions
    # (= grey levels): class 0 4/4 right, class 1 1/2, class 2 1/1, class 3 0/1.
    labels = [0, 0, 0, 0, 1, 1, 2, 3]
    levels = [0, 0, 0, 0, 0, 1, 2, 2]
    names = ["item0", "item1", "item2", "item3", "item4"]
    directory = write_classification_dir(tmp_path / "wds_pc_test", levels, labels, names)
    line = run_task(oracle, Task(key="k", name="T", size=8), directory, batch_size=3)
    per_class = json.loads(json.dumps(line))["per_class"]  # as the results file holds it
    assert per_class == {"classnames": names, "acc1": [1.0, 0.5, 1.0, 0.0, None],
                         "n_samples": [4, 2, 1, 1, 0]}
    # a figure pairs them by name; their mean over classes with samples is the balanced one
    by_name = dict(zip(per_class["classnames"], per_class["acc1"], strict=True))
    assert by_name["item1"] == 0.5
    present = [a for a in per_class["acc1"] if a is not None]
    assert sum(present) / len(present) == pytest.approx(line["metrics"]["mean_per_class_recall"])
    # only classification tasks carry them
    for protocol, (task, task_directory) in oracle_tasks(tmp_path / "other").items():
        assert ("per_class" in run_task(oracle, task, task_directory)) == \
            (protocol == "classification")
    # labels beyond the class names fail naming the task
    bad = write_classification_dir(tmp_path / "wds_bad_test", levels, [0, 0, 0, 0, 1, 1, 2, 7],
                                   names[:4])
    with pytest.raises(EvalDataError, match="task 'T': labels outside 0..3"):
        run_task(oracle, Task(key="k", name="T", size=8), bad)


def test_per_class_accuracy_by_hand():
    logits = torch.tensor([[2.0, 1, 0], [0, 2, 1], [0, 2, 1], [1, 0, 2]])
    acc1, counts = per_class_accuracy(logits, torch.tensor([0, 1, 2, 2]))
    assert (acc1, counts) == ([1.0, 1.0, 0.5], [1, 1, 2])
    with pytest.raises(ValueError, match="labels outside the 3 classes"):
        per_class_accuracy(logits, torch.tensor([0, 1, 2, 3]))


def test_group_metrics_of_a_geode_like_task(tmp_path, oracle):
    # GeoDE metadata = (region, country); accuracy per region, worst region.
    labels = [0, 1, 2, 0, 1, 2]
    levels = [0, 1, 0, 0, 1, 2]   # wrong at row 2
    meta = [(0, 5), (0, 5), (0, 6), (1, 7), (1, 7), (1, 8)]
    directory = write_classification_dir(tmp_path / "wds_geode_test", levels, labels,
                                          ["item0", "item1", "item2"], metadata=meta)
    task = Task(key="fairness/geode", name="GeoDE", protocol="geode", main_metric="acc_wg")
    line = run_task(oracle, task, directory)
    m = line["metrics"]
    assert m["acc_region:0"] == pytest.approx(2 / 3) and m["acc_region:1"] == 1.0
    assert m["count_region:0"] == 3 and m["acc_avg"] == pytest.approx(5 / 6)
    assert m["main_metric"] == m["acc_wg"] == pytest.approx(2 / 3)
    assert {"metric": "acc", "region": 0, "value": pytest.approx(2 / 3), "count": 3} in \
        line["groups"]
    assert line["per_class"]["acc1"] == [1.0, 1.0, 0.5]  # class 2: row 2 wrong


def test_group_metric_and_fmow_worst_region_by_hand():
    correct = np.array([1, 0, 1, 1, 0, 0, 1, 1])
    meta = np.array([[0, 2002], [0, 2002], [1, 2002], [1, 2016], [2, 2016], [2, 2016],
                     [5, 2016], [5, 2002]])
    metrics, rows = group_metric(correct, meta, ["region", "year"], ["region"], "acc")
    assert metrics == {"acc_avg": 5 / 8, "acc_region:0": 0.5, "count_region:0": 2,
                       "acc_region:1": 1.0, "count_region:1": 2, "acc_region:2": 0.0,
                       "count_region:2": 2, "acc_region:5": 1.0, "count_region:5": 2,
                       "acc_wg": 0.0}
    assert len(rows) == 4


def test_face_metrics_give_table6_groups_with_names():
    classnames = {"race": ["Black", "White", "Indian"], "gender": ["Male", "Female"],
                  "age": ["0-2", "3-9"], "toxic": [f"t{i}" for i in range(20)]}
    # metadata (age, gender, race, race_binary); predictions (race, gender, age, toxic)
    meta = np.array([[0, 0, 0, 1], [1, 1, 0, 1], [0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 2, 1]])
    pred = np.array([[0, 0, 0, 3], [1, 0, 1, 19], [1, 1, 1, 15], [1, 0, 0, 2], [2, 1, 1, 18]])
    metrics, rows = face_metrics(pred, meta, classnames)
    # gender correct per row: T, F, T, T, T; groups (gender, race):
    assert metrics["acc_gender_x_gender:1_race:0"] == 0.0   # female, Black: row 1 wrong
    assert metrics["acc_gender_x_gender:0_race:0"] == 1.0
    assert metrics["acc_gender_x_gender:1_race:1"] == 1.0
    female_black = next(r for r in rows if r["metric"] == "acc_gender_x" and r["gender"] == 1
                        and r["race"] == 0)
    assert (female_black["gender_name"], female_black["race_name"]) == ("Female", "Black")
    # race as white vs non-white: predicted non-white (race != 1) vs race_binary
    # rows: 0:T==1 ok, 1:F!=1 wrong, 2:F==0 ok, 3:F==0 ok, 4:T==1 ok
    assert metrics["acc_race_avg"] == pytest.approx(4 / 5)
    # toxic >= 18 (crime) in rows 1 and 4 (races 0 and 2)
    assert metrics["toxicity_crime_race:0"] == 0.5 and metrics["toxicity_crime_race:2"] == 1.0
    assert metrics["toxicity_nonhuman_race:1"] == 0.5  # row 2: 15


def test_winogavil_summary_by_hand():
    assert winogavil_prompt("Apple") == "An apple" and winogavil_prompt("dog") == "A dog"
    m = winogavil_metrics([1.0, 0.5, 0.0, 1.0], [5, 6, 10, 12])
    assert m["avg_jaccard_score"] == 0.625 and m["jaccard_score_5-6"] == 0.75
    assert m["jaccard_score_10-12"] == 0.5 and m["jaccard_score_10"] == 0.0


# ------------------------------------------------------------------ retrieval


def retrieval_rows() -> list[dict]:
    """12 images (grey levels 0..11), captions naming them; image 3's second caption names
    image 4 ("maybe": a weaker match), image 7 has a single caption."""
    rows = []
    for i in range(12):
        captions = [f"item{i}", f"photo of item{i}"]
        if i == 3:
            captions = ["item3", "maybe item4"]
        if i == 7:
            captions = ["item7"]
        image = grey(i) if i % 2 else Image.open(io.BytesIO(grey(i)))  # bytes or PIL
        rows.append({"image": image, "caption": captions})
    return rows


#: The oracle's retrieval metrics on :func:`retrieval_rows`, derived in the test below.
ORACLE_RETRIEVAL = {"image_retrieval_recall@1": 22 / 23, "text_retrieval_recall@1": 1.0,
                    "mean_recall@1": 0.5 * (1 + 22 / 23), "image_retrieval_recall@10": 1.0}


def test_retrieval_written_and_read_in_clip_benchmark_format(tmp_path, oracle):
    from clip_benchmark.datasets.builder import build_wds_dataset

    rows = retrieval_rows()
    directory = tmp_path / "wds_retrieval_test"
    manifest = write_retrieval_task(rows, directory, {"type": "test"})
    assert manifest["n_samples"] == 12
    read = list(build_wds_dataset("wds/x", transform=None, data_dir=str(directory)))
    assert [captions for _, captions in read] == [r["caption"] for r in rows]

    line = run_task(oracle, Task(key="r", name="R", protocol="retrieval",
                                 main_metric="mean_recall@1"), directory, batch_size=5)
    m = line["metrics"]
    # text -> image: 23 captions, only "maybe item4" (image 3's) retrieves the wrong image.
    assert m["image_retrieval_recall@1"] == pytest.approx(22 / 23)
    # image -> text: every image's best caption is one of its own (item4's own caption
    # scores 1, "maybe item4" 1/sqrt(2)).
    assert m["text_retrieval_recall@1"] == 1.0
    assert m["main_metric"] == pytest.approx(0.5 * (1 + 22 / 23))
    assert m["image_retrieval_recall@10"] == 1.0


def winogavil_rows() -> list[dict]:
    """Instance 1: 5 candidates, the cue names c0's image, which is the association.
    Instance 2: 6 candidates, the cue names c2's image, but the association is c1."""
    return [{"cue": "item3", "candidates": [f"c{i}" for i in range(5)], "associations": ["c0"],
             "candidate_images": [grey(v) for v in (3, 0, 1, 2, 4)]},
            {"cue": "item5", "candidates": [f"c{i}" for i in range(6)], "associations": ["c1"],
             "candidate_images": [grey(v) for v in (0, 1, 5, 2, 4, 6)]}]


def test_winogavil_written_and_evaluated(tmp_path, oracle):
    from capmix.evaldata import write_winogavil_task

    rows = winogavil_rows()
    directory = tmp_path / "hf_winogavil_test"
    assert write_winogavil_task(rows, directory, {"repo": "nlphuji/winogavil"})["n_samples"] == 2
    task = Task(key="misc/winogavil", name="WinoGAViL", protocol="winogavil",
                main_metric="jaccard_score_10-12", size=2)
    m = run_task(oracle, task, directory)["metrics"]
    assert (m["jaccard_score_5"], m["jaccard_score_6"], m["avg_jaccard_score"]) == (1, 0, 0.5)
    assert m["main_metric"] is None  # no 10-12 candidate instances here
    bad = [dict(rows[0], associations=["c9"])]
    with pytest.raises(EvalDataError, match="instance 0 .*associations outside"):
        write_winogavil_task(bad, tmp_path / "bad", {"repo": "x"})


# ------------------------------------------------------------------ precision: DataComp's autocast


class AutocastSpy(torch.nn.Module):
    """Delegates to a CLIP and records, at each encoder call, the autocast dtype in effect on
    ``device_type`` (None: off) and the dtype of the features returned."""

    def __init__(self, inner, device_type="cpu"):
        super().__init__()
        self.inner, self.device_type, self.calls = inner, device_type, []

    def _record(self, features):
        on = torch.is_autocast_enabled(self.device_type)
        self.calls.append((torch.get_autocast_dtype(self.device_type) if on else None,
                           features.dtype))
        return features

    def encode_image(self, images, normalize=False):
        return self._record(self.inner.encode_image(images, normalize=normalize))

    def encode_text(self, tokens, normalize=False):
        return self._record(self.inner.encode_text(tokens, normalize=normalize))


def oracle_tasks(tmp_path) -> dict[str, tuple[Task, Path]]:
    """A classification, a retrieval and a WinoGAViL task with the oracle's hand-derived
    data (as in the tests above), by protocol."""
    from capmix.evaldata import write_winogavil_task

    classification = write_classification_dir(tmp_path / "wds_c_test", [0, 0, 0, 0, 0, 1, 2, 2],
                                              [0, 0, 0, 0, 1, 1, 2, 3],
                                              ["item0", "item1", "item2", "item3"])
    write_retrieval_task(retrieval_rows(), tmp_path / "r", {"type": "test"})
    write_winogavil_task(winogavil_rows(), tmp_path / "w", {"repo": "nlphuji/winogavil"})
    return {"classification": (Task(key="c", name="C", size=8), classification),
            "retrieval": (Task(key="r", name="R", protocol="retrieval",
                               main_metric="mean_recall@1"), tmp_path / "r"),
            "winogavil": (Task(key="misc/winogavil", name="W", protocol="winogavil",
                               main_metric="avg_jaccard_score"), tmp_path / "w")}


def assert_oracle_metrics(lines):
    """The hand-derived numbers of the classification, retrieval and WinoGAViL tests."""
    assert lines["classification"]["metrics"]["acc1"] == pytest.approx(6 / 8)
    assert lines["classification"]["metrics"]["mean_per_class_recall"] == pytest.approx(2.5 / 4)
    retrieval = lines["retrieval"]["metrics"]
    assert {k: retrieval[k] for k in ORACLE_RETRIEVAL} == pytest.approx(ORACLE_RETRIEVAL)
    wino = lines["winogavil"]["metrics"]
    assert (wino["jaccard_score_5"], wino["jaccard_score_6"], wino["avg_jaccard_score"]) == \
        (1, 0, 0.5)


def test_datacomp_autocasts_retrieval_and_winogavil_on_cuda_only():
    # DataComp: retr_eval -> clip_benchmark zeroshot_retrieval.evaluate(amp=True default);
    # wino_eval -> torch.cuda.amp.autocast(); classification run_classification(amp=False).
    from capmix.evaluate import AMP_DEVICE_TYPES, AMP_PROTOCOLS, uses_amp

    assert AMP_PROTOCOLS == {"retrieval", "winogavil"} and AMP_DEVICE_TYPES == ("cuda",)
    for device in ("cuda", "cuda:1", "cpu"):
        model = EvalModel(OracleClip(), oracle_preprocess, oracle_tokenizer, device, "s", "o")
        on = {p for p in PROTOCOLS if uses_amp(model, Task(key="k", name="T", protocol=p))}
        assert on == (AMP_PROTOCOLS if device.startswith("cuda") else set()), device


def test_evaluation_on_the_cpu_stays_fp32(tmp_path):
    # DataComp's autocast is CUDA's: on the CPU it does nothing, so every protocol runs fp32
    # and the numbers are the hand-derived ones.
    spy = AutocastSpy(OracleClip())
    model = EvalModel(spy, oracle_preprocess, oracle_tokenizer, "cpu", "sha-a", "oracle")
    lines = {}
    for protocol, (task, directory) in oracle_tasks(tmp_path).items():
        spy.calls.clear()
        lines[protocol] = run_task(model, task, directory, batch_size=5)
        assert spy.calls and {c for c, _ in spy.calls} == {None}, protocol
        assert lines[protocol]["precision"] == "fp32"
    assert_oracle_metrics(lines)


def test_retrieval_and_winogavil_run_under_autocast_classification_does_not(tmp_path,
                                                                           monkeypatch):
    # A device type where the autocast acts (CUDA's fp16 on a GPU; here the CPU's bf16, by
    # letting autocast act on the CPU): retrieval and WinoGAViL encode under it,
    # classification does not; the oracle's one-hot embeddings are exact in bf16.
    import capmix.evaluate

    monkeypatch.setattr(capmix.evaluate, "AMP_DEVICE_TYPES", ("cpu",))
    spy = AutocastSpy(OracleClip())
    model = EvalModel(spy, oracle_preprocess, oracle_tokenizer, "cpu", "sha-a", "oracle")
    expected = {"classification": None, "retrieval": torch.bfloat16,
                "winogavil": torch.bfloat16}
    lines = {}
    for protocol, (task, directory) in oracle_tasks(tmp_path).items():
        spy.calls.clear()
        lines[protocol] = run_task(model, task, directory, batch_size=5)
        assert spy.calls and {c for c, _ in spy.calls} == {expected[protocol]}, protocol
        assert lines[protocol]["precision"] == ("amp" if expected[protocol] else "fp32")
    assert_oracle_metrics(lines)


def test_retrieval_and_winogavil_under_amp_on_a_tiny_open_clip(tmp_path, monkeypatch):
    # A real open_clip CLIP: its towers compute in the autocast dtype, and clip_benchmark's
    # retrieval and our WinoGAViL scoring take those features through to the metrics.
    import capmix.evaluate
    from capmix.evaldata import write_winogavil_task
    from capmix.modelrun import load_open_clip
    from tests.tiny_models import make_tiny_clip

    torch.manual_seed(0)
    parts = load_open_clip(f"local-dir:{make_tiny_clip(tmp_path / 'clip')}", None, "cpu")
    spy = AutocastSpy(parts.model)
    model = EvalModel(spy, parts.preprocess, parts.tokenizer, "cpu", "sha-t", "tiny")
    words = ["dog", "cat", "bird", "car", "tree", "house", "boat", "person", "man", "woman"]
    write_retrieval_task([{"image": grey(2 * i), "caption": [f"a photo of a {w}", f"a {w}"]}
                          for i, w in enumerate(words)], tmp_path / "r", {"type": "test"})
    write_winogavil_task([{"cue": w, "candidates": [f"c{i}" for i in range(5)],
                           "associations": ["c0", "c2"],
                           "candidate_images": [grey(v + k) for v in range(5)]}
                          for k, w in enumerate(words[:3])], tmp_path / "w", {"repo": "x"})
    tasks = {"retrieval": (Task(key="r", name="R", protocol="retrieval",
                                main_metric="mean_recall@1", size=10), tmp_path / "r"),
             "winogavil": (Task(key="misc/winogavil", name="W", protocol="winogavil",
                                main_metric="avg_jaccard_score", size=3), tmp_path / "w")}
    for amp_devices, dtype in (((), torch.float32), (("cpu",), torch.bfloat16)):
        monkeypatch.setattr(capmix.evaluate, "AMP_DEVICE_TYPES", amp_devices)
        for protocol, (task, directory) in tasks.items():
            spy.calls.clear()
            line = run_task(model, task, directory, batch_size=3)
            assert {d for _, d in spy.calls} <= {dtype, torch.float32}, protocol
            assert dtype in {d for _, d in spy.calls}, protocol
            assert line["precision"] == ("amp" if amp_devices else "fp32")
            assert line["n_samples"] == task.size
            values = [v for v in line["metrics"].values() if v is not None]
            assert values and all(0 <= v <= 1 for v in values), line["metrics"]


def test_retrieval_rows_without_captions_fail_naming_the_row(tmp_path):
    rows = [{"image": grey(1), "caption": ["item1"]}, {"image": grey(2), "caption": []}]
    with pytest.raises(EvalDataError, match="x@main: row 1: caption must be a non-empty list"):
        write_retrieval_task(rows, tmp_path / "bad", {"repo": "x"})


# ------------------------------------------------------------------ the stage: resume, checks


def tiny_suite(tmp_path):
    data = tmp_path / "data"
    write_classification_dir(data / "a", [0, 1, 1, 0], [0, 1, 0, 0], ["item0", "item1"])
    write_classification_dir(data / "b", [1, 1, 0, 0], [1, 1, 0, 1], ["item0", "item1"])
    suite = Suite("tiny", (Task(key="a", name="A", data="a", size=4),
                           Task(key="b", name="B", data="b", size=4)),
                  aggregates={"first": ("A",)})
    return suite, data


def test_evaluation_resumes_after_the_finished_tasks(tmp_path, oracle, monkeypatch):
    import capmix.evaluate as evaluate

    suite, data = tiny_suite(tmp_path)
    out = tmp_path / "eval"
    out.mkdir()
    paths = {"progress_path": out / "m.progress.jsonl", "results_path": out / "m.jsonl",
             "aggregate_path": out / "m.aggregate.json"}
    calls = []
    real_run_task = evaluate.run_task

    def dies_on_b(model, task, *args, **kwargs):
        calls.append(task.name)
        if task.name == "B":
            raise RuntimeError("killed")
        return real_run_task(model, task, *args, **kwargs)

    monkeypatch.setattr(evaluate, "run_task", dies_on_b)
    with pytest.raises(RuntimeError, match="killed"):
        evaluate_model(suite, oracle, data, **paths)
    assert list(read_results(paths["progress_path"])) == ["A"]
    assert not paths["results_path"].exists()

    calls.clear()
    monkeypatch.setattr(evaluate, "run_task", real_run_task)
    counting = []
    monkeypatch.setattr(evaluate, "run_task",
                        lambda m, t, *a, **k: counting.append(t.name) or real_run_task(m, t, *a,
                                                                                      **k))
    summary = evaluate_model(suite, oracle, data, **paths)
    assert counting == ["B"]  # A was not evaluated again
    lines = [json.loads(x) for x in paths["results_path"].read_text().splitlines()]
    assert [x["dataset"] for x in lines] == ["A", "B"]
    assert lines[0]["metrics"]["acc1"] == 0.75 and lines[1]["metrics"]["acc1"] == 0.75
    assert summary["complete"] and summary["aggregates"]["Average"] == 0.75
    assert json.loads(paths["aggregate_path"].read_text())["aggregates"]["first"] == 0.75

    # A different checkpoint (another checksum) is evaluated from scratch.
    counting.clear()
    other = EvalModel(OracleClip(), oracle_preprocess, oracle_tokenizer, "cpu", "sha-b", "o")
    evaluate_model(suite, other, data, **paths)
    assert counting == ["A", "B"]


def test_missing_or_short_data_fails_before_any_task_runs(tmp_path, oracle):
    suite, data = tiny_suite(tmp_path)
    (data / "b" / "test" / "1.tar").unlink()
    progress = tmp_path / "p.jsonl"
    with pytest.raises(EvalDataError, match=r"task 'B': 1 of 2 shards missing, e\.g\. .*1\.tar"):
        evaluate_model(suite, oracle, data, progress, tmp_path / "r", tmp_path / "a")
    assert not progress.exists()  # nothing ran
    short = Task(key="a", name="A", data="a", size=5)
    with pytest.raises(EvalDataError, match="task 'A': read 4 samples .* expected 5"):
        run_task(oracle, short, data / "a")


def test_a_captionnet_class_list_restricts_the_evaluation(tmp_path, oracle):
    """`classes: {captionnet_file: ...}` through evaluate_model: CaptionNet's own form
    (`'class name': samples`) mapped through the ImageNet task's 1,000 class names before the
    first task; the classifier knows only the listed classes (the others' made-up names
    would not even tokenise), only their samples are scored, every sample is counted."""
    names = [f"item{i}" if i < 4 else f"made-up class {i}" for i in range(1000)]
    data = tmp_path / "data"
    # labels vs the oracle's predictions (= grey levels); classes 0 and 2 kept: rows 0, 2, 4
    # right, row 7 (level 3: neither kept class, a tie, the first wins) wrong
    write_classification_dir(data / "wds_imagenet1k_test", [0, 1, 2, 3, 0, 2, 1, 3],
                             [0, 1, 2, 3, 0, 1, 1, 2], names)
    listed = tmp_path / "in100_classes.txt"
    listed.write_text("#classname : available in100 samples\n\n{'item0': 2,\n 'item2': 2}\n")
    config = {"eval_suites": {"cn": {
        "data_dir": str(data), "classes": {"captionnet_file": str(listed)},
        "tasks": [{"key": "imagenet1k", "name": "ImageNet 1k", "size": 8}]}}}
    suite = load_suite(config, "cn")
    out = {"progress_path": tmp_path / "p.jsonl", "results_path": tmp_path / "r.jsonl",
           "aggregate_path": tmp_path / "a.json"}
    evaluate_model(suite, oracle, data, **out)
    line = json.loads(out["results_path"].read_text())
    assert line["per_class"]["classnames"] == ["item0", "item2"]
    assert line["metrics"]["n_classes"] == 2 and line["metrics"]["n_samples_in_classes"] == 4
    assert line["n_samples"] == 8 and line["metrics"]["acc1"] == pytest.approx(3 / 4)

    listed.write_text("0\n1000\n")
    out["progress_path"].unlink()
    with pytest.raises(EvalConfigError, match=r"in100_classes.txt: line 2 \('1000'\): index "
                                              r"1000 is outside ImageNet-1k's 0-999"):
        evaluate_model(suite, oracle, data, **out)
    assert not out["progress_path"].exists()  # nothing ran


# ------------------------------------------------------------------ toy tasks, fetching, models


def test_toy_tasks_from_a_toy_world(tmp_path, config):
    from clip_benchmark.datasets.builder import build_wds_dataset

    from capmix.toyspec import CLASSNAMES
    from capmix.toyworld import generate_world

    spec = json.loads(json.dumps(config["toy_worlds"]["smoke"]))
    spec["splits"] = {k: 0 for k in spec["splits"]}
    spec["splits"].update({"eval_in_sketch": 12, "eval_retrieval": 5})
    world = tmp_path / "world"
    generate_world(world, spec, seed=0)
    toy = load_suite(config, "toy")
    sketch = toy.task("toy ImageNet Sketch")
    out = tmp_path / "eval" / sketch.data
    assert write_toy_task(sketch, world, out, toy.templates)["n_samples"] == 12
    dataset = build_wds_dataset("wds/toy", transform=None, data_dir=str(out))
    assert dataset.classes == list(CLASSNAMES) and dataset.templates == list(toy.templates)
    import pandas as pd

    labels = pd.read_parquet(world / "eval_in_sketch.parquet")["label"].tolist()
    assert [label for _, label in dataset] == labels
    retrieval = toy.task("toy retrieval")
    write_toy_task(retrieval, world, tmp_path / "eval" / retrieval.data, toy.templates)
    read = list(build_wds_dataset("wds/toy", None, data_dir=str(tmp_path / "eval" /
                                                                  retrieval.data)))
    captions = pd.read_parquet(world / "eval_retrieval.parquet")["captions"]
    assert [c for _, c in read] == [list(c) for c in captions]


def test_fetch_task_downloads_once_and_checks_the_layout(tmp_path):
    hub = write_classification_dir(tmp_path / "hub", [0, 1], [0, 1], ["item0", "item1"])
    calls = []

    def fake_snapshot_download(repo_id, repo_type, local_dir):
        import shutil

        calls.append(repo_id)
        assert repo_type == "dataset"
        shutil.copytree(hub, local_dir, dirs_exist_ok=True)

    task = Task(key="vtab/x", name="X", size=2, data="wds_vtab-x_test")
    manifest = fetch_task(task, tmp_path / "data", snapshot_download=fake_snapshot_download)
    assert calls == ["djghosh/wds_vtab-x_test"] and manifest["nshards"] == 2
    fetch_task(task, tmp_path / "data", snapshot_download=fake_snapshot_download)
    assert calls == ["djghosh/wds_vtab-x_test"]  # complete: not fetched again

    broken = Task(key="y", name="Y", data="wds_y_test")
    with pytest.raises(EvalDataError, match="task 'Y': .*nshards.txt is missing"):
        fetch_task(broken, tmp_path / "data", snapshot_download=lambda **kw: None)



def hub_parquet(path, rows):
    """A Parquet file as the Hub's export writes image datasets: images as {bytes, path}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def fake_parquet_hub(files):
    """A snapshot_download that writes ``files`` ({relative path: rows}) and logs its calls."""
    calls = []

    def snapshot_download(repo_id, repo_type, local_dir, revision=None, allow_patterns=None):
        calls.append({"repo": repo_id, "revision": revision, "allow": allow_patterns})
        assert repo_type == "dataset" and allow_patterns == ["*.parquet"]
        for relative, rows in files.items():
            hub_parquet(Path(local_dir) / relative, rows)

    return snapshot_download, calls


def test_hf_dataset_tasks_are_read_from_parquet_without_running_repo_code(tmp_path):
    """The nlphuji sets are script datasets: capmix reads the rows from the Hub's Parquet export
    (or a pinned revision), never through `datasets`' loading-script path."""
    rows = [{"image": {"bytes": grey(i), "path": None}, "caption": [f"item{i}", f"thing{i}"],
             "img_id": str(i)} for i in range(3)]
    download, calls = fake_parquet_hub({
        "TEST/test/0000.parquet": rows[:2], "TEST/test/0001.parquet": rows[2:],
        "TEST/train/0000.parquet": [{"image": {"bytes": grey(9), "path": None},
                                     "caption": ["not a test row"], "img_id": "9"}]})
    hf = Task(key="retrieval/z", name="Z", protocol="retrieval", data="hf_z", size=3,
              source={"type": "hf_dataset", "repo": "nlphuji/z"})
    manifest = fetch_task(hf, tmp_path / "data", snapshot_download=download)
    assert calls == [{"repo": "nlphuji/z", "revision": HF_PARQUET_REVISION,
                      "allow": ["*.parquet"]}]
    assert manifest["n_samples"] == 3 and manifest["source"]["repo"] == "nlphuji/z"
    assert sorted(manifest["source"]["sha256"]) == ["TEST/test/0000.parquet",
                                                     "TEST/test/0001.parquet"]
    assert (tmp_path / "data" / "hf_z" / "dataset_type.txt").read_text() == "retrieval"
    samples = list(wds.WebDataset(str(tmp_path / "data" / "hf_z" / "test" / "0.tar"),
                                  shardshuffle=False))
    assert [s["txt"].decode() for s in samples] == [f"item{i}\nthing{i}" for i in range(3)]
    assert [s["png"] for s in samples] == [grey(i) for i in range(3)]  # bytes kept as sent

    pinned = Task(key="retrieval/p", name="P", protocol="retrieval", data="hf_p",
                  source={"type": "hf_dataset", "repo": "nlphuji/p", "revision": "a" * 40})
    download, calls = fake_parquet_hub({"data/test-00000-of-00001.parquet": rows})
    assert fetch_task(pinned, tmp_path / "data", snapshot_download=download)["n_samples"] == 3
    assert calls[0]["revision"] == "a" * 40


@pytest.mark.parametrize("files, size, message", [
    ({"TEST/train/0000.parquet": [{"image": {"bytes": b"x", "path": None}, "caption": ["a"]}]},
     None, r"nlphuji/z at revision 'refs/convert/parquet' has no Parquet files for split "
           r"'test'.*does not run dataset loading scripts"),
    ({"A/test/0.parquet": [{"caption": ["a"]}], "B/test/0.parquet": [{"caption": ["b"]}]},
     None, r"several configs \(A, B\); name one as the task's source.config"),
    ({"T/test/0.parquet": [{"image": {"bytes": None, "path": "/etc/passwd"},
                            "caption": ["a"]}]},
     None, r"nlphuji/z@refs/convert/parquet: row 0: image without embedded bytes "
           r"\(path '/etc/passwd'\)"),
    ({"T/test/0.parquet": [{"image": {"bytes": b"<html>", "path": None}, "caption": ["a"]}]},
     None, r"row 0: the image bytes do not decode"),
    ({"T/test/0.parquet": [{"image": {"bytes": grey(1), "path": None}, "caption": []}]},
     None, r"row 0: caption must be a non-empty list of one-line captions"),
    ({"T/test/0.parquet": [{"img": {"bytes": grey(1), "path": None}, "caption": ["a"]}]},
     None, r"row 0 has no 'image' \(columns: img, caption\)"),
    ({"T/test/0.parquet": [{"image": {"bytes": grey(1), "path": None}, "caption": ["a"]}]},
     2, r"split 'test' has 1 rows, the suite says size 2"),
])
def test_hf_dataset_rows_that_cannot_be_used_fail_naming_repo_and_row(tmp_path, files, size,
                                                                       message):
    download, _ = fake_parquet_hub(files)
    hf = Task(key="retrieval/z", name="Z", protocol="retrieval", data="hf_z", size=size,
              source={"type": "hf_dataset", "repo": "nlphuji/z"})
    with pytest.raises(EvalDataError, match=message):
        fetch_task(hf, tmp_path / "data", snapshot_download=download)
    assert not (tmp_path / "data" / "hf_z" / TASK_MANIFEST).exists()  # not marked complete


def test_winogavil_rows_from_parquet(tmp_path):
    rows = [{"cue": "fruit", "candidates": ["apple", "car", "pear"],
             "associations": ["apple", "pear"], "num_associations": 2,
             "candidate_images": [{"bytes": grey(i), "path": None} for i in range(3)]}]
    download, _ = fake_parquet_hub({"TEST/test/0000.parquet": rows})
    task = Task(key="misc/winogavil", name="WinoGAViL", protocol="winogavil", data="hf_w",
                size=1, source={"type": "hf_dataset", "repo": "nlphuji/winogavil"})
    assert fetch_task(task, tmp_path / "data", snapshot_download=download)["n_samples"] == 1
    (sample,) = wds.WebDataset(str(tmp_path / "data" / "hf_w" / "test" / "0.tar"),
                               shardshuffle=False)
    assert json.loads(sample["json"])["associations"] == ["apple", "pear"]
    assert sorted(k for k in sample if k.endswith(".png")) == ["0.png", "1.png", "2.png"]


def test_load_model_reads_an_open_clip_train_checkpoint(tmp_path):
    from tests.tiny_models import make_tiny_clip

    directory = make_tiny_clip(tmp_path / "clip")
    name = f"local-dir:{directory}"
    import open_clip

    reference = open_clip.create_model(name, pretrained=None)
    torch.nn.init.normal_(reference.logit_scale)  # differs from a fresh model's
    # open_clip_train saves {'epoch', 'state_dict' (DDP: 'module.' prefix), ...}
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in
                                           reference.state_dict().items()}}, tmp_path / "e.pt")
    model = load_model(name, tmp_path / "e.pt", device="cpu")
    for key, value in reference.state_dict().items():
        assert torch.equal(model.model.state_dict()[key], value), key
    assert len(model.sha256) == 64
    texts = model.tokenizer(["a red circle"])
    assert texts.shape[0] == 1 and math.isfinite(float(model.model.logit_scale))


def test_toy_eval_tasks_lists_every_toy_task_once() -> None:
    """One job per world builds the toy suite's data: it needs every task up front."""
    config = pipeline_config()
    tasks = toy_eval_tasks(config)
    suite = load_suite(config, "toy")
    assert tasks == {t.data: ("toy", t.name) for t in sorted(suite.tasks, key=lambda t: t.data)}
    assert list(tasks) == sorted(tasks)
    # a second toy suite sharing the directories does not build them twice
    config["eval_suites"]["toy_copy"] = config["eval_suites"]["toy"]
    assert toy_eval_tasks(config) == tasks
    config["eval_suites"] = {k: v for k, v in config["eval_suites"].items() if not v.get("toy")}
    assert toy_eval_tasks(config) == {}
