"""Procedurally generated "toy world": a laptop-sized stand-in for web image-text data.

The paper (Nguyen et al., 2023) studies what happens when noisy web alt-text is replaced or
mixed with synthetic captions. Running that on DataComp needs a cluster, so this module draws a
closed little world instead: images of coloured shapes on plain or textured backgrounds, each
with an exact ground-truth description. Because the truth is known, every later stage of the
pipeline (captioning, CLIP scoring, filtering, CLIP training, evaluation) can be checked against
it, and the whole pipeline fits on a 2-core CPU.

Everything is produced by code from ``(spec, seed)``; nothing is downloaded. The splits mirror
the roles datasets play in the paper:

* ``pretrain``: clean, diversely phrased image-text pairs, standing in for the large clean data
  the captioners and the CLIP scorer were pre-trained on.
* ``coco``: a narrow "MS-COCO" split (single object, plain background, one formulaic caption
  that omits size and position), so a captioner fine-tuned on it becomes less diverse and less
  informative, as the paper reports for COCO fine-tuning.
* ``pool``: the web-crawled candidate pool. Raw captions follow the failure modes of Figure 1 /
  Appendix A (non-visual text such as "Italien - Ligurien", boilerplate such as
  "Image Not Found", captions of other images, partly right captions with SEO junk); some
  images carry no object at all, some URLs are dead and some files are corrupt.
* ``in_train`` / ``eval_in*``: ImageNet-like classification data (label = object shape), with
  distribution shifts standing in for ImageNet-V2, -Sketch, -R and -A.
* ``eval_retrieval``: Flickr/COCO-retrieval-like images with several reference captions each.
* ``nocaps``: held-out web-like images with reference captions (the COCO-style one and the
  canonical description), standing in for NoCaps: the CIDEr column of Table 1.

The vocabulary of the clean descriptions is small and closed (about 50 words) so that a tiny
captioner can learn it.

Two world settings make the class learnable by laptop-sized stand-ins (README, "The embedded
default"): objects wear their class's :data:`TYPICAL_COLOURS` with ``typical_colour_probability``,
and captions state each attribute other than the class with ``attribute_mention_probability``
(:func:`sample_mentions`). The COCO-style split calls some classes only by their supercategory
(:data:`COCO_NAMES`), as COCO's vocabulary is narrower than ImageNet's.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageDraw

__all__ = [
    "ALL_ATTRIBUTES",
    "BACKGROUND_COLOURS",
    "BACKGROUND_PATTERNS",
    "CAPTION_MODES",
    "CLASSNAMES",
    "COCO_NAMED_CLASSES",
    "COCO_NAMES",
    "COLOURS",
    "COLUMNS",
    "DESCRIPTION_STYLES",
    "GROUND_TRUTH_ATTRIBUTES",
    "JUNK_KINDS",
    "OPTIONAL_ATTRIBUTES",
    "OPTIONAL_FRACTIONS",
    "POSITIONS",
    "PROFILES",
    "SIZES",
    "SPLITS",
    "SPLIT_PROFILES",
    "STYLES",
    "SUPERCATEGORIES",
    "SUPERCATEGORIES_WORDS",
    "TYPICAL_COLOURS",
    "Scene",
    "SceneObject",
    "attributes_named",
    "boilerplate_caption",
    "describe",
    "draw_junk",
    "draw_scene",
    "generate_world",
    "non_visual_caption",
    "partial_caption",
    "sample_mentions",
    "sample_scene",
    "tokens",
    "toy_uid",
    "validate_spec",
    "visual_words",
    "web_style",
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
#: Diameter of an object's bounding circle as a fraction of the image's shorter edge. Small is
#: still 30 % so that even the smallest object stays clearly visible at 64 px.
SIZE_FRACTION: dict[str, float] = {"small": 0.30, "medium": 0.38, "large": 0.50}
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
#: Position pairs for two-object scenes: opposite sides, so the two objects never overlap.
POSITION_PAIRS: tuple[tuple[str, str], ...] = (
    ("left", "right"),
    ("right", "left"),
    ("top", "bottom"),
    ("bottom", "top"),
    ("top left", "bottom right"),
    ("bottom right", "top left"),
    ("top right", "bottom left"),
    ("bottom left", "top right"),
)
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
#: Splits whose labels are assigned round-robin so that small evaluation sets stay balanced.
_BALANCED_SPLITS = frozenset(
    {"in_train", "eval_in", "eval_in_v2", "eval_in_sketch", "eval_in_rendition", "eval_in_clutter"}
)

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

JUNK_KINDS: tuple[str, ...] = ("noise", "flat", "gradient", "text", "button")

#: Parquet columns, identical for every split, in this order.
COLUMNS: tuple[str, ...] = (
    "uid",
    "url",
    "text",
    "description",
    "captions",
    "label",
    "classname",
    "shape",
    "colour",
    "size",
    "position",
    "background",
    "n_objects",
    "caption_mode",
    "image_kind",
    "url_state",
    "width",
    "height",
)
_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("description", pa.string()),
        ("captions", pa.list_(pa.string())),
        ("label", pa.int64()),
        ("classname", pa.string()),
        ("shape", pa.string()),
        ("colour", pa.string()),
        ("size", pa.string()),
        ("position", pa.string()),
        ("background", pa.string()),
        ("n_objects", pa.int64()),
        ("caption_mode", pa.string()),
        ("image_kind", pa.string()),
        ("url_state", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
    ]
)

_SS = 2  # supersampling factor: draw at 2x and box-downsample, for anti-aliased edges
_MIN_CONTRAST = 100.0  # minimum RGB distance between an object and its background


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
# Seeding
# --------------------------------------------------------------------------------------------


def toy_uid(seed: int, split: str, index: int) -> str:
    """Stable sample id: the md5 of ``toy:{seed}:{split}:{index}`` (32 lower-case hex digits).

    Derived from the sample's coordinates rather than its content so that ids are known before
    anything is drawn, and unique across splits and seeds.
    """
    return hashlib.md5(f"toy:{seed}:{split}:{index}".encode()).hexdigest()


def _rng(seed: int, *keys: object) -> np.random.Generator:
    """An independent generator for one named stream.

    The stream key is hashed instead of being passed to ``SeedSequence`` as a list because
    SeedSequence pads short entropy with zeros (``[a, b]`` and ``[a, b, 0]`` collide) and splits
    big integers into words; hashing gives collision-free streams for any integer seed.
    """
    key = ":".join(str(k) for k in (seed, *keys))
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:16], "big"))


def _choice(rng: np.random.Generator, items: Sequence[Any], p: Sequence[float] | None = None):
    """Pick one element of ``items`` (numpy's choice would turn tuples into arrays)."""
    if p is None:
        return items[int(rng.integers(len(items)))]
    return items[int(rng.choice(len(items), p=np.asarray(p, dtype=float)))]


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: the attributes a description mentions."""

    shape: str
    colour: str
    size: str
    position: str
    style: str = "solid"


@dataclass(frozen=True)
class Scene:
    """Ground truth of one image: 1-2 objects (main object first) on a background.

    ``detail_seed`` fixes the nuisance details that descriptions do not mention (rotation
    jitter, stripe period, clutter marks), so that a Scene alone determines its pixels.
    """

    objects: tuple[SceneObject, ...]
    background_colour: str
    background_pattern: str = "plain"
    detail_seed: int = 0

    @property
    def main(self) -> SceneObject:
        return self.objects[0]

    @property
    def label(self) -> int:
        return CLASSNAMES.index(self.main.shape)

    @property
    def background(self) -> str:
        """Background phrase without the noun, e.g. ``"striped gray"`` or ``"white"``."""
        if self.background_pattern == "plain":
            return self.background_colour
        return f"{self.background_pattern} {self.background_colour}"


def _rgb(colour: str) -> tuple[int, int, int]:
    return COLOURS[colour] if colour in COLOURS else NEUTRALS[colour]


def _background_rgb(colour: str) -> tuple[int, int, int]:
    """Background tone: neutrals as they are, palette colours lightened (a "green wall")."""
    if colour in NEUTRALS:
        return NEUTRALS[colour]
    r, g, b = COLOURS[colour]
    return (round(r * 0.8 + 255 * 0.2), round(g * 0.8 + 255 * 0.2), round(b * 0.8 + 255 * 0.2))


def _luminance(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _shade(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Second tone of a texture: darker for light colours, lighter for dark ones.

    Kept close to the base tone so that textures never out-shout the objects.
    """
    if _luminance(rgb) > 100:
        return (round(rgb[0] * 0.78), round(rgb[1] * 0.78), round(rgb[2] * 0.78))
    return tuple(round(c + (255 - c) * 0.22) for c in rgb)  # type: ignore[return-value]


def _distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return math.dist(a, b)


def _contrasting(background_colour: str, candidates: Sequence[str]) -> list[str]:
    """Object colours that stay clearly visible on both tones of the given background."""
    base = _background_rgb(background_colour)
    tones = (base, _shade(base))
    return [
        c
        for c in candidates
        if c != background_colour and all(_distance(_rgb(c), t) >= _MIN_CONTRAST for t in tones)
    ]


_WEB_PATTERNS = (
    ("plain", "striped", "dotted", "checkered", "shaded", "cluttered"),
    (0.45, 0.14, 0.14, 0.1, 0.12, 0.05),
)
_IMAGENET_PATTERNS = (
    ("plain", "striped", "dotted", "checkered", "shaded"),
    (0.5, 0.13, 0.13, 0.12, 0.12),
)
_WEB_STYLES = (
    ("solid", "outlined", "striped", "dotted", "checkered"),
    (0.8, 0.07, 0.05, 0.04, 0.04),
)


def _object_colour(
    rng: np.random.Generator, shape: str, typical_probability: float, untypical: bool
) -> str:
    """The colour of one object: its class's typical colour with the given probability."""
    typical = TYPICAL_COLOURS[shape]
    if untypical:
        return _choice(rng, [c for c in COLOURS if c != typical])
    if rng.random() < typical_probability:
        return typical
    return _choice(rng, tuple(COLOURS))


def _backgrounds_for(colour: str, candidates: Sequence[str]) -> list[str]:
    """The candidate backgrounds a colour stands out on."""
    return [b for b in candidates if colour in _contrasting(b, (colour,))]


def sample_scene(
    rng: np.random.Generator,
    profile: str = "web",
    shape: str | None = None,
    typical_colour_probability: float = 0.0,
) -> Scene:
    """Draw a random scene from one of the :data:`PROFILES`.

    ``shape`` forces the main object's shape (used for class-balanced splits). Profiles:
    ``web`` (1-2 objects, mostly solid, varied backgrounds, rare textured/outlined objects and
    coloured backgrounds, like the variety of the web), ``coco`` (one solid object, plain
    neutral background), ``imagenet`` (one solid object, varied background), ``sketch`` (black
    outline on white), ``rendition`` (textured objects, unusual colour combinations) and
    ``clutter`` (one small object among distractor marks).

    An object wears its class's :data:`TYPICAL_COLOURS` entry with probability
    ``typical_colour_probability`` (never in renditions, whose colours are deliberately
    untypical, nor in black sketches); the background is then one the colour stands out on.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    main_shape = shape if shape is not None else _choice(rng, CLASSNAMES)
    if main_shape not in CLASSNAMES:
        raise ValueError(f"unknown shape {main_shape!r}")
    n_objects = 1
    style = "solid"
    if profile == "web":
        n_objects = 1 if rng.random() < 0.6 else 2
        pattern = _choice(rng, *_WEB_PATTERNS)
        coloured = rng.random() < 0.1 and pattern != "cluttered"
        backgrounds = tuple(COLOURS) if coloured else BACKGROUND_COLOURS
        style = _choice(rng, *_WEB_STYLES)
    elif profile == "coco":
        pattern = "plain"
        backgrounds = BACKGROUND_COLOURS
    elif profile == "imagenet":
        pattern = _choice(rng, *_IMAGENET_PATTERNS)
        backgrounds = BACKGROUND_COLOURS
    elif profile == "sketch":
        pattern, backgrounds, style = "plain", ("white",), "outlined"
    elif profile == "rendition":
        pattern = _choice(
            rng, ("plain", "striped", "dotted", "checkered", "shaded"), (0.6, 0.1, 0.1, 0.1, 0.1)
        )
        backgrounds = tuple(COLOURS) if rng.random() < 0.7 else ("white", "black")
        style = _choice(rng, TEXTURE_STYLES) if rng.random() < 0.75 else "solid"
    else:  # clutter
        pattern = "cluttered"
        backgrounds = BACKGROUND_COLOURS

    if profile == "sketch":
        colour, bg = "black", "white"
    else:
        untypical = profile == "rendition"
        colour = _object_colour(rng, main_shape, typical_colour_probability, untypical)
        # every palette colour stands out on at least one neutral background
        bg = _choice(rng, _backgrounds_for(colour, backgrounds)
                     or _backgrounds_for(colour, BACKGROUND_COLOURS))
    palette = _contrasting(bg, tuple(COLOURS))

    if n_objects == 1:
        size = "small" if profile == "clutter" else _choice(rng, SIZES)
        position = _choice(rng, POSITIONS)
        objects: tuple[SceneObject, ...] = (SceneObject(main_shape, colour, size, position, style),)
    else:
        size = _choice(rng, SIZES)
        # two large objects cannot share one image without overlapping
        size2 = _choice(rng, SIZES[:2] if size == "large" else SIZES)
        pos, pos2 = _choice(rng, POSITION_PAIRS)
        while True:
            shape2 = _choice(rng, CLASSNAMES)
            colour2 = _object_colour(rng, shape2, typical_colour_probability, False)
            if colour2 not in palette:
                colour2 = _choice(rng, palette)
            if (shape2, colour2) != (main_shape, colour):
                break
        style2 = "solid" if rng.random() < 0.85 else _choice(rng, STYLES[1:])
        objects = (
            SceneObject(main_shape, colour, size, pos, style),
            SceneObject(shape2, colour2, size2, pos2, style2),
        )
    return Scene(objects, bg, pattern, int(rng.integers(0, 2**62)))


# --------------------------------------------------------------------------------------------
# Descriptions and captions
# --------------------------------------------------------------------------------------------


def _article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


#: The attributes a caption may leave out; the object's class (its shape) is always named.
OPTIONAL_ATTRIBUTES: tuple[str, ...] = ("size", "colour", "position", "background")
ALL_ATTRIBUTES: frozenset[str] = frozenset(OPTIONAL_ATTRIBUTES)


def sample_mentions(rng: np.random.Generator, probability: float) -> frozenset[str]:
    """Which optional attributes one caption states, each with the given probability.

    People caption the object and mention its other attributes only some of the time; a world
    where every caption lists every attribute lets a contrastive model match captions by the
    easy attributes alone (colour, position) and never learn the class word.
    """
    if probability >= 1.0:
        return ALL_ATTRIBUTES
    return frozenset(a for a in OPTIONAL_ATTRIBUTES if rng.random() < probability)


def _noun_phrase(
    obj: SceneObject, size: bool = True, coco: bool = False, colour: bool = True
) -> str:
    words = [obj.size] if size else []
    if colour:
        words.append(obj.colour)
        if obj.style != "solid":
            words.append(obj.style)
    words.append(COCO_NAMES[obj.shape] if coco else obj.shape)
    return " ".join(words)


def describe(
    scene: Scene, style: str = "canonical", mentions: frozenset[str] = ALL_ATTRIBUTES
) -> str:
    """Render the scene's ground truth as text in one of :data:`DESCRIPTION_STYLES` or "coco".

    With the default ``mentions`` every style except "coco" states every attribute (size,
    colour and fill, shape, position, background); they differ only in phrasing. A smaller
    ``mentions`` (see :func:`sample_mentions`) leaves the other attributes out; the shape is
    always named. "coco" is the deliberately formulaic caption of the COCO-like split: one
    template, the object's :data:`COCO_NAMES` name (for some classes only their supercategory),
    colour and background where ``mentions`` has them, never size or position.
    """
    bg = _with_article(f"{scene.background} background")
    size, colour = "size" in mentions, "colour" in mentions
    if style == "coco":
        objs = " and ".join(
            _with_article(_noun_phrase(o, size=False, coco=True, colour=colour))
            for o in scene.objects
        )
        return f"{objs} on {bg}." if "background" in mentions else f"{objs}."
    position, background = "position" in mentions, "background" in mentions
    parts = []
    for o in scene.objects:
        where = f" {POSITION_PHRASE[o.position]}" if position else ""
        if style == "colour_first":
            how_big = f" of {o.size} size" if size else ""
            parts.append(f"{_with_article(_noun_phrase(o, False, colour=colour))}{how_big}{where}")
        else:
            parts.append(f"{_with_article(_noun_phrase(o, size, colour=colour))}{where}")
    objs = " and ".join(parts)
    if style in ("canonical", "colour_first"):
        return f"{objs} of {bg}" if background else objs
    if style == "picture":
        return f"a picture of {objs}, on {bg}" if background else f"a picture of {objs}"
    if style == "there_is":
        verb = "is" if len(scene.objects) == 1 else "are"
        return f"there {verb} {objs} of {bg}" if background else f"there {verb} {objs}"
    if style == "background_first":
        return f"{bg} with {objs}" if background else f"an image of {objs}"
    if style == "showing":
        return f"an image showing {objs} of {bg}" if background else f"an image showing {objs}"
    raise ValueError(f"unknown description style {style!r}")


#: The ground-truth columns an attribute check reads (toy metadata has them all).
GROUND_TRUTH_ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "size", "position", "background")
_BACKGROUND_PHRASE = re.compile(
    r"\b(?:(?:" + "|".join(BACKGROUND_PATTERNS) + r")\s+)?[a-z]+\s+background\b"
)


def attributes_named(caption: str, truth: Mapping[str, str]) -> dict[str, tuple[bool, bool]]:
    """Per ground-truth attribute of the main object: (some value named, the true value named).

    The measurement behind the toy-only accuracy column of the quality stage: how often a
    caption set names each attribute at all, and names it right. Words are matched on the
    lower-cased caption; the object attributes (shape, colour, size) are looked for outside
    the "... background" phrase so that a pink background does not count as a pink object; a
    supercategory ("polygon") counts as naming the shape, but not rightly. Position and
    background are matched as whole phrases ("in the top left corner", "striped gray
    background"). In two-object scenes a word naming the second object counts too: captions
    are not parsed into objects.
    """
    text = " ".join(tokens(caption))
    objects = set(tokens(_BACKGROUND_PHRASE.sub(" ", text)))
    padded = f" {text} "
    positions = {p: f" {POSITION_PHRASE[p]} " for p in POSITIONS}
    true_position = positions.get(truth["position"])
    return {
        "shape": (bool(objects & (set(CLASSNAMES) | set(SUPERCATEGORIES_WORDS))),
                  truth["shape"] in objects),
        "colour": (bool(objects & set(COLOURS)), truth["colour"] in objects),
        "size": (bool(objects & set(SIZES)), truth["size"] in objects),
        "position": (any(p in padded for p in positions.values()),
                     true_position is not None and true_position in padded),
        "background": ("background" in text.split(),
                       f" {truth['background']} background " in padded),
    }


def web_style(text: str, rng: np.random.Generator) -> str:
    """Dress a clean caption up the way alt-text looks on the web (casing, punctuation)."""
    casing = _choice(rng, ("lower", "sentence", "title", "upper"), (0.45, 0.3, 0.15, 0.1))
    if casing == "sentence":
        text = text[:1].upper() + text[1:]
    elif casing == "title":
        text = text.title()
    elif casing == "upper":
        text = text.upper()
    return text + _choice(rng, ("", ".", "!", " ..."), (0.5, 0.3, 0.1, 0.1))


_SEO_SUFFIXES = (
    " - buy now ${price}",
    " | free shipping",
    " stock photo #{num}",
    " wallpaper hd 1920x1080",
    " - best price ${price}",
    " | sale {pct}% off",
)


def partial_caption(
    scene: Scene, rng: np.random.Generator, mention_probability: float = 1.0
) -> str:
    """A partly right caption: wrong colour, a single attribute, or truth plus SEO junk."""
    main = scene.main
    kind = _choice(rng, ("wrong_colour", "one_attribute", "seo"))
    if kind == "wrong_colour":
        wrong = _choice(rng, [c for c in COLOURS if c != main.colour])
        phrase = _with_article(f"{wrong} {main.shape}")
        if rng.random() < 0.5:
            phrase += f" on {_with_article(scene.background + ' background')}"
        text = phrase
    elif kind == "one_attribute":
        text = _choice(
            rng,
            (
                main.shape,
                f"{main.shape} icon",
                f"{main.shape} clipart",
                f"{main.shape} shape",
                main.colour,
                f"{main.colour} design",
                f"shades of {main.colour}",
            ),
        )
    else:
        suffix = _choice(rng, _SEO_SUFFIXES).format(
            price=f"{int(rng.integers(5, 200))}.99",
            num=int(rng.integers(100000, 999999)),
            pct=int(rng.integers(1, 8)) * 10,
        )
        style = _choice(rng, DESCRIPTION_STYLES)
        text = describe(scene, style, sample_mentions(rng, mention_probability)) + suffix
    return web_style(text, rng)


# Word lists for non-visual captions. None of these words may be in visual_words(): the
# tests check this by sampling many captions.
_PLACES = (
    ("Italien", "Ligurien"),
    ("Italia", "Toscana"),
    ("France", "Bretagne"),
    ("España", "Andalucía"),
    ("Deutschland", "Bayern"),
    ("Österreich", "Tirol"),
    ("Portugal", "Algarve"),
    ("Hrvatska", "Dalmacija"),
    ("Schweiz", "Wallis"),
    ("Norge", "Lofoten"),
)
_CARS = (
    "Mercedes-Benz C240",
    "Toyota Corolla",
    "Honda Civic",
    "Ford Focus",
    "Volvo V70",
    "Audi A4",
    "Opel Astra",
    "Mazda 6",
)
_BODIES = ("sedan", "wagon", "coupe", "hatchback", "convertible")
_FEATURES = ("Leather", "Sunroof", "Low Miles", "One Owner", "Automatic", "Navigation")
_HYPE = ("MUST BE SEEN", "PRICED TO SELL", "LIKE NEW", "NO RESERVE", "CLEAN TITLE")
_FIRST = ("Can", "Lutz", "Maria", "Jonas", "Aylin", "Pierre", "Sofia", "Mehmet", "Anna", "Tom")
_LAST = ("Ünal", "Schmidt", "Rossi", "Dubois", "Nowak", "Jensen", "Silva", "Kowalski")
_CITIES = ("Berlin", "Lyon", "Porto", "Krakow", "Oslo", "Tampere", "Graz", "Bologna", "Gent")
_EVENTS = (
    "Sommerfest",
    "Annual Meeting",
    "Jazz Festival",
    "Open Day",
    "Stadtlauf",
    "Christmas Market",
    "Conference",
)
_HOWTO_ES = (
    "pedir la mano de tu novia",
    "cocinar arroz",
    "aprender a nadar",
    "limpiar la casa",
    "ahorrar dinero",
)
_HOWTO_EN = (
    "save money",
    "learn to swim",
    "write a cover letter",
    "clean your oven",
    "fix a leaking tap",
)
_PRODUCTS = (
    "hair oil",
    "face cream",
    "shampoo",
    "olive oil",
    "honey",
    "coffee beans",
    "herbal tea",
    "hand soap",
)


def non_visual_caption(rng: np.random.Generator) -> str:
    """Text without visual content, like "Italien - Ligurien" or a used-car ad (Appendix A)."""
    kind = int(rng.integers(9))
    year = int(rng.integers(1995, 2024))
    if kind == 0:
        country, region = _choice(rng, _PLACES)
        return f"{country} - {region}"
    if kind == 1:
        return (
            f"{year} {_choice(rng, _CARS)} {_choice(rng, _BODIES)}, {_choice(rng, _FEATURES)}, "
            f"{_choice(rng, _HYPE)} - ${int(rng.integers(15, 300)) * 100 - 1}"
        )
    if kind == 2:
        return (
            f"{_choice(rng, _FIRST)} {_choice(rng, _LAST)} is one of Gespeicherte Orte von "
            f"{_choice(rng, _FIRST)}."
        )
    if kind == 3:
        return f"{int(rng.integers(3, 12))} formas de {_choice(rng, _HOWTO_ES)} - wikiHow"
    if kind == 4:
        return f"How to {_choice(rng, _HOWTO_EN)} in {int(rng.integers(3, 12))} steps"
    if kind == 5:
        product = _choice(rng, _PRODUCTS)
        return _choice(
            rng,
            (
                product,
                f"{product} {int(rng.integers(1, 10)) * 50} ml",
                f"Bio {product} - {int(rng.integers(2, 40))},99 EUR",
            ),
        )
    if kind == 6:
        return _choice(rng, _FIRST).lower()
    if kind == 7:
        return f"{_choice(rng, _EVENTS)} {year} - {_choice(rng, _CITIES)}"
    return (
        f"{int(rng.integers(1, 5))} bed, {int(rng.integers(1, 3))} bath apartment in "
        f"{_choice(rng, _CITIES)} - €{int(rng.integers(6, 30)) * 100}/month"
    )


def boilerplate_caption(rng: np.random.Generator) -> str:
    """Page furniture that ended up as alt-text: "Image Not Found", file names, buttons."""
    n = int(rng.integers(1, 10000))
    options = (
        "Image Not Found",
        "home-page-button.png",
        "click here to enlarge",
        f"IMG_{n:04d}.JPG",
        f"image{n % 100}.JPG",
        f"DSC_{n:04d}.jpg",
        "more info",
        "placeholder",
        "thumbnail",
        "no image available",
        "spacer.gif",
        "logo",
        f"untitled-{n % 50}",
        f"banner_{_choice(rng, ('728x90', '468x60', '300x250'))}.gif",
        "Loading...",
        f"Photo {n % 20 + 1} of {n % 20 + 1 + n % 7}",
        "click to view full size",
        f"Screenshot 20{10 + n % 14}-0{n % 9 + 1}-1{n % 10} at 10.{n % 60:02d}.07",
        "default.jpg",
        "Read more",
    )
    return _choice(rng, options)


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]


def _pattern_mask(kind: str, h: int, w: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Boolean HxW mask of the second tone of a stripe / dot / checker texture."""
    y, x = _grid(h, w)
    if kind == "striped":
        period = float(rng.uniform(5.0, 9.0)) * scale
        direction = int(rng.integers(4))
        coord = (y, x, x + y, x - y)[direction]
        stripes = ((coord + float(rng.uniform(0, period))) % period) < period / 2
        return np.broadcast_to(stripes, (h, w))
    if kind == "dotted":
        spacing = float(rng.uniform(5.0, 8.0)) * scale
        radius = spacing * float(rng.uniform(0.18, 0.28))
        oy, ox = rng.uniform(0, spacing, size=2)
        dy = (y + oy) % spacing - spacing / 2
        dx = (x + ox) % spacing - spacing / 2
        return dy * dy + dx * dx < radius * radius
    if kind == "checkered":
        cell = float(rng.uniform(5.0, 9.0)) * scale
        return ((np.floor(y / cell) + np.floor(x / cell)) % 2).astype(bool)
    raise ValueError(f"unknown texture {kind!r}")


def _two_tone(mask: np.ndarray, a: tuple[int, int, int], b: tuple[int, int, int]) -> Image.Image:
    """RGB image with colour ``a`` where mask is False and ``b`` where it is True.

    Goes through a 2-entry palette image because PIL's palette expansion is several times
    faster than boolean indexing in numpy, and drawing speed bounds the world's size.
    """
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), "L")
    img = img.convert("P")
    img.putpalette([*a, *b])
    return img.convert("RGB")


