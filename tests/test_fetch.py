"""Fetch with the real img2dataset over file:// URLs: accounting, retries, resume."""

import hashlib
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from capmix.fetch import (
    ROUND_DONE,
    FetchSettings,
    chunk_parts,
    failure_reason,
    fetch_pool,
    merge_fetch,
    round_dirs,
)
from capmix.sources import SourceFile, build_metadata, source_files
from tests.conftest import write_image

SETTINGS = FetchSettings(image_size=32, samples_per_shard=3, retries=0, threads_per_process=4,
                         allow_internal_addresses=True)  # the images are file:// URLs


def make_metadata(table: pd.DataFrame, tmp_path: Path) -> Path:
    path = tmp_path / "table.parquet"
    table.to_parquet(path, index=False)
    source = {"type": "table", "path": str(path), "format": "auto", "keep_columns": [],
              "allow_local_urls": True}
    build_metadata("p", source, source_files(source, [path]), tmp_path / "metadata")
    return tmp_path / "metadata"


def run(tmp_path: Path, metadata: Path, settings: FetchSettings = SETTINGS) -> dict:
    return fetch_pool("p", metadata, tmp_path / "shards", tmp_path / "fetch" / "index.parquet",
                      tmp_path / "fetch" / "report.json", settings, processes=1)


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file()}


def tar_uids(tar_path: Path) -> list[str]:
    with tarfile.open(tar_path) as tar:
        return [json.load(tar.extractfile(m))["uid"] for m in tar.getmembers()
                if m.name.endswith(".json")]


def test_every_uid_is_accounted_for_and_retries_touch_only_failures(tmp_path, image_table):
    table, web = image_table
    metadata = make_metadata(table, tmp_path)

    report = run(tmp_path, metadata)
    index = pd.read_parquet(tmp_path / "fetch" / "index.parquet")
    assert sorted(index["uid"]) == sorted(table["uid"])  # every uid, once
    by_uid = index.set_index("uid")
    good = [f"{i:032x}" for i in range(5)]
    assert (by_uid.loc[good, "status"] == "fetched").all()
    assert by_uid.loc[[f"{0xd0:032x}", f"{0xd1:032x}"], "reason"].tolist() == ["not_found"] * 2
    assert by_uid.loc[f"{0xc0:032x}", "reason"] == "undecodable_image"
    assert report["n_total"] == 8 and report["n_fetched"] == 5
    assert report["failures_by_reason"] == {"not_found": 2, "undecodable_image": 1}
    assert report["success_rate"] == pytest.approx(5 / 8)
    # the shards hold exactly the fetched uids, resized to the configured size
    shard_uids = [u for s in report["shards"] for u in tar_uids(tmp_path / "shards" / s["path"])]
    assert sorted(shard_uids) == good
    assert (by_uid.loc[good, ["width", "height"]].max(axis=1) == 32).all()

    # Re-running with the default retry reasons asks for none of these again (a missing file
    # and a corrupt one are not transient) ...
    round0 = digests(tmp_path / "shards" / "round_0")
    write_image(web / "dead0.png")
    report = run(tmp_path, metadata)
    assert [r.name for r in round_dirs(tmp_path / "shards")] == ["round_0"]
    assert report["n_fetched"] == 5
    # ... unless their reasons are listed: then only the failed rows are retried.
    report = run(tmp_path, metadata, replace(SETTINGS, retry_reasons=(
        "not_found", "undecodable_image")))
    assert [r.name for r in round_dirs(tmp_path / "shards")] == ["round_0", "round_1"]
    retried = pd.read_parquet(tmp_path / "shards" / "retry_inputs" / "round_1" / "pending.parquet")
    assert sorted(retried["uid"]) == sorted([f"{0xd0:032x}", f"{0xd1:032x}", f"{0xc0:032x}"])
    assert digests(tmp_path / "shards" / "round_0") == round0  # nothing fetched again
    assert report["n_fetched"] == 6
    assert report["failures_by_reason"] == {"not_found": 1, "undecodable_image": 1}
    index = pd.read_parquet(tmp_path / "fetch" / "index.parquet").set_index("uid")
    assert index.loc[f"{0xd0:032x}", "round"] == 1
    assert index.loc[f"{0xd0:032x}", "attempts"] == 2
    assert index.loc[good, "round"].eq(0).all() and index.loc[good, "attempts"].eq(1).all()
    round1_uids = [u for p in (tmp_path / "shards" / "round_1").glob("*.tar") for u in tar_uids(p)]
    assert round1_uids == [f"{0xd0:032x}"]


