"""Toy scenes: the ground truth of one image, drawn at random from a scene distribution.

A :class:`Scene` is what an image shows (1-2 objects on a background) and all that its
descriptions may mention; :func:`sample_scene` draws one from a profile
(:data:`capmix.toyspec.PROFILES`), keeping every object clearly visible on its background
(:func:`contrasting_colours`). The colour arithmetic lives here because both the scene
sampler (which colours stand out) and the renderer (:mod:`capmix.toydraw`, which tones to
paint) need it. Everything takes a numpy generator, so a scene is fixed by its stream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from capmix.toyspec import (
    BACKGROUND_COLOURS,
    CLASSNAMES,
    COLOURS,
    NEUTRALS,
    POSITIONS,
    PROFILES,
    SIZES,
    STYLES,
    TEXTURE_STYLES,
    TYPICAL_COLOURS,
)

__all__ = [
    "POSITION_PAIRS",
    "Scene",
    "SceneObject",
    "background_rgb",
    "choose",
    "colour_rgb",
    "contrasting_colours",
    "sample_scene",
    "second_tone",
]

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
_MIN_CONTRAST = 100.0  # minimum RGB distance between an object and its background


def choose(
    rng: np.random.Generator, items: Sequence[Any], p: Sequence[float] | None = None
) -> Any:
    """Pick one element of ``items`` (numpy's choice would turn tuples into arrays).

    Every random pick of the toy world goes through here, so that a world is fixed by its
    generators' streams: changing how a pick consumes the stream changes every image.
    """
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
        """The object the image is about: its shape is the image's class."""
        return self.objects[0]

    @property
    def label(self) -> int:
        """The class index of the main object's shape in :data:`capmix.toyspec.CLASSNAMES`."""
        return CLASSNAMES.index(self.main.shape)

    @property
    def background(self) -> str:
        """Background phrase without the noun, e.g. ``"striped gray"`` or ``"white"``."""
        if self.background_pattern == "plain":
            return self.background_colour
        return f"{self.background_pattern} {self.background_colour}"


# --------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------


def colour_rgb(colour: str) -> tuple[int, int, int]:
    """The RGB of an object colour: a palette colour or a neutral (black sketches)."""
    return COLOURS[colour] if colour in COLOURS else NEUTRALS[colour]


def background_rgb(colour: str) -> tuple[int, int, int]:
    """Background tone: neutrals as they are, palette colours lightened (a "green wall")."""
    if colour in NEUTRALS:
        return NEUTRALS[colour]
    r, g, b = COLOURS[colour]
    return (round(r * 0.8 + 255 * 0.2), round(g * 0.8 + 255 * 0.2), round(b * 0.8 + 255 * 0.2))


def _luminance(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def second_tone(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Second tone of a texture: darker for light colours, lighter for dark ones.

    Kept close to the base tone so that textures never out-shout the objects.
    """
    if _luminance(rgb) > 100:
        return (round(rgb[0] * 0.78), round(rgb[1] * 0.78), round(rgb[2] * 0.78))
    return tuple(round(c + (255 - c) * 0.22) for c in rgb)  # type: ignore[return-value]


def _distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return math.dist(a, b)


def contrasting_colours(background_colour: str, candidates: Sequence[str]) -> list[str]:
    """Object colours that stay clearly visible on both tones of the given background."""
    base = background_rgb(background_colour)
    tones = (base, second_tone(base))
    return [
        c
        for c in candidates
        if c != background_colour
        and all(_distance(colour_rgb(c), t) >= _MIN_CONTRAST for t in tones)
    ]


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------

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
        return choose(rng, [c for c in COLOURS if c != typical])
    if rng.random() < typical_probability:
        return typical
    return choose(rng, tuple(COLOURS))


def _backgrounds_for(colour: str, candidates: Sequence[str]) -> list[str]:
    """The candidate backgrounds a colour stands out on."""
    return [b for b in candidates if colour in contrasting_colours(b, (colour,))]


def sample_scene(
    rng: np.random.Generator,
    profile: str = "web",
    shape: str | None = None,
    typical_colour_probability: float = 0.0,
) -> Scene:
    """Draw a random scene from one of the :data:`capmix.toyspec.PROFILES`.

    ``shape`` forces the main object's shape (used for class-balanced splits). Profiles:
    ``web`` (1-2 objects, mostly solid, varied backgrounds, rare textured/outlined objects and
    coloured backgrounds, like the variety of the web), ``coco`` (one solid object, plain
    neutral background), ``imagenet`` (one solid object, varied background), ``sketch`` (black
    outline on white), ``rendition`` (textured objects, unusual colour combinations) and
    ``clutter`` (one small object among distractor marks).

    An object wears its class's :data:`capmix.toyspec.TYPICAL_COLOURS` entry with probability
    ``typical_colour_probability`` (never in renditions, whose colours are deliberately
    untypical, nor in black sketches); the background is then one the colour stands out on.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    main_shape = shape if shape is not None else choose(rng, CLASSNAMES)
    if main_shape not in CLASSNAMES:
        raise ValueError(f"unknown shape {main_shape!r}")
    n_objects = 1
    style = "solid"
    if profile == "web":
        n_objects = 1 if rng.random() < 0.6 else 2
        pattern = choose(rng, *_WEB_PATTERNS)
        coloured = rng.random() < 0.1 and pattern != "cluttered"
        backgrounds = tuple(COLOURS) if coloured else BACKGROUND_COLOURS
        style = choose(rng, *_WEB_STYLES)
    elif profile == "coco":
        pattern = "plain"
        backgrounds = BACKGROUND_COLOURS
    elif profile == "imagenet":
        pattern = choose(rng, *_IMAGENET_PATTERNS)
        backgrounds = BACKGROUND_COLOURS
    elif profile == "sketch":
        pattern, backgrounds, style = "plain", ("white",), "outlined"
    elif profile == "rendition":
        pattern = choose(
            rng, ("plain", "striped", "dotted", "checkered", "shaded"), (0.6, 0.1, 0.1, 0.1, 0.1)
        )
        backgrounds = tuple(COLOURS) if rng.random() < 0.7 else ("white", "black")
        style = choose(rng, TEXTURE_STYLES) if rng.random() < 0.75 else "solid"
    else:  # clutter
        pattern = "cluttered"
        backgrounds = BACKGROUND_COLOURS

    if profile == "sketch":
        colour, bg = "black", "white"
    else:
        untypical = profile == "rendition"
        colour = _object_colour(rng, main_shape, typical_colour_probability, untypical)
        # every palette colour stands out on at least one neutral background
        bg = choose(rng, _backgrounds_for(colour, backgrounds)
                    or _backgrounds_for(colour, BACKGROUND_COLOURS))
    palette = contrasting_colours(bg, tuple(COLOURS))

    if n_objects == 1:
        size = "small" if profile == "clutter" else choose(rng, SIZES)
        position = choose(rng, POSITIONS)
        objects: tuple[SceneObject, ...] = (SceneObject(main_shape, colour, size, position, style),)
    else:
        size = choose(rng, SIZES)
        # two large objects cannot share one image without overlapping
        size2 = choose(rng, SIZES[:2] if size == "large" else SIZES)
        pos, pos2 = choose(rng, POSITION_PAIRS)
        while True:
            shape2 = choose(rng, CLASSNAMES)
            colour2 = _object_colour(rng, shape2, typical_colour_probability, False)
            if colour2 not in palette:
                colour2 = choose(rng, palette)
            if (shape2, colour2) != (main_shape, colour):
                break
        style2 = "solid" if rng.random() < 0.85 else choose(rng, STYLES[1:])
        objects = (
            SceneObject(main_shape, colour, size, pos, style),
            SceneObject(shape2, colour2, size2, pos2, style2),
        )
    return Scene(objects, bg, pattern, int(rng.integers(0, 2**62)))
