"""The web image-text datasets (CC3M, CC12M, YFCC100M/YFCC-15M, RedCaps, LAION-400M, MS-COCO
captions, SBU): each read from a tiny file in its real format (written here, headers and
types as the real files have them), its metadata normalised as its shipped config maps it,
a malformed row named by file and line, and each config's full DAG planned by a dry run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from capmix.config import pipeline_config
from capmix.sources import MetadataError, build_metadata, source_files
from capmix.uids import derive_key_uid, derive_uid
from capmix.webformats import READERS, YFCC100M_COLUMNS
from tests.conftest import REPO, copy_workflow

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


# ------------------------------------------------------------ fixtures in the real formats


def write_cc3m(root: Path) -> Path:
    """Google's Train_GCC-training.tsv: no header, caption TAB url (quotes are text)."""
    path = root / "data" / "cc3m" / "Train_GCC-training.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "a very typical bus station\thttp://lh6.googleusercontent.com/-2Y3.jpg\n"
        'actor attends the "premiere" of the film\thttps://i.dailymail.co.uk/i/pix/1.jpg\n'
        "NA\thttp://www.example.com/na.jpg\n")
    return path


def write_cc12m(root: Path) -> Path:
    """cc12m.tsv: no header, url TAB caption (names replaced by <PERSON>)."""
    path = root / "data" / "cc12m" / "cc12m.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "https://i.pinimg.com/originals/1.jpg\t<PERSON> was an American painter\n"
        "http://www.example.org/2.png\tClose-up of a red ladybug, 'macro'\n")
    return path


def yfcc_line(line_number: int, photo_id: str, title: str, description: str, url: str,
              marker: str = "0") -> str:
    fields = {name: "" for name in YFCC100M_COLUMNS}
    fields.update({
        "line_number": str(line_number), "photo_id": photo_id,
        "photo_hash": f"{int(photo_id):032x}", "user_nsid": "12345678@N00",
        "user_nickname": "some+one", "date_taken": "2008-06-17 16:34:56.0",
        "date_uploaded": "1213746896", "capture_device": "Canon+EOS+400D",
        "title": title, "description": description, "user_tags": "sunset,san+francisco",
        "machine_tags": "", "longitude": "-122.4194", "latitude": "37.7749",
        "accuracy": "16", "page_url": f"http://www.flickr.com/photos/x/{photo_id}/",
        "download_url": url, "license_name": "Attribution License",
        "license_url": "http://creativecommons.org/licenses/by/2.0/", "server_id": "3015",
        "farm_id": "4", "secret": "3aea8e4d8c", "secret_original": "b2a9e01c6f",
        "extension_original": "jpg", "marker": marker})
    return "\t".join(fields[name] for name in YFCC100M_COLUMNS) + "\n"


def write_yfcc(root: Path) -> Path:
    """yfcc100m_dataset (25 fields, no header, URL-encoded text) and OpenAI's YFCC-15M list
    yfcc100m_subset_data.tsv (header line_number, photoid, photo_hash). The second photo is
    not in the subset; the fourth is a video (marker 1); the list names one photo the
    dataset file lacks."""
    folder = root / "data" / "yfcc100m"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "yfcc100m_dataset").write_text(
        yfcc_line(0, "2592486429", "Sunset+over+the+bay", "A+%22golden%22+evening%2C+calm",
                  "http://farm4.staticflickr.com/3015/2592486429_3aea8e4d8c.jpg")
        + yfcc_line(1, "2592486430", "IMG_0001", "",
                    "http://farm4.staticflickr.com/3015/2592486430_3aea8e4d8c.jpg")
        + yfcc_line(2, "2592486431", "Caf%C3%A9+in+Paris", "Two+cups",
                    "http://farm4.staticflickr.com/3015/2592486431_3aea8e4d8c.jpg")
        + yfcc_line(3, "2592486432", "Our+trip+(video)", "",
                    "http://farm4.staticflickr.com/3015/2592486432_3aea8e4d8c.jpg", marker="1"))
    (folder / "yfcc100m_subset_data.tsv").write_text(
        "line_number\tphotoid\tphoto_hash\n"
        f"0\t2592486429\t{2592486429:032x}\n2\t2592486431\t{2592486431:032x}\n"
        f"3\t2592486432\t{2592486432:032x}\n"
        f"9\t999\t{999:032x}\n")
    return folder / "yfcc100m_dataset"


REDCAPS_NOTES = [
    {"image_id": "gi5o8", "author": "photo_guy", "url": "https://i.redd.it/gi5o8.jpg",
     "raw_caption": "My cat Mochi 😺 sleeping [OC]", "caption": "my cat mochi sleeping",
     "subreddit": "cats", "score": 13, "created_utc": 1290542462,
     "permalink": "/r/cats/comments/gi5o8/my_cat/", "crosspost_parents": None},
    {"image_id": "aa1b2", "author": "hiker", "url": "https://i.imgur.com/aa1b2.jpg",
     "raw_caption": "Morning fog in the valley", "caption": "morning fog in the valley",
     "subreddit": "itookapicture", "score": 2, "created_utc": 1563000000,
     "permalink": "/r/itookapicture/comments/aa1b2/fog/", "crosspost_parents": ["t3_xyz"]},
]


