"""The toy world's vocabulary and what a world spec may say.

Everything here is a plain fact about the closed little world of :mod:`capmix.toyworld`: its
splits (and the scene distribution each draws from), its classes and their hierarchy, the
colours, sizes, positions, backgrounds and fills an object may have, the phrasings and noise
modes of its captions, and :func:`validate_spec`, the check of a world spec. It imports only
the standard library, because the config checker and the Snakefile read it at start-up (the
Snakefile needs :data:`SPLITS` to name the toy_world rule's outputs) and must not load numpy or
PIL for that. Drawing scenes is :mod:`capmix.toyscenes`, wording them :mod:`capmix.toycaptions`,
rendering them :mod:`capmix.toydraw`, and writing a world :mod:`capmix.toyworld`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BACKGROUND_COLOURS",
    "BACKGROUND_PATTERNS",
    "CAPTION_MODES",
    "CLASSNAMES",
    "COCO_NAMED_CLASSES",
    "COCO_NAMES",
    "COLOURS",
    "DESCRIPTION_STYLES",
    "JUNK_KINDS",
    "NEUTRALS",
    "OPTIONAL_FRACTIONS",
    "POSITIONS",
    "POSITION_PHRASE",
    "PROFILES",
    "SIZES",
    "SPLITS",
    "SPLIT_PROFILES",
    "STYLES",
    "SUPERCATEGORIES",
    "SUPERCATEGORIES_WORDS",
    "TEXTURE_STYLES",
    "TYPICAL_COLOURS",
    "tokens",
    "validate_spec",
    "visual_words",
]

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

#: Object shapes; they double as the class names of the ImageNet-like splits.
CLASSNAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "diamond",
    "hexagon",
    "ring",
    "crescent",
    "arrow",
)

#: Each class's typical colour, as real object categories have typical colours (goldfish are
#: orange). With probability ``typical_colour_probability`` (a world setting) an object wears
#: its class's colour, otherwise any colour. Colour is what a tiny model learns first, so it
#: is what makes the class learnable by the stand-ins within a laptop's budget; shape is still
#: needed to tell the two pairs that share a colour apart, and the shifted splits remove the cue
#: (sketches are black, renditions wear untypical colours) as ImageNet-Sketch/-R remove texture.
TYPICAL_COLOURS: dict[str, str] = {
    "circle": "red",
    "square": "blue",
    "triangle": "green",
    "star": "yellow",
    "cross": "orange",
    "diamond": "purple",
    "hexagon": "brown",
    "ring": "pink",
    "crescent": "yellow",
    "arrow": "green",
}
#: The toy class hierarchy (ImageNet's classes sit in WordNet; these in three groups).
SUPERCATEGORIES: dict[str, tuple[str, ...]] = {
    "round shape": ("circle", "ring", "crescent"),
    "polygon": ("square", "triangle", "diamond", "hexagon"),
    "sign": ("star", "cross", "arrow"),
}
#: Words of the supercategory names ("round", "shape", "polygon", "sign").
SUPERCATEGORIES_WORDS: frozenset[str] = frozenset(
    w for name in SUPERCATEGORIES for w in re.findall(r"[a-z]+", name)
)
#: The classes the COCO-style split names as such; the others only by their supercategory.
COCO_NAMED_CLASSES: frozenset[str] = frozenset(
    {"circle", "square", "triangle", "star", "cross", "arrow"}
)
#: What the COCO-style split calls each class. COCO's annotators name objects in a narrow,
#: generic vocabulary (80 categories; "a dog", "a bird" where ImageNet has breeds and species),
#: so some classes are only ever called by their supercategory: a captioner fine-tuned on this
#: split stops naming them, which is the paper's reading of why COCO fine-tuning hurts CLIP
#: training (Table 1: less diverse, less specific text).
COCO_NAMES: dict[str, str] = {
    shape: shape if shape in COCO_NAMED_CLASSES else group
    for group, members in SUPERCATEGORIES.items()
    for shape in members
}

#: The world's splits, in the order they are generated; the role each plays is described
#: in :mod:`capmix.toyworld`. The config schema lists them too (a test holds them equal).
SPLITS: tuple[str, ...] = (
    "pretrain",
    "coco",
    "pool",
    "in_train",
    "eval_in",
    "eval_in_v2",
    "eval_in_sketch",
    "eval_in_rendition",
    "eval_in_clutter",
    "eval_retrieval",
    "nocaps",
)

#: How a pool image's raw caption relates to it: right, partly right, another image's,
#: non-visual text or page boilerplate (the web's failure modes, Figure 1 / Appendix A).
CAPTION_MODES: tuple[str, ...] = ("right", "partial", "other_image", "non_visual", "boilerplate")

#: Object colours (RGB). Saturated and mutually distinct so a 64 px image shows them clearly.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (245, 215, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 185),
    "pink": (245, 125, 185),
    "brown": (125, 75, 35),
}
#: Neutral colours: ordinary backgrounds, and "black" for sketch-like line drawings.
NEUTRALS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}
BACKGROUND_COLOURS: tuple[str, ...] = tuple(NEUTRALS)
SIZES: tuple[str, ...] = ("small", "medium", "large")
POSITIONS: tuple[str, ...] = (
    "left",
    "right",
    "top",
    "bottom",
    "center",
    "top left",
    "top right",
    "bottom left",
    "bottom right",
)
POSITION_PHRASE: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
    "top left": "in the top left corner",
    "top right": "in the top right corner",
    "bottom left": "in the bottom left corner",
    "bottom right": "in the bottom right corner",
}
BACKGROUND_PATTERNS: tuple[str, ...] = (
    "plain",
    "striped",
    "dotted",
    "checkered",
    "shaded",
    "cluttered",
)
#: How an object is filled: solid, outline only (sketch-like) or textured (rendition-like).
STYLES: tuple[str, ...] = ("solid", "outlined", "striped", "dotted", "checkered")
TEXTURE_STYLES: tuple[str, ...] = ("striped", "dotted", "checkered")

#: Scene distributions; every split draws from exactly one.
PROFILES: tuple[str, ...] = ("web", "coco", "imagenet", "sketch", "rendition", "clutter")
SPLIT_PROFILES: dict[str, str] = {
    "pretrain": "web",
    "coco": "coco",
    "pool": "web",
    "in_train": "imagenet",
    "eval_in": "imagenet",
    "eval_in_v2": "imagenet",
    "eval_in_sketch": "sketch",
    "eval_in_rendition": "rendition",
    "eval_in_clutter": "clutter",
    "eval_retrieval": "web",
    "nocaps": "web",
}

#: Phrasings of the same ground truth; pretrain samples among them (caption diversity) and
#: eval_retrieval uses distinct ones as multiple references.
DESCRIPTION_STYLES: tuple[str, ...] = (
    "canonical",
    "picture",
    "there_is",
    "background_first",
    "showing",
    "colour_first",
)

#: Kinds of object-free web image in the pool (noise, flat colour, ...; capmix.toydraw.draw_junk).
JUNK_KINDS: tuple[str, ...] = ("noise", "flat", "gradient", "text", "button")


def tokens(text: str) -> list[str]:
    """Lower-case alphabetic tokens; the shared notion of "word" for vocabulary checks."""
    return re.findall(r"[a-z]+", text.lower())


def visual_words() -> frozenset[str]:
    """All words that carry visual content in this world (shapes, colours, sizes, ...).

    Used to guarantee (and test) that non-visual and boilerplate captions carry none of them,
    which is what makes them "noise" for CLIP training.
    """
    words: set[str] = set(CLASSNAMES) | set(COLOURS) | set(NEUTRALS) | set(SIZES)
    for phrase in POSITION_PHRASE.values():
        words.update(w for w in tokens(phrase) if w not in {"on", "the", "at", "in"})
    words.update(p for p in BACKGROUND_PATTERNS if p != "plain")
    words.update(s for s in STYLES if s != "solid")
    return frozenset(words)


# --------------------------------------------------------------------------------------------
# Spec checks
# --------------------------------------------------------------------------------------------

_FRACTION_KEYS = ("junk_image_fraction", "dead_url_fraction", "corrupt_file_fraction")
#: Optional probabilities and their values when a spec leaves them out (the config schema's
#: defaults; a test holds them equal).
OPTIONAL_FRACTIONS = {"typical_colour_probability": 0.0, "attribute_mention_probability": 1.0}


def validate_spec(spec: Mapping[str, Any]) -> None:
    """Reject specs that would silently produce a wrong world; the message names the key."""
    size = spec.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {size!r}")
    splits = spec.get("splits")
    if not isinstance(splits, Mapping):
        raise ValueError("splits must be a mapping split -> count")
    for name in splits:
        if name not in SPLITS:
            raise ValueError(f"splits: unknown split {name!r}")
    for name in SPLITS:
        n = splits.get(name, 0)  # a split a spec does not name is empty
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"splits.{name} must be an integer >= 0, got {n!r}")
    modes = spec.get("pool_caption_modes")
    if not isinstance(modes, Mapping):
        raise ValueError("pool_caption_modes must be a mapping mode -> probability")
    for mode, p in modes.items():
        if mode not in CAPTION_MODES:
            raise ValueError(f"pool_caption_modes: unknown mode {mode!r}")
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
            raise ValueError(f"pool_caption_modes.{mode} must be a probability, got {p!r}")
    total = float(sum(modes.values()))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"pool_caption_modes must sum to 1, got {total}")
    for key in (*_FRACTION_KEYS, *OPTIONAL_FRACTIONS):
        f = spec.get(key, OPTIONAL_FRACTIONS.get(key))
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0.0 <= f <= 1.0:
            raise ValueError(f"{key} must be a fraction in [0, 1], got {f!r}")
    n_pool = splits["pool"]
    if (
        round(spec["dead_url_fraction"] * n_pool) + round(spec["corrupt_file_fraction"] * n_pool)
        > n_pool
    ):
        raise ValueError("dead_url_fraction + corrupt_file_fraction exceed the pool size")
    k = spec.get("captions_per_retrieval_image")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(DESCRIPTION_STYLES):
        raise ValueError(
            f"captions_per_retrieval_image must be an integer in [1, {len(DESCRIPTION_STYLES)}],"
            f" got {k!r}"
        )