def _gradient(
    h: int, w: int, a: tuple[int, int, int], b: tuple[int, int, int], rng: np.random.Generator
) -> Image.Image:
    y, x = _grid(h, w)
    angle = float(rng.uniform(0, 2 * math.pi))
    t = x * math.cos(angle) + y * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    a_ = np.asarray(a, dtype=np.float32)
    b_ = np.asarray(b, dtype=np.float32)
    return Image.fromarray((a_ + (b_ - a_) * t[..., None]).round().astype(np.uint8), "RGB")


def _background(scene: Scene, h: int, w: int, rng: np.random.Generator) -> Image.Image:
    base = _background_rgb(scene.background_colour)
    pattern = scene.background_pattern
    if pattern in ("plain", "cluttered"):
        return Image.new("RGB", (w, h), base)
    if pattern == "shaded":
        return _gradient(h, w, base, _shade(base), rng)
    return _two_tone(_pattern_mask(pattern, h, w, rng, _SS), base, _shade(base))


def _outline(mask: Image.Image, line: int) -> Image.Image:
    """Keep only a band of ``line`` pixels along the inside of a filled mask.

    Erodes with a square window as two separable 1-D minimum passes in numpy: the same result
    as PIL's MinFilter at a fraction of its cost for wide windows.
    """
    arr = np.asarray(mask)
    k = 2 * line + 1
    padded = np.pad(arr, line, mode="constant")
    rows = sliding_window_view(padded, k, axis=1).min(axis=-1)
    eroded = sliding_window_view(rows, k, axis=0).min(axis=-1)
    return Image.fromarray(np.where(eroded > 0, 0, arr).astype(np.uint8), "L")