def write_redcaps(root: Path) -> Path:
    """annotations/<subreddit>_<year>.json: {"info": {...}, "annotations": [...]}."""
    folder = root / "data" / "redcaps" / "annotations"
    folder.mkdir(parents=True, exist_ok=True)
    for note in REDCAPS_NOTES:
        year = 2010 if note["created_utc"] < 1.3e9 else 2019
        document = {"info": {"subreddit": note["subreddit"], "year": year,
                             "num_annotations": 1}, "annotations": [note]}
        (folder / f"{note['subreddit']}_{year}.json").write_text(json.dumps(document))
    return folder


def write_laion(root: Path) -> Path:
    """LAION-400M's parquet parts (SAMPLE_ID, URL, TEXT, HEIGHT, WIDTH, LICENSE, NSFW,
    similarity: the CLIP ViT-B/32 cosine of image and text)."""
    folder = root / "data" / "laion400m"
    folder.mkdir(parents=True, exist_ok=True)
    for part, rows in enumerate(([(1080009002, "http://a.com/1.jpg", "red shoes", 500, 400,
                                   "?", "UNLIKELY", 0.3312)],
                                 [(2030001111, "https://b.org/x.png", "Blue vase", 256, 256,
                                   "https://creativecommons.org/licenses/by/4.0/", "UNSURE",
                                   0.3021),
                                  (2030001112, "https://b.org/y.png", "NA", 300, 200, "?",
                                   "NSFW", 0.2875)])):
        names = ["SAMPLE_ID", "URL", "TEXT", "HEIGHT", "WIDTH", "LICENSE", "NSFW",
                 "similarity"]
        types = [pa.int64(), pa.string(), pa.string(), pa.int64(), pa.int64(), pa.string(),
                 pa.string(), pa.float64()]
        table = pa.table({n: pa.array([r[i] for r in rows], t)
                          for i, (n, t) in enumerate(zip(names, types, strict=True))})
        pq.write_table(table, folder / f"part-{part:05d}-5b54c5d5-c000.snappy.parquet")
    return folder


COCO_DOCUMENT = {
    "info": {"description": "COCO 2017 Dataset", "year": 2017, "version": "1.0"},
    "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1,
                  "name": "Attribution-NonCommercial-ShareAlike License"}],
    "images": [
        {"license": 3, "file_name": "000000391895.jpg",
         "coco_url": "http://images.cocodataset.org/train2017/000000391895.jpg",
         "height": 360, "width": 640, "date_captured": "2013-11-14 11:18:45",
         "flickr_url": "http://farm9.staticflickr.com/8186/8119368305_4e622c8349_z.jpg",
         "id": 391895},
        {"license": 4, "file_name": "000000522418.jpg",
         "coco_url": "http://images.cocodataset.org/train2017/000000522418.jpg",
         "height": 480, "width": 640, "date_captured": "2013-11-14 11:38:44",
         "flickr_url": "http://farm1.staticflickr.com/1/127244861_ab0c0381e7_z.jpg",
         "id": 522418},
    ],
    "annotations": [
        {"image_id": 391895, "id": 770337, "caption": "A man riding a bike down a dirt road."},
        {"image_id": 522418, "id": 775380, "caption": "A woman cutting a large cake."},
        {"image_id": 391895, "id": 771687, "caption": "A person on a bicycle in the hills."},
        {"image_id": 391895, "id": 772707, "caption": "A man rides his bike on a path."},
        {"image_id": 391895, "id": 776154, "caption": "A biker on a mountain road."},
        {"image_id": 391895, "id": 776810, "caption": "A cyclist in a red jacket."},
        {"image_id": 522418, "id": 776177, "caption": "A woman cuts a cake."},
    ],
}


def write_coco(root: Path) -> Path:
    """captions_train2017.json: info, licenses, images (coco_url, flickr_url, id, ...),
    annotations (image_id, id, caption; ~5 per image, in no image order)."""
    path = root / "data" / "coco" / "annotations" / "captions_train2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(COCO_DOCUMENT))
    return path


def write_sbu(root: Path) -> Path:
    """SBU_captioned_photo_dataset_urls.txt and ..._captions.txt: line i of each, photo i."""
    folder = root / "data" / "sbu" / "dataset"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "SBU_captioned_photo_dataset_urls.txt").write_text(
        "http://static.flickr.com/2723/4385058960_b0f291553e.jpg\n"
        "http://static.flickr.com/3610/3285180819_a9f4a4b2b5.jpg\n")
    (folder / "SBU_captioned_photo_dataset_captions.txt").write_text(
        "Man sits in a rusted car buried in the sand on Waitarere beach\n"
        "Interior design of modern living room with fireplace in a new house\n")
    return folder


#: config file -> the fixture writer for the path it names (relative to the workflow root).
FIXTURES: dict[str, Callable[[Path], Path]] = {
    "cc3m.yaml": write_cc3m, "cc12m.yaml": write_cc12m, "yfcc15m.yaml": write_yfcc,
    "redcaps.yaml": write_redcaps, "laion400m.yaml": write_laion,
    "coco_captions.yaml": write_coco, "sbu.yaml": write_sbu,
}


