"""Tests for the toy world's stand-in models (capmix.toymodels).

Everything is trained for real with ``open_clip_train`` on a tiny world (a few dozen 32 px
images, 16 px models, one epoch), so these tests pin down the contract the pipeline relies on:
the word tokenizer round-trips the world's captions, the shards are plain webdatasets, the
exported directories load offline as ``local-dir:`` models (the CoCa generates text), a second
call resumes instead of restarting, and fine-tuning starts from the base model's weights.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import open_clip
import pandas as pd
import pytest
import torch
import webdataset as wds
from safetensors.torch import load_file

from capmix import toymodels as tm
from capmix.config import load_schema
from capmix.toykinds import (
    CAPTIONER,
    SCORER,
    TOY_CAPTIONER_KINDS,
    TOY_CLIP_KINDS,
    TOY_MODEL_KINDS,
)
from capmix.toyworld import generate_world
from capmix.train import RUN_NAME, checkpoint_epoch, parse_train_log

SEED = 3
SPEC: dict[str, Any] = {
    "image_size": 32,
    "splits": {"pretrain": 48, "coco": 24, "pool": 0},
    "pool_caption_modes": {
        "right": 0.3,
        "partial": 0.2,
        "other_image": 0.15,
        "non_visual": 0.2,
        "boilerplate": 0.15,
    },
    "junk_image_fraction": 0.0,
    "dead_url_fraction": 0.0,
    "corrupt_file_fraction": 0.0,
    "captions_per_retrieval_image": 2,
}
# Small enough that one epoch of open_clip_train takes about a second.
SIZES = {
    "image_size": 16,
    "patch_size": 8,
    "width": 32,
    "layers": 1,
    "heads": 2,
    "embed_dim": 32,
    "context_length": 36,
}
TRAIN = {"epochs": 1, "batch_size": 16, "lr": 1e-3, "warmup": 2, "workers": 1, "sizes": SIZES}


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toymodels") / "world"
    generate_world(out, SPEC, SEED)
    return out


def _texts(world: Path, *splits: str) -> list[str]:
    return [t for s in splits for t in pd.read_parquet(world / f"{s}.parquet")["text"]]


@pytest.fixture(scope="session")
def captioner(world: Path) -> Path:
    root = world.parent / "captioner"
    return tm.train_toy_model(CAPTIONER, world, root / "model", TRAIN, SEED, root / "work")


@pytest.fixture(scope="session")
def scorer(world: Path) -> Path:
    root = world.parent / "scorer"
    return tm.train_toy_model(SCORER, world, root / "model", TRAIN, SEED, root / "work")


# ------------------------------------------------------------------ tokenizer and shards


def test_tokenizer_round_trips_toy_captions(world: Path, tmp_path: Path) -> None:
    texts = _texts(world, "pretrain", "coco")
    tok = tm.build_tokenizer(texts, tmp_path / "tok")
    assert [tok.convert_ids_to_tokens(i) for i in range(4)] == list(tm.SPECIAL_TOKENS)
    for text in texts:
        ids = tok(text).input_ids
        assert ids[0] == tok.bos_token_id == 2 and ids[-1] == tok.eos_token_id == 3
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
    # case and unknown words: lower-cased, unknown -> [UNK], punctuation kept
    ids = tok("A RED Zebra.").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["[SOS]", "a", "red", "[UNK]", ".", "[EOS]"]

    # the vocabulary is sorted, so it does not depend on the order of the texts
    shuffled = list(texts)
    random.Random(0).shuffle(shuffled)
    tm.build_tokenizer(shuffled, tmp_path / "tok2")
    assert (tmp_path / "tok" / "tokenizer.json").read_bytes() == (
        tmp_path / "tok2" / "tokenizer.json"
    ).read_bytes()
    words = list(tok.get_vocab())
    by_id = sorted(words, key=tok.convert_tokens_to_ids)
    assert by_id[4:] == sorted(by_id[4:])


def test_open_clip_tokenizer_pads_with_zero(captioner: Path) -> None:
    tokenizer = open_clip.get_tokenizer(f"local-dir:{captioner}")
    ids = tokenizer(["a red circle on a white background."])
    assert ids.shape == (1, SIZES["context_length"])
    row = ids[0].tolist()
    end = row.index(3)
    assert row[0] == 2 and all(i == 0 for i in row[end + 1:])
    assert tm.decode_captions(tokenizer, ids) == ["a red circle on a white background."]


def test_shards_are_webdatasets_matching_the_parquet(world: Path, tmp_path: Path) -> None:
    parquet = world / "pretrain.parquet"
    table = pd.read_parquet(parquet)
    shards = tm.write_training_shards(parquet, tmp_path / "shards", samples_per_shard=20,
                                      image_size=16)
    assert [p.name for p in shards] == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    samples = list(
        wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode("pil")
    )
    assert [s["__key__"] for s in samples] == list(table["uid"])
    assert [s["json"]["uid"] for s in samples] == list(table["uid"])
    assert [s["txt"] for s in samples] == list(table["text"])
    assert all(s["png"].size == (16, 16) for s in samples)

    # deterministic bytes; a rewrite with bigger shards leaves no stale shard behind
    before = [p.read_bytes() for p in shards]
    again = tm.write_training_shards(parquet, tmp_path / "shards", samples_per_shard=20,
                                     image_size=16)
    assert [p.read_bytes() for p in again] == before
    one = tm.write_training_shards(parquet, tmp_path / "shards", samples_per_shard=100)
    assert [p.name for p in one] == ["shard-00000.tar"]
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["shard-00000.tar"]
    # without image_size the original PNG bytes are stored as they are
    first = next(iter(wds.WebDataset(str(one[0]), shardshuffle=False)))
    assert first["png"] == Path(table["url"][0].removeprefix("file://")).read_bytes()


def test_unknown_setting_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown setting 'epoch'"):
        tm.training_settings("captioner", {"epoch": 3})
    merged = tm.training_settings("scorer", {"sizes": {"width": 32}})
    assert merged["sizes"]["width"] == 32
    assert merged["sizes"]["layers"] == tm.DEFAULT_SETTINGS["scorer"]["sizes"]["layers"]


def test_the_kinds_are_listed_once() -> None:
    # The schema must spell the kinds out; it says exactly what capmix.toykinds says.
    schema = load_schema()
    defs = schema["$defs"]
    assert tuple(schema["properties"]["toy_models"]["properties"]) == TOY_MODEL_KINDS
    assert defs["captioner"]["properties"]["toy_model"]["enum"] == [*TOY_CAPTIONER_KINDS, None]
    # released and shipped captioners need no model; every other backend a model or toy kind
    needs_model = defs["captioner"]["allOf"][0]["else"]["else"]["anyOf"]
    assert [alt["properties"]["toy_model"]["enum"] for alt in needs_model
            if "toy_model" in alt.get("properties", {})] == [list(TOY_CAPTIONER_KINDS)]
    assert defs["scorer"]["properties"]["toy_model"]["enum"] == [*TOY_CLIP_KINDS, None]
    assert defs["train_scale"]["properties"]["toy_model"]["enum"] == list(TOY_CLIP_KINDS)
    assert defs["toy_training"]["properties"]["vision_from"]["enum"] == [*TOY_CLIP_KINDS, None]
    # a default per kind, and the kinds split into CoCas and CLIPs
    assert tuple(tm.DEFAULT_SETTINGS) == TOY_MODEL_KINDS
    assert sorted(TOY_CAPTIONER_KINDS + TOY_CLIP_KINDS) == sorted(TOY_MODEL_KINDS)


def test_only_the_from_scratch_kinds_train_from_scratch(tmp_path: Path) -> None:
    # Refused before anything is read or written.
    with pytest.raises(ValueError, match="is not trained from scratch"):
        tm.train_toy_model("captioner_coco", tmp_path / "world", tmp_path / "model", {}, 0,
                           tmp_path / "work")
    with pytest.raises(ValueError, match="only a CoCa's image tower"):
        tm.train_toy_model(SCORER, tmp_path / "world", tmp_path / "model", {}, 0,
                           tmp_path / "work", vision_from=tmp_path / "clip")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ trained stand-ins


def test_captioner_is_a_local_dir_coca_that_generates(captioner: Path) -> None:
    names = {p.name for p in captioner.iterdir()}
    assert {tm.CONFIG_NAME, tm.WEIGHTS_NAME, "training.json", *tm.TOKENIZER_FILES} <= names
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{captioner}")
    assert isinstance(model, open_clip.CoCa)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{captioner}")
    assert isinstance(tokenizer, open_clip.tokenizer.HFTokenizer)

    record = json.loads((captioner / "training.json").read_text())
    assert record["epochs"] == 1 and record["samples_seen"] == 48
    # open_clip 3.3.0 leaves the CoCa decoder's projection uninitialised (torch.empty); the
    # initial weights this module writes make the very first caption loss finite.
    assert math.isfinite(record["first_step_loss"]) and math.isfinite(record["final_loss"])
    assert set(record["final_losses"]) == {"caption_loss", "contrastive_loss", "loss"}

    images = torch.rand(3, 3, 16, 16)
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(images, generation_type="top_k", top_k=50, temperature=1.0,
                             seq_len=20, min_seq_len=5, **tm.generation_token_ids(captioner))
    captions = tm.decode_captions(tokenizer, out)
    assert len(captions) == 3 and all(len(c.split()) >= 3 for c in captions)
    # decoded captions are made of the toy vocabulary: they re-encode without [UNK]
    # (decode may glue punctuation to words, so compare tokens, not whitespace words)
    unk = tokenizer.tokenizer.unk_token_id
    assert all(unk not in tokenizer.tokenizer(c).input_ids for c in captions)


def test_scorer_is_a_local_dir_clip_pooling_at_eos(scorer: Path) -> None:
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{scorer}")
    assert isinstance(model, open_clip.CLIP)
    cfg = json.loads((scorer / tm.CONFIG_NAME).read_text())["model_cfg"]
    assert cfg["text_cfg"]["pool_type"] == "eos" and cfg["text_cfg"]["eos_id"] == 3
    tokenizer = open_clip.get_tokenizer(f"local-dir:{scorer}")
    texts = tokenizer(["a red circle on a white background.", "a blue star"])
    with torch.no_grad():
        features = model.encode_text(texts, normalize=True)
        # eos pooling reads the [EOS] position, not the largest id (argmax would pick a word)
        x = model.token_embedding(texts) + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        eos = (texts == 3).int().argmax(dim=-1)
        manual = x[torch.arange(2), eos] @ model.text_projection
    torch.testing.assert_close(features, torch.nn.functional.normalize(manual, dim=-1))
    record = json.loads((scorer / "training.json").read_text())
    assert set(record["final_losses"]) == {"contrastive_loss", "loss"}


def test_second_call_resumes_from_the_last_epoch(scorer: Path, world: Path) -> None:
    work = world.parent / "scorer" / "work"
    shards = sorted((work / "shards_pretrain").glob("shard-*.tar"))
    out = world.parent / "resume"
    args = {"batch_size": 16, "lr": 1e-3, "warmup": 2, "workers": 1, "seed": SEED}
    # First run in a separate process, like a job that is later killed after epoch 1.
    first = tm.train_open_clip(work / "init_model", shards, out, epochs=1, isolated=True, **args)
    assert first.name == "epoch_1.pt" and checkpoint_epoch(first) == 1
    final = tm.train_open_clip(work / "init_model", shards, out, epochs=2, **args)
    assert final.name == "epoch_2.pt" and checkpoint_epoch(final) == 2
    summary = parse_train_log(out / RUN_NAME / "out.log")
    assert summary["resumed_from_epochs"] == [1]
    assert summary["epochs_logged"] == [0, 1]  # epoch 0 was not trained again
    curve = summary["loss_curve"]
    assert sorted({p["epoch"] for p in curve}) == [0, 1]
    assert curve[-1]["samples_seen"] == summary["samples_seen"]
    assert [p["step"] for p in curve] == sorted({p["step"] for p in curve})  # in order
    # --delete-previous-checkpoint + --save-most-recent: only the last epoch and "latest"
    names = sorted(p.name for p in final.parent.iterdir())
    assert names == ["epoch_2.pt", "epoch_latest.pt"]
    # a finished run returns at once
    assert tm.train_open_clip(work / "init_model", shards, out, epochs=2, **args) == final


def test_finetune_starts_from_the_base_weights(captioner: Path, world: Path) -> None:
    root = world.parent / "finetune"
    # With lr 0 the fine-tune cannot move the weights: what comes out is what it started from.
    model_dir = tm.finetune_toy_captioner(world, captioner, root / "model",
                                          {**TRAIN, "lr": 0.0}, SEED, root / "work")
    base = load_file(str(captioner / tm.WEIGHTS_NAME))
    tuned = load_file(str(model_dir / tm.WEIGHTS_NAME))
    assert base.keys() == tuned.keys()
    assert all(torch.equal(base[k], tuned[k]) for k in base)
    record = json.loads((model_dir / "training.json").read_text())
    assert record["split"] == "coco" and record["samples_seen"] == 32  # 2 batches of 16
    assert record["loaded_pretrained_weights"] == [
        str((root / "work" / "train" / "coca_model" / tm.WEIGHTS_NAME).resolve())
    ]
    tokenizer_file = (model_dir / "tokenizer.json").read_bytes()
    assert tokenizer_file == (captioner / "tokenizer.json").read_bytes()


def test_clip_under_a_coca_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CoCa loss"):
        tm.train_open_clip(tmp_path, [tmp_path / "x.tar"], tmp_path / "coca_run", epochs=1,
                           batch_size=1, lr=1e-3, warmup=0, workers=0, seed=0)


def test_captioner_image_tower_can_start_from_the_scorer(scorer: Path, world: Path) -> None:
    # BLIP2-style: the captioner's image tower starts from the CLIP's. With lr 0 what comes
    # out is the start: every image-tower weight whose name and shape agree is the scorer's.
    root = world.parent / "captioner_from_scorer"
    model_dir = tm.train_toy_model(CAPTIONER, world, root / "model", {**TRAIN, "lr": 0.0},
                                   SEED, root / "work", vision_from=scorer)
    clip = load_file(str(scorer / tm.WEIGHTS_NAME))
    coca = load_file(str(model_dir / tm.WEIGHTS_NAME))
    shared = [k for k in coca if k.startswith("visual.") and k in clip
              and coca[k].shape == clip[k].shape]
    assert {"visual.conv1.weight", "visual.transformer.resblocks.0.attn.in_proj_weight"} <= set(
        shared)
    assert all(torch.equal(coca[k], clip[k]) for k in shared)
    record = json.loads((model_dir / "training.json").read_text())
    assert record["vision_from"] == str(scorer)
    # weights without an image tower cannot start one: refused before any training
    with pytest.raises(ValueError, match="no image-tower weight"):
        tm.train_toy_model(CAPTIONER, world, root / "model2", TRAIN, SEED, root / "work2",
                           vision_from=_weights_without_visual(clip, root))


def _weights_without_visual(weights: dict, root: Path) -> Path:
    from safetensors.torch import save_file

    path = root / "no_visual.safetensors"
    save_file({k: v for k, v in weights.items() if not k.startswith("visual.")}, str(path))
    return path