def _polygon_points(
    shape: str, cx: float, cy: float, r: float, angle: float
) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape inscribed in the circle (cx, cy, r), rotated by angle."""
    if shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.deg2rad([-90, 30, 150])]
    elif shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.deg2rad([45, 135, 225, 315])]
    elif shape == "diamond":
        pts = [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]
    elif shape == "hexagon":
        pts = [(math.cos(a), math.sin(a)) for a in np.deg2rad(np.arange(0, 360, 60))]
    elif shape == "star":
        radii = [1.0 if k % 2 == 0 else 0.45 for k in range(10)]
        angles = np.deg2rad(np.arange(-90, 270, 36))
        pts = [(rr * math.cos(a), rr * math.sin(a)) for rr, a in zip(radii, angles, strict=True)]
    elif shape == "cross":
        a = 0.32
        pts = [
            (-a, -1),
            (a, -1),
            (a, -a),
            (1, -a),
            (1, a),
            (a, a),
            (a, 1),
            (-a, 1),
            (-a, a),
            (-1, a),
            (-1, -a),
            (-a, -a),
        ]
    elif shape == "arrow":
        pts = [
            (-1, -0.3),
            (0.1, -0.3),
            (0.1, -0.75),
            (1, 0),
            (0.1, 0.75),
            (0.1, 0.3),
            (-1, 0.3),
        ]
    else:
        raise ValueError(f"{shape!r} is not a polygon")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (px * c - py * s), cy + r * (px * s + py * c)) for px, py in pts]


def _shape_mask(
    shape: str, size: tuple[int, int], cx: float, cy: float, r: float, rng: np.random.Generator
) -> Image.Image:
    """Filled 'L' mask of one shape (255 inside)."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        ri = 0.55 * r
        draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
    elif shape == "crescent":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        phi = float(rng.uniform(0, 2 * math.pi))
        ox, oy = cx + 0.45 * r * math.cos(phi), cy + 0.45 * r * math.sin(phi)
        ri = 0.82 * r
        draw.ellipse((ox - ri, oy - ri, ox + ri, oy + ri), fill=0)
    else:
        jitter = math.radians(float(rng.uniform(-12, 12)))
        if shape == "arrow":
            jitter += math.pi / 2 * int(rng.integers(4))
        draw.polygon(_polygon_points(shape, cx, cy, r, jitter), fill=255)
    return mask


