import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from capmix.sources import (
    MetadataError,
    SourceFile,
    build_metadata,
    datacomp_files,
    datacomp_patterns,
    download_source,
    read_table,
    source_files,
)
from capmix.uids import derive_uid

ROWS = pd.DataFrame({
    "URL": ["http://a/1.jpg", "http://a/2.jpg", "http://a/3.jpg"],
    "TEXT": ["a red circle", "NA", "Image Not Found"],
    "lang": ["en", "en", "de"],
})


def write(frame: pd.DataFrame, path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    return path


TABLE = {"type": "table", "format": "auto", "columns": {"uid": None, "url": "URL", "text": "TEXT"},
         "keep_columns": ["lang"]}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl"])
def test_table_in_every_format_gives_the_same_metadata(tmp_path, fmt):
    path = write(ROWS, tmp_path / f"table.{fmt}", fmt)
    source = {**TABLE, "path": str(path)}
    manifest = build_metadata("t", source, source_files(source, [path]), tmp_path / "meta")
    part = pd.read_parquet(tmp_path / "meta" / manifest["parts"][0]["part"])
    assert list(part.columns) == ["uid", "url", "text", "lang"]
    assert part["text"].tolist() == ["a red circle", "NA", "Image Not Found"]  # "NA" stays text
    expected = [derive_uid(u, t) for u, t in zip(ROWS.URL, ROWS.TEXT, strict=True)]
    assert part["uid"].tolist() == expected
    assert manifest["rows"] == 3 and manifest["uid_derived"] is True
    on_disk = json.loads((tmp_path / "meta" / "manifest.json").read_text())
    assert on_disk["parts"][0]["source_sha256"]
    assert on_disk["provenance"]["code"]["capmix"]


def test_each_file_is_parsed_once(tmp_path, monkeypatch):
    """The table that is checked is the table that is written: one parse per file (a CSV's
    header read aside), JSON lines included, whose keys are known only from the whole file."""
    import capmix.sources as sources

    parsed = []
    for name in ("_read_jsonl", "_read_delimited"):
        original = getattr(sources, name)
        monkeypatch.setattr(sources, name, lambda path, *a, _o=original: (
            parsed.append(Path(path).name), _o(path, *a))[1])
    paths = [write(ROWS, tmp_path / f"t.{fmt}", fmt) for fmt in ("jsonl", "csv")]
    for path in paths:
        source = {**TABLE, "path": str(path)}
        build_metadata("t", source, source_files(source, [path]), tmp_path / path.suffix[1:])
    assert parsed == ["t.jsonl", "t.csv"]


def test_table_from_a_url_is_downloaded_once(tmp_path):
    path = write(ROWS, tmp_path / "remote" / "cc.tsv", "tsv")
    source = {**TABLE, "path": path.as_uri()}
    raw = tmp_path / "raw"
    download_source(source, raw)
    record = json.loads((raw / "download.json").read_text())
    assert record["files"][0]["path"] == "cc.tsv"
    files = source_files(source, [raw / "download.json"])
    assert files == [SourceFile(raw / "cc.tsv", "tsv")]
    manifest = build_metadata("t", source, files, tmp_path / "meta")
    assert manifest["rows"] == 3


def test_missing_mapped_column_names_file_and_column(tmp_path):
    path = write(ROWS.drop(columns=["TEXT"]), tmp_path / "t.csv", "csv")
    source = {**TABLE, "path": str(path)}
    expected = r"t\.csv: mapped column 'TEXT' \(for text\) is missing"
    with pytest.raises(MetadataError, match=expected):
        build_metadata("t", source, source_files(source, [path]), tmp_path / "meta")
    assert not (tmp_path / "meta").exists()  # nothing written


def test_malformed_uids_name_the_rows(tmp_path):
    frame = pd.DataFrame({"uid": ["a" * 32, "XYZ", "b" * 31, "c" * 32],
                          "url": [f"http://h/{i}" for i in range(4)], "text": ["t"] * 4})
    path = write(frame, tmp_path / "m.parquet", "parquet")
    source = {"type": "table", "path": str(path), "format": "auto", "keep_columns": []}
    with pytest.raises(MetadataError) as info:
        build_metadata("p", source, source_files(source, [path]), tmp_path / "meta")
    message = str(info.value)
    assert "m.parquet: 2 malformed uid(s)" in message
    assert "row 1 ('XYZ')" in message and "row 2 ('bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb')" in message


def test_duplicate_uids_across_files_name_both_places(tmp_path):
    one = pd.DataFrame({"uid": ["a" * 32, "b" * 32], "url": ["http://h/1", "http://h/2"],
                        "text": ["x", "y"]})
    two = pd.DataFrame({"uid": ["c" * 32, "a" * 32], "url": ["http://h/3", "http://h/4"],
                        "text": ["z", "w"]})
    raw = tmp_path / "raw"
    write(one, raw / "0000.parquet", "parquet")
    write(two, raw / "0001.parquet", "parquet")
    source = {"type": "datacomp", "scale": "small", "hf_repo": "x/y", "local_dir": str(raw)}
    with pytest.raises(MetadataError) as info:
        build_metadata("dc", source, source_files(source, [raw]), tmp_path / "meta")
    message = str(info.value)
    assert "1 duplicate uid row(s)" in message
    first, second = raw / "0000.parquet", raw / "0001.parquet"
    assert f"uid {'a' * 32} at {first} row 0; {second} row 1" in message


def test_identical_url_and_text_rows_are_duplicates_when_uid_is_derived(tmp_path):
    frame = pd.DataFrame({"url": ["http://h/1", "http://h/2", "http://h/1"],
                          "text": ["same", "other", "same"]})
    path = write(frame, tmp_path / "d.jsonl", "jsonl")
    source = {"type": "table", "path": str(path), "format": "auto",
              "columns": {"uid": None, "url": "url", "text": "text"}}
    with pytest.raises(MetadataError, match=r"d\.jsonl row 0; .*d\.jsonl row 2"):
        build_metadata("p", source, source_files(source, [path]), tmp_path / "meta")


def test_empty_source_and_empty_urls_are_rejected(tmp_path):
    empty = write(pd.DataFrame({"uid": [], "url": [], "text": []}, dtype=str),
                  tmp_path / "e.parquet", "parquet")
    source = {"type": "table", "path": str(empty), "format": "auto"}
    with pytest.raises(MetadataError, match="source is empty"):
        build_metadata("p", source, source_files(source, [empty]), tmp_path / "m1")
    blank = write(pd.DataFrame({"uid": ["a" * 32, "b" * 32], "url": ["http://h/u", " "],
                                "text": ["", ""]}),
                  tmp_path / "b.parquet", "parquet")
    source = {"type": "table", "path": str(blank), "format": "auto"}
    with pytest.raises(MetadataError, match=r"1 row\(s\) with an empty url: row 1"):
        build_metadata("p", source, source_files(source, [blank]), tmp_path / "m2")
    with pytest.raises(MetadataError, match="no metadata files"):
        build_metadata("p", source, [], tmp_path / "m3")


def datacomp_part(n: int, offset: int) -> pd.DataFrame:
    """A DataComp-like parquet: the real column names and types."""
    return pd.DataFrame({
        "uid": [f"{offset + i:032x}" for i in range(n)],
        "url": [f"http://img/{offset + i}.jpg" for i in range(n)],
        "text": [f"caption {offset + i}" for i in range(n)],
        "original_width": np.full(n, 640, "int64"),
        "original_height": np.full(n, 480, "int64"),
        "clip_b32_similarity_score": np.linspace(0.1, 0.4, n).astype("float32"),
        "clip_l14_similarity_score": np.linspace(0.1, 0.4, n).astype("float32"),
        "face_bboxes": [[[0.1, 0.1, 0.2, 0.2]] if i % 2 else [] for i in range(n)],
        "sha256": ["0" * 64] * n,
    })


def test_datacomp_local_dir_keeps_columns_and_npz_row_aligned(tmp_path):
    raw = tmp_path / "raw"
    for k in range(2):
        write(datacomp_part(4, 10 * k), raw / f"{k:08d}.parquet", "parquet")
        np.savez(raw / f"{k:08d}.npz", l14_img=np.full((4, 8), k, "float16"))
    source = {"type": "datacomp", "scale": "small", "hf_repo": "mlfoundations/datacomp_small",
              "local_dir": str(raw), "keep_columns": "all", "max_files": None}
    files = source_files(source, [raw])
    assert [f.npz.name for f in files] == ["00000000.npz", "00000001.npz"]
    manifest = build_metadata("datacomp_small", source, files, tmp_path / "meta")
    assert manifest["rows"] == 8
    assert "face_bboxes" in manifest["columns"]
    assert "clip_l14_similarity_score" in manifest["columns"]
    part1 = tmp_path / "meta" / "part-00001.parquet"
    assert pq.read_table(part1).column("uid").to_pylist()[0] == f"{10:032x}"
    assert np.load(part1.with_suffix(".npz"))["l14_img"][0, 0] == 1
    assert manifest["parts"][0]["how"] in ("hardlink", "copy")
    assert len(datacomp_files(raw, max_files=1)) == 1


def test_datacomp_download_uses_the_real_repo_and_patterns(tmp_path):
    """The hub is replaced by a local stand-in: no network in tests."""
    calls = {}

    class FakeHub:
        @staticmethod
        def list_repo_files(repo, repo_type, revision):
            calls["list"] = (repo, repo_type, revision)
            return ["README.md", "00000001.parquet", "00000000.parquet", "00000000.npz",
                    "00000001.npz", "00000002.parquet"]

        @staticmethod
        def snapshot_download(repo, repo_type, revision, local_dir, allow_patterns, max_workers):
            calls["download"] = (repo, repo_type, allow_patterns)
            for name in allow_patterns:
                write(datacomp_part(2, 0), Path(local_dir) / name, "parquet")

    from capmix import sources

    source = {"type": "datacomp", "scale": "small", "hf_repo": "mlfoundations/datacomp_small",
              "include_npz": True, "max_files": 2, "revision": None}
    record = sources.download_datacomp(source, tmp_path, hub=FakeHub)
    assert calls["list"] == ("mlfoundations/datacomp_small", "dataset", None)
    assert calls["download"][2] == ["00000000.parquet", "00000001.parquet",
                                    "00000000.npz", "00000001.npz"]
    assert [f["path"] for f in record["files"]][:2] == ["00000000.parquet", "00000001.parquet"]
    assert datacomp_patterns(["a/x.parquet", "b/y.parquet"], False, None) == [
        "a/x.parquet", "b/y.parquet"]  # xlarge keeps its part_*/ subfolders


def test_read_table_keeps_text_literally(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('url,text\nhttp://x,"null"\nhttp://y,""\n')
    table = read_table(path, "csv")
    assert table.column("text").to_pylist() == ["null", ""]


# ----------------------------------------------------- hostile and malformed metadata files
#
# Each case: a file's bytes, its name, extra source keys, and what the error must name. Every
# one fails in the metadata stage, before any fetch, and leaves nothing behind.
UID = "a" * 32
HEADER = "uid,url,text\n"
MALFORMED_METADATA = {
    "csv row with an extra field": (
        "t.csv", HEADER + f"{UID},http://h/1,one\n{'b' * 32},http://h/2,two,extra\n", {},
        r"t\.csv: 1 row\(s\) do not have the header's 3 fields: line 3 \(4 fields\)"),
    "csv row with a missing field": (
        "t.csv", HEADER + f"{UID},same\n", {}, r"line 2 \(2 fields\)"),
    "tsv row with an extra tab": (
        "t.tsv", "uid\turl\ttext\n" + f"{UID}\thttp://h/1\tone\ttwo\n", {},
        r"t\.tsv: 1 row\(s\) do not have the header's 3 fields: line 2 \(4 fields\)"),
    "empty csv": ("t.csv", "", {}, r"t\.csv: is empty \(0 bytes\)"),
    "csv with a blank first line": ("t.csv", "\n" + f"{UID},http://h/1,one\n", {},
                                    r"t\.csv: has no header line"),
    "csv header naming a column twice": (
        "t.csv", "uid,url,text,text\n" + f"{UID},http://h/1,a,b\n", {},
        r"t\.csv: the header names column\(s\) \['text'\] more than once"),
    "csv caption not utf-8": (
        "t.csv", HEADER.encode() + f"{UID},http://h/1,caf".encode() + b"\xe9\n", {},
        r"t\.csv: 1 line\(s\) are not UTF-8 text: line 2"),
    "tsv caption not utf-8": (
        "t.tsv", b"uid\turl\ttext\n" + f"{UID}\thttp://h/1\tna".encode() + b"\xefve\n", {},
        r"t\.tsv: 1 line\(s\) are not UTF-8 text: line 2"),
    "csv declared as parquet": (
        "t.csv", HEADER + f"{UID},http://h/1,one\n", {"format": "parquet"},
        r"t\.csv: cannot read as parquet"),
    "parquet declared as csv": ("t.parquet", "PARQUET", {"format": "csv"},
                                r"t\.parquet: the header line (is not UTF-8 text|holds control "
                                r"characters: binary data, not csv text)"),
    "jsonl caption that is an object": (
        "t.jsonl", json.dumps({"uid": UID, "url": "http://h/1", "text": {"en": "x"}}) + "\n",
        {}, r"t\.jsonl: column 'text' \(the text\) holds struct<en: string> values, not text: "
            r"row 0"),
    "jsonl caption that is a list": (
        "t.jsonl", json.dumps({"uid": UID, "url": "http://h/1", "text": ["a", "b"]}) + "\n",
        {}, r"column 'text' \(the text\) holds list<item: string> values, not text: row 0"),
    "jsonl caption text on one line, object on another": (
        "t.jsonl", json.dumps({"uid": UID, "url": "http://h/1", "text": "fine"}) + "\n"
        + json.dumps({"uid": "b" * 32, "url": "http://h/2", "text": {"a": 1}}) + "\n", {},
        r"t\.jsonl: column 'text' holds str values but also line 2 \(dict\)"),
    "jsonl line that is not json": (
        "t.jsonl", json.dumps({"uid": UID, "url": "http://h/1", "text": "x"}) + "\n{oops\n", {},
        r"t\.jsonl: 1 unreadable JSON line\(s\): line 2 \(not JSON"),
    "jsonl line that is a list": (
        "t.jsonl", json.dumps([UID, "http://h/1", "x"]) + "\n", {},
        r"line 1 \(a JSON list, not an object\)"),
    "jsonl line not utf-8": (
        "t.jsonl", b'{"uid": "' + UID.encode() + b'", "url": "http://h/1", "text": "\xff"}\n',
        {}, r"line 1 \(not UTF-8\)"),
    "file url without allow_local_urls": (
        "t.csv", HEADER + f"{UID},http://h/1,one\n{'b' * 32},file:///etc/passwd,two\n", {},
        r"1 url\(s\) whose scheme the fetch does not accept \(allowed: http, https \(file:// "
        r"only with the source's allow_local_urls: true\)\): row 1 \('file:///etc/passwd'\)"),
    "file url reading /dev/zero": (
        "t.csv", HEADER + f"{UID},file:///dev/zero,zeros\n", {}, r"row 0 \('file:///dev/zero'\)"),
    "data, javascript, ftp and schemeless urls": (
        "t.csv", HEADER + "".join(f"{i:032x},{url},x\n" for i, url in enumerate([
            '"data:image/png;base64,AAAA"', "javascript:alert(1)", "ftp://h/1.jpg",
            "example.org/1.jpg", "http://h/ok.jpg"])), {},
        r"4 url\(s\) whose scheme .*: row 0 \('data:image/png;base64,AAAA'\), row 1 "
        r"\('javascript:alert\(1\)'\), row 2 \('ftp://h/1.jpg'\), row 3 \('example.org/1.jpg'\)"),
    "file url still refused for ftp when local urls are allowed": (
        "t.csv", HEADER + f"{UID},ftp://h/1.jpg,x\n", {"allow_local_urls": True},
        r"allowed: http, https, file\): row 0"),
    "a number where the url should be": (
        "t.jsonl", json.dumps({"uid": UID, "url": 12, "text": "x"}) + "\n", {},
        r"whose scheme the fetch does not accept .*row 0 \('12'\)"),
    "header only": ("t.csv", HEADER, {}, r"source is empty \(0 rows in .*t\.csv\)"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_METADATA))
def test_malformed_metadata_stops_before_anything_is_written(tmp_path, case):
    name, content, extra, expected = MALFORMED_METADATA[case]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "PARQUET":
        write(pd.DataFrame({"uid": [UID], "url": ["http://h/1"], "text": ["x"]}), path, "parquet")
    else:
        path.write_text(content)
    source = {"type": "table", "path": str(path), "format": "auto", **extra}
    with pytest.raises(MetadataError, match=expected):
        build_metadata("p", source, source_files(source, [path]), tmp_path / "meta")
    assert not (tmp_path / "meta").exists() and not (tmp_path / ".meta.staging").exists()


def test_a_directory_as_the_table_is_named(tmp_path):
    (tmp_path / "t.csv").mkdir()
    source = {"type": "table", "path": str(tmp_path / "t.csv"), "format": "auto"}
    with pytest.raises(MetadataError, match=r"t\.csv: is a directory, not a csv file"):
        build_metadata("p", source, source_files(source, [tmp_path / "t.csv"]), tmp_path / "m")


def test_what_is_checked_is_what_is_written(tmp_path):
    """Quoted commas, quotes and newlines in CSV captions, literal quotes in TSV, upper-case
    schemes, numbers as captions: each value arrives in the part exactly as the file has it."""
    csv_path = tmp_path / "t.csv"
    csv_path.write_text(HEADER + f'{UID},HTTPS://h/1,"a, ""quoted""\nline"\n'
                        f"{'b' * 32},http://h/2,NA\n")
    tsv_path = tmp_path / "t.tsv"
    tsv_path.write_text("uid\turl\ttext\n" + f'{UID}\thttp://h/1\tsay "hi\n')
    jsonl_path = tmp_path / "t.jsonl"
    jsonl_path.write_text(json.dumps({"uid": UID, "url": "http://h/1", "text": 2019}) + "\n")
    local = tmp_path / "l.csv"
    local.write_text(HEADER + f"{UID},file:///srv/img/1.png,x\n")
    expected = {csv_path: ['a, "quoted"\nline', "NA"], tsv_path: ['say "hi'],
                jsonl_path: ["2019"], local: ["x"]}
    for path, texts in expected.items():
        source = {"type": "table", "path": str(path), "format": "auto",
                  "allow_local_urls": path == local}
        out = tmp_path / f"meta_{path.name}"
        manifest = build_metadata("p", source, source_files(source, [path]), out)
        part = pd.read_parquet(out / manifest["parts"][0]["part"])
        assert part["text"].tolist() == texts, path
        assert part["uid"].iloc[0] == UID
        assert manifest["url_schemes"] == (["http", "https", "file"] if path == local
                                           else ["http", "https"])


def test_a_column_later_stages_read_is_checked_here(tmp_path):
    """A pool's references_column must exist and be kept: found before any fetch or caption."""
    path = write(ROWS, tmp_path / "t.parquet", "parquet")
    key = "pools[0].references_column"
    for keep, column, expected in (
            (["lang"], "refs", r"config key 'pools\[0\]\.references_column' names column 'refs', "
                               r"which is missing; columns present: \['URL', 'TEXT', 'lang'\]"),
            ([], "lang", r"names column 'lang', which the source does not keep \(add it to "
                         r"source.keep_columns\)")):
        source = {**TABLE, "path": str(path), "keep_columns": keep}
        with pytest.raises(MetadataError, match=expected):
            build_metadata("t", source, source_files(source, [path]), tmp_path / "m",
                           required={key: column})
    source = {**TABLE, "path": str(path)}
    manifest = build_metadata("t", source, source_files(source, [path]), tmp_path / "m",
                              required={key: "lang"})
    assert manifest["columns"] == ["uid", "url", "text", "lang"]


def test_the_schema_allows_exactly_the_source_types():
    from capmix.config import load_schema
    from capmix.sourcespec import SOURCE_TYPES

    assert load_schema()["$defs"]["source"]["properties"]["type"]["enum"] == list(SOURCE_TYPES)


def test_the_schema_allows_exactly_the_table_formats():
    from capmix.config import load_schema
    from capmix.sourcespec import TABLE_FORMATS

    table = next(branch["then"] for branch in load_schema()["$defs"]["source"]["allOf"]
                 if branch["if"]["properties"]["type"]["const"] == "table")
    assert table["properties"]["format"]["enum"] == ["auto", *TABLE_FORMATS]


def test_the_schema_allows_exactly_the_duplicate_policies():
    from capmix.config import load_schema
    from capmix.sourcespec import DUPLICATE_POLICIES

    table = next(branch["then"] for branch in load_schema()["$defs"]["source"]["allOf"]
                 if branch["if"]["properties"]["type"]["const"] == "table")
    assert table["properties"]["duplicates"]["enum"] == list(DUPLICATE_POLICIES)
    assert table["properties"]["duplicates"]["default"] == DUPLICATE_POLICIES[0]


# NoCaps' validation annotations (nocaps_val_4500_captions.json) have this shape: COCO's
# caption format, images with Open Images URLs, ten captions each (two here).
NOCAPS_LIKE = {
    "licenses": [],
    "images": [
        {"id": 0, "file_name": "0013ea2087020901.jpg", "domain": "in-domain",
         "coco_url": "https://s3.amazonaws.com/nocaps/val/0013ea2087020901.jpg",
         "open_images_id": "0013ea2087020901", "height": 768, "width": 1024},
        {"id": 1, "file_name": "002a5b5ec2c1b9a0.jpg", "domain": "out-domain",
         "coco_url": "https://s3.amazonaws.com/nocaps/val/002a5b5ec2c1b9a0.jpg",
         "open_images_id": "002a5b5ec2c1b9a0", "height": 683, "width": 1024},
    ],
    "annotations": [
        {"image_id": 1, "id": 10, "caption": "A jellyfish in dark blue water."},
        {"image_id": 0, "id": 0, "caption": "A baby is standing in front of a house."},
        {"image_id": 0, "id": 1, "caption": "A little girl in a white jacket."},
        {"image_id": 1, "id": 11, "caption": "an orange jellyfish floating"},
    ],
}
NOCAPS_SOURCE = {"type": "table", "format": "coco_captions",
                 "columns": {"uid": None, "url": "coco_url", "text": "caption"},
                 "keep_columns": ["id", "domain", "captions"]}


def test_a_coco_caption_file_gives_one_row_per_image_with_its_references(tmp_path):
    path = tmp_path / "nocaps_val_4500_captions.json"
    path.write_text(json.dumps(NOCAPS_LIKE))
    source = {**NOCAPS_SOURCE, "path": path.as_uri()}
    # Downloaded like any remote table (here from a file:// URL), then read from the download.
    download_source(source, tmp_path / "raw")
    files = source_files(source, [tmp_path / "raw" / "download.json"])
    assert files[0].path == tmp_path / "raw" / path.name and files[0].fmt == "coco_captions"
    manifest = build_metadata("nocaps", source, files, tmp_path / "meta",
                              required={"pools[1].references_column": "captions"})
    part = pd.read_parquet(tmp_path / "meta" / manifest["parts"][0]["part"])
    assert list(part.columns) == ["uid", "url", "text", "id", "domain", "captions"]
    assert part["id"].tolist() == [0, 1]  # the file's image order
    assert part["url"].tolist() == [i["coco_url"] for i in NOCAPS_LIKE["images"]]
    # Every caption of an image, in the file's order; the first is the row's text.
    assert [list(c) for c in part["captions"]] == [
        ["A baby is standing in front of a house.", "A little girl in a white jacket."],
        ["A jellyfish in dark blue water.", "an orange jellyfish floating"]]
    assert part["text"].tolist() == [c[0] for c in part["captions"]]
    assert part["uid"].tolist() == [derive_uid(u, t) for u, t in zip(part["url"], part["text"],
                                                                      strict=True)]


COCO_PROBLEMS = {
    "not the format": ({"images": []}, r"not a COCO-caption file"),
    "unknown image": ({**NOCAPS_LIKE, "annotations": NOCAPS_LIKE["annotations"] + [
        {"image_id": 7, "caption": "x"}]}, r"annotations\[4\] names no image of the file "
                                            r"\(image_id 7\)"),
    "caption not text": ({**NOCAPS_LIKE, "annotations": NOCAPS_LIKE["annotations"] + [
        {"image_id": 0, "caption": ["x"]}]}, r"annotations\[4\]: the caption is list"),
    "image twice": ({**NOCAPS_LIKE, "images": NOCAPS_LIKE["images"] + NOCAPS_LIKE["images"][:1]},
                    r"images\[2\] repeats the id 0 of images\[0\]"),
    "image without captions": ({**NOCAPS_LIKE, "annotations": NOCAPS_LIKE["annotations"][1:3]},
                               r"1 image\(s\) without a caption: id 1"),
}


@pytest.mark.parametrize("case", sorted(COCO_PROBLEMS))
def test_a_broken_coco_caption_file_is_named_before_anything_is_written(tmp_path, case):
    document, expected = COCO_PROBLEMS[case]
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(document))
    source = {**NOCAPS_SOURCE, "path": str(path)}
    with pytest.raises(MetadataError, match=r"captions\.json: .*" + expected):
        build_metadata("p", source, source_files(source, [path]), tmp_path / "meta")
    assert not (tmp_path / "meta").exists()


def test_datacomp_max_rows_takes_the_first_rows_and_cuts_the_last_file(tmp_path):
    """The paper's 400M pool is the first 400M rows of large: whole files, then one cut (its
    npz cut alike, row-aligned), the rest left out."""
    raw = tmp_path / "raw"
    for k in range(3):
        write(datacomp_part(4, 10 * k), raw / f"{k:08d}.parquet", "parquet")
        np.savez(raw / f"{k:08d}.npz", l14_img=np.arange(4 * 2, dtype="float16").reshape(4, 2) + k,
                 l14_txt=np.full((4, 2), k, "float16"), scale=np.array(7))
    source = {"type": "datacomp", "scale": "large", "hf_repo": "mlfoundations/datacomp_large",
              "local_dir": str(raw), "keep_columns": "all", "max_files": None, "max_rows": 6}
    files = source_files(source, [raw])
    assert [(f.path.name, f.rows) for f in files] == [("00000000.parquet", None),
                                                      ("00000001.parquet", 2)]
    manifest = build_metadata("datacomp_400m", source, files, tmp_path / "meta")
    assert manifest["rows"] == 6 and [p["rows"] for p in manifest["parts"]] == [4, 2]
    assert manifest["parts"][0]["how"] in ("hardlink", "copy")
    assert manifest["parts"][1]["how"] == "rewritten" and manifest["parts"][1]["npz_how"] == "cut"
    part1 = tmp_path / "meta" / "part-00001.parquet"
    assert pq.read_table(part1).column("uid").to_pylist() == [f"{10:032x}", f"{11:032x}"]
    with np.load(part1.with_suffix(".npz")) as npz:
        assert npz["l14_img"].tolist() == [[1, 2], [3, 4]] and npz["l14_txt"].shape == (2, 2)
        assert int(npz["scale"]) == 7  # not one entry per row: as it was
    with pytest.raises(MetadataError, match=r"max_rows 13: the 3 parquet file\(s\) hold only 12"):
        source_files({**source, "max_rows": 13}, [raw])


def test_datacomp_max_rows_downloads_only_the_files_it_needs(tmp_path):
    fetched = []

    class FakeHub:
        @staticmethod
        def list_repo_files(repo, repo_type, revision):
            return [f"{k:08d}.{ext}" for k in range(5) for ext in ("parquet", "npz")]

        @staticmethod
        def snapshot_download(repo, repo_type, revision, local_dir, allow_patterns, max_workers):
            fetched.append(list(allow_patterns))
            for name in allow_patterns:
                if name.endswith(".parquet"):
                    write(datacomp_part(4, 0), Path(local_dir) / name, "parquet")
                else:
                    np.savez(Path(local_dir) / name, l14_img=np.zeros((4, 2)))

    from capmix import sources

    source = {"type": "datacomp", "scale": "large", "hf_repo": "mlfoundations/datacomp_large",
              "include_npz": True, "max_files": None, "max_rows": 6, "revision": None}
    record = sources.download_datacomp(source, tmp_path, workers=1, hub=FakeHub)
    # One parquet at a time until 6 rows are there (two files), then their npz only.
    assert fetched == [["00000000.parquet"], ["00000001.parquet"],
                       ["00000000.npz", "00000001.npz"]]
    assert [f["path"] for f in record["files"]] == ["00000000.parquet", "00000001.parquet",
                                                     "00000000.npz", "00000001.npz"]
