"""The paper's released BLIP2 captions: file choice, download through a stand-in hub, uid join.

The real CSVs were never inspected here; the tests pin the behaviour on files
in the assumed format (uid column ``uid``, caption column ``text``), and that
every way a join can lose rows is counted.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from capmix.released import (
    DEFAULT_COLUMNS,
    RELEASED_REPOS,
    download_released,
    join_released,
    released_columns,
    released_files,
)

MEDIUM = "thaottn/DataComp_medium_pool_BLIP2_captions"

LISTING = [
    ".gitattributes", "README.md",
    "temp_0.5/part-00000.csv", "temp_0.5/part-00001.csv",
    "temp_0.75/part-00000.csv", "temp_0.75/part-00001.csv",
    "temp_1.0/part-00001.csv", "temp_1.5/part-00000.csv", "temp_2.0/part-00000.csv",
]


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def uid(i: int) -> str:
    return f"{i:032x}"


# ------------------------------------------------------------------- file choice


@pytest.mark.parametrize(("temperature", "expected"), [
    (0.75, ["temp_0.75/part-00000.csv", "temp_0.75/part-00001.csv"]),
    (0.5, ["temp_0.5/part-00000.csv", "temp_0.5/part-00001.csv"]),
    (1, ["temp_1.0/part-00001.csv"]),  # part-00001 is a shard number, not temperature 1
    (2.0, ["temp_2.0/part-00000.csv"]),
])
def test_released_files_picks_one_temperature(temperature, expected):
    assert released_files(LISTING, temperature) == expected


def test_released_files_matches_the_temperature_in_file_names_too():
    listing = ["captions_temp0.75.csv", "captions_temp1.5.csv", "captions_temp0.5.csv.gz",
               "notes_0.75.txt"]
    assert released_files(listing, 0.75) == ["captions_temp0.75.csv"]
    assert released_files(listing, 0.5) == ["captions_temp0.5.csv.gz"]


def test_released_files_without_a_match_says_what_was_there():
    with pytest.raises(ValueError) as error:
        released_files(LISTING, 0.25)
    message = str(error.value)
    assert "0.25" in message and "temp_0.75/part-00000.csv" in message
    assert "[0.5, 0.75, 1.0, 1.5, 2.0]" in message
    with pytest.raises(ValueError, match="0 CSV"):
        released_files(["README.md"], 0.75)


# --------------------------------------------------------------------- download


class StandInHub:
    """The two huggingface_hub calls download_released makes, recorded, no network."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files
        self.calls: list[tuple[str, dict]] = []

    def list_repo_files(self, repo_id, **kwargs):
        self.calls.append(("list_repo_files", {"repo_id": repo_id, **kwargs}))
        return list(self.files)

    def hf_hub_download(self, **kwargs):
        self.calls.append(("hf_hub_download", kwargs))
        return str(write_csv(Path(kwargs["local_dir"]) / kwargs["filename"],
                             self.files[kwargs["filename"]]))


def test_download_goes_through_the_hub_with_the_real_repo(tmp_path):
    files = {name: f"uid,text\n{uid(i)},caption {i}\n" for i, name in enumerate(LISTING)}
    hub = StandInHub(files)
    paths = download_released(RELEASED_REPOS["medium"], 0.75, tmp_path / "dl", hub=hub)

    assert RELEASED_REPOS["medium"] == MEDIUM
    assert paths == [tmp_path / "dl" / "temp_0.75/part-00000.csv",
                     tmp_path / "dl" / "temp_0.75/part-00001.csv"]
    assert hub.calls[0] == ("list_repo_files", {"repo_id": MEDIUM, "repo_type": "dataset",
                                                "revision": None})
    downloads = [kwargs for name, kwargs in hub.calls if name == "hf_hub_download"]
    assert [d["filename"] for d in downloads] == ["temp_0.75/part-00000.csv",
                                                  "temp_0.75/part-00001.csv"]
    assert all(d["repo_id"] == MEDIUM and d["repo_type"] == "dataset" for d in downloads)
    frame, report = join_released([uid(4), uid(5), uid(6)], paths)
    assert frame["caption"].tolist() == ["caption 4", "caption 5"]
    assert report["n_pool_without_caption"] == 1


# ------------------------------------------------------------------------- join


