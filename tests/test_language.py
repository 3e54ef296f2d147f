"""The caption_language stage: language ids, fastText tokens and characters of raw captions,
with langid.py (the default) and a fastText model file (DataComp's kind), and which model ran."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from capmix.language import (
    FastTextModel,
    LangidModel,
    fasttext_token_count,
    load_language_model,
    measure_captions,
    run_caption_language,
    run_caption_language_part,
)
from capmix.mix import CHARS_COLUMN, LANGUAGE_COLUMN, TOKENS_COLUMN
from capmix.textfilter import LANGUAGE_ID_BACKENDS

# Captions that tell fastText's tokenizer apart from str.split(): newlines are tokens of their
# own, only ASCII whitespace separates (a no-break space or an ideographic space does not), and
# tab, vertical tab, form feed, carriage return and NUL do.
TRICKY = ["", " ", "\n", "a", "a b", "hello\n", "\nhello", "a\n\nb", "x \n y", "a\u00a0b",
          "a\u3000b c", "tab\tsep", "v\x0bf\x0cr\rn\x00z", "  many   spaces  ", "Ünïcödé wörds",
          "Image Not Found", "a dog\r\non the beach"]
CAPTIONS = ["a dog runs on the beach", "ein Hund läuft am Strand", "un perro corre en la playa",
            "A Triangle Of Medium Size", "6 formas de aprender a nadar - wikiHow",
            "Gespeicherte Orte von Anna", "a blue square", "mehmet", "", "the cat\non a chair"]


@pytest.fixture(scope="module")
def langid_model() -> LangidModel:
    return LangidModel()  # loading langid.py's model takes about 2 s


def test_token_count_is_fasttexts_tokenizer():
    fasttext = pytest.importorskip("fasttext", reason="fasttext (fasttext-wheel) not installed: "
                                   "the port cannot be compared with fastText itself")
    for text in TRICKY:
        assert fasttext_token_count(text) == len(fasttext.tokenize(text)), repr(text)


def test_token_count_by_hand():
    # "hello\n": the word and the newline's </s>; "a\u00a0b": one token (no ASCII space).
    assert [fasttext_token_count(t) for t in ["", "\n", "hello\n", "a\n\nb", "a\u00a0b",
                                                "tab\tsep"]] == [0, 1, 2, 4, 1, 2]


def test_langid_batches_label_as_langid_classify(langid_model):
    import langid

    labels, scores = langid_model.predict(CAPTIONS + TRICKY, batch_size=4)
    assert labels == [langid.classify(t)[0] for t in CAPTIONS + TRICKY]
    assert ((scores > 0) & (scores <= 1)).all()
    assert labels[:3] == ["en", "de", "es"]


def test_langid_describes_itself(langid_model):
    described = langid_model.describe()
    assert described["backend"] == "langid" and described["package"] == "langid"
    assert described["version"] == "1.1.6" and described["languages"] == 97


def test_a_fasttext_model_file_is_loaded_and_read_as_datacomp_reads_it(tmp_path):
    pytest.importorskip("fasttext", reason="fasttext (fasttext-wheel) not installed: DataComp's "
                        "lid.176.bin path cannot be exercised")
    from tests.tiny_models import make_tiny_fasttext_lid

    path = make_tiny_fasttext_lid(tmp_path)
    model = load_language_model({"backend": "fasttext"}, path)
    assert isinstance(model, FastTextModel)
    labels, scores = model.predict(["a dog runs on the beach", "ein Hund läuft am Strand",
                                    "un perro corre en la playa", ""])
    assert labels[:3] == ["en", "de", "es"] and len(labels) == 4
    assert np.isfinite(scores[:3]).all()
    described = model.describe()
    assert described["backend"] == "fasttext" and described["package"] == "fasttext-wheel"
    assert described["version"] == "0.9.2" and described["model"] == str(path)
    assert len(described["model_sha256"]) == 64 and described["languages"] == 3
    with pytest.raises(FileNotFoundError, match="lid.176.bin"):
        load_language_model({"backend": "fasttext"}, tmp_path / "lid.176.bin")


def test_every_backend_loads():
    assert set(LANGUAGE_ID_BACKENDS) == {"langid", "fasttext"}
    assert isinstance(load_language_model({"backend": "langid"}), LangidModel)
    with pytest.raises(ValueError, match="needs a model file"):
        load_language_model({"backend": "fasttext"})


def test_measure_captions_counts_tokens_and_characters(langid_model):
    frame = measure_captions(["u1", "u2", "u3"], ["hello\n", None, "ein Hund läuft am Strand"],
                             langid_model)
    assert frame[TOKENS_COLUMN].tolist() == [2, 0, 5]
    assert frame[CHARS_COLUMN].tolist() == [6, 0, 24]
    assert frame[LANGUAGE_COLUMN].iloc[2] == "de"


def write_raw_captions(root: Path, captions: list[str], n_files: int = 1) -> Path:
    """A raw caption set in the caption stage's layout: a manifest listing per-shard parquets
    (the captions split in order over ``n_files``)."""
    uids = [f"{i:032x}" for i in range(len(captions))]
    folder = root / "captions" / "raw"
    folder.mkdir(parents=True)
    entries = []
    for k in range(n_files):
        rows = slice(len(captions) * k // n_files, len(captions) * (k + 1) // n_files)
        shard = folder / f"{k:05d}.parquet"
        pd.DataFrame({"uid": uids[rows], "captions": [[c] for c in captions[rows]],
                      "caption": captions[rows], "status": "ok"}).to_parquet(shard)
        entries.append({"shard": k, "output": shard.name, "samples": len(uids[rows])})
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"shards": entries}))
    return manifest


def run_in_parts(root: Path, manifest: Path, n_jobs: int, settings=None, model_path=None):
    """caption_language as the workflow runs it: n_jobs parts, then the reduce."""
    settings = settings or {"backend": "langid"}
    parts, counts = [], []
    for i in range(n_jobs):
        parts.append(root / f"chunk{i}of{n_jobs}.parquet")
        counts.append(root / f"chunk{i}of{n_jobs}.json")
        run_caption_language_part("p", manifest, i, n_jobs, settings, model_path, parts[-1],
                                  counts[-1])
    return run_caption_language("p", manifest, parts, counts, settings, model_path,
                                root / "lang.parquet", root / "lang.json")


def test_the_stage_records_which_model_ran(tmp_path):
    manifest = write_raw_captions(tmp_path, CAPTIONS)
    summary = run_in_parts(tmp_path, manifest, 1)
    frame = pd.read_parquet(tmp_path / "lang.parquet")
    assert len(frame) == len(CAPTIONS) and frame["uid"].tolist()[0] == f"{0:032x}"
    on_disk = json.loads((tmp_path / "lang.json").read_text())
    assert on_disk["language_id"] == summary["language_id"]
    assert on_disk["language_id"]["backend"] == "langid"
    assert on_disk["language_id"]["version"] == "1.1.6"
    assert on_disk["n_captions"] == len(CAPTIONS) and on_disk["languages"]["en"] >= 1
    assert on_disk["provenance"]["software"]["langid"] == "1.1.6"
    import pyarrow.parquet as pq

    tags = json.loads(pq.read_schema(tmp_path / "lang.parquet").metadata[b"capmix"])
    assert tags["language_id"]["backend"] == "langid"


# Over 20 languages, so the summary's top 20 and "other" are exercised; and shard files of
# uneven sizes (one empty).
MANY = CAPTIONS + TRICKY + [
    "le chat est sur la table", "il gatto è sul tavolo", "o gato está na mesa",
    "de kat zit op de tafel", "katten sitter på bordet", "kot siedzi na stole",
    "кошка сидит на столе", "猫はテーブルの上にいます", "猫在桌子上", "고양이가 탁자 위에 있다",
    "η γάτα είναι στο τραπέζι", "kedi masanın üstünde", "mačka je na stolu",
    "kissa istuu pöydällä", "a macska az asztalon ül", "القطة على الطاولة", "החתול על השולחן",
    "बिल्ली मेज पर है", "แมวอยู่บนโต๊ะ", "con mèo ở trên bàn", "kucing itu di atas meja"]


@pytest.fixture
def loaded_once(langid_model, monkeypatch):
    """Each part job loads the model; here they share the module's (loading takes seconds)."""
    monkeypatch.setattr("capmix.language.load_language_model",
                        lambda settings, path=None: langid_model)


