"""A caption text filter, and the language-id model it asks, as config data.

DataComp's image-based baselines (``image_based`` and ``image_based_intersect_clip_score`` in
its ``baselines/apply_filter.py``, function ``caption_filter``) keep a sample only if its raw
caption

* is English by fastText's language id (``lid.176.bin``; the caption with each newline as a
  space, label ``__label__en``),
* has more than one fastText token (``len(fasttext.tokenize(text)) > 1``), and
* has more than five characters (``len(text) > 5``).

A strategy says this with ``text_filter: {language: en, min_tokens: 2, min_chars: 6}``
(:class:`TextFilter`; ``min_*`` are inclusive, so DataComp's ``> 1`` and ``> 5`` are 2 and
6). The filter reads the pool's raw (web) caption whatever caption the strategy trains with,
as DataComp's does, and applies to every part of the strategy, like its intersection with
image clusters.

The language of each raw caption comes from the ``caption_language`` stage
(:mod:`capmix.language`), with the model a pool names in ``pools[].mix.language_id``:
``langid`` (langid.py 1.1.6, whose model ships inside the package: the default, and what the
toy world and the tests run) or ``fasttext`` with a model file (DataComp's: fastText's
``lid.176.bin``, fetched by the DAG as the asset ``fasttext_lid_176``).

A light module (standard library only): the config checker and the Snakefile read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

#: Language-id backends (``pools[].mix.language_id.backend``); the schema lists exactly these
#: (a test holds them equal). :mod:`capmix.language` loads each.
LANGUAGE_ID_BACKENDS: tuple[str, ...] = ("langid", "fasttext")
#: Backends that read a model file (``language_id.model``); the others ship their model.
MODEL_FILE_BACKENDS: tuple[str, ...] = ("fasttext",)


@dataclass(frozen=True)
class TextFilter:
    """Which raw captions a strategy keeps: by language id, fastText tokens and characters."""

    language: str | None = None  # the raw caption's language id must be this; None: any
    min_tokens: int = 0  # at least this many fastText tokens (DataComp: > 1)
    min_chars: int = 0  # at least this many characters (DataComp: > 5)

    @property
    def needs_language(self) -> bool:
        return self.language is not None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_text_filter(spec: Mapping[str, Any] | None) -> TextFilter | None:
    """A strategy's ``text_filter`` (schema-validated) as a :class:`TextFilter`."""
    if not spec:
        return None
    return TextFilter(language=spec.get("language"), min_tokens=int(spec.get("min_tokens", 0)),
                      min_chars=int(spec.get("min_chars", 0)))


def language_id_problems(where: str, spec: Mapping[str, Any]) -> list[str]:
    """What a pool's ``language_id`` settings get wrong (``where`` names the config key)."""
    backend = spec.get("backend", LANGUAGE_ID_BACKENDS[0])
    has_model = spec.get("model") is not None
    if backend in MODEL_FILE_BACKENDS and not has_model:
        return [f"{where}.model': backend '{backend}' needs a model file (DataComp's: "
                "asset:fasttext_lid_176, fastText's lid.176.bin)"]
    if backend not in MODEL_FILE_BACKENDS and has_model:
        return [f"{where}.model': backend '{backend}' ships its own model and reads no file "
                f"(backends that read one: {', '.join(MODEL_FILE_BACKENDS)})"]
    return []