def shipped_source(name: str, root: Path) -> dict:
    """The shipped config's source, its paths resolved under ``root``, schema defaults in."""
    (pool,) = pipeline_config(REPO / "config" / name)["pools"]
    source = dict(pool["source"])
    source["path"] = str(root / source["path"])
    if source.get("subset"):
        source["subset"] = {**source["subset"], "path": str(root / source["subset"]["path"])}
    return source


def normalise(name: str, root: Path) -> tuple[dict, pd.DataFrame]:
    """The shipped config's metadata stage on its fixture: the manifest, all parts as one."""
    FIXTURES[name](root)
    source = shipped_source(name, root)
    out = root / "meta"
    manifest = build_metadata("p", source, source_files(source, [Path(source["path"])]), out)
    parts = [pd.read_parquet(out / part["part"]) for part in manifest["parts"]]
    return manifest, pd.concat(parts, ignore_index=True)


# ------------------------------------------------------------------------ each format


def test_cc3m_and_cc12m_headerless_tsv_map_their_own_column_order(tmp_path):
    manifest, cc3m = normalise("cc3m.yaml", tmp_path / "cc3m")
    assert list(cc3m.columns) == ["uid", "url", "text"]
    assert cc3m["text"].tolist() == ["a very typical bus station",
                                     'actor attends the "premiere" of the film', "NA"]
    assert cc3m["url"].iloc[0] == "http://lh6.googleusercontent.com/-2Y3.jpg"
    assert cc3m["uid"].tolist() == [derive_uid(u, t) for u, t in zip(cc3m.url, cc3m.text,
                                                                      strict=True)]
    _, cc12m = normalise("cc12m.yaml", tmp_path / "cc12m")
    assert cc12m["url"].tolist() == ["https://i.pinimg.com/originals/1.jpg",
                                     "http://www.example.org/2.png"]
    assert cc12m["text"].tolist() == ["<PERSON> was an American painter",
                                      "Close-up of a red ladybug, 'macro'"]


def test_where_keeps_rows_by_a_column_value_and_counts_the_rest(tmp_path):
    """LAION's NSFW tag (or YFCC100M's video marker) as a pool filter: only listed values stay;
    a where column the file lacks is named."""
    write_laion(tmp_path)
    source = {**shipped_source("laion400m.yaml", tmp_path), "where": {"NSFW": ["UNLIKELY"]}}
    files = source_files(source, [Path(source["path"])])
    manifest = build_metadata("p", source, files, tmp_path / "meta")
    part = pd.concat([pd.read_parquet(tmp_path / "meta" / p["part"])
                      for p in manifest["parts"]], ignore_index=True)
    assert part["NSFW"].tolist() == ["UNLIKELY"] and manifest["rows"] == 1
    assert manifest["where"] == {"NSFW": {"kept_values": ["UNLIKELY"], "rows_dropped": 2}}
    with pytest.raises(MetadataError, match=r"source.where names column 'nsfw', which is "
                                            r"missing"):
        build_metadata("p", {**source, "where": {"nsfw": ["x"]}}, files, tmp_path / "m2")


def test_rows_per_part_splits_one_large_file_into_parts_fetch_jobs_share(tmp_path):
    """CC12M ships one 12M-row file: rows_per_part writes it as parts, in the file's order,
    each traced to its rows; uids and values are those of the one-part read."""
    write_cc3m(tmp_path)
    source = {**shipped_source("cc3m.yaml", tmp_path), "rows_per_part": None}
    whole = build_metadata("p", source, source_files(source, [Path(source["path"])]),
                           tmp_path / "one")
    source["rows_per_part"] = 2
    split = build_metadata("p", source, source_files(source, [Path(source["path"])]),
                           tmp_path / "two")
    assert [(p["part"], p["rows"], p.get("source_rows")) for p in split["parts"]] == [
        ("part-00000.parquet", 2, [0, 2]), ("part-00001.parquet", 1, [2, 3])]
    assert len(whole["parts"]) == 1 and split["rows"] == whole["rows"] == 3
    joined = pd.concat([pd.read_parquet(tmp_path / "two" / p["part"]) for p in split["parts"]],
                       ignore_index=True)
    assert joined.equals(pd.read_parquet(tmp_path / "one" / "part-00000.parquet"))


def test_yfcc15m_joins_the_subset_list_by_photo_id_and_decodes_the_text(tmp_path):
    manifest, part = normalise("yfcc15m.yaml", tmp_path)
    # Only the listed photos, keyed by photo id; the title trains, decoded from the file's
    # URL encoding; the description, tags and license kept.
    assert part["photo_id"].tolist() == ["2592486429", "2592486431"]
    assert part["uid"].tolist() == [derive_key_uid(p) for p in part["photo_id"]]
    assert part["text"].tolist() == ["Sunset over the bay", "Café in Paris"]
    assert part["description"].tolist() == ['A "golden" evening, calm', "Two cups"]
    assert part["user_tags"].iloc[0] == "sunset,san francisco"
    assert part["url"].iloc[0] == "http://farm4.staticflickr.com/3015/2592486429_3aea8e4d8c.jpg"
    assert {"license_name", "marker"} <= set(part.columns)
    assert manifest["where"] == {"marker": {"kept_values": ["0"], "rows_dropped": 1}}
    assert manifest["subset"] == {
        "path": str(tmp_path / "data" / "yfcc100m" / "yfcc100m_subset_data.tsv"),
        "list_column": "photoid", "column": "photo_id", "listed": 4, "found": 3,
        "not_found": 1, "not_found_examples": ["999"]}


