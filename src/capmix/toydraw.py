"""Toy rendering: a scene's pixels, drawn with PIL.

:func:`draw_scene` paints a :class:`~capmix.toyscenes.Scene` (background pattern, objects at
their size and position, fills and outlines, clutter marks), :func:`draw_junk` an object-free
web image, and :func:`png_bytes` encodes either the same way every time. Drawing speed bounds
the world's size, so the hot paths go through PIL's palette expansion and separable numpy
filters rather than per-pixel code.
"""

from __future__ import annotations

import io
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageDraw

from capmix.toyscenes import Scene, background_rgb, colour_rgb, second_tone
from capmix.toyspec import COLOURS, TEXTURE_STYLES

__all__ = [
    "SIZE_FRACTION",
    "draw_junk",
    "draw_scene",
    "png_bytes",
]

_SS = 2  # supersampling factor: draw at 2x and box-downsample, for anti-aliased edges
#: Diameter of an object's bounding circle as a fraction of the image's shorter edge. Small is
#: still 30 % so that even the smallest object stays clearly visible at 64 px.
SIZE_FRACTION: dict[str, float] = {"small": 0.30, "medium": 0.38, "large": 0.50}


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
    base = background_rgb(scene.background_colour)
    pattern = scene.background_pattern
    if pattern in ("plain", "cluttered"):
        return Image.new("RGB", (w, h), base)
    if pattern == "shaded":
        return _gradient(h, w, base, second_tone(base), rng)
    return _two_tone(_pattern_mask(pattern, h, w, rng, _SS), base, second_tone(base))


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


def _along(words: list[str], ends: tuple[str, str], low: float, high: float,
           centre: float) -> float:
    """One axis of a position: at the low or high end when a position word names it
    (left/top, right/bottom), else the (jittered) centre."""
    if ends[0] in words:
        return low
    if ends[1] in words:
        return high
    return centre


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
        cx = _along(words, ("left", "right"), margin + r + inward, w - margin - r - inward,
                    w / 2 + jx)
        cy = _along(words, ("top", "bottom"), margin + r + inward, h - margin - r - inward,
                    h / 2 + jy)
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
        rgb = colour_rgb(obj.colour)
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


def png_bytes(img: Image.Image) -> bytes:
    """The image as PNG bytes, with fixed encoder settings so that reruns are byte-identical."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)  # fixed params: byte-identical reruns
    return buf.getvalue()
