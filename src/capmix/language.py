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
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
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


def summarise(frame: pd.DataFrame, top: int = 20) -> dict[str, Any]:
    counts = frame[LANGUAGE_COLUMN].value_counts()
    n = int(len(frame))
    return {
        "n_captions": n,
        "languages": {str(k): int(v) for k, v in counts.head(top).items()},
        "other_languages": int(counts.iloc[top:].sum()),
        "share_by_language": {str(k): float(v) / n for k, v in counts.head(top).items()},
        "tokens": {"mean": float(frame[TOKENS_COLUMN].mean()) if n else None,
                   "at_most_1": int((frame[TOKENS_COLUMN] <= 1).sum())},
        "chars": {"mean": float(frame[CHARS_COLUMN].mean()) if n else None,
                  "at_most_5": int((frame[CHARS_COLUMN] <= 5).sum())},
    }


def run_caption_language(pool: str, raw_manifest: Path, settings: Mapping[str, Any],
                         model_path: Path | None, out_path: Path,
                         summary_path: Path) -> dict[str, Any]:
    """The caption_language rule: every fetched image's raw caption, measured."""
    from capmix.caption import caption_files
    from capmix.provenance import provenance_record, write_json, write_parquet_atomic

    files = caption_files([raw_manifest])
    raw = (pd.concat([pd.read_parquet(f, columns=["uid", "caption"]) for f in files],
                     ignore_index=True) if files else pd.DataFrame(columns=["uid", "caption"]))
    model = load_language_model(settings, model_path)
    described = model.describe()
    log.info("%s: identifying the language of %d raw captions with %s", pool, len(raw),
             described)
    frame = measure_captions(raw["uid"].tolist(), raw["caption"].tolist(), model)
    write_parquet_atomic(frame, out_path, {"pool": pool, "stage": "caption_language",
                                           "language_id": described})
    inputs = [raw_manifest, *([model_path] if model_path is not None else [])]
    summary = {"pool": pool, "language_id": described, **summarise(frame),
               "columns": ["uid", *CAPTION_TEXT_COLUMNS, LANGUAGE_SCORE_COLUMN],
               "provenance": provenance_record(
                   "caption_language", inputs=inputs, params=dict(settings),
                   packages=("numpy", "pandas", described["package"] or described["backend"]))}
    write_json(summary_path, summary)
    log.info("%s: languages %s", pool, summary["languages"])
    return summary
