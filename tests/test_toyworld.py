"""Tests for the procedurally generated toy world (capmix.toyworld).

The toy world is the ground truth every later stage is judged against, so these tests pin down
the properties the rest of the pipeline relies on: determinism, the table layout, the exact
amount of each kind of web noise in the pool, and that each caption mode really is the kind of
noise it claims to be.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from capmix import toycaptions, toydraw, toyscenes, toyspec
from capmix import toyworld as tw

SEED = 7
SPEC: dict[str, Any] = {
    "image_size": 32,
    "splits": {
        "pretrain": 40,
        "coco": 30,
        "pool": 200,
        "in_train": 20,
        "eval_in": 20,
        "eval_in_v2": 0,
        "eval_in_sketch": 10,
        "eval_in_rendition": 10,
        "eval_in_clutter": 10,
        "eval_retrieval": 10,
        "nocaps": 10,
    },
    "pool_caption_modes": {
        "right": 0.3,
        "partial": 0.2,
        "other_image": 0.15,
        "non_visual": 0.2,
        "boilerplate": 0.15,
    },
    "junk_image_fraction": 0.1,
    "dead_url_fraction": 0.05,
    "corrupt_file_fraction": 0.04,
    "captions_per_retrieval_image": 3,
}

SIZE_POSITION_WORDS = {"small", "medium", "large", "left", "right", "top", "bottom", "center"}
SIZE_POSITION_WORDS.add("corner")
COLOUR_WORDS = set(toyspec.COLOURS) | set(toyspec.NEUTRALS)
SHAPE_WORDS = set(toyspec.CLASSNAMES)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("world") / "toy"
    manifest = tw.generate_world(out, SPEC, SEED)
    return out, manifest


@pytest.fixture(scope="module")
def tables(world: tuple[Path, dict[str, Any]]) -> dict[str, pd.DataFrame]:
    out, _ = world
    return {split: pd.read_parquet(out / f"{split}.parquet") for split in toyspec.SPLITS}


def test_toy_uid_is_md5_of_coordinates() -> None:
    uid = tw.toy_uid(0, "pool", 3)
    assert uid == hashlib.md5(b"toy:0:pool:3").hexdigest()
    assert re.fullmatch(r"[0-9a-f]{32}", uid)
    assert uid != tw.toy_uid(1, "pool", 3) != tw.toy_uid(0, "coco", 3)


def test_same_seed_same_bytes_other_seed_differs(
    world: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, manifest = world
    before = _files(out)
    # regenerating in place (overwriting) gives byte-identical files, parquet included, also
    # when the splits are drawn in two processes
    assert tw.generate_world(out, SPEC, SEED, workers=2) == manifest
    assert _files(out) == before

    # elsewhere: images identical; tables identical except the absolute file:// urls
    other = tmp_path / "copy"
    tw.generate_world(other, SPEC, SEED)
    copy_files = _files(other)
    pngs = {k: v for k, v in before.items() if k.endswith(".png")}
    assert pngs and pngs == {k: v for k, v in copy_files.items() if k.endswith(".png")}
    for split in toyspec.SPLITS:
        a = pd.read_parquet(out / f"{split}.parquet").drop(columns="url")
        b = pd.read_parquet(other / f"{split}.parquet").drop(columns="url")
        pd.testing.assert_frame_equal(a, b)

    different = tmp_path / "seed"
    tw.generate_world(different, SPEC, SEED + 1)
    a = pd.read_parquet(out / "pool.parquet")
    b = pd.read_parquet(different / "pool.parquet")
    assert not set(a["uid"]) & set(b["uid"])
    assert list(a["text"]) != list(b["text"])
    assert list(a["description"]) != list(b["description"])
    a_png = sorted(v for k, v in before.items() if k.startswith("pretrain/"))
    b_png = sorted(p.read_bytes() for p in (different / "pretrain").glob("*.png"))
    assert a_png != b_png


def test_every_split_has_columns_and_rows(
    world: tuple[Path, dict[str, Any]], tables: dict[str, pd.DataFrame]
) -> None:
    out, _ = world
    assert toyspec.SPLITS == (
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
    for split, df in tables.items():
        assert tuple(df.columns) == tw.COLUMNS, split
        assert len(df) == SPEC["splits"][split], split
        for col in ("label", "n_objects", "width", "height"):
            assert df[col].dtype == np.int64, (split, col)
        assert list(df["uid"]) == [tw.toy_uid(SEED, split, i) for i in range(len(df))]
        for url, uid in zip(df["url"], df["uid"], strict=True):
            parsed = urlparse(url)
            assert parsed.scheme == "file"
            path = Path(unquote(parsed.path))
            assert path.is_absolute() and path == (out / split / f"{uid}.png").resolve()
        for caps, text in zip(df["captions"], df["text"], strict=True):
            assert len(caps) >= 1 and all(isinstance(c, str) and c for c in caps)
            if split not in ("eval_retrieval", "nocaps"):
                assert list(caps) == [text]
        if split != "pool":
            assert set(df["caption_mode"]) <= {"right"}
            assert set(df["url_state"]) <= {"ok"}
            assert set(df["image_kind"]) <= {"scene"}
    assert (out / "classnames.txt").read_text().split("\n")[:-1] == list(toyspec.CLASSNAMES)


def test_uids_unique_across_splits(tables: dict[str, pd.DataFrame]) -> None:
    uids = [u for df in tables.values() for u in df["uid"]]
    assert len(uids) == len(set(uids)) == sum(SPEC["splits"].values())
    assert all(re.fullmatch(r"[0-9a-f]{32}", u) for u in uids)


def test_pool_noise_counts_and_files(
    world: tuple[Path, dict[str, Any]], tables: dict[str, pd.DataFrame]
) -> None:
    out, _ = world
    pool = tables["pool"]
    n = len(pool)
    states = pool["url_state"].value_counts().to_dict()
    assert states.get("dead", 0) == round(SPEC["dead_url_fraction"] * n)
    assert states.get("corrupt", 0) == round(SPEC["corrupt_file_fraction"] * n)
    assert (pool["image_kind"] == "junk").sum() == round(SPEC["junk_image_fraction"] * n)
    assert set(pool["caption_mode"]) <= set(toyspec.CAPTION_MODES)
    # every mode with a decent probability shows up in 200 rows
    assert set(pool["caption_mode"]) == set(toyspec.CAPTION_MODES)

    s = SPEC["image_size"]
    for row in pool.itertuples():
        path = out / "pool" / f"{row.uid}.png"
        if row.url_state == "dead":
            assert not path.exists()
            assert row.width == row.height == 0
        elif row.url_state == "corrupt":
            assert path.exists()
            with pytest.raises(Exception):  # noqa: B017 - any decode failure will do
                with Image.open(path) as im:
                    im.load()
        else:
            with Image.open(path) as im:
                im.load()
                assert im.mode == "RGB"
                assert im.size == (row.width, row.height)
            assert s <= row.width <= 2 * s and s <= row.height <= 2 * s
    ok = pool[pool["url_state"] == "ok"]
    assert ok["width"].nunique() > 5 and (ok["width"] != ok["height"]).any()


def test_fixed_size_splits_decode(
    world: tuple[Path, dict[str, Any]], tables: dict[str, pd.DataFrame]
) -> None:
    out, _ = world
    s = SPEC["image_size"]
    for split, df in tables.items():
        if split == "pool":
            continue
        assert (df["width"] == s).all() and (df["height"] == s).all()
        for uid in df["uid"][:5]:
            with Image.open(out / split / f"{uid}.png") as im:
                assert im.mode == "RGB" and im.size == (s, s)


def test_labels_and_attributes(tables: dict[str, pd.DataFrame]) -> None:
    for split, df in tables.items():
        for row in df.itertuples():
            if row.image_kind == "junk":
                assert row.label == -1 and row.classname == "" and row.description == ""
                assert row.shape == row.colour == row.size == row.position == ""
                assert row.n_objects == 0
                continue
            assert 0 <= row.label < len(toyspec.CLASSNAMES)
            assert row.classname == toyspec.CLASSNAMES[row.label] == row.shape
            assert row.colour in COLOUR_WORDS and row.size in toyspec.SIZES
            assert row.position in toyspec.POSITIONS and row.background
            assert row.n_objects in (1, 2)
            words = toyspec.tokens(row.description)
            assert {row.shape, row.colour, row.size} <= set(words), (split, row.description)
            assert toyspec.POSITION_PHRASE[row.position] in row.description
            assert row.description.endswith(f"{row.background} background")
    for split in ("in_train", "eval_in", "eval_in_sketch", "eval_in_rendition", "eval_in_clutter"):
        df = tables[split]
        assert (df["n_objects"] == 1).all()
        assert list(df["label"]) == [i % len(toyspec.CLASSNAMES) for i in range(len(df))]
        assert list(df["text"]) == list(df["description"])
    assert (tables["pretrain"]["n_objects"] == 2).any()
    assert (tables["eval_in_sketch"]["colour"] == "black").all()
    assert (tables["eval_in_clutter"]["size"] == "small").all()
    assert tables["eval_in_clutter"]["background"].str.startswith("cluttered").all()


def test_coco_captions_are_formulaic(tables: dict[str, pd.DataFrame]) -> None:
    coco = tables["coco"]
    for row in coco.itertuples():
        words = set(toyspec.tokens(row.text))
        assert not words & SIZE_POSITION_WORDS, row.text
        assert {row.colour, *toyspec.tokens(toyspec.COCO_NAMES[row.shape])} <= words
        article = "an" if row.colour[0] in "aeiou" else "a"
        name = toyspec.COCO_NAMES[row.shape]
        expected = f"{article} {row.colour} {name} on a {row.background} background."
        assert row.text == expected
        assert row.n_objects == 1 and row.background in toyspec.BACKGROUND_COLOURS


def test_pretrain_captions_are_diverse_but_complete(tables: dict[str, pd.DataFrame]) -> None:
    pretrain = tables["pretrain"]
    starts = {" ".join(t.split()[:2]) for t in pretrain["text"]}
    assert len(starts) >= 4  # several templates in use
    for row in pretrain.itertuples():
        assert {row.shape, row.colour, row.size} <= set(toyspec.tokens(row.text))


def test_coco_names_narrow_the_vocabulary() -> None:
    # Some classes are only called by their supercategory in the COCO-style split, as COCO
    # says "a bird" where ImageNet has species; every class belongs to exactly one group.
    members = [s for group in toyspec.SUPERCATEGORIES.values() for s in group]
    assert sorted(members) == sorted(toyspec.CLASSNAMES)
    coarse = {s for s, name in toyspec.COCO_NAMES.items() if name != s}
    assert coarse and coarse != set(toyspec.CLASSNAMES)
    for shape in coarse:
        assert toyspec.COCO_NAMES[shape] in toyspec.SUPERCATEGORIES
        assert shape in toyspec.SUPERCATEGORIES[toyspec.COCO_NAMES[shape]]


def test_captions_leave_out_attributes_but_always_name_the_class(tmp_path: Path) -> None:
    spec = copy.deepcopy(SPEC)
    spec["splits"] = {split: 0 for split in toyspec.SPLITS} | {"pretrain": 300}
    spec["attribute_mention_probability"] = 0.5
    tw.generate_world(tmp_path / "w", spec, SEED)
    pretrain = pd.read_parquet(tmp_path / "w" / "pretrain.parquet")
    stated = {"size": 0, "colour": 0}
    for row in pretrain.itertuples():
        words = set(toyspec.tokens(row.text))
        assert row.shape in words, row.text
        stated["size"] += row.size in words
        stated["colour"] += row.colour in words
        assert {row.shape, row.colour, row.size} <= set(toyspec.tokens(row.description))
    for attribute, count in stated.items():
        assert 0.3 < count / len(pretrain) < 0.7, attribute
    rng = np.random.default_rng(0)
    assert toycaptions.sample_mentions(rng, 1.0) == toycaptions.ALL_ATTRIBUTES
    assert toycaptions.sample_mentions(rng, 0.0) == frozenset()


def test_describe_states_only_the_mentioned_attributes() -> None:
    obj = toyscenes.SceneObject("star", "yellow", "large", "top left")
    scene = toyscenes.Scene((obj,), "gray", "striped")
    full = toycaptions.describe(scene)
    assert full == "a large yellow star in the top left corner of a striped gray background"
    assert toycaptions.describe(scene, "canonical", frozenset()) == "a star"
    assert toycaptions.describe(scene, "showing", frozenset({"colour"})) == (
        "an image showing a yellow star")
    assert toycaptions.describe(scene, "colour_first", frozenset({"size", "background"})) == (
        "a star of large size of a striped gray background")
    # The COCO-like template: never size or position; colour and background when mentioned.
    assert toycaptions.describe(scene, "coco") == "a yellow star on a striped gray background."
    assert toycaptions.describe(scene, "coco", frozenset({"size", "position"})) == "a star."
    assert toycaptions.describe(scene, "coco", frozenset({"background"})) == (
        "a star on a striped gray background.")
    for style in toyspec.DESCRIPTION_STYLES:
        for mentions in (frozenset(), frozenset({"position"}), toycaptions.ALL_ATTRIBUTES):
            words = set(toyspec.tokens(toycaptions.describe(scene, style, mentions)))
            assert "star" in words
            assert ("yellow" in words) == ("colour" in mentions)
            assert ("large" in words) == ("size" in mentions)
            assert ("corner" in words) == ("position" in mentions)
            assert ("striped" in words) == ("background" in mentions)


def test_typical_colours() -> None:
    assert set(toyspec.TYPICAL_COLOURS) == set(toyspec.CLASSNAMES)
    assert set(toyspec.TYPICAL_COLOURS.values()) <= set(toyspec.COLOURS)
    rng = np.random.default_rng(3)
    for profile, expected in (("imagenet", 0.8), ("coco", 0.8), ("web", 0.8)):
        scenes = [toyscenes.sample_scene(rng, profile, shape="hexagon",
                                         typical_colour_probability=0.8)
                  for _ in range(400)]
        typical = np.mean([s.main.colour == "brown" for s in scenes])
        # the typical colour, plus the 1/8 of the rest that draw it by chance
        assert abs(typical - (expected + (1 - expected) / len(toyspec.COLOURS))) < 0.06, profile
        for s in scenes:  # the background is always one the object stands out on
            assert s.main.colour in toyscenes.contrasting_colours(s.background_colour,
                                                                  (s.main.colour,))
    renditions = [toyscenes.sample_scene(rng, "rendition", shape="hexagon",
                                         typical_colour_probability=1.0) for _ in range(100)]
    assert all(s.main.colour != "brown" for s in renditions)
    sketches = [toyscenes.sample_scene(rng, "sketch", typical_colour_probability=1.0)
                for _ in range(20)]
    assert all(s.main.colour == "black" for s in sketches)
    plain = [toyscenes.sample_scene(rng, "imagenet", shape="circle") for _ in range(400)]
    assert np.mean([s.main.colour == "red" for s in plain]) < 0.25


def test_pool_caption_modes_mean_what_they_say(tables: dict[str, pd.DataFrame]) -> None:
    pool = tables["pool"]
    visual = toyspec.visual_words()
    seen = set()
    for row in pool.itertuples():
        words = set(toyspec.tokens(row.text))
        mode = row.caption_mode
        seen.add((mode, row.image_kind))
        if mode in ("non_visual", "boilerplate"):
            assert not words & (COLOUR_WORDS | SHAPE_WORDS), row.text
            assert not words & visual, row.text
        elif mode == "right":
            assert row.image_kind == "scene"
            assert {row.shape, row.colour} <= words, row.text
        elif mode == "partial":
            assert row.image_kind == "scene"
            assert words & {row.shape, row.colour}, row.text
        elif mode == "other_image":
            assert row.text.lower().rstrip(".! ") != row.description
            if row.image_kind == "scene":
                assert row.shape not in words, (row.text, row.description)
            assert words & SHAPE_WORDS and words & COLOUR_WORDS
    # junk images never get right/partial captions
    assert not {("right", "junk"), ("partial", "junk")} & seen
    assert (pool["image_kind"] == "junk").any()


def test_noise_generators_never_leak_visual_words() -> None:
    visual = toyspec.visual_words()
    rng = np.random.default_rng(0)
    for _ in range(3000):
        for text in (toycaptions.non_visual_caption(rng), toycaptions.boilerplate_caption(rng)):
            assert text and not set(toyspec.tokens(text)) & visual, text


def test_partial_captions_are_partly_right() -> None:
    rng = np.random.default_rng(1)
    for _ in range(300):
        scene = toyscenes.sample_scene(rng, "web")
        text = toycaptions.partial_caption(scene, rng)
        words = set(toyspec.tokens(text))
        assert words & {scene.main.shape, scene.main.colour}, text
        if scene.main.shape in words and words & set(toyspec.COLOURS) - {scene.main.colour}:
            continue  # wrong colour (or a second object's colour)
        assert (text.lower().rstrip(".! ") != toycaptions.describe(scene) or " - " in text
                or "|" in text)


def test_retrieval_captions(tables: dict[str, pd.DataFrame]) -> None:
    k = SPEC["captions_per_retrieval_image"]
    for row in tables["eval_retrieval"].itertuples():
        caps = list(row.captions)
        assert len(caps) == k == len(set(caps))
        assert row.text == caps[0]
        for cap in caps:
            assert {row.shape, row.colour, row.size} <= set(toyspec.tokens(cap))


def test_manifest_agrees_with_tables(
    world: tuple[Path, dict[str, Any]], tables: dict[str, pd.DataFrame]
) -> None:
    out, manifest = world
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["toy"] is True and manifest["seed"] == SEED and manifest["spec"] == SPEC
    assert manifest["counts"] == {s: len(df) for s, df in tables.items()}
    pool = tables["pool"]
    for key, col in (
        ("pool_caption_mode_counts", "caption_mode"),
        ("pool_url_state_counts", "url_state"),
        ("pool_image_kind_counts", "image_kind"),
    ):
        counts = {k: v for k, v in manifest[key].items() if v}
        assert counts == pool[col].value_counts().to_dict(), key
    assert sum(manifest["pool_caption_mode_counts"].values()) == len(pool)
    for split in toyspec.SPLITS:
        digest = hashlib.sha256((out / f"{split}.parquet").read_bytes()).hexdigest()
        assert manifest["sha256"][f"{split}.parquet"] == digest
    text = (out / "manifest.json").read_text()
    assert text == json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def test_regenerating_removes_stale_images(tmp_path: Path) -> None:
    spec = copy.deepcopy(SPEC)
    spec["splits"] = {s: 0 for s in toyspec.SPLITS} | {"pool": 40, "coco": 5}
    spec["dead_url_fraction"] = 0.25
    tw.generate_world(tmp_path, spec, 1)
    tw.generate_world(tmp_path, spec, 2)
    pool = pd.read_parquet(tmp_path / "pool.parquet")
    expected = {f"{u}.png" for u, s in zip(pool["uid"], pool["url_state"], strict=True)}
    expected -= {f"{u}.png" for u in pool.loc[pool["url_state"] == "dead", "uid"]}
    assert {p.name for p in (tmp_path / "pool").iterdir()} == expected
    assert len(list((tmp_path / "coco").iterdir())) == 5


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pool_caption_modes", {"right": 0.5, "partial": 0.2}),
        ("pool_caption_modes", {"right": 0.5, "bogus": 0.5}),
        ("junk_image_fraction", 1.5),
        ("dead_url_fraction", -0.1),
        ("corrupt_file_fraction", "x"),
        ("image_size", 4),
        ("captions_per_retrieval_image", 0),
        ("splits", {**SPEC["splits"], "pool": -1}),
    ],
)
def test_invalid_spec_names_the_key(tmp_path: Path, key: str, value: Any) -> None:
    spec = copy.deepcopy(SPEC)
    spec[key] = value
    with pytest.raises(ValueError, match=key):
        tw.generate_world(tmp_path, spec, 0)


def _object_pixels(img: Image.Image, colour: str) -> np.ndarray:
    arr = np.asarray(img).astype(int)
    return np.abs(arr - np.array(toyspec.COLOURS[colour])).sum(axis=-1) < 40


@pytest.mark.parametrize("shape", toyspec.CLASSNAMES)
def test_drawn_objects_are_visible_where_described(shape: str) -> None:
    areas = {}
    for size in toyspec.SIZES:
        for position in toyspec.POSITIONS:
            obj = toyscenes.SceneObject(shape, "red", size, position)
            scene = toyscenes.Scene((obj,), "white", "plain", detail_seed=3)
            img = toydraw.draw_scene(scene, 64)
            assert img.mode == "RGB" and img.size == (64, 64)
            mask = _object_pixels(img, "red")
            assert mask.mean() > 0.02, (shape, size, position)
            ys, xs = np.nonzero(mask)
            cx, cy = xs.mean() / 64, ys.mean() / 64
            words = position.split()
            if "left" in words:
                assert cx < 0.4
            if "right" in words:
                assert cx > 0.6
            if "top" in words:
                assert cy < 0.4
            if "bottom" in words:
                assert cy > 0.6
            if position == "center":
                assert 0.4 < cx < 0.6 and 0.4 < cy < 0.6
            # bounding box of even a small object spans >= ~20% of the edge
            assert max(xs.max() - xs.min(), ys.max() - ys.min()) + 1 >= 0.2 * 64
            if position == "center":
                areas[size] = mask.sum()
    assert areas["small"] < areas["medium"] < areas["large"]


def test_two_object_scenes_keep_objects_apart() -> None:
    rng = np.random.default_rng(5)
    for _ in range(40):
        scene = toyscenes.sample_scene(rng, "web")
        if len(scene.objects) != 2:
            continue
        a, b = scene.objects
        scene = toyscenes.Scene(
            (
                toyscenes.SceneObject(a.shape, "red", a.size, a.position),
                toyscenes.SceneObject(b.shape, "blue", b.size, b.position),
            ),
            "white",
        )
        img = toydraw.draw_scene(scene, 64, 96)
        assert _object_pixels(img, "red").sum() > 50 and _object_pixels(img, "blue").sum() > 50
        assert not a.size == b.size == "large"


def test_draw_scene_is_deterministic_and_profiles_differ() -> None:
    rng = np.random.default_rng(0)
    for profile in toyspec.PROFILES:
        scene = toyscenes.sample_scene(rng, profile)
        assert np.array_equal(
            np.asarray(toydraw.draw_scene(scene, 48)), np.asarray(toydraw.draw_scene(scene, 48))
        )
    sketch = toydraw.draw_scene(toyscenes.sample_scene(rng, "sketch", shape="star"), 64)
    assert np.asarray(sketch).mean() > 180  # dark lines on a light background
    for kind in toyspec.JUNK_KINDS:
        img = toydraw.draw_junk(kind, 70, 50, np.random.default_rng(0))
        assert img.mode == "RGB" and img.size == (70, 50)


def test_nocaps_references_are_coco_style_and_canonical(
    tables: dict[str, pd.DataFrame],
) -> None:
    nocaps = tables["nocaps"]
    assert len(nocaps) == SPEC["splits"]["nocaps"]
    for _, row in nocaps.iterrows():
        coco_ref, canonical = list(row["captions"])
        assert row["text"] == coco_ref and canonical == row["description"]
        assert not set(toyspec.tokens(coco_ref)) & SIZE_POSITION_WORDS


def test_optional_world_settings_default_as_the_schema_says() -> None:
    import yaml

    from capmix.config import SCHEMA_PATH

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    properties = schema["$defs"]["toy_world"]["properties"]
    for key, default in toyspec.OPTIONAL_FRACTIONS.items():
        assert properties[key]["default"] == default, key


def test_the_schema_lists_the_toy_splits_of_the_code() -> None:
    """The splits are defined once (toyspec.SPLITS); the schema's two lists must agree."""
    import yaml

    from capmix.config import SCHEMA_PATH

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    world_splits = schema["$defs"]["toy_world"]["properties"]["splits"]
    assert tuple(world_splits["properties"]) == toyspec.SPLITS
    assert set(world_splits["required"]) <= set(toyspec.SPLITS)
    toy_source = next(branch["then"] for branch in schema["$defs"]["source"]["allOf"]
                      if branch["if"]["properties"]["type"]["const"] == "toy")
    assert tuple(toy_source["properties"]["split"]["enum"]) == toyspec.SPLITS
    assert tuple(toyspec.SPLIT_PROFILES) == toyspec.SPLITS
    assert set(toyspec.SPLIT_PROFILES.values()) <= set(toyspec.PROFILES)