def _layout(
    scene: Scene, w: int, h: int, rng: np.random.Generator
) -> list[tuple[float, float, float]]:
    """Centre and radius of every object, honouring its size and position words.

    Anchored sides keep a fixed margin, so "left" always means touching-the-left-margin and two
    objects at opposite positions never overlap (two large objects are never sampled together).
    """
    edge = min(w, h)
    margin = 0.04 * edge
    single = len(scene.objects) == 1
    out = []
    for obj in scene.objects:
        frac = SIZE_FRACTION[obj.size] * (float(rng.uniform(0.95, 1.05)) if single else 1.0)
        r = frac * edge / 2
        # single objects may drift a little; paired objects stay put so they cannot touch
        inward = float(rng.uniform(0, 0.04 * edge)) if single else 0.0
        jx, jy = (float(v) * edge for v in rng.uniform(-0.03, 0.03, size=2))
        if not single:
            jx = jy = 0.0
        words = obj.position.split()
        if "left" in words:
            cx = margin + r + inward
        elif "right" in words:
            cx = w - margin - r - inward
        else:
            cx = w / 2 + jx
        if "top" in words:
            cy = margin + r + inward
        elif "bottom" in words:
            cy = h - margin - r - inward
        else:
            cy = h / 2 + jy
        out.append((cx, cy, r))
    return out