def test_redcaps_annotation_files_keep_subreddit_and_both_captions(tmp_path):
    manifest, part = normalise("redcaps.yaml", tmp_path)
    assert len(manifest["parts"]) == 2  # one per annotation file, sorted by name
    assert part["subreddit"].tolist() == ["cats", "itookapicture"]
    assert part["text"].tolist() == ["my cat mochi sleeping", "morning fog in the valley"]
    assert part["raw_caption"].iloc[0] == "My cat Mochi 😺 sleeping [OC]"
    assert part["uid"].tolist() == [derive_key_uid(i) for i in ("gi5o8", "aa1b2")]
    assert part["score"].dtype == "int64" and part["created_utc"].tolist() == [1290542462,
                                                                              1563000000]
    assert part["crosspost_parents"].iloc[0] is None
    assert list(part["crosspost_parents"].iloc[1]) == ["t3_xyz"]


def test_laion400m_parts_keep_similarity_and_nsfw_as_the_file_types_them(tmp_path):
    manifest, part = normalise("laion400m.yaml", tmp_path)
    assert len(manifest["parts"]) == 2
    assert part["text"].tolist() == ["red shoes", "Blue vase", "NA"]
    assert part["similarity"].dtype == "float64"
    assert part["similarity"].tolist() == [0.3312, 0.3021, 0.2875]
    assert part["NSFW"].tolist() == ["UNLIKELY", "UNSURE", "NSFW"]
    assert part["SAMPLE_ID"].dtype == "int64"
    # The shipped similarity stands for the ViT-B/32 scorer's raw-caption score (no re-scoring).
    from capmix.score import shipped_raw_column

    config = pipeline_config(REPO / "config" / "laion400m.yaml")
    (pool,) = config["pools"]
    spec = config["scorers"][pool["scorer"]]
    assert spec["model"] == "ViT-B-32" and spec["pretrained"] == "openai"
    assert shipped_raw_column(spec, "raw", tmp_path / "meta") == "similarity"
    assert shipped_raw_column(spec, "blip2_opt_2.7b/0.75", tmp_path / "meta") is None


def test_a_column_a_strategy_filters_on_is_checked_by_its_own_job(tmp_path):
    """LAION-400M's NSFW strategies read the NSFW column through its own job
    (mix_metadata_column, run early by priority); on metadata without it the job stops, naming
    the strategies and the files, and writes nothing."""
    from capmix.mixparts import MetadataColumnError, run_metadata_column
    from capmix.strategies import metadata_filter_users

    config = pipeline_config(REPO / "config" / "laion400m.yaml")
    (pool,) = config["pools"]
    users = metadata_filter_users(config, pool)
    assert users == {"NSFW": ["raw_top_30_nsfw_unlikely",
                              "raw_top_synthetic_remaining_filtered_30_nsfw_unlikely"]}
    write_laion(tmp_path)
    source = shipped_source("laion400m.yaml", tmp_path)
    source["keep_columns"] = [c for c in source["keep_columns"] if c != "NSFW"]
    build_metadata("p", source, source_files(source, [Path(source["path"])]), tmp_path / "meta")
    with pytest.raises(MetadataColumnError, match=r"raw_top_30_nsfw_unlikely.*'NSFW'"):
        run_metadata_column("laion400m", "NSFW", tmp_path / "meta", 4, tmp_path / "NSFW",
                            users["NSFW"])
    assert not (tmp_path / "NSFW").exists()


def test_coco_captions_train2017_keeps_all_five_captions_and_trains_the_first(tmp_path):
    _, part = normalise("coco_captions.yaml", tmp_path)
    assert part["id"].tolist() == [391895, 522418]
    assert part["url"].tolist() == [i["coco_url"] for i in COCO_DOCUMENT["images"]]
    assert part["flickr_url"].iloc[1] == COCO_DOCUMENT["images"][1]["flickr_url"]
    assert [len(c) for c in part["captions"]] == [5, 2]
    assert part["text"].tolist() == ["A man riding a bike down a dirt road.",
                                     "A woman cutting a large cake."]
    assert part["uid"].tolist() == [derive_key_uid(str(i)) for i in (391895, 522418)]


def test_which_coco_caption_trains_is_config(tmp_path):
    """columns.text_item picks a caption of the list; a row with too few is named."""
    write_coco(tmp_path)
    source = shipped_source("coco_captions.yaml", tmp_path)
    source["columns"] = {**source["columns"], "text_item": -1}
    manifest = build_metadata("p", source, source_files(source, [Path(source["path"])]),
                              tmp_path / "last")
    part = pd.read_parquet(tmp_path / "last" / manifest["parts"][0]["part"])
    assert part["text"].tolist() == ["A cyclist in a red jacket.", "A woman cuts a cake."]
    source["columns"]["text_item"] = 2  # the second image has two captions
    with pytest.raises(MetadataError, match=r"captions_train2017\.json: 1 row\(s\) have no "
                                            r"caption 2 in column 'captions' "
                                            r"\(columns.text_item\): row 1"):
        build_metadata("p", source, source_files(source, [Path(source["path"])]),
                       tmp_path / "third")