def test_a_killed_round_resumes_its_unfinished_shards_only(tmp_path, image_table):
    table, _ = image_table
    metadata = make_metadata(table, tmp_path)
    run(tmp_path, metadata)
    round0 = tmp_path / "shards" / "round_0"
    # Simulate a kill: the round marker and the last shard's completion are gone.
    (round0 / ROUND_DONE).unlink()
    (round0 / "00002_stats.json").unlink()
    (round0 / "00002.tar").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in round0.glob("0000[01].tar")}
    report = run(tmp_path, metadata)
    assert [r.name for r in round_dirs(tmp_path / "shards")] == ["round_0"]  # no new round
    assert {p.name: p.stat().st_mtime_ns for p in round0.glob("0000[01].tar")} == kept
    assert (round0 / "00002.tar").exists() and (round0 / ROUND_DONE).exists()
    assert report["n_fetched"] == 5 and report["n_total"] == 8


def test_nothing_left_to_fetch_downloads_nothing(tmp_path, image_table):
    table, _ = image_table
    ok = table[table["text"].str.startswith("good")]
    metadata = make_metadata(ok, tmp_path)
    run(tmp_path, metadata)
    report = run(tmp_path, metadata)
    assert [r.name for r in round_dirs(tmp_path / "shards")] == ["round_0"]
    assert report["success_rate"] == 1.0


@pytest.mark.parametrize(("status", "message", "reason"), [
    ("success", None, "fetched"),
    ("failed_to_download", "<urlopen error [Errno 2] No such file or directory: '/x'>",
     "not_found"),
    ("failed_to_download", "HTTP Error 404: Not Found", "not_found"),
    ("failed_to_download", "HTTP Error 403: Forbidden", "forbidden"),
    ("failed_to_download", "The read operation timed out", "timeout"),
    ("failed_to_download", "HTTP Error 500: Internal Server Error", "server_error"),
    ("failed_to_download", "HTTP Error 418: I'm a Teapot", "http_error"),
    ("failed_to_download", "IncompleteRead(40 bytes read, 64 more expected)", "truncated_body"),
    ("failed_to_resize", "image area too large", "too_large"),
    ("failed_to_download", "<urlopen error [Errno -2] Name or service not known>",
     "connection_error"),
    ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive", "opted_out"),
    ("failed_to_resize", "Image decoding error", "undecodable_image"),
    ("failed_to_resize", "image too small", "too_small"),
    ("failed_to_resize", "something else", "resize_error"),
    ("failed_to_download", "weird", "download_error"),
])
def test_failure_reasons(status, message, reason):
    assert failure_reason(status, message) == reason


def test_face_bboxes_are_blurred_like_datacomp(tmp_path):
    """DataComp ships normalised face boxes; img2dataset blurs them when bbox_col is set."""
    import io

    import numpy as np
    from PIL import Image

    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype("uint8")
    path = tmp_path / "faces.png"
    Image.fromarray(np.stack([checker] * 3, axis=-1)).save(path)
    table = pd.DataFrame({"uid": ["f" * 32], "url": [path.as_uri()], "text": ["a face"],
                          "face_bboxes": [[[0.0, 0.0, 0.5, 0.5]]]})
    table_path = tmp_path / "table.parquet"
    table.to_parquet(table_path, index=False)
    source = {"type": "table", "path": str(table_path), "format": "auto",
              "keep_columns": ["face_bboxes"], "allow_local_urls": True}
    build_metadata("p", source, source_files(source, [table_path]), tmp_path / "metadata")
    settings = FetchSettings(image_size=64, encode_format="png", retries=0, threads_per_process=1,
                             allow_internal_addresses=True)
    report = fetch_pool("p", tmp_path / "metadata", tmp_path / "shards",
                        tmp_path / "index.parquet", tmp_path / "report.json", settings)
    assert report["n_fetched"] == 1
    with tarfile.open(tmp_path / "shards" / report["shards"][0]["path"]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".png"))
        pixels = np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("L"))
    face, rest = pixels[4:28, 4:28].astype(float), pixels[36:60, 36:60].astype(float)
    assert face.std() < 0.5 * rest.std()  # the box is blurred, the rest is not
    assert rest.std() > 100


# ------------------------------------------------------------------ fetch jobs over parts


def parted_metadata(table: pd.DataFrame, tmp_path: Path, sizes=(3, 3, 2)) -> Path:
    """The table as len(sizes) source files, so the metadata has that many parts."""
    files, start = [], 0
    for i, size in enumerate(sizes):
        path = tmp_path / f"table{i}.parquet"
        table.iloc[start:start + size].to_parquet(path, index=False)
        files.append(path)
        start += size
    source = {"type": "table", "path": str(files[0]), "format": "auto", "keep_columns": [],
              "allow_local_urls": True}
    # several files, as a DataComp source has (a table source reads one)
    build_metadata("p", source, [SourceFile(f, "parquet") for f in files], tmp_path / "metadata")
    return tmp_path / "metadata"


def fetch_in_jobs(root: Path, metadata: Path, n_jobs: int, only=None,
                  settings: FetchSettings = SETTINGS) -> dict:
    chunks = [f"chunk{i}of{n_jobs}" for i in range(n_jobs)]
    for i, chunk in enumerate(chunks):
        if only is None or i in only:
            fetch_pool("p", metadata, root / "shards" / chunk, root / chunk / "index.parquet",
                       root / chunk / "report.json", settings, processes=1,
                       parts=chunk_parts(metadata, i, n_jobs))
    return merge_fetch("p", chunks, [root / c / "index.parquet" for c in chunks],
                       [root / c / "report.json" for c in chunks], root / "index.parquet",
                       root / "report.json")