def _draw_marks(
    draw: ImageDraw.ImageDraw, w: int, h: int, n: int, rng: np.random.Generator
) -> None:
    """Small distractor marks (lines, dots, zigzags, arcs): clutter that is not a class."""
    edge = min(w, h)
    palette = [*COLOURS.values(), (60, 60, 60), (200, 200, 200)]
    for _ in range(n):
        colour = palette[int(rng.integers(len(palette)))]
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        length = float(rng.uniform(0.05, 0.14)) * edge
        kind = int(rng.integers(4))
        width = int(rng.integers(1, 3)) * _SS
        if kind == 0:
            a = float(rng.uniform(0, 2 * math.pi))
            draw.line(
                (x, y, x + length * math.cos(a), y + length * math.sin(a)), fill=colour, width=width
            )
        elif kind == 1:
            rad = float(rng.uniform(1.0, 2.0)) * _SS
            draw.ellipse((x - rad, y - rad, x + rad, y + rad), fill=colour)
        elif kind == 2:
            step = length / 4
            pts = [(x + i * step, y + (step if i % 2 else 0.0)) for i in range(5)]
            draw.line(pts, fill=colour, width=width)
        else:
            start = float(rng.uniform(0, 360))
            draw.arc((x, y, x + length, y + length), start, start + 120, fill=colour, width=width)