@pytest.mark.parametrize("n_jobs", [1, 2, 7])
def test_parts_equal_the_one_job_result(tmp_path, langid_model, loaded_once, n_jobs):
    """The parts, merged, are the rows one job over every raw caption wrote, and the summary
    (from the parts' merged counts) is that job's (pandas over the whole frame); 7 jobs over 5
    files leave two empty."""
    manifest = write_raw_captions(tmp_path / "in", MANY, n_files=5)
    uids = [f"{i:032x}" for i in range(len(MANY))]
    expected = measure_captions(uids, MANY, langid_model)
    summary = run_in_parts(tmp_path, manifest, n_jobs)
    frame = pd.read_parquet(tmp_path / "lang.parquet")
    pd.testing.assert_frame_equal(frame, expected)
    counts = expected[LANGUAGE_COLUMN].value_counts()
    assert len(counts) > 20
    n = len(expected)
    assert summary["n_captions"] == n and summary["parts"] == n_jobs
    top = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:20])
    assert summary["languages"] == top
    assert summary["other_languages"] == n - sum(top.values())
    assert summary["share_by_language"] == {k: v / n for k, v in top.items()}
    assert summary["tokens"] == {"mean": float(expected[TOKENS_COLUMN].mean()),
                                 "at_most_1": int((expected[TOKENS_COLUMN] <= 1).sum())}
    assert summary["chars"] == {"mean": float(expected[CHARS_COLUMN].mean()),
                                "at_most_5": int((expected[CHARS_COLUMN] <= 5).sum())}
    assert summary["columns"] == ["uid", LANGUAGE_COLUMN, TOKENS_COLUMN, CHARS_COLUMN,
                                  "raw_language_score"]


def test_part_errors_name_the_file(tmp_path, loaded_once):
    manifest = write_raw_captions(tmp_path, CAPTIONS, n_files=3)
    broken = manifest.parent / "00001.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"00001\.parquet: cannot read raw captions"):
        run_in_parts(tmp_path, manifest, 1)
    pd.DataFrame({"uid": ["a"]}).to_parquet(broken)  # no caption column
    with pytest.raises(ValueError, match=r"00001\.parquet: cannot read raw captions"):
        run_in_parts(tmp_path, manifest, 3)


def test_parts_of_different_models_are_refused(tmp_path, loaded_once):
    manifest = write_raw_captions(tmp_path, CAPTIONS, n_files=2)
    run_in_parts(tmp_path, manifest, 2)
    other = tmp_path / "chunk1of2.json"
    report = json.loads(other.read_text())
    report["language_id"]["version"] = "0.0"
    other.write_text(json.dumps(report))
    with pytest.raises(ValueError, match=r"chunk1of2\.json: language model"):
        run_caption_language("p", manifest, [tmp_path / "chunk0of2.parquet",
                                              tmp_path / "chunk1of2.parquet"],
                             [tmp_path / "chunk0of2.json", other], {"backend": "langid"}, None,
                             tmp_path / "x.parquet", tmp_path / "x.json")
