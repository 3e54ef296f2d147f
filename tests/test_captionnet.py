"""CaptionNet as a source (capmix.captionnet): its spreadsheets in the real format, the
ImageNet rows matched to a local ImageNet copy by file name, both label sources and the
shipped BLIP captions kept; and a CaptionNet fixture run end to end through the DAG with the
100-class (here: toy 6-class) evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from capmix.captionnet import (
    SUBSETS,
    UNMATCHED_POLICIES,
    build_captionnet_metadata,
    idx_labels,
    resolve_captionnet,
)
from capmix.config import load_schema, pipeline_config
from capmix.fetch import FetchSettings, fetch_pool
from capmix.fetch_limits import UrlLimits, guarded_download_image, set_limits
from capmix.fetch_reasons import failure_reason
from capmix.sources import MetadataError, metadata_parts
from capmix.sourcespec import (
    SOURCE_TYPES,
    allowed_url_schemes,
    allows_local_urls,
    local_file_roots,
)
from capmix.suites import CLASS_SUBSET_KINDS
from capmix.uids import derive_uid
from tests.conftest import REPO, copy_workflow
from tests.fault_server import FaultServer
from tests.test_workflow import snakemake

#: The spreadsheet's header as capmix assumes it (capmix.captionnet.DEFAULT_COLUMNS, plus the
#: authors' local `path` and the BLIP caption), tab-separated as VL Hub reads it.
HEADER = ["title", "idx", "url", "filename", "path", "blip_caption"]


def write_image(path: Path, colour: tuple[int, int, int], fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 32), colour).save(path, format=fmt)
    return path


def write_spreadsheet(path: Path, rows: list[dict]) -> Path:
    """A CaptionNet metadata spreadsheet: TSV, a header line, every field as text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(HEADER)] + ["\t".join(str(row.get(c, "")) for c in HEADER)
                                   for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def captionnet_fixture(root: Path, n_web: int = 30, n_imagenet: int = 10,
                       n_unmatched: int = 2) -> tuple[Path, Path]:
    """A spreadsheet with `n_web` rows by URL (file://, tiny images) and `n_imagenet` ImageNet
    rows without URL, all but `n_unmatched` of them in a tiny local "ImageNet" folder
    (class folders of JPEGs, as ImageNet's train set)."""
    rows = []
    for i in range(n_web):
        image = write_image(root / "web" / f"{i}.png", (7 * i % 256, 90, 200 - 5 * i))
        rows.append({"title": f"my photo {i} from flickr", "idx": f"{i % 6}, {(i + 1) % 6}"
                     if i % 5 == 0 else str(i % 6), "url": image.as_uri(), "filename": "",
                     "path": f"/scratch/captionnet/in100/{i}.png",
                     "blip_caption": f"a blip caption of image {i}"})
    imagenet = root / "imagenet"
    for j in range(n_imagenet):
        name = f"n0144076{j % 3}_{100 + j}.JPEG"
        if j < n_imagenet - n_unmatched:
            write_image(imagenet / name.split("_")[0] / name, (30 * j % 256, 20, 20), "JPEG")
        rows.append({"title": f"imagenet image {j}", "idx": str(j % 6), "url": "",
                     "filename": name, "path": f"/imagenet/train/{name}",
                     "blip_caption": f"a blip caption of imagenet image {j}"})
    return write_spreadsheet(root / "imagenet_100.tsv", rows), imagenet


def source_for(spreadsheet: Path, imagenet: Path | None, **extra) -> dict:
    return {"type": "captionnet", "subset": "imagenet_100", "path": str(spreadsheet),
            "format": "tsv", "imagenet_dir": str(imagenet) if imagenet else None,
            "unmatched": "stop", "allow_local_urls": True, "keep_columns": "all", **extra}


def test_the_lists_of_allowed_values_match_the_schema():
    schema = load_schema()["$defs"]["source"]
    assert schema["properties"]["type"]["enum"] == list(SOURCE_TYPES)
    branch = next(b["then"] for b in schema["allOf"]
                  if b["if"]["properties"]["type"]["const"] == "captionnet")
    assert branch["properties"]["subset"]["enum"] == list(SUBSETS)
    assert branch["properties"]["unmatched"]["enum"] == list(UNMATCHED_POLICIES)
    classes = load_schema()["$defs"]["eval_suite"]["properties"]["classes"]["properties"]
    assert [k for k in classes if k != "imagenet_task"] == list(CLASS_SUBSET_KINDS)


def test_imagenet_rows_are_matched_by_file_name_and_unmatched_ones_reported(tmp_path):
    spreadsheet, imagenet = captionnet_fixture(tmp_path, n_web=4, n_imagenet=5, n_unmatched=2)
    with pytest.raises(MetadataError, match=r"2 row\(s\) without URL match no file .*"
                                            r"row 8 \('n01440760_103.JPEG'\)"):
        resolve_captionnet(source_for(spreadsheet, imagenet), spreadsheet)
    table, report = resolve_captionnet(source_for(spreadsheet, imagenet, unmatched="drop"),
                                       spreadsheet)
    assert report["rows"] == 9 and report["rows_with_url"] == 4
    assert report["rows_matched_by_filename"] == 3 and report["rows_unmatched"] == 2
    assert report["examples_unmatched"] == ["n01440760_103.JPEG", "n01440761_104.JPEG"]
    assert table.num_rows == 7
    frame = table.to_pandas()
    matched = frame[frame["capmix_url_origin"] == "imagenet_dir"]
    assert len(matched) == 3
    root = imagenet.resolve().as_uri()
    assert all(u.startswith(root + "/") for u in matched["capmix_url"])
    assert matched["capmix_url"].iloc[0].endswith("/n01440760/n01440760_100.JPEG")
    # the uid of an ImageNet row does not depend on where this machine keeps ImageNet
    assert matched["capmix_uid"].iloc[0] == derive_uid("imagenet:n01440760_100.JPEG",
                                                       "imagenet image 0")
    # both label sources stay exactly as the file has them
    assert frame["idx"].iloc[0] == "0, 1" and frame["title"].iloc[1] == "my photo 1 from flickr"
    assert idx_labels(table, "idx")[0] == [0, 1]


@pytest.mark.parametrize("change, expected", [
    ({"url": "file:///etc/passwd"}, r"column 'url': 1 URL\(s\) not http\(s\): row 1"),
    ({"idx": "1000"}, r"column 'idx': 1 value\(s\) are not ImageNet-1k indices .*row 1"),
    ({"idx": "dog"}, r"column 'idx'.*row 1 \('dog'\)"),
    ({"url": "", "filename": ""}, r"neither a URL nor a file name: row 1"),
])
def test_bad_rows_stop_the_run_naming_file_column_and_row(tmp_path, change, expected):
    rows = [{"title": "t", "idx": "3", "url": "https://farm1.example/1.jpg", "filename": "",
             "path": "", "blip_caption": "b"}]
    rows[0].update(change)
    spreadsheet = write_spreadsheet(tmp_path / "s.tsv", rows)
    imagenet = tmp_path / "imagenet"
    imagenet.mkdir()
    with pytest.raises(MetadataError, match=expected):
        resolve_captionnet(source_for(spreadsheet, imagenet, allow_local_urls=False),
                           spreadsheet)


def test_missing_columns_and_ambiguous_names_are_named(tmp_path):
    spreadsheet = tmp_path / "s.tsv"
    spreadsheet.write_text("caption\turl\nx\thttps://h/1.jpg\n")
    with pytest.raises(MetadataError, match=r"missing: \[\"text -> 'title'\", \"filename"):
        resolve_captionnet(source_for(spreadsheet, None), spreadsheet)
    spreadsheet, imagenet = captionnet_fixture(tmp_path / "b", n_web=1, n_imagenet=1,
                                               n_unmatched=0)
    write_image(imagenet / "copy" / "n01440760_100.JPEG", (1, 2, 3), "JPEG")
    with pytest.raises(MetadataError, match=r"found more than once .*row 2 "):
        resolve_captionnet(source_for(spreadsheet, imagenet), spreadsheet)
    with pytest.raises(MetadataError, match="set source.imagenet_dir"):
        resolve_captionnet(source_for(spreadsheet, None), spreadsheet)


def test_metadata_keeps_both_label_sources_and_reports_the_matching(tmp_path):
    spreadsheet, imagenet = captionnet_fixture(tmp_path, n_web=3, n_imagenet=3, n_unmatched=1)
    # an imagenet_dir lets the fetch read local files (its matched rows; the spreadsheet's own
    # URLs must still be http(s) unless allow_local_urls, test_bad_rows_stop_the_run...)
    assert "file" in allowed_url_schemes(source_for(spreadsheet, imagenet,
                                                    allow_local_urls=False))
    assert "file" not in allowed_url_schemes(source_for(spreadsheet, None,
                                                        allow_local_urls=False))
    source = source_for(spreadsheet, imagenet, unmatched="drop")
    manifest = build_captionnet_metadata("cn", source, spreadsheet, tmp_path / "metadata")
    assert manifest["rows"] == 5 and manifest["captionnet"]["rows_unmatched"] == 1
    assert manifest["captionnet"]["examples_unmatched"] == ["n01440762_102.JPEG"]
    assert manifest["source"]["type"] == "captionnet"
    assert manifest["parts"][0]["source_file"] == str(spreadsheet)
    assert not list(tmp_path.glob(".metadata.*"))
    frame = pd.read_parquet(metadata_parts(tmp_path / "metadata")[0])
    assert list(frame.columns[:3]) == ["uid", "url", "text"]
    assert {"idx", "blip_caption", "filename", "capmix_url_origin"} <= set(frame.columns)
    assert frame["text"].iloc[0] == "my photo 0 from flickr"  # the caption label source
    assert frame["idx"].iloc[0] == "0, 1"                      # the idx label source


@pytest.mark.integration
def test_imagenet_dir_allows_its_files_only_and_keeps_the_address_guard(tmp_path):
    """imagenet_dir (without allow_local_urls) lets the fetch read the ImageNet files the
    metadata stage matched, and nothing else of this machine: the spreadsheet's http URLs to
    a private address (the fault server on 127.0.0.1; the cloud metadata service) are never
    requested (``internal_address``), and a file:// URL outside imagenet_dir stops the
    metadata stage, named."""
    imagenet = tmp_path / "imagenet"
    write_image(imagenet / "n01440764" / "n01440764_1.JPEG", (10, 20, 30), "JPEG")
    outside = write_image(tmp_path / "elsewhere" / "secret.png", (1, 2, 3))
    with FaultServer(max_seconds=4) as server:
        rows = [{"title": "imagenet image", "idx": "0", "url": "",
                 "filename": "n01440764_1.JPEG"},
                {"title": "a png on 127.0.0.1", "idx": "1", "url": server.url("png", 0)},
                {"title": "cloud metadata", "idx": "2",
                 "url": "http://169.254.169.254/latest/meta-data/x.jpg"}]
        bad = write_spreadsheet(tmp_path / "bad.tsv", [*rows, {"title": "outside", "idx": "3",
                                                               "url": outside.as_uri()}])
        source = source_for(bad, imagenet, allow_local_urls=False)
        with pytest.raises(MetadataError, match=r"bad.tsv: column 'url': 1 URL\(s\) not "
                                                r"http\(s\): row 4 \('file:///"):
            build_captionnet_metadata("cn", source, bad, tmp_path / "metadata")
        assert not (tmp_path / "metadata").exists()

        spreadsheet = write_spreadsheet(tmp_path / "s.tsv", rows)
        source = source_for(spreadsheet, imagenet, allow_local_urls=False)
        assert not allows_local_urls(source) and "file" in allowed_url_schemes(source)
        build_captionnet_metadata("cn", source, spreadsheet, tmp_path / "metadata")
        # as the workflow's fetch_settings adds them to the pool's fetch settings
        settings = FetchSettings.from_config(
            {"image_size": 16, "samples_per_shard": 8, "retries": 0, "timeout": 2,
             "threads_per_process": 2, "encode_format": "png",
             "local_file_roots": list(local_file_roots(source))}, "captionnet",
            allows_local_urls(source))
        assert not settings.allow_internal_addresses
        assert settings.local_file_roots == (str(imagenet.resolve()),)
        report = fetch_pool("cn", tmp_path / "metadata", tmp_path / "shards",
                            tmp_path / "index.parquet", tmp_path / "report.json", settings)
        assert server.requests == []  # the check precedes the connection
    index = pd.read_parquet(tmp_path / "index.parquet").merge(
        pd.read_parquet(metadata_parts(tmp_path / "metadata")[0])[["uid", "text"]], on="uid")
    outcome = dict(zip(index["text"], index["reason"].where(index["status"] == "failed",
                                                            "fetched"), strict=True))
    assert outcome == {"imagenet image": "fetched", "a png on 127.0.0.1": "internal_address",
                       "cloud metadata": "internal_address"}
    assert report["n_fetched"] == 1 and report["failures_by_reason"] == {"internal_address": 2}


def test_the_fetch_reads_no_local_file_outside_imagenet_dir(tmp_path):
    """The fetch's own check (the metadata stage writes file:// URLs only under imagenet_dir,
    but the fetch does not take that on trust): a file outside, a ``..`` path or a link out of
    the folder, another host, a query: ``local_file_refused``; a file under it is read. A
    link out of imagenet_dir that the metadata stage matches by name stops it, named."""
    imagenet = tmp_path / "imagenet"
    inside = write_image(imagenet / "n01" / "in.png", (5, 5, 5))
    outside = write_image(tmp_path / "secret.png", (6, 6, 6))
    (imagenet / "n01" / "link.png").symlink_to(outside)
    set_limits(UrlLimits(max_body_bytes=10**6, deadline_s=5, max_image_area=10**7,
                         allow_internal=False, local_roots=(str(imagenet.resolve()),)))
    try:
        _, body, error = guarded_download_image((0, inside.as_uri()), 2, None, None)
        assert error is None and body.getvalue() == inside.read_bytes()
        for url in (outside.as_uri(), f"{imagenet.as_uri()}/../secret.png",
                    (imagenet / "n01" / "link.png").as_uri(),
                    f"file://otherhost{inside}", inside.as_uri() + "?x=1"):
            _, body, error = guarded_download_image((0, url), 2, None, None)
            assert body is None and failure_reason("failed_to_download", error) == \
                "local_file_refused", (url, error)
    finally:
        set_limits(None)
    spreadsheet = write_spreadsheet(tmp_path / "s.tsv", [
        {"title": "t", "idx": "1", "url": "", "filename": "link.png"}])
    with pytest.raises(MetadataError, match=r"s.tsv: 1 matched file\(s\) .* links to files "
                                            r"outside it.*row 1 \('link.png'"):
        resolve_captionnet(source_for(spreadsheet, imagenet, allow_local_urls=False),
                           spreadsheet)


def test_captionnet_config_validates_and_dry_runs(tmp_path):
    """config/captionnet.yaml: the four subsets, the shipped BLIP captions as a caption set,
    the 100-class suite. Its dry run on spreadsheets in place."""
    config = pipeline_config(REPO / "config" / "captionnet.yaml")
    pools = {p["name"]: p for p in config["pools"]}
    assert sorted(p["source"]["subset"] for p in pools.values()) == sorted(SUBSETS)
    assert all(p["eval"]["suite"] == "captionnet" for p in pools.values())
    workdir = copy_workflow(tmp_path / "wf")
    for pool in pools.values():
        rows = [{"title": "a dog", "idx": "207", "url": "https://farm1.example/1.jpg",
                 "filename": "", "path": "", "blip_caption": "a dog on grass"}]
        write_spreadsheet(workdir / pool["source"]["path"], rows)
    (workdir / "data/imagenet/train").mkdir(parents=True)
    result = snakemake(workdir, "-n", "--cores", "1", "--configfile", "config/captionnet.yaml")
    assert result.returncode == 0, result.stderr + result.stdout
    for name in pools:
        assert f"results/{name}/metadata" in result.stdout
        assert f"results/{name}/eval/synthetic_no_filter.jsonl" in result.stdout
    for name in ("captionnet_imagenet_100", "captionnet_openimages_100"):
        assert f"results/{name}/eval/shipped_no_filter.jsonl" in result.stdout
        assert f"results/{name}/captions/captionnet_blip/1.0/" in result.stdout


def test_captionnet_fixture_end_to_end(tmp_path):
    """A CaptionNet spreadsheet (file:// images, ImageNet rows matched in a local folder,
    two unmatched and dropped) through metadata -> fetch -> shipped BLIP captions and raw ->
    toy CLIP scores -> subsets -> training -> the toy 6-class evaluation."""
    workdir = copy_workflow(tmp_path / "wf")
    spreadsheet, imagenet = captionnet_fixture(workdir / "data" / "cn")
    config = {
        "pools": [{
            "name": "cn_toy",
            "source": {"type": "captionnet", "subset": "imagenet_100",
                       "path": str(spreadsheet.relative_to(workdir)),
                       "imagenet_dir": str(imagenet.relative_to(workdir)),
                       "unmatched": "drop", "allow_local_urls": True, "world": "smoke"},
            "fetch": {"image_size": 32, "samples_per_shard": 16, "retries": 0,
                      "threads_per_process": 2},
            "captioners": ["cn_blip"],
            "scorer": "toy_clip",
            "mix": {"sources": {"shipped": "cn_blip/1.0"}, "samples_per_shard": 16,
                    "strategies": ["raw_no_filter", "shipped_no_filter"]},
            "train": {"scale": "toy_smoke", "strategies": ["shipped_no_filter"]},
            "eval": {"suite": "toy_captionnet"},
            "targets": ["eval"],
        }],
        "captioners": {"cn_blip": {"backend": "shipped", "column": "blip_caption",
                                   "temperatures": [1.0]}},
        "targets": ["eval"],
    }
    (workdir / "config" / "cn_test.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "--cores", "1", "--configfile", "config/cn_test.yaml")
    assert result.returncode == 0, result.stderr[-5000:]
    results = workdir / "results" / "cn_toy"
    manifest = json.loads((results / "metadata" / "manifest.json").read_text())
    assert manifest["rows"] == 38 and manifest["captionnet"]["rows_unmatched"] == 2
    assert manifest["captionnet"]["rows_matched_by_filename"] == 8
    report = json.loads((results / "fetch" / "report.json").read_text())
    assert report["n_fetched"] == 38  # every URL row and every matched ImageNet file
    shipped = json.loads((results / "captions/cn_blip/1.0/manifest.json").read_text())
    assert shipped["n_captioned"] == 38
    captions = pd.concat(pd.read_parquet(results / "captions/cn_blip/1.0" / s["output"])
                         for s in shipped["shards"])
    assert captions["caption"].str.startswith("a blip caption of").all()
    lines = [json.loads(x) for x in
             (results / "eval" / "shipped_no_filter.jsonl").read_text().splitlines()]
    assert [x["dataset"] for x in lines] == ["toy ImageNet", "toy ImageNet v2",
                                             "toy ImageNet Sketch", "toy ImageNet-R",
                                             "toy ImageNet clutter"]
    world = json.loads((workdir / "results/toyworld/smoke/manifest.json").read_text())
    for line in lines:
        # the classifier knew the suite's 6 classes; every sample of the task was counted
        assert line["metrics"]["n_classes"] == 6
        assert line["per_class"]["classnames"] == ["circle", "square", "triangle", "star",
                                                   "cross", "diamond"]
        assert 0 < line["metrics"]["n_samples_in_classes"] < line["n_samples"]
        assert line["n_samples"] == world["counts"][{"toy ImageNet": "eval_in",
                                                     "toy ImageNet v2": "eval_in_v2",
                                                     "toy ImageNet Sketch": "eval_in_sketch",
                                                     "toy ImageNet-R": "eval_in_rendition",
                                                     "toy ImageNet clutter": "eval_in_clutter"}
                                                    [line["dataset"]]]
        assert 0 <= line["metrics"]["main_metric"] <= 1
    summary = json.loads((results / "eval" / "shipped_no_filter.aggregate.json").read_text())
    assert summary["complete"]


def test_a_suite_class_subset_is_names_or_a_file(tmp_path):
    """The 100-class restriction is suite data: class names inline (the toy suite) or a file
    the user supplies (CaptionNet's); only classification tasks are restricted."""
    from capmix.evaluate import restricted_classes
    from capmix.suites import EvalConfigError, load_suite, suite_problems, task_class_subset

    tasks = [{"key": "a", "name": "A"}, {"key": "r", "name": "R", "protocol": "retrieval",
                                         "main_metric": "mean_recall@1"}]
    both = {"data_dir": "d", "tasks": tasks, "classes": {"names": ["x"], "file": "f"}}
    assert any("exactly one of `names`, `file`, `captionnet_file`" in p
               for p in suite_problems("s", both))
    names = tmp_path / "in100.txt"
    names.write_text("# CaptionNet\ntench\ngoldfish\n\n")
    suite = load_suite({"eval_suites": {"s": {"data_dir": "d", "tasks": tasks,
                                              "classes": {"file": str(names)}}}}, "s")
    assert task_class_subset(suite.tasks[0]) == ("tench", "goldfish")
    assert task_class_subset(suite.tasks[1]) is None  # retrieval: not restricted
    assert restricted_classes(suite.tasks[0], ["goldfish", "shark", "tench"]) == [0, 2]
    with pytest.raises(Exception, match="none of its 1 classes"):
        restricted_classes(suite.tasks[0], ["shark"])
    names.write_text("# nothing\n")
    with pytest.raises(EvalConfigError, match="names no class"):
        task_class_subset(suite.tasks[0])


#: ImageNet-1k's class names as a task's classnames.txt lists them (OpenAI's spellings, as
#: DataComp's ImageNet task has them) at the indices the tests use; the others made up.
IMAGENET_NAMES = {0: "tench", 1: "goldfish", 348: "ram (adult male sheep)",
                  386: "African bush elephant", 421: "baluster / handrail",
                  657: "missile", 744: "missile"}
#: A stand-in for timm's ImageNet-1k WordNet ids (class-index order) with the real first two.
WNIDS = ["n01440764", "n01443537"] + [f"n{90000000 + i:08d}" for i in range(2, 1000)]


def imagenet_names() -> list[str]:
    return [IMAGENET_NAMES.get(i, f"made-up class {i}") for i in range(1000)]


@pytest.mark.parametrize("text", [
    # the form of CaptionNet's own metadata/in100_classes.txt (seen): a dict of
    # 'class name': available samples, one entry a line, names lower case without punctuation
    "#classname : available in100 samples\n\n{'african bush elephant': 2082,\n"
    " 'ram adult male sheep': 1377,\n 'tench': 10,\n 'baluster  handrail': 804}\n",
    "386\n348\n0\n421\n",                                       # one index a line (assumed)
    "# wnids\nn90000386\nn90000348\nn01440764\nn90000421\n",     # one WordNet id a line
    "386 African bush elephant\n348: ram\n0\ttench\n421, 'baluster / handrail'\n",  # idx name
    "{386: 'African bush elephant',\n 348: 'ram',\n 0: 'tench, Tinca tinca',\n 421: 'x'}\n",
    "n90000386 elephant\nn90000348 ram\nn01440764 tench\nn90000421 handrail\n",  # wnid name
])
def test_captionnet_class_list_forms_map_to_the_task_class_names(tmp_path, text):
    from capmix.imagenet_classes import class_list_problems, class_names

    path = tmp_path / "in100_classes.txt"
    path.write_text(text)
    assert class_names(path, imagenet_names(), "classnames.txt", wnids=WNIDS) == (
        "African bush elephant", "ram (adult male sheep)", "tench", "baluster / handrail")
    assert class_list_problems(path, wnids=WNIDS) == []


@pytest.mark.parametrize("text, expected", [
    ("386\n1000\n", r"in100_classes.txt: line 2 \('1000'\): index 1000 is outside "
                    r"ImageNet-1k's 0-999"),
    ("n01440764\nn01234567\n", r"in100_classes.txt: line 2 \('n01234567'\): n01234567 is not "
                               r"one of ImageNet-1k's 1000 WordNet ids"),
    ("{'tench': 3,\n 'african bush elefant': 2}\n",
     r"line 2 \(\"'african bush elefant': 2\}\"\): no class of classnames.txt is named so "
     r"\(close: \['african bush elephant'"),
    ("'missile': 4\n", r"line 1 .*matches 2 classes .*give its index instead"),
    ("0\n'tench': 5\n", r"line 2 .*class 0 \('tench'\) is already on line 1"),
    ("# nothing\n", r"in100_classes.txt names no class"),
])
def test_a_bad_class_list_is_named_with_its_line(tmp_path, text, expected):
    from capmix.imagenet_classes import ClassListError, class_names

    path = tmp_path / "in100_classes.txt"
    path.write_text(text)
    with pytest.raises(ClassListError, match=expected):
        class_names(path, imagenet_names(), "classnames.txt", wnids=WNIDS)
    with pytest.raises(ClassListError, match=r"classnames.txt lists 999 class names, not "
                                             r"ImageNet-1k's 1000"):
        class_names(path, imagenet_names()[:999], "classnames.txt", wnids=WNIDS)


def test_wordnet_ids_are_placed_by_timms_imagenet_list(tmp_path):
    from capmix.imagenet_classes import IMAGENET_WNIDS, class_names, package_file

    if package_file(*IMAGENET_WNIDS) is None:
        pytest.skip("timm (the ImageNet-1k WordNet ids) is not installed")
    path = tmp_path / "in100_classes.txt"
    path.write_text("n01443537\nn01440764\n")  # goldfish, tench: ImageNet-1k's 1 and 0
    assert class_names(path, imagenet_names(), "classnames.txt") == ("goldfish", "tench")


def test_a_suite_takes_captionnet_class_list_and_maps_it_before_evaluating(tmp_path):
    """`classes: {captionnet_file: ...}`: checked at start-up where it can be (indices,
    WordNet ids), mapped through the suite's ImageNet 1k task's classnames.txt before the
    first task; every classification task (ImageNet-R's 200 classes too) is restricted."""
    from capmix.evaluate import restricted_classes
    from capmix.suites import (
        EvalConfigError,
        eval_problems,
        load_suite,
        resolve_class_subset,
        task_class_subset,
    )

    listed = tmp_path / "in100_classes.txt"
    listed.write_text("{'tench': 7,\n 'ram adult male sheep': 5}\n")
    tasks = [{"key": "imagenet1k", "name": "ImageNet 1k"},
             {"key": "imagenet-r", "name": "ImageNet-R"},
             {"key": "r", "name": "R", "protocol": "retrieval", "main_metric": "mean_recall@1"}]
    spec = {"data_dir": str(tmp_path / "data"), "tasks": tasks,
            "classes": {"captionnet_file": str(listed)}}
    config = {"eval_suites": {"cn": spec}}
    assert eval_problems(config) == []
    suite = load_suite(config, "cn")
    with pytest.raises(EvalConfigError, match="not mapped to class names yet"):
        task_class_subset(suite.tasks[0])
    with pytest.raises(EvalConfigError, match=r"wds_imagenet1k_test/classnames.txt is missing"):
        resolve_class_subset(suite, tmp_path / "data")
    reference = tmp_path / "data" / "wds_imagenet1k_test" / "classnames.txt"
    reference.parent.mkdir(parents=True)
    reference.write_text("\n".join(imagenet_names()) + "\n")
    resolved = resolve_class_subset(suite, tmp_path / "data")
    assert task_class_subset(resolved.tasks[0]) == ("tench", "ram (adult male sheep)")
    assert task_class_subset(resolved.tasks[2]) is None  # retrieval: not restricted
    rendition = ["goldfish", "ram (adult male sheep)", "made-up class 7"]  # a 200-class task
    assert restricted_classes(resolved.tasks[1], rendition) == [1]

    listed.write_text("0\n1000\n")  # a bad list already in place stops the start-up check
    assert any("eval suite 'cn', classes.captionnet_file: class list" in p
               and "index 1000 is outside" in p for p in eval_problems(config))
    spec["classes"] = {"captionnet_file": str(listed), "imagenet_task": "imagenet-a"}
    assert any("ImageNet-1k task 'imagenet-a'" in p for p in eval_problems(config))
    spec["classes"] = {"captionnet_file": str(listed), "names": ["tench"]}
    assert any("exactly one of `names`, `file`, `captionnet_file`" in p
               for p in eval_problems(config))
