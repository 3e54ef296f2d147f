"""The caption_language stage: each raw caption's language id, fastText tokens and characters.

What DataComp's image-based caption filter reads (``caption_filter`` in its
``baselines/apply_filter.py``), measured once per pool so that every strategy with a
``text_filter`` (:mod:`capmix.textfilter`) is a cheap mask in its subset job:

* the language: the model's top label for the caption with each newline as a space
  (``model.predict([x.replace("\\n", " ") ...], k=1)``, ``__label__`` stripped);
* the tokens: ``len(fasttext.tokenize(text))`` on the caption as it is. fastText's tokenizer
  (``Dictionary::readWord``) splits at ASCII space, newline, carriage return, tab, vertical
  tab, form feed and NUL, and every newline is a token of its own (``</s>``):
  :func:`fasttext_token_count` counts the same without the package;
* the characters: ``len(text)`` (code points).

Models (``pools[].mix.language_id``): ``langid`` (langid.py 1.1.6 and the model inside the
package: the default, installed from PyPI with capmix) or ``fasttext`` with a model file
(DataComp's is fastText's ``lid.176.bin``, the asset ``fasttext_lid_176``). langid.py
classifies one text at a time with a matrix product per text (about 100 captions/s on one
core here); :class:`LangidModel` does the same arithmetic for a batch at once (the same
labels, about 13,000 captions/s; fastText about 60,000). The summary
records which model ran: backend, package and version, and for a model file its path and
SHA-256.

No job holds every caption (issue 18): ``caption_language_part`` jobs
(``pools[].jobs.caption_language``) each measure a contiguous run of the raw captions' shard
files, a file at a time, and count what the summary needs (:func:`caption_counts`: sums, so
parts add up); ``caption_language`` streams the parts, in order, into the pool's file and
makes the summary from the merged counts (:func:`summary_of`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from capmix.mix import CAPTION_TEXT_COLUMNS, CHARS_COLUMN, LANGUAGE_COLUMN, TOKENS_COLUMN
from capmix.textfilter import LANGUAGE_ID_BACKENDS

log = logging.getLogger(__name__)

#: What fastText's tokenizer splits at (``Dictionary::readWord``); a newline is also a token.
FASTTEXT_SEPARATORS = " \n\r\t\v\f\0"
_WORD = re.compile(f"[^{re.escape(FASTTEXT_SEPARATORS)}]+")
#: The mix table's column of the language model's confidence in its label.
LANGUAGE_SCORE_COLUMN = "raw_language_score"


def fasttext_token_count(text: str) -> int:
    """``len(fasttext.tokenize(text))``: runs of non-separators, plus one per newline."""
    return len(_WORD.findall(text)) + text.count("\n")


def language_input(text: str) -> str:
    """The text a language model reads: each newline as a space (fastText refuses newlines;
    DataComp replaces them before predicting)."""
    return text.replace("\n", " ")


def package_of(module: str) -> tuple[str | None, str | None]:
    """(distribution, version) that provides an importable module (``fasttext`` comes from
    ``fasttext-wheel`` or ``fasttext``)."""
    for dist in metadata.packages_distributions().get(module, []):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None, None


class LanguageModel(Protocol):
    def predict(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """Top language label and its confidence, per text."""

    def describe(self) -> dict[str, Any]:
        """Which model this is: backend, package, version, model file."""


class LangidModel:
    """langid.py's built-in model (97 languages), classifying a batch per matrix product."""

    backend = "langid"

    def __init__(self) -> None:
        from langid.langid import LanguageIdentifier, model

        self.identifier = LanguageIdentifier.from_modelstring(model, norm_probs=False)
        # langid computes np.dot(uint32 features, float32 weights) in float64: so do we.
        self.weights = np.asarray(self.identifier.nb_ptc, dtype="float64")
        self.priors = np.asarray(self.identifier.nb_pc, dtype="float64")
        self.classes = [str(c) for c in self.identifier.nb_classes]

    def predict(self, texts: Sequence[str], batch_size: int = 512) -> tuple[list[str], np.ndarray]:
        labels: list[str] = []
        scores = np.empty(len(texts), dtype="float64")
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            features = np.stack([self.identifier.instance2fv(t) for t in batch])
            logp = features.astype("float64") @ self.weights + self.priors
            best = np.argmax(logp, axis=1)
            top = logp[np.arange(len(batch)), best]
            # the normalised probability of the top label (langid's norm_probs)
            scores[start:start + len(batch)] = 1.0 / np.exp(logp - top[:, None]).sum(axis=1)
            labels += [self.classes[i] for i in best]
        return labels, scores

    def describe(self) -> dict[str, Any]:
        package, version = package_of("langid")
        return {"backend": self.backend, "package": package, "version": version,
                "model": "langid.py built-in model", "languages": len(self.classes)}