@pytest.fixture
def released_csvs(tmp_path) -> list[Path]:
    """Pool uids 0-5. Released: 0 ("NA" caption), 1 (twice), 2 (empty), 3 (quoted comma,
    duplicated in the second file), 4; uids 90-96 are not in the pool."""
    first = write_csv(tmp_path / "a.csv", "\n".join([
        "uid,text,url",
        f"{uid(0)},NA,http://x/0",
        f"{uid(1)},a dog on the grass,http://x/1",
        f"{uid(90)},outside 90,http://x/90",
        f"{uid(1)},a second caption for 1,http://x/1",
        f"{uid(2)},,http://x/2",
        f'{uid(3)},"a cat, asleep",http://x/3',
    ]) + "\n")
    second = write_csv(tmp_path / "b.csv", "\n".join(
        ["uid,text,url", f"{uid(3)},later caption for 3,http://x/3",
         f"{uid(4)},null,http://x/4"]
        + [f"{uid(i)},outside {i},http://x/{i}" for i in range(91, 97)]) + "\n")
    return [first, second]


def test_join_keeps_one_caption_per_pool_uid_and_counts_everything(released_csvs):
    pool = pd.Series([uid(i) for i in range(6)])
    frame, report = join_released(pool, released_csvs)

    assert list(frame.columns) == ["uid", "caption"]
    assert frame["uid"].tolist() == [uid(i) for i in range(5)]  # pool order, one row each
    assert frame["caption"].tolist() == ["NA", "a dog on the grass", "", "a cat, asleep",
                                         "null"]  # "NA"/"null" stay text; first caption wins
    assert {k: v for k, v in report.items() if k.startswith("n_")} == {
        "n_pool": 6, "n_released_rows": 14, "n_joined": 5, "n_pool_without_caption": 1,
        "n_released_not_in_pool": 7, "n_duplicate_uids": 2, "n_duplicate_rows": 2,
        "n_empty_captions": 1}
    assert report["examples_pool_without_caption"] == [uid(5)]
    assert report["examples_released_not_in_pool"] == [uid(i) for i in (90, 91, 92, 93, 94)]
    assert report["columns"] == DEFAULT_COLUMNS


def test_join_reads_in_chunks_with_the_same_result(released_csvs):
    pool = [uid(i) for i in range(6)]
    whole = join_released(pool, released_csvs)
    chunked = join_released(pool, released_csvs, chunksize=2)
    pd.testing.assert_frame_equal(whole[0], chunked[0])
    assert whole[1] == chunked[1]


def test_join_with_overridden_column_names(tmp_path):
    path = write_csv(tmp_path / "c.csv", f"key,caption\n{uid(1)},a boat\n")
    columns = released_columns({"uid": "key", "caption": "caption"})
    frame, report = join_released([uid(1), uid(2)], [path], uid_column=columns["uid"],
                                  caption_column=columns["caption"])
    assert frame.to_dict("records") == [{"uid": uid(1), "caption": "a boat"}]
    assert report["n_joined"] == 1 and report["n_pool_without_caption"] == 1
    assert released_columns() == {"uid": "uid", "caption": "text"}
    with pytest.raises(ValueError, match="unknown key"):
        released_columns({"url": "url"})


def test_missing_column_names_the_file_and_the_column(tmp_path):
    path = write_csv(tmp_path / "wrong.csv", f"uid,caption\n{uid(1)},a boat\n")
    with pytest.raises(ValueError) as error:
        join_released([uid(1)], [path])
    assert str(path) in str(error.value) and "'text'" in str(error.value)


@pytest.mark.parametrize("text", [
    "uid,text\n{u},a dog, unquoted comma\n",  # first row with too many fields
    "uid,text\n{u},fine\n{u},a dog, unquoted comma\n",  # a later one
    "",  # empty file
])
def test_malformed_csv_names_the_file(tmp_path, text):
    path = write_csv(tmp_path / "bad.csv", text.format(u=uid(1)))
    with pytest.raises(ValueError, match=str(path)):
        join_released([uid(1)], [path])


def test_join_with_no_released_rows(tmp_path):
    path = write_csv(tmp_path / "empty.csv", "uid,text\n")
    frame, report = join_released([uid(1)], [path])
    assert frame.empty and list(frame.columns) == ["uid", "caption"]
    assert report["n_joined"] == 0 and report["n_pool_without_caption"] == 1
