"""Toy captions: a scene's clean descriptions and the web's noisy alt-text.

:func:`describe` words a scene's ground truth in one of the world's phrasings (or the
formulaic COCO style), stating the attributes :func:`sample_mentions` chose; the web-noise
captions of the pool (Figure 1 / Appendix A of the paper) are :func:`partial_caption`,
:func:`non_visual_caption` and :func:`boilerplate_caption`, dressed up by :func:`web_style`.
:func:`attributes_named` is the reverse: which ground-truth attributes a caption names, the
measurement behind the quality stage's toy-only accuracy column.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from capmix.toyscenes import Scene, SceneObject, choose
from capmix.toyspec import (
    BACKGROUND_PATTERNS,
    CLASSNAMES,
    COCO_NAMES,
    COLOURS,
    DESCRIPTION_STYLES,
    POSITION_PHRASE,
    POSITIONS,
    SIZES,
    SUPERCATEGORIES_WORDS,
    tokens,
)

__all__ = [
    "ALL_ATTRIBUTES",
    "GROUND_TRUTH_ATTRIBUTES",
    "OPTIONAL_ATTRIBUTES",
    "attributes_named",
    "boilerplate_caption",
    "describe",
    "non_visual_caption",
    "partial_caption",
    "sample_mentions",
    "web_style",
]

# --------------------------------------------------------------------------------------------
# Descriptions
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


# --------------------------------------------------------------------------------------------
# Which attributes a caption names
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Web alt-text
# --------------------------------------------------------------------------------------------


def web_style(text: str, rng: np.random.Generator) -> str:
    """Dress a clean caption up the way alt-text looks on the web (casing, punctuation)."""
    casing = choose(rng, ("lower", "sentence", "title", "upper"), (0.45, 0.3, 0.15, 0.1))
    if casing == "sentence":
        text = text[:1].upper() + text[1:]
    elif casing == "title":
        text = text.title()
    elif casing == "upper":
        text = text.upper()
    return text + choose(rng, ("", ".", "!", " ..."), (0.5, 0.3, 0.1, 0.1))


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
    kind = choose(rng, ("wrong_colour", "one_attribute", "seo"))
    if kind == "wrong_colour":
        wrong = choose(rng, [c for c in COLOURS if c != main.colour])
        phrase = _with_article(f"{wrong} {main.shape}")
        if rng.random() < 0.5:
            phrase += f" on {_with_article(scene.background + ' background')}"
        text = phrase
    elif kind == "one_attribute":
        text = choose(
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
        suffix = choose(rng, _SEO_SUFFIXES).format(
            price=f"{int(rng.integers(5, 200))}.99",
            num=int(rng.integers(100000, 999999)),
            pct=int(rng.integers(1, 8)) * 10,
        )
        style = choose(rng, DESCRIPTION_STYLES)
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
        country, region = choose(rng, _PLACES)
        return f"{country} - {region}"
    if kind == 1:
        return (
            f"{year} {choose(rng, _CARS)} {choose(rng, _BODIES)}, {choose(rng, _FEATURES)}, "
            f"{choose(rng, _HYPE)} - ${int(rng.integers(15, 300)) * 100 - 1}"
        )
    if kind == 2:
        return (
            f"{choose(rng, _FIRST)} {choose(rng, _LAST)} is one of Gespeicherte Orte von "
            f"{choose(rng, _FIRST)}."
        )
    if kind == 3:
        return f"{int(rng.integers(3, 12))} formas de {choose(rng, _HOWTO_ES)} - wikiHow"
    if kind == 4:
        return f"How to {choose(rng, _HOWTO_EN)} in {int(rng.integers(3, 12))} steps"
    if kind == 5:
        product = choose(rng, _PRODUCTS)
        return choose(
            rng,
            (
                product,
                f"{product} {int(rng.integers(1, 10)) * 50} ml",
                f"Bio {product} - {int(rng.integers(2, 40))},99 EUR",
            ),
        )
    if kind == 6:
        return choose(rng, _FIRST).lower()
    if kind == 7:
        return f"{choose(rng, _EVENTS)} {year} - {choose(rng, _CITIES)}"
    return (
        f"{int(rng.integers(1, 5))} bed, {int(rng.integers(1, 3))} bath apartment in "
        f"{choose(rng, _CITIES)} - €{int(rng.integers(6, 30)) * 100}/month"
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
        f"banner_{choose(rng, ('728x90', '468x60', '300x250'))}.gif",
        "Loading...",
        f"Photo {n % 20 + 1} of {n % 20 + 1 + n % 7}",
        "click to view full size",
        f"Screenshot 20{10 + n % 14}-0{n % 9 + 1}-1{n % 10} at 10.{n % 60:02d}.07",
        "default.jpg",
        "Read more",
    )
    return choose(rng, options)