class FastTextModel:
    """A fastText language-id model file (DataComp: fastText's lid.176.bin)."""

    backend = "fasttext"

    def __init__(self, path: Path) -> None:
        import fasttext

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"fastText language-id model {self.path} does not exist")
        self.model = fasttext.load_model(str(self.path))

    def predict(self, texts: Sequence[str], batch_size: int = 100_000,
                ) -> tuple[list[str], np.ndarray]:
        labels: list[str] = []
        scores = np.empty(len(texts), dtype="float64")
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start:start + batch_size])
            predicted, probs = self.model.predict(batch, k=1)
            # DataComp: x[0].replace("__label__", "") == "en"
            labels += [p[0].replace("__label__", "") if len(p) else "" for p in predicted]
            scores[start:start + len(batch)] = [float(p[0]) if len(p) else np.nan for p in probs]
        return labels, scores

    def describe(self) -> dict[str, Any]:
        from capmix.provenance import sha256_file

        package, version = package_of("fasttext")
        return {"backend": self.backend, "package": package, "version": version,
                "model": str(self.path), "model_sha256": sha256_file(self.path),
                "model_bytes": self.path.stat().st_size,
                "languages": len(self.model.get_labels())}


def load_language_model(settings: Mapping[str, Any],
                        model_path: Path | None = None) -> LanguageModel:
    """The model ``pools[].mix.language_id`` names (``model_path``: its file, resolved)."""
    backend = settings.get("backend", LANGUAGE_ID_BACKENDS[0])
    if backend == "langid":
        return LangidModel()
    if backend == "fasttext":
        if model_path is None:
            raise ValueError("language_id backend 'fasttext' needs a model file")
        return FastTextModel(model_path)
    raise ValueError(f"unknown language_id backend '{backend}' "
                     f"(allowed: {', '.join(LANGUAGE_ID_BACKENDS)})")


def measure_captions(uids: Sequence[str], texts: Sequence[str | None],
                     model: LanguageModel) -> pd.DataFrame:
    """uid -> language, its confidence, fastText tokens, characters (a missing caption is
    the empty text)."""
    texts = ["" if t is None else str(t) for t in texts]
    labels, scores = model.predict([language_input(t) for t in texts])
    return pd.DataFrame({
        "uid": list(uids), LANGUAGE_COLUMN: labels, LANGUAGE_SCORE_COLUMN: scores,
        TOKENS_COLUMN: np.array([fasttext_token_count(t) for t in texts], dtype="int64"),
        CHARS_COLUMN: np.array([len(t) for t in texts], dtype="int64"),
    })


def caption_counts(frame: pd.DataFrame) -> dict[str, Any]:
    """What the summary is made of, as counts and sums that add across parts (:func:`merge_counts`):
    captions, captions per language, fastText tokens and characters summed, and the captions
    at DataComp's limits (at most 1 token, at most 5 characters)."""
    return {
        "n_captions": int(len(frame)),
        "languages": {str(k): int(v) for k, v in frame[LANGUAGE_COLUMN].value_counts().items()},
        "tokens_sum": int(frame[TOKENS_COLUMN].sum()),
        "tokens_at_most_1": int((frame[TOKENS_COLUMN] <= 1).sum()),
        "chars_sum": int(frame[CHARS_COLUMN].sum()),
        "chars_at_most_5": int((frame[CHARS_COLUMN] <= 5).sum()),
    }