def test_a_subset_list_filters_any_format_and_keys_must_be_present(tmp_path):
    """source.subset on a parquet source (filtered after the read), source.glob with no
    match, and rows without the uid_from key: each named before anything is written."""
    write_laion(tmp_path)
    (tmp_path / "keep.csv").write_text("SAMPLE_ID,note\n2030001112,x\n1080009002,y\n")
    source = {**shipped_source("laion400m.yaml", tmp_path),
              "subset": {"path": str(tmp_path / "keep.csv"), "list_column": "SAMPLE_ID",
                         "column": "SAMPLE_ID"}}
    files = source_files(source, [Path(source["path"])])
    manifest = build_metadata("p", source, files, tmp_path / "meta")
    assert manifest["rows"] == 2 and manifest["subset"]["not_found"] == 0
    with pytest.raises(MetadataError, match=r"laion400m: no file matches source.glob '\*.pq'"):
        source_files({**source, "glob": "*.pq"}, [Path(source["path"])])
    keyed = {**source, "subset": None,
             "columns": {"uid": None, "uid_from": "LICENSE", "url": "URL", "text": "TEXT"}}
    table = pq.read_table(files[0].path)
    pq.write_table(table.set_column(5, "LICENSE", pa.array([" "])), files[0].path)
    with pytest.raises(MetadataError, match=r"part-00000-5b54c5d5-c000\.snappy\.parquet: 1 "
                                            r"row\(s\) without a key in column 'LICENSE' "
                                            r"\(uid_from\): row 0"):
        build_metadata("p", keyed, files, tmp_path / "meta2")


def test_sbu_line_aligned_files_pair_url_and_caption_by_line(tmp_path):
    _, part = normalise("sbu.yaml", tmp_path)
    assert part["url"].tolist() == [
        "http://static.flickr.com/2723/4385058960_b0f291553e.jpg",
        "http://static.flickr.com/3610/3285180819_a9f4a4b2b5.jpg"]
    assert part["text"].iloc[1] == ("Interior design of modern living room with fireplace in "
                                    "a new house")


def test_each_web_format_file_is_parsed_once(tmp_path, monkeypatch):
    """The columns of the web formats are known without a parse (config or the documented
    layout): the file is read once, for the columns the config maps and keeps."""
    import capmix.webformats as webformats

    reads = []
    for fmt, reader in list(webformats.READERS.items()):
        monkeypatch.setitem(webformats.READERS, fmt, lambda *a, _r=reader, _f=fmt: (
            reads.append(_f), _r(*a))[1])
    for name in ("cc3m.yaml", "yfcc15m.yaml", "redcaps.yaml", "sbu.yaml"):
        normalise(name, tmp_path / name)
    assert reads == ["headerless_tsv", "yfcc100m", "redcaps", "redcaps", "aligned_lines"]


def test_every_web_format_is_a_declared_table_format():
    from capmix.sourcespec import TABLE_FORMATS

    assert set(READERS) <= set(TABLE_FORMATS)


# ------------------------------------------- duplicate rows, a row cap, a uid-space sample


def cc3m_files(root: Path, files: dict[str, list[tuple[str, str]]]) -> dict:
    """CC3M-format tsv files (caption TAB url, no header) in one folder, and a source reading
    them all (glob, sorted by name) as config/cc3m.yaml maps them."""
    folder = root / "cc3m"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        (folder / name).write_text("".join(f"{caption}\t{url}\n" for caption, url in rows))
    return {"type": "table", "path": str(folder), "glob": "*.tsv", "format": "headerless_tsv",
            "column_names": ["caption", "url"],
            "columns": {"uid": None, "url": "url", "text": "caption"}}


def run_source(source: dict, out: Path) -> tuple[dict, pd.DataFrame]:
    manifest = build_metadata("p", source, source_files(source, [Path(source["path"])]), out)
    parts = [pd.read_parquet(out / part["part"]) for part in manifest["parts"]]
    return manifest, pd.concat(parts, ignore_index=True)


BUS = ("a very typical bus station", "http://lh6.googleusercontent.com/-2Y3.jpg")
ACTOR = ('actor attends the "premiere" of the film', "https://i.dailymail.co.uk/i/pix/1.jpg")
NA = ("NA", "http://www.example.com/na.jpg")
TREE = ("a tree in the snow", "https://example.org/tree.jpg")


