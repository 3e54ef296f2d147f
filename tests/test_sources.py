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
                          "url": ["u1", "u2", "u3", "u4"], "text": ["t"] * 4})
    path = write(frame, tmp_path / "m.parquet", "parquet")
    source = {"type": "table", "path": str(path), "format": "auto", "keep_columns": []}
    with pytest.raises(MetadataError) as info:
        build_metadata("p", source, source_files(source, [path]), tmp_path / "meta")
    message = str(info.value)
    assert "m.parquet: 2 malformed uid(s)" in message
    assert "row 1 ('XYZ')" in message and "row 2 ('bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb')" in message


def test_duplicate_uids_across_files_name_both_places(tmp_path):
    one = pd.DataFrame({"uid": ["a" * 32, "b" * 32], "url": ["u1", "u2"], "text": ["x", "y"]})
    two = pd.DataFrame({"uid": ["c" * 32, "a" * 32], "url": ["u3", "u4"], "text": ["z", "w"]})
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
    frame = pd.DataFrame({"url": ["u1", "u2", "u1"], "text": ["same", "other", "same"]})
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
    blank = write(pd.DataFrame({"uid": ["a" * 32, "b" * 32], "url": ["u", " "], "text": ["", ""]}),
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