def merge_counts(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The counts of the parts' captions together (Python ints: exact at any pool size)."""
    merged: dict[str, Any] = {"n_captions": 0, "languages": {}, "tokens_sum": 0,
                              "tokens_at_most_1": 0, "chars_sum": 0, "chars_at_most_5": 0}
    for part in parts:
        for key in merged:
            if key == "languages":
                for label, count in part["languages"].items():
                    merged["languages"][label] = merged["languages"].get(label, 0) + count
            else:
                merged[key] += part[key]
    return merged


def summary_of(counts: Mapping[str, Any], top: int = 20) -> dict[str, Any]:
    """The summary's figures from :func:`caption_counts` (one part's or merged): the ``top``
    languages by count (ties by label), the rest counted together, the means and the captions
    at DataComp's limits."""
    ordered = sorted(counts["languages"].items(), key=lambda item: (-item[1], item[0]))
    n = int(counts["n_captions"])
    return {
        "n_captions": n,
        "languages": dict(ordered[:top]),
        "other_languages": sum(count for _, count in ordered[top:]),
        "share_by_language": {label: count / n for label, count in ordered[:top]},
        "tokens": {"mean": counts["tokens_sum"] / n if n else None,
                   "at_most_1": counts["tokens_at_most_1"]},
        "chars": {"mean": counts["chars_sum"] / n if n else None,
                  "at_most_5": counts["chars_at_most_5"]},
    }


def summarise(frame: pd.DataFrame, top: int = 20) -> dict[str, Any]:
    """The summary of one frame of measured captions (:func:`summary_of`)."""
    return summary_of(caption_counts(frame), top)


def language_schema() -> Any:
    """CAPTION_LANGUAGE's columns, for every part and the reduce (an empty part too)."""
    import pyarrow as pa

    from capmix.provenance import frame_schema

    frame = pd.DataFrame({"uid": pd.Series(dtype=object),
                          LANGUAGE_COLUMN: pd.Series(dtype=object),
                          LANGUAGE_SCORE_COLUMN: pd.Series(dtype="float64"),
                          TOKENS_COLUMN: pd.Series(dtype="int64"),
                          CHARS_COLUMN: pd.Series(dtype="int64")})
    return frame_schema(frame, {"uid": pa.string(), LANGUAGE_COLUMN: pa.string(),
                                LANGUAGE_SCORE_COLUMN: pa.float64(), TOKENS_COLUMN: pa.int64(),
                                CHARS_COLUMN: pa.int64()})


def read_raw_captions(path: Path) -> pd.DataFrame:
    """uid and caption of one raw caption shard, or a ValueError naming it."""
    import pyarrow as pa

    try:
        return pd.read_parquet(path, columns=["uid", "caption"])
    except (OSError, ValueError, KeyError, pa.ArrowException) as error:
        raise ValueError(f"{path}: cannot read raw captions (uid, caption): {error}") from error


def run_caption_language_part(pool: str, raw_manifest: Path, chunk: int, n_chunks: int,
                              settings: Mapping[str, Any], model_path: Path | None,
                              out_path: Path, counts_path: Path) -> dict[str, Any]:
    """The caption_language_part rule: the raw captions of the ``chunk``-th of ``n_chunks``
    contiguous runs of the raw manifest's shard files, measured a file at a time and written
    as they go (memory: one file's captions), and their counts (:func:`caption_counts`) for
    the reduce."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from capmix.caption import caption_files
    from capmix.chunks import contiguous_run
    from capmix.provenance import write_json

    files = contiguous_run(caption_files([raw_manifest]), chunk, n_chunks)
    model = load_language_model(settings, model_path)
    described = model.describe()
    log.info("%s: identifying the language of the raw captions in %d file(s) with %s", pool,
             len(files), described)
    schema = language_schema()
    schema = schema.with_metadata({**(schema.metadata or {}), b"capmix": json.dumps(
        {"pool": pool, "stage": "caption_language_part", "language_id": described},
        sort_keys=True).encode()})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    counts = []
    with pq.ParquetWriter(tmp, schema) as writer:
        for path in files:
            raw = read_raw_captions(path)
            frame = measure_captions(raw["uid"].tolist(), raw["caption"].tolist(), model)
            writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
            counts.append(caption_counts(frame))
    os.replace(tmp, out_path)
    report = {"pool": pool, "chunk": chunk, "n_chunks": n_chunks,
              "files": [str(f) for f in files], "language_id": described,
              "counts": merge_counts(counts)}
    write_json(counts_path, report)
    return report


def run_caption_language(pool: str, raw_manifest: Path, part_paths: Sequence[Path],
                         counts_paths: Sequence[Path], settings: Mapping[str, Any],
                         model_path: Path | None, out_path: Path,
                         summary_path: Path) -> dict[str, Any]:
    """The caption_language rule: the parts streamed, in order, into the pool's caption
    languages (the rows one job over every raw caption wrote) and its summary from their
    merged counts. Every part must have run the same model."""
    from capmix.provenance import concat_parquet_atomic, provenance_record, write_json

    reports = [json.loads(Path(p).read_text()) for p in counts_paths]
    if not reports:
        raise ValueError(f"{pool}: caption_language has no parts to merge")
    described = reports[0]["language_id"]
    for path, report in zip(counts_paths, reports, strict=True):
        if report["language_id"] != described:
            raise ValueError(f"{path}: language model {report['language_id']}, but "
                             f"{counts_paths[0]}'s is {described}")
    rows = concat_parquet_atomic(part_paths, out_path, language_schema(),
                                 {"pool": pool, "stage": "caption_language",
                                  "language_id": described})
    counts = merge_counts(r["counts"] for r in reports)
    if rows != counts["n_captions"]:
        raise ValueError(f"{pool}: the caption_language parts hold {rows} rows but their "
                         f"counts say {counts['n_captions']} (a part rewritten since?)")
    inputs = [raw_manifest, *([model_path] if model_path is not None else []), *counts_paths]
    summary = {"pool": pool, "language_id": described, **summary_of(counts),
               "columns": ["uid", *CAPTION_TEXT_COLUMNS, LANGUAGE_SCORE_COLUMN],
               "parts": len(part_paths),
               "provenance": provenance_record(
                   "caption_language", inputs=inputs, params=dict(settings),
                   packages=("numpy", "pandas", described["package"] or described["backend"]))}
    write_json(summary_path, summary)
    log.info("%s: languages %s", pool, summary["languages"])
    return summary