def test_exact_duplicate_rows_are_dropped_within_and_across_files(tmp_path):
    """CC3M-format files repeating rows (once within a file, once across files): `drop`
    keeps each row's first occurrence in file order and names what it dropped; `stop` (the
    default) names the same rows and writes nothing."""
    source = cc3m_files(tmp_path, {"a.tsv": [BUS, ACTOR, BUS, NA], "b.tsv": [ACTOR, TREE]})
    with pytest.raises(MetadataError, match=r"2 duplicate uid row\(s\) in 2 uid\(s\).*"
                                            r"a\.tsv row 0; .*a\.tsv row 2"):
        run_source(source, tmp_path / "stopped")
    assert not (tmp_path / "stopped").exists()

    manifest, rows = run_source({**source, "duplicates": "drop"}, tmp_path / "meta")
    assert rows["text"].tolist() == [BUS[0], ACTOR[0], NA[0], TREE[0]]
    assert rows["uid"].is_unique and manifest["rows"] == 4
    assert [(p["rows"], p.get("duplicates_dropped")) for p in manifest["parts"]] == [
        (3, 1), (1, 1)]
    folder = Path(source["path"])
    assert manifest["duplicates"] == {
        "policy": "drop", "rows_dropped": 2, "examples": [
            {"uid": derive_uid(BUS[1], BUS[0]), "file": str(folder / "a.tsv"), "row": 2,
             "same_as": {"file": str(folder / "a.tsv"), "row": 0}},
            {"uid": derive_uid(ACTOR[1], ACTOR[0]), "file": str(folder / "b.tsv"), "row": 0,
             "same_as": {"file": str(folder / "a.tsv"), "row": 1}}]}

    # Parts of a file (rows_per_part): each loses its own duplicates, the rows keep their order.
    manifest, split = run_source({**source, "duplicates": "drop", "rows_per_part": 2},
                                 tmp_path / "split")
    assert [(p["rows"], p["source_rows"], p.get("duplicates_dropped"))
            for p in manifest["parts"]] == [(2, [0, 2], None), (1, [2, 4], 1), (1, [0, 2], 1)]
    assert split.equals(rows)


def test_a_key_repeated_with_another_url_or_text_stops_even_with_drop(tmp_path):
    """A uid from a key column (RedCaps' image_id, YFCC's photo id): the same key on an
    identical row is a duplicate and dropped; on a row with another caption it is a reused
    key, and the stage stops naming both rows, before anything is written."""
    folder = tmp_path / "keyed"
    folder.mkdir()
    (folder / "a.tsv").write_text(f"k1\t{BUS[0]}\t{BUS[1]}\nk2\t{ACTOR[0]}\t{ACTOR[1]}\n")
    (folder / "b.tsv").write_text(f"k1\t{BUS[0]}\t{BUS[1]}\nk2\tanother caption\t{ACTOR[1]}\n")
    source = {"type": "table", "path": str(folder), "glob": "*.tsv",
              "format": "headerless_tsv", "column_names": ["image_id", "caption", "url"],
              "columns": {"uid": None, "uid_from": "image_id", "url": "url", "text": "caption"},
              "duplicates": "drop"}
    with pytest.raises(MetadataError, match=(
            r"1 row\(s\) repeat an earlier row's uid with another url or text .*"
            + re.escape(f"uid {derive_key_uid('k2')} at {folder / 'a.tsv'} row 1 and "
                        f"{folder / 'b.tsv'} row 1"))):
        run_source(source, tmp_path / "meta")
    assert not (tmp_path / "meta").exists()
    (folder / "b.tsv").write_text(f"k1\t{BUS[0]}\t{BUS[1]}\nk3\tanother caption\t{ACTOR[1]}\n")
    manifest, rows = run_source(source, tmp_path / "meta")
    assert rows["uid"].tolist() == [derive_key_uid(k) for k in ("k1", "k2", "k3")]
    assert manifest["duplicates"]["rows_dropped"] == 1


def many_rows(n: int, tag: str) -> list[tuple[str, str]]:
    return [(f"photo {i} of {tag}", f"https://example.org/{tag}/{i}.jpg") for i in range(n)]


def test_a_sample_keeps_the_first_fraction_of_the_uid_space_whatever_the_file_order(tmp_path):
    """LAION-COCO's 100M of 600M: the rows whose uid's first 64 bits / 2**64 < fraction;
    the same rows when the files come in another order, and nested for a smaller fraction."""
    rows = {"a.tsv": many_rows(120, "a"), "b.tsv": many_rows(80, "b")}
    source = {**cc3m_files(tmp_path / "one", rows), "sample": {"fraction": 0.25}}
    manifest, sample = run_source(source, tmp_path / "one" / "meta")
    expected = {derive_uid(url, text) for file in rows.values() for text, url in file
                if int(derive_uid(url, text)[:16], 16) < 2**62}
    assert set(sample["uid"]) == expected and 25 < len(expected) < 75
    assert manifest["sample"] == {"fraction": 0.25, "rows_before": 200,
                                  "rows_after": len(expected)}
    # the same rows under other file names (another order)
    swapped = {**cc3m_files(tmp_path / "two", {"z.tsv": rows["a.tsv"], "c.tsv": rows["b.tsv"]}),
               "sample": {"fraction": 0.25}}
    assert set(run_source(swapped, tmp_path / "two" / "meta")[1]["uid"]) == expected
    smaller = run_source({**source, "sample": {"fraction": 0.1}}, tmp_path / "one" / "m2")[1]
    assert set(smaller["uid"]) < expected


