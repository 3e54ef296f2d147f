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
default"): objects wear their class's :data:`~capmix.toyspec.TYPICAL_COLOURS` with
``typical_colour_probability``, and captions state each attribute other than the class with
``attribute_mention_probability`` (:func:`~capmix.toycaptions.sample_mentions`). The
COCO-style split calls some classes only by their supercategory
(:data:`~capmix.toyspec.COCO_NAMES`), as COCO's vocabulary is narrower than ImageNet's.

The world is built in parts, one module each:

* :mod:`capmix.toyspec`: the vocabulary (splits, classes, colours, sizes, positions, caption
  modes) and :func:`~capmix.toyspec.validate_spec`; light, read by the config checker and the
  Snakefile;
* :mod:`capmix.toyscenes`: a scene's ground truth, and drawing one at random from a profile;
* :mod:`capmix.toycaptions`: a scene's descriptions, the web's noisy alt-text, and which
  attributes a caption names;
* :mod:`capmix.toydraw`: a scene's pixels (PIL);
* this module: the splits' rows, files and tables, and :func:`generate_world`, which writes
  a whole world (the toy_world rule's job).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from capmix.toycaptions import (
    boilerplate_caption,
    describe,
    non_visual_caption,
    partial_caption,
    sample_mentions,
    web_style,
)
from capmix.toydraw import draw_junk, draw_scene, png_bytes
from capmix.toyscenes import Scene, choose, sample_scene
from capmix.toyspec import (
    CAPTION_MODES,
    CLASSNAMES,
    DESCRIPTION_STYLES,
    JUNK_KINDS,
    OPTIONAL_FRACTIONS,
    SPLIT_PROFILES,
    SPLITS,
    validate_spec,
)

__all__ = [
    "COLUMNS",
    "generate_world",
    "toy_uid",
]

# --------------------------------------------------------------------------------------------
# Table layout
# --------------------------------------------------------------------------------------------

#: Splits whose labels are assigned round-robin so that small evaluation sets stay balanced.
_BALANCED_SPLITS = frozenset(
    {"in_train", "eval_in", "eval_in_v2", "eval_in_sketch", "eval_in_rendition", "eval_in_clutter"}
)

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


# --------------------------------------------------------------------------------------------
# Broken files of the pool
# --------------------------------------------------------------------------------------------

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
            text = describe(scene, choose(rng, DESCRIPTION_STYLES), sample_mentions(rng, mention))
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
            mode = choose(rng, CAPTION_MODES, mode_p)
            if i in junk:
                kind = "junk"
                scene, description = None, ""
                mode = {"right": "boilerplate", "partial": "non_visual"}.get(mode, mode)
            if mode == "right":
                assert scene is not None
                style = choose(rng, DESCRIPTION_STYLES)
                text = web_style(describe(scene, style, sample_mentions(rng, mention)), rng)
            elif mode == "partial":
                assert scene is not None
                text = partial_caption(scene, rng, mention)
            elif mode == "other_image":
                other = _other_scene(scene, rng, typical)
                style = choose(rng, DESCRIPTION_STYLES)
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
                img = draw_junk(choose(rng, JUNK_KINDS), width, height, rng)
            else:
                assert scene is not None
                img = draw_scene(scene, width, height)
            png = png_bytes(img)
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