def draw_scene(scene: Scene, width: int, height: int | None = None) -> Image.Image:
    """Render a scene as an RGB image of ``width`` x ``height`` (square if height is None).

    Drawn at 2x and box-downsampled so that edges are anti-aliased like a real photo's; the
    nuisance details come from ``scene.detail_seed``, so the result is deterministic.
    """
    height = width if height is None else height
    rng = np.random.default_rng(scene.detail_seed)
    w, h = width * _SS, height * _SS
    canvas = _background(scene, h, w, rng)
    clutter = scene.background_pattern == "cluttered"
    if clutter:
        _draw_marks(ImageDraw.Draw(canvas), w, h, int(rng.integers(14, 24)), rng)
    for obj, (cx, cy, r) in zip(scene.objects, _layout(scene, w, h, rng), strict=True):
        mask = _shape_mask(obj.shape, (w, h), cx, cy, r, rng)
        rgb = _rgb(obj.colour)
        if obj.style == "outlined":
            line = int(max(2, round(min(width, height) / 28))) * _SS
            mask = _outline(mask, line)
            canvas.paste(rgb, (0, 0, w, h), mask)
        elif obj.style in TEXTURE_STYLES:
            tint = tuple(round(c + (255 - c) * 0.55) for c in rgb)
            fill = _two_tone(_pattern_mask(obj.style, h, w, rng, _SS * 0.8), rgb, tint)  # type: ignore[arg-type]
            canvas.paste(fill, (0, 0), mask)
        else:
            canvas.paste(rgb, (0, 0, w, h), mask)
    if clutter:  # a few marks on top make the object partly occluded, as in ImageNet-A
        _draw_marks(ImageDraw.Draw(canvas), w, h, int(rng.integers(2, 6)), rng)
    return canvas.reduce(_SS)