def test_max_rows_takes_the_first_rows_in_file_order_and_reads_no_further(tmp_path):
    """A trial slice: the first 3 rows of three 2-row files; the third file is never read
    (its malformed line would stop the stage). The manifest says what was cut."""
    source = {**cc3m_files(tmp_path, {"a.tsv": [BUS, ACTOR], "b.tsv": [NA, TREE],
                                      "c.tsv": [BUS, ACTOR]}), "max_rows": 3}
    (Path(source["path"]) / "c.tsv").write_text("one field only\n")
    manifest, rows = run_source(source, tmp_path / "meta")
    assert rows["text"].tolist() == [BUS[0], ACTOR[0], NA[0]]
    assert manifest["max_rows"] == {"max_rows": 3, "rows_before": 4, "rows_after": 3,
                                    "files_not_read": 1}
    assert [p["rows"] for p in manifest["parts"]] == [2, 1]
    # after the sample: the first 2 rows of the sampled pool
    sampled = {**cc3m_files(tmp_path / "s", {"a.tsv": many_rows(100, "a")}),
               "sample": {"fraction": 0.5}, "max_rows": 2}
    manifest, rows = run_source(sampled, tmp_path / "s" / "meta")
    first = [derive_uid(url, text) for text, url in many_rows(100, "a")
             if int(derive_uid(url, text)[:16], 16) < 2**63][:2]
    assert rows["uid"].tolist() == first and manifest["rows"] == 2


def test_laion_cocos_commented_sample_is_a_valid_setting_and_bad_fractions_are_named(tmp_path):
    """The config's commented line, uncommented, validates as written; a fraction outside
    (0, 1] is named by the config check."""
    from capmix.config import ConfigError

    text = (REPO / "config" / "laion_coco.yaml").read_text()
    line = "      # sample: {fraction: 0.16667}   # 100M / 600M\n"
    assert line in text
    path = tmp_path / "laion_coco.yaml"
    path.write_text(text.replace(line, line.replace("# sample", "sample")))
    (pool,) = pipeline_config(path)["pools"]
    assert pool["source"]["sample"] == {"fraction": 0.16667}
    assert pool["source"]["duplicates"] == "drop" and pool["source"]["max_rows"] is None
    for bad in ("0", "1.5"):
        path.write_text(text.replace(line, line.replace("# sample", "sample")
                                     .replace("0.16667", bad)))
        with pytest.raises(ConfigError, match="fraction"):
            pipeline_config(path)


# ------------------------------------------------------------ malformed rows, by format


def break_cc3m(root: Path) -> None:
    path = root / "data" / "cc3m" / "Train_GCC-training.tsv"
    path.write_text(path.read_text() + "a caption\twith a tab\thttp://x/1.jpg\n")


def break_yfcc(root: Path) -> None:
    path = root / "data" / "yfcc100m" / "yfcc100m_dataset"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("\t", "", 1)  # one field short
    path.write_text("".join(lines))


def break_redcaps(root: Path) -> None:
    path = root / "data" / "redcaps" / "annotations" / "cats_2010.json"
    document = json.loads(path.read_text())
    document["annotations"].append({**REDCAPS_NOTES[0], "image_id": "zz9", "score": "13"})
    path.write_text(json.dumps(document))


def break_laion(root: Path) -> None:
    path = sorted((root / "data" / "laion400m").glob("*.parquet"))[1]
    table = pq.read_table(path)
    table = table.set_column(1, "URL", pa.array(["https://b.org/x.png", None]))
    pq.write_table(table, path)


def break_coco(root: Path) -> None:
    path = root / "data" / "coco" / "annotations" / "captions_train2017.json"
    document = json.loads(path.read_text())
    document["annotations"].append({"image_id": 4, "id": 1, "caption": "orphan"})
    path.write_text(json.dumps(document))


def break_sbu(root: Path) -> None:
    path = root / "data" / "sbu" / "dataset" / "SBU_captioned_photo_dataset_captions.txt"
    path.write_bytes(path.read_bytes() + b"caf\xe9 in the rain\n")


def break_cc12m(root: Path) -> None:
    path = root / "data" / "cc12m" / "cc12m.tsv"
    path.write_bytes(path.read_bytes() + b"http://x/3.jpg\tna\xefve\n")