def test_fetch_jobs_over_parts_account_as_one_job_would_and_rerun_alone(tmp_path, image_table):
    table, web = image_table
    metadata = parted_metadata(table, tmp_path)
    assert [len(chunk_parts(metadata, i, 2)) for i in range(2)] == [1, 2]
    assert [len(chunk_parts(metadata, i, 4)) for i in range(4)] == [0, 1, 1, 1]
    single = run(tmp_path / "one", metadata)
    merged = fetch_in_jobs(tmp_path / "jobs", metadata, 4)  # the first job has no part
    one = pd.read_parquet(tmp_path / "one" / "fetch" / "index.parquet")
    jobs = pd.read_parquet(tmp_path / "jobs" / "index.parquet")
    same = ["uid", "status", "reason", "round", "attempts", "part", "row", "width", "height"]
    # every uid once (the merged index is ordered by shard, a job's index by metadata row)
    pd.testing.assert_frame_equal(one[same].sort_values("uid", ignore_index=True),
                                  jobs[same].sort_values("uid", ignore_index=True))
    shards = pd.read_parquet(tmp_path / "jobs" / "shards.parquet")
    fetched = jobs[jobs["status"] == "fetched"]
    assert list(shards["shard"]) == list(dict.fromkeys(fetched["shard"]))
    assert list(shards["n_fetched"]) == [len(fetched[fetched["shard"] == s])
                                         for s in shards["shard"]]
    for shard, key in jobs.loc[jobs["status"] == "fetched", ["shard", "key"]].to_numpy():
        assert shard.startswith("chunk") and (tmp_path / "jobs" / "shards" / shard).exists()
        with tarfile.open(tmp_path / "jobs" / "shards" / shard) as tar:
            assert f"{key}.jpg" in tar.getnames()
    for key in ("n_total", "n_fetched", "n_failed", "success_rate", "failures_by_reason",
                "failure_examples", "attempts"):
        assert merged[key] == single[key], key
    assert sum(s["samples"] for s in merged["shards"]) == merged["n_fetched"] == 5
    assert [j["metadata_parts"] for j in merged["jobs"]][0] == []

    # The dead links (metadata part 1: the third job) come back. Re-running that job alone,
    # retrying what was not found, fetches them and leaves the other jobs' shards as they were.
    others = {c: digests(tmp_path / "jobs" / "shards" / c / "round_0")
              for c in ("chunk1of4", "chunk3of4")}
    for i in range(2):
        write_image(web / f"dead{i}.png", colour=(9, 9, 9))
    report = fetch_in_jobs(tmp_path / "jobs", metadata, 4, only={2},
                           settings=replace(SETTINGS, retry_reasons=("not_found",)))
    index = pd.read_parquet(tmp_path / "jobs" / "index.parquet").set_index("uid")
    dead = [f"{0xd0:032x}", f"{0xd1:032x}"]
    assert index.loc[dead[0], "shard"].startswith("chunk2of4/round_1/")
    assert index.loc[dead[0], "status"] == "fetched"
    assert index.loc[dead[1], "status"] == "failed"  # its part is the fourth job's, not re-run
    for chunk, before in others.items():
        assert digests(tmp_path / "jobs" / "shards" / chunk / "round_0") == before
        assert not (tmp_path / "jobs" / "shards" / chunk / "round_1").exists()
    assert report["n_fetched"] == 6 and len(report["rounds"]["chunk2of4"]) == 2


def test_the_gathered_list_of_fetch_jobs_reads_back_and_names_a_missing_file(tmp_path):
    from capmix.fetch import read_chunk_list, write_chunk_list

    files = {}
    for chunk in ("chunk0of2", "chunk1of2"):
        for kind in ("index.parquet", "report.json"):
            files[chunk, kind] = tmp_path / chunk / kind
            files[chunk, kind].parent.mkdir(exist_ok=True)
            files[chunk, kind].write_text("x")
    listed = tmp_path / "chunks.json"
    chunks = ["chunk0of2", "chunk1of2"]
    write_chunk_list(chunks, [files[c, "index.parquet"] for c in chunks],
                     [files[c, "report.json"] for c in chunks], listed)
    assert read_chunk_list(listed) == (chunks, [files[c, "index.parquet"] for c in chunks],
                                       [files[c, "report.json"] for c in chunks])
    files["chunk1of2", "report.json"].unlink()
    with pytest.raises(FileNotFoundError, match="chunk1of2's report"):
        read_chunk_list(listed)
    with pytest.raises(ValueError, match="2 jobs but 1 indexes"):
        write_chunk_list(chunks, [files["chunk0of2", "index.parquet"]], [], listed)