def draw_junk(kind: str, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """An object-free web image: noise, flat colour, gradient, text-like lines or a button."""
    if kind == "noise":
        cell = int(rng.integers(1, 9))
        small = rng.integers(
            0, 256, size=(-(-height // cell), -(-width // cell), 3), dtype=np.uint8
        )
        arr = np.repeat(np.repeat(small, cell, axis=0), cell, axis=1)[:height, :width]
        return Image.fromarray(np.ascontiguousarray(arr), "RGB")
    if kind == "flat":
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        return Image.new("RGB", (width, height), colour)  # type: ignore[arg-type]
    if kind == "gradient":
        a = tuple(int(v) for v in rng.integers(0, 256, size=3))
        b = tuple(int(v) for v in rng.integers(0, 256, size=3))
        return _gradient(height, width, a, b, rng)  # type: ignore[arg-type]
    if kind == "text":
        paper = int(rng.integers(225, 256))
        img = Image.new("RGB", (width, height), (paper, paper, paper))
        draw = ImageDraw.Draw(img)
        ink = int(rng.integers(0, 80))
        y = int(rng.integers(3, 8))
        spacing = int(rng.integers(6, 10))
        while y + 3 < height:
            x = int(rng.integers(2, 6))
            stop = width - int(rng.integers(2, max(3, width // 3)))
            while x < stop:
                word = int(rng.integers(3, 13))
                draw.rectangle((x, y, min(x + word, stop), y + 2), fill=(ink, ink, ink))
                x += word + int(rng.integers(2, 4))
            y += spacing
        return img
    if kind == "button":
        page = tuple(int(v) for v in rng.integers(200, 256, size=3))
        img = Image.new("RGB", (width, height), page)  # type: ignore[arg-type]
        draw = ImageDraw.Draw(img)
        face = tuple(int(v) for v in rng.integers(0, 200, size=3))
        x0, y0 = width * 0.1, height * 0.3
        x1, y1 = width * 0.9, height * 0.7
        draw.rounded_rectangle((x0, y0, x1, y1), radius=int(height * 0.12), fill=face)
        cy = (y0 + y1) / 2
        draw.rectangle((width * 0.25, cy - 1.5, width * 0.75, cy + 1.5), fill=(250, 250, 250))
        return img
    raise ValueError(f"unknown junk kind {kind!r}")


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)  # fixed params: byte-identical reruns
    return buf.getvalue()


_HTML_ERROR = (
    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
    b"<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p>"
    b"</body></html>\n"
)


def _corrupt_bytes(png: bytes, rng: np.random.Generator) -> bytes:
    """Bytes that no image decoder accepts: a PNG cut inside its header, or an HTML error page.

    The PNG is cut before the end of IHDR (byte 33) so that even decoders told to tolerate
    truncated images cannot recover pixels.
    """
    if rng.random() < 0.5:
        return png[: int(rng.integers(8, 30))]
    return _HTML_ERROR


# --------------------------------------------------------------------------------------------
# World generation
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


def _plain(obj: Any) -> Any:
    """Mappings/sequences -> plain JSON types, so the manifest round-trips exactly."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _other_scene(
    scene: Scene | None, rng: np.random.Generator, typical_colour_probability: float
) -> Scene:
    """A random scene that shares no shape with the row's main object (a clear mismatch)."""
    while True:
        other = sample_scene(rng, "web", typical_colour_probability=typical_colour_probability)
        if scene is None or all(o.shape != scene.main.shape for o in other.objects):
            return other


def _generate_split(
    split: str, n: int, spec: Mapping[str, Any], seed: int, base: Path
) -> tuple[dict[str, list[Any]], set[str]]:
    """Draw, write and tabulate one split; returns its columns and the file names written."""
    cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    written: set[str] = set()
    split_dir = base / split
    split_dir.mkdir(parents=True, exist_ok=True)
    image_size = int(spec["image_size"])
    profile = SPLIT_PROFILES[split]
    is_pool = split == "pool"
    typical = float(spec.get("typical_colour_probability", OPTIONAL_FRACTIONS[
        "typical_colour_probability"]))
    mention = float(spec.get("attribute_mention_probability", OPTIONAL_FRACTIONS[
        "attribute_mention_probability"]))

    dead: set[int] = set()
    corrupt: set[int] = set()
    junk: set[int] = set()
    mode_p = [1.0 / len(CAPTION_MODES)] * len(CAPTION_MODES)
    if is_pool and n:
        rows = _rng(seed, split, "rows")
        order = rows.permutation(n)
        n_dead = round(spec["dead_url_fraction"] * n)
        n_corrupt = round(spec["corrupt_file_fraction"] * n)
        dead = {int(i) for i in order[:n_dead]}
        corrupt = {int(i) for i in order[n_dead : n_dead + n_corrupt]}
        junk = {int(i) for i in rows.permutation(n)[: round(spec["junk_image_fraction"] * n)]}
        mode_p = [float(spec["pool_caption_modes"].get(m, 0.0)) for m in CAPTION_MODES]
        mode_p = [p / sum(mode_p) for p in mode_p]

    for i in range(n):
        rng = _rng(seed, split, "sample", i)
        uid = toy_uid(seed, split, i)
        shape = CLASSNAMES[i % len(CLASSNAMES)] if split in _BALANCED_SPLITS else None
        scene: Scene | None = sample_scene(rng, profile, shape=shape,
                                           typical_colour_probability=typical)
        if is_pool:
            width = int(rng.integers(image_size, 2 * image_size + 1))
            height = int(rng.integers(image_size, 2 * image_size + 1))
        else:
            width = height = image_size
        description = describe(scene) if scene is not None else ""
        captions: list[str]
        mode = "right"
        url_state = "ok"
        kind = "scene"
        if split == "pretrain":
            text = describe(scene, _choice(rng, DESCRIPTION_STYLES), sample_mentions(rng, mention))
        elif split == "coco":
            # COCO annotators, like everyone in this world, name the object and only sometimes
            # its colour or setting: the captions are narrow (one template, generic names),
            # not more complete than the web's.
            text = describe(scene, "coco", sample_mentions(rng, mention))
        elif split == "eval_retrieval":
            k = int(spec["captions_per_retrieval_image"])
            styles = rng.permutation(len(DESCRIPTION_STYLES))[:k]
            captions = [describe(scene, DESCRIPTION_STYLES[int(s)]) for s in styles]
            text = captions[0]
        elif split == "nocaps":
            captions = [describe(scene, "coco"), describe(scene)]
            text = captions[0]
        elif is_pool:
            mode = _choice(rng, CAPTION_MODES, mode_p)
            if i in junk:
                kind = "junk"
                scene, description = None, ""
                mode = {"right": "boilerplate", "partial": "non_visual"}.get(mode, mode)
            if mode == "right":
                assert scene is not None
                style = _choice(rng, DESCRIPTION_STYLES)
                text = web_style(describe(scene, style, sample_mentions(rng, mention)), rng)
            elif mode == "partial":
                assert scene is not None
                text = partial_caption(scene, rng, mention)
            elif mode == "other_image":
                other = _other_scene(scene, rng, typical)
                style = _choice(rng, DESCRIPTION_STYLES)
                text = web_style(describe(other, style, sample_mentions(rng, mention)), rng)
            elif mode == "non_visual":
                text = non_visual_caption(rng)
            else:
                text = boilerplate_caption(rng)
            url_state = "dead" if i in dead else "corrupt" if i in corrupt else "ok"
        else:
            text = description
        if split not in ("eval_retrieval", "nocaps"):
            captions = [text]

        name = f"{uid}.png"
        path = split_dir / name
        if url_state != "dead":
            if kind == "junk":
                img = draw_junk(_choice(rng, JUNK_KINDS), width, height, rng)
            else:
                assert scene is not None
                img = draw_scene(scene, width, height)
            png = _png_bytes(img)
            path.write_bytes(_corrupt_bytes(png, rng) if url_state == "corrupt" else png)
            written.add(name)
        if url_state != "ok":
            width = height = 0

        main = scene.main if scene is not None else None
        cols["uid"].append(uid)
        cols["url"].append(path.as_uri())
        cols["text"].append(text)
        cols["description"].append(description)
        cols["captions"].append(captions)
        cols["label"].append(scene.label if scene is not None else -1)
        cols["classname"].append(main.shape if main else "")
        cols["shape"].append(main.shape if main else "")
        cols["colour"].append(main.colour if main else "")
        cols["size"].append(main.size if main else "")
        cols["position"].append(main.position if main else "")
        cols["background"].append(scene.background if scene is not None else "")
        cols["n_objects"].append(len(scene.objects) if scene is not None else 0)
        cols["caption_mode"].append(mode)
        cols["image_kind"].append(kind)
        cols["url_state"].append(url_state)
        cols["width"].append(width)
        cols["height"].append(height)
    return cols, written


_UID_PNG = re.compile(r"^[0-9a-f]{32}\.png$")


def generate_world(
    out_dir: Path, spec: Mapping[str, Any], seed: int, workers: int = 1
) -> dict[str, Any]:
    """Write the toy world to ``out_dir`` and return its manifest (also ``manifest.json``).

    ``workers`` > 1 draws the splits in that many processes (largest first). Every sample has
    its own generator (seed, split, index), so the files do not depend on ``workers``.

    Layout: ``{split}/{uid}.png`` images, ``{split}.parquet`` tables (columns
    :data:`COLUMNS`, row order = index order), ``classnames.txt`` and ``manifest.json``.
    Same (spec, seed, out_dir) gives byte-identical files; the parquet files embed absolute
    ``file://`` URLs, so moving the world changes them but not the images. Leftover
    ``{uid}.png`` files of an earlier world in the same directory are deleted, so that a dead
    URL never resolves by accident.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    validate_spec(spec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir.resolve()

    counts: dict[str, int] = {}
    hashes: dict[str, str] = {}
    pool_cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    sizes = {split: int(spec["splits"].get(split, 0)) for split in SPLITS}
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as executor:
            futures = {split: executor.submit(_generate_split, split, sizes[split], spec, seed,
                                              base)
                       for split in sorted(SPLITS, key=lambda split: -sizes[split])}
            drawn = {split: future.result() for split, future in futures.items()}
    else:
        drawn = {split: _generate_split(split, sizes[split], spec, seed, base)
                 for split in SPLITS}
    for split in SPLITS:
        n = sizes[split]
        cols, written = drawn[split]
        for stale in (base / split).iterdir():
            if _UID_PNG.match(stale.name) and stale.name not in written:
                stale.unlink()
        table = pa.Table.from_pydict(cols, schema=_SCHEMA)
        parquet = base / f"{split}.parquet"
        pq.write_table(table, parquet, compression="zstd")
        counts[split] = n
        hashes[f"{split}.parquet"] = _sha256(parquet)
        if split == "pool":
            pool_cols = cols

    (base / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n", encoding="utf-8")

    def tally(values: list[str], keys: Sequence[str]) -> dict[str, int]:
        return {k: sum(1 for v in values if v == k) for k in keys}

    manifest: dict[str, Any] = {
        "toy": True,
        "seed": seed,
        "spec": _plain(spec),
        "counts": counts,
        "classnames": list(CLASSNAMES),
        "pool_caption_mode_counts": tally(pool_cols["caption_mode"], CAPTION_MODES),
        "pool_url_state_counts": tally(pool_cols["url_state"], ("ok", "dead", "corrupt")),
        "pool_image_kind_counts": tally(pool_cols["image_kind"], ("scene", "junk")),
        "sha256": hashes,
    }
    manifest = json.loads(json.dumps(manifest, sort_keys=True))
    (base / "manifest.json").write_text(
        json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    return manifest