MALFORMED = {
    "cc3m.yaml": (break_cc3m, r"Train_GCC-training\.tsv: 1 line\(s\) do not have the 2 "
                              r"tab-separated fields .*: line 4 \(3 fields\)"),
    "cc12m.yaml": (break_cc12m, r"cc12m\.tsv: 1 line\(s\) are not UTF-8 text: line 3"),
    "yfcc15m.yaml": (break_yfcc, r"yfcc100m_dataset: 1 line\(s\) do not have the 25 "
                                 r"tab-separated fields .*: line 2 \(24 fields\)"),
    "redcaps.yaml": (break_redcaps, r"cats_2010\.json: 1 malformed annotation\(s\): "
                                    r"annotations\[1\] \(image_id 'zz9'\): score a str, not a "
                                    r"whole number"),
    "laion400m.yaml": (break_laion, r"part-00001-5b54c5d5-c000\.snappy\.parquet: 1 row\(s\) "
                                    r"with an empty url: row 1"),
    "coco_captions.yaml": (break_coco, r"captions_train2017\.json: .*annotations\[7\] names "
                                       r"no image of the file \(image_id 4\)"),
    "sbu.yaml": (break_sbu, r"SBU_captioned_photo_dataset_captions\.txt: 1 line\(s\) are not "
                            r"UTF-8 text: line 3"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_row_is_named_by_file_and_line_before_anything_is_written(tmp_path, name):
    breaker, expected = MALFORMED[name]
    FIXTURES[name](tmp_path)
    breaker(tmp_path)
    source = shipped_source(name, tmp_path)
    with pytest.raises(MetadataError, match=expected):
        build_metadata("p", source, source_files(source, [Path(source["path"])]),
                       tmp_path / "meta")
    assert not (tmp_path / "meta").exists()


def test_a_headerless_file_without_column_names_is_named(tmp_path):
    path = write_cc12m(tmp_path)
    source = {"type": "table", "path": str(path), "format": "headerless_tsv",
              "columns": {"uid": None, "url": "url", "text": "caption"}}
    with pytest.raises(MetadataError, match=r"cc12m\.tsv: format headerless_tsv has no "
                                            r"header: source\.column_names must name"):
        build_metadata("p", source, source_files(source, [path]), tmp_path / "meta")


def test_sbu_files_of_different_lengths_are_named(tmp_path):
    write_sbu(tmp_path)
    urls = tmp_path / "data" / "sbu" / "dataset" / "SBU_captioned_photo_dataset_urls.txt"
    urls.write_text(urls.read_text() + "http://static.flickr.com/1/2.jpg\n")
    source = shipped_source("sbu.yaml", tmp_path)
    with pytest.raises(MetadataError, match=r"not line-aligned: SBU_captioned_photo_dataset_"
                                            r"urls\.txt has 3 line\(s\), SBU_captioned_photo_"
                                            r"dataset_captions\.txt has 2 line\(s\)"):
        build_metadata("p", source, source_files(source, [Path(source["path"])]),
                       tmp_path / "meta")


# ---------------------------------------------------------- each config's full DAG, dry


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A copy of the workflow with every web dataset's fixture where its config points."""
    root = copy_workflow(tmp_path_factory.mktemp("web"))
    for writer in FIXTURES.values():
        writer(root)
    return root


@pytest.mark.parametrize("name", ["yfcc15m.yaml", "sbu.yaml"])
def test_the_metadata_rule_runs_on_a_list_plus_subset_and_on_a_folder(tmp_path, name):
    """The two unusual inputs, for real through the rule: YFCC's dataset file plus its subset
    list, SBU's folder of line-aligned files (in a copy of its own: the dry runs below must
    find nothing built)."""
    workdir = copy_workflow(tmp_path / "wf")
    FIXTURES[name](workdir)
    (pool,) = yaml.safe_load((REPO / "config" / name).read_text())["pools"]
    target = f"results/{pool['name']}/metadata"
    result = subprocess.run(
        [SNAKEMAKE, target, "--cores", "1", "--configfile", f"config/{name}"], cwd=workdir,
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert result.returncode == 0, result.stderr + result.stdout
    manifest = json.loads((workdir / target / "manifest.json").read_text())
    assert manifest["rows"] == 2
    if name == "sbu.yaml":
        assert set(manifest["parts"][0]["source_sha256"]) == {
            "SBU_captioned_photo_dataset_urls.txt", "SBU_captioned_photo_dataset_captions.txt"}
    else:
        assert manifest["subset"]["found"] == 3  # the video is dropped after (where: marker)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_each_web_config_dry_runs_the_full_dag(workdir, name):
    config = yaml.safe_load((REPO / "config" / name).read_text())
    (pool,) = config["pools"]
    result = subprocess.run(
        [SNAKEMAKE, "-n", "--cores", "1", "--configfile", f"config/{name}"], cwd=workdir,
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    # metadata -> fetch -> captions -> scores -> subsets -> training -> evaluation.
    for rule in ("metadata", "fetch", "caption", "score", "subset", "train_shards", "train",
                 "evaluate"):
        assert f"rule {rule}:" in out or f"localrule {rule}:" in out, rule
    assert "download_metadata" not in out  # local metadata, read where the config says
    assert f"results/{pool['name']}/metadata" in out
    if pool["source"].get("subset"):  # the subset list is an input of the metadata job
        assert pool["source"]["subset"]["path"] in out
    # a strategy filtering on a kept column (metadata_filter) reads the metadata into the
    # mix table: LAION's NSFW tag, RedCaps' post score
    filtering = [n for n, s in (config.get("strategies") or {}).items()
                 if s.get("metadata_filter")]
    assert bool(filtering) == (name in ("laion400m.yaml", "redcaps.yaml")), filtering
    for strategy in filtering:
        assert f"strategy={strategy}" in out
    # ... through one job per column, beside the table (the table itself does not read them)
    jobs = re.split(r"\n(?=\[)", out)
    columns = {c for s in filtering for c in config["strategies"][s]["metadata_filter"]}
    for column in columns:
        folder = f"results/{pool['name']}/mix/metadata/{column}"
        assert any("rule mix_metadata_column:" in job and f"output: {folder}" in job
                   for job in jobs), column
        for strategy in filtering:
            (subset,) = [job for job in jobs if "rule subset:" in job
                         and f"strategy={strategy}" in job]
            assert folder in subset
    assert not any(f"results/{pool['name']}/mix/metadata" in job for job in jobs
                   if "rule mix_table_part:" in job or "rule mix_scatter:" in job)
