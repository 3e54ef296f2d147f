"""The toy world's stand-in models, trained by the pipeline itself with ``open_clip_train``.

The paper captions with pre-trained BLIP2 / OpenCLIP-CoCa (and their COCO-fine-tuned variants)
and scores with OpenAI's CLIP ViT-L/14. None of them knows the toy world, and the default run
must not download anything, so the pipeline trains small stand-ins on the world's *clean*
splits (never on the candidate pool, whose captions are what the stand-ins judge):

1. ``captioner``: a tiny open_clip **CoCa** trained on ``pretrain`` (stand-in for BLIP2);
2. ``captioner_coco``: that CoCa fine-tuned on the narrow ``coco`` split (stand-in for
   BLIP2-COCO / CoCa-COCO, which the paper finds less diverse and less useful);
3. ``scorer``: a tiny open_clip **CLIP** trained on ``pretrain`` (stand-in for ViT-L/14).

(The kinds are listed once, in :mod:`capmix.toykinds`.) The first and last are trained from
scratch by :func:`train_toy_model`, the fine-tune by :func:`finetune_toy_captioner`.

Training is open_clip's own training loop (``open_clip_train.main``) on webdataset shards, so
the stand-ins go through the same code path, flags and checkpoint format as a real open_clip
run; only the architecture is small. This module builds the tokenizer, the configs, the shards
and the starting weights; :mod:`capmix.train` runs ``open_clip_train`` and reads what the run
leaves behind (checkpoints, ``out.log``). Each result is a self-contained open_clip ``local-dir:``
model directory (``open_clip_config.json`` + word-level tokenizer files + safetensors weights)
that loads offline with ``open_clip.create_model_and_transforms("local-dir:" + dir)`` and
``open_clip.get_tokenizer("local-dir:" + dir)``.

Why a word-level tokenizer: the output softmax dominates a small captioner, so open_clip's
49,408-token BPE vocabulary makes a tiny CoCa ~4x slower on a 2-core CPU than a 1,024-token
one; the toy world's clean captions use ~60 words, so a closed word vocabulary (built with the
``tokenizers`` library, saved as a ``PreTrainedTokenizerFast``) is both faster and exact.
Special ids are fixed: ``[PAD]`` = 0 (open_clip's ``CoCaLoss`` ignores label 0 and its text
tower masks ``pad_id`` 0), ``[UNK]`` = 1, ``[SOS]`` = 2 (also the CLS token), ``[EOS]`` = 3 (also
SEP). Because ``[EOS]`` is not the largest id, CLIP's default ``argmax`` text pooling (which
assumes BPE's end-of-text is the largest id) would pool the wrong token; the scorer's config
therefore uses ``pool_type="eos"`` with ``eos_id`` = 3. The CoCa text tower appends a learned
CLS embedding and always pools that, so it is unaffected.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from capmix.toykinds import CAPTIONER, CAPTIONER_COCO, SCORER
from capmix.train import (
    finished_checkpoint,
    parse_train_log,
    preserved_rng,
    require_loss_by_name,
    run_params,
    train_cpu_epochs,
    train_log_path,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_SETTINGS",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "SOS_TOKEN",
    "SPECIAL_TOKENS",
    "TOKENIZER_FILES",
    "UNK_TOKEN",
    "WEIGHTS_NAME",
    "build_tokenizer",
    "captioner_config",
    "decode_captions",
    "export_model_dir",
    "file_url_path",
    "finetune_toy_captioner",
    "generation_token_ids",
    "scorer_config",
    "stage_toy_model",
    "train_open_clip",
    "train_toy_model",
    "training_settings",
    "write_training_shards",
]

PAD_TOKEN, UNK_TOKEN, SOS_TOKEN, EOS_TOKEN = "[PAD]", "[UNK]", "[SOS]", "[EOS]"
#: Fixed ids 0..3, in this order (see the module docstring for why PAD must be 0).
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, UNK_TOKEN, SOS_TOKEN, EOS_TOKEN)
#: What ``PreTrainedTokenizerFast.save_pretrained`` writes; copied into every model dir.
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
#: open_clip's preferred weights name in a local dir (factory._find_checkpoint_in_dir).
WEIGHTS_NAME = "open_clip_model.safetensors"
#: open_clip's local-dir model config; written last, so a model dir that has one is complete
#: (the workflow's rules track a trained stand-in by it).
CONFIG_NAME = "open_clip_config.json"
#: Marks the tokenizer as "next to this config": get_tokenizer("local-dir:...") only needs the
#: key to be non-empty and then always reads the tokenizer files from the local dir itself.
HF_TOKENIZER_NAME = "./"
TRAIN_SPLIT, COCO_SPLIT = "pretrain", "coco"

# Defaults measured on 2 CPU cores (bench/toy_models.py; per-run figures in training.json).
# Shared by both toy worlds, since the pipeline's toy_models settings are per kind, not per
# world: smoke (pretrain 1,500 / coco 300) and default (6,400 / 1,000) scale linearly.
# Measured on 2 cores (captioner context 48 as config.yaml sets it; bench/toy_models.py):
# captioner ~215-270 samples/s, COCO fine-tune ~180-230/s, scorer ~380-480/s end to end in
# open_clip_train (one data worker shares the 2 cores). In the calibrated world (typical
# class colours, captions that leave attributes out; capmix.toyworld) the default-size
# captioner names colours right ~85-90% of the time, the shape of single objects ~45% (chance
# 10%) and positions at chance; the scorer (3 epochs) classifies toy ImageNet zero-shot at
# ~60% and ranks the true caption above a random one ~99%, above a shape-swapped one ~73%.
#: The architecture both stand-ins share (32 px images, width-64 two-layer towers).
_TINY_SIZES: dict[str, int] = {
    "image_size": 32,
    "patch_size": 8,
    "width": 64,
    "layers": 2,
    "heads": 4,
    "embed_dim": 64,
    "context_length": 32,
}
DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {
    CAPTIONER: {
        "epochs": 3,
        "batch_size": 64,
        "lr": 2e-3,
        "warmup": 50,
        "workers": 1,
        # The context must hold the longest clean caption (33 tokens with [SOS]/[EOS]) and the
        # paper's max_length 40: CoCa.generate cannot run past the text tower's context.
        "sizes": {**_TINY_SIZES, "context_length": 40},
        # The toy model whose image tower starts this one's (the workflow trains it first and
        # passes its dir as ``vision_from``); None: from scratch.
        "vision_from": None,
    },
    # Fine-tuning keeps the base captioner's architecture (sizes are read from its config).
    CAPTIONER_COCO: {
        "epochs": 3,
        "batch_size": 32,
        "lr": 5e-4,
        "warmup": 10,
        "workers": 1,
        "sizes": {},
    },
    SCORER: {
        "epochs": 3,
        "batch_size": 128,
        "lr": 2e-3,
        "warmup": 50,
        "workers": 1,
        "sizes": dict(_TINY_SIZES),
    },
}


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def _word_tokenizer(vocab: Mapping[str, int]) -> Any:
    """A ``tokenizers.Tokenizer``: lower-cased words and single punctuation marks.

    ``Whitespace`` splits ``\\w+`` from punctuation runs and ``Punctuation`` then isolates each
    mark ("..." -> three "."), so web junk maps to a few known marks plus ``[UNK]``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel(dict(vocab), unk_token=UNK_TOKEN))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOS_TOKEN} $A {EOS_TOKEN}",
        special_tokens=[(SOS_TOKEN, vocab[SOS_TOKEN]), (EOS_TOKEN, vocab[EOS_TOKEN])],
    )
    return tok


def build_tokenizer(texts: Iterable[str], out_dir: Path) -> PreTrainedTokenizerFast:
    """Build, save (``save_pretrained``) and return the word-level tokenizer of ``texts``.

    The vocabulary is the four special tokens (ids 0-3) followed by every word/mark of the
    texts in sorted order, so the same texts always give the same ids whatever their order:
    a rebuilt tokenizer stays compatible with weights trained against an earlier build.
    Texts are split with the tokenizer's own normalizer and pre-tokenizer, so the vocabulary
    is exactly what encoding will look up. ``clean_up_tokenization_spaces`` makes ``decode``
    write "background." rather than "background ." (words are joined with spaces).
    """
    from transformers import PreTrainedTokenizerFast

    probe = _word_tokenizer({t: i for i, t in enumerate(SPECIAL_TOKENS)})
    words: set[str] = set()
    for text in texts:
        normalized = probe.normalizer.normalize_str(text)
        words.update(piece for piece, _ in probe.pre_tokenizer.pre_tokenize_str(normalized))
    words.difference_update(SPECIAL_TOKENS)
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({w: len(SPECIAL_TOKENS) + i for i, w in enumerate(sorted(words))})

    fast = PreTrainedTokenizerFast(
        tokenizer_object=_word_tokenizer(vocab),
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        bos_token=SOS_TOKEN,
        eos_token=EOS_TOKEN,
        cls_token=SOS_TOKEN,
        sep_token=EOS_TOKEN,
        clean_up_tokenization_spaces=True,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


def _load_tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))


def _tokenizer_ids(tokenizer_dir: Path) -> dict[str, int]:
    """Vocabulary size and special ids, checked against the fixed layout the configs assume."""
    tok = _load_tokenizer(tokenizer_dir)
    ids = {
        "vocab_size": len(tok),
        "pad_id": int(tok.pad_token_id),
        "unk_id": int(tok.unk_token_id),
        "sot_id": int(tok.bos_token_id),
        "eos_id": int(tok.eos_token_id),
    }
    if ids["pad_id"] != 0:
        # open_clip_train's CoCaLoss is built without a pad id: it ignores label 0 only.
        raise ValueError(f"{tokenizer_dir}: [PAD] must have id 0, got {ids['pad_id']}")
    return ids


def generation_token_ids(model_dir: Path) -> dict[str, int]:
    """``sot_token_id`` / ``eos_token_id`` / ``pad_token_id`` for ``CoCa.generate``.

    CoCa.generate defaults to the BPE ids 49406/49407, which do not exist in a word vocabulary;
    callers pass these instead.
    """
    ids = _tokenizer_ids(Path(model_dir))
    return {
        "sot_token_id": ids["sot_id"],
        "eos_token_id": ids["eos_id"],
        "pad_token_id": ids["pad_id"],
    }


def decode_captions(tokenizer: Any, token_ids: Any) -> list[str]:
    """Generated id rows -> caption strings (special tokens and padding dropped).

    Accepts open_clip's ``HFTokenizer`` (as returned by ``get_tokenizer``) or the
    ``PreTrainedTokenizerFast`` itself.
    """
    hf = getattr(tokenizer, "tokenizer", tokenizer)
    rows = token_ids.tolist() if hasattr(token_ids, "tolist") else list(token_ids)
    return [text.strip() for text in hf.batch_decode(rows, skip_special_tokens=True)]


# --------------------------------------------------------------------------------------------
# Model configs
# --------------------------------------------------------------------------------------------


def _size(sizes: Mapping[str, int], key: str, default: int | None = None) -> int:
    value = sizes.get(key, default)
    if value is None:
        raise ValueError(f"sizes.{key} is required")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"sizes.{key} must be a positive integer, got {value!r}")
    return value


def _heads(width: int, heads: int, what: str) -> int:
    if width % heads:
        raise ValueError(f"{what}: width {width} is not divisible by heads {heads}")
    return heads


def _preprocess_cfg(image_size: int) -> dict[str, Any]:
    """open_clip's standard preprocessing (OpenAI mean/std, bicubic, shortest-side resize)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return {
        "size": image_size,
        "mode": "RGB",
        "mean": list(OPENAI_DATASET_MEAN),
        "std": list(OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }


def _vision_cfg(image_size: int, sizes: Mapping[str, int]) -> dict[str, Any]:
    width = _size(sizes, "vision_width", _size(sizes, "width"))
    heads = _heads(width, _size(sizes, "heads"), "vision tower")
    patch = _size(sizes, "patch_size")
    if image_size % patch:
        raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch}")
    return {
        "image_size": image_size,
        "patch_size": patch,
        "width": width,
        "layers": _size(sizes, "vision_layers", _size(sizes, "layers")),
        "head_width": width // heads,
    }


def captioner_config(
    tokenizer_dir: Path, image_size: int, sizes: Mapping[str, int]
) -> dict[str, Any]:
    """``open_clip_config.json`` content of the tiny CoCa (stand-in for BLIP2 / CoCa).

    Same layout as open_clip's ``coca_ViT-*`` configs (attentional pooler over the patch tokens,
    CLS-embedding text tower, cross-attending multimodal decoder), with the word vocabulary.
    The pooler's output feeds the decoder's cross-attention, so ``embed_dim`` must equal the
    decoder width. ``sizes``: width, layers, heads, embed_dim, patch_size, context_length and
    optionally vision_/text_/decoder_ layers, vision_width, attn_pooler_queries.
    """
    ids = _tokenizer_ids(Path(tokenizer_dir))
    width = _size(sizes, "width")
    heads = _heads(width, _size(sizes, "heads"), "text tower")
    embed_dim = _size(sizes, "embed_dim", width)
    decoder_width = _size(sizes, "decoder_width", embed_dim)
    if decoder_width != embed_dim:
        raise ValueError("CoCa: decoder_width must equal embed_dim (the pooled image tokens)")
    context = _size(sizes, "context_length")
    layers = _size(sizes, "layers")
    vision = _vision_cfg(image_size, sizes)
    grid = (image_size // vision["patch_size"]) ** 2
    queries = sizes.get("attn_pooler_queries", grid + 1)
    vision["output_tokens"] = True
    if queries:
        vision.update(
            {
                "attentional_pool": True,
                "attn_pooler_queries": _size(sizes, "attn_pooler_queries", grid + 1),
                "attn_pooler_heads": _heads(embed_dim, heads, "attentional pooler"),
            }
        )
    elif vision["width"] != decoder_width:
        raise ValueError("CoCa without attentional pooler: vision width must equal decoder width")
    model_cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": vision,
        "text_cfg": {
            "context_length": context,
            "vocab_size": ids["vocab_size"],
            "hf_tokenizer_name": HF_TOKENIZER_NAME,
            "width": width,
            "heads": heads,
            "layers": _size(sizes, "text_layers", layers),
            "embed_cls": True,
            "output_tokens": True,
            "pad_id": ids["pad_id"],
            "eos_id": ids["eos_id"],
        },
        "multimodal_cfg": {
            "context_length": context,
            "vocab_size": ids["vocab_size"],
            "width": decoder_width,
            "heads": _heads(decoder_width, heads, "decoder"),
            "layers": _size(sizes, "decoder_layers", layers),
            "attn_pooler_heads": heads,
        },
        "custom_text": True,
        "pad_id": ids["pad_id"],
    }
    return {"model_cfg": model_cfg, "preprocess_cfg": _preprocess_cfg(image_size)}


def scorer_config(
    tokenizer_dir: Path | None, image_size: int, sizes: Mapping[str, int]
) -> dict[str, Any]:
    """``open_clip_config.json`` content of the tiny CLIP scorer (stand-in for ViT-L/14).

    With a ``tokenizer_dir`` the text tower uses the word vocabulary (shared with the
    captioners) and pools at ``[EOS]`` (``pool_type="eos"``; see the module docstring); with
    ``None`` it is a plain open_clip CLIP with the 49,408-token BPE tokenizer and ``argmax``
    pooling, kept for comparison.
    """
    width = _size(sizes, "text_width", _size(sizes, "width"))
    heads = _heads(width, _size(sizes, "heads"), "text tower")
    layers = _size(sizes, "layers")
    text_cfg: dict[str, Any] = {
        "context_length": _size(sizes, "context_length"),
        "width": width,
        "heads": heads,
        "layers": _size(sizes, "text_layers", layers),
    }
    if tokenizer_dir is not None:
        ids = _tokenizer_ids(Path(tokenizer_dir))
        text_cfg.update(
            {
                "vocab_size": ids["vocab_size"],
                "hf_tokenizer_name": HF_TOKENIZER_NAME,
                "pad_id": ids["pad_id"],
                "eos_id": ids["eos_id"],
                "pool_type": "eos",
            }
        )
    model_cfg = {
        "embed_dim": _size(sizes, "embed_dim", width),
        "vision_cfg": _vision_cfg(image_size, sizes),
        "text_cfg": text_cfg,
    }
    return {"model_cfg": model_cfg, "preprocess_cfg": _preprocess_cfg(image_size)}


def _write_model_dir(
    out_dir: Path, config: Mapping[str, Any], tokenizer_dir: Path | None
) -> Path:
    """A weightless local-dir model: config + tokenizer files (the input of training)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is not None:
        _copy_tokenizer(Path(tokenizer_dir), out_dir)
    _write_json(out_dir / CONFIG_NAME, config)
    return out_dir


def _copy_tokenizer(src: Path, dst: Path) -> None:
    found = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    if "tokenizer.json" not in found:
        raise FileNotFoundError(f"no tokenizer.json in {src}")
    for name in found:
        if (src / name).resolve() != (dst / name).resolve():
            shutil.copyfile(src / name, dst / name)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Training shards
# --------------------------------------------------------------------------------------------


def file_url_path(url: str) -> Path:
    """The local file a toy split's ``url`` names (the toy world's images are ``file://``
    URLs, or plain paths); anything else is refused."""
    parsed = urlparse(url)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"not a local file URL: {url}")
    return Path(unquote(parsed.path))


def write_training_shards(
    split_parquet: Path,
    out_dir: Path,
    samples_per_shard: int = 1000,
    image_size: int | None = None,
) -> list[Path]:
    """Write a clean toy split as webdataset tars for ``open_clip_train``; return shard paths.

    Each sample is ``{uid}.png`` + ``{uid}.txt`` (the caption) + ``{uid}.json`` (``{"uid"}``), in
    parquet row order, ``samples_per_shard`` per ``shard-NNNNN.tar``. Written with
    ``webdataset.ShardWriter`` with a fixed mtime, so the same input gives byte-identical
    shards (a resumed training then reads exactly the data it started on). ``image_size``
    resizes images to the model's input size once here instead of in every epoch's
    preprocessing (same bicubic filter as open_clip's transform); without it the PNG bytes are
    copied as they are. A missing or unreadable image is an error: the clean splits are
    complete, and silently dropping rows would hide a broken world. Old ``shard-*.tar`` files in
    ``out_dir`` are removed first so that a smaller rewrite leaves no stale shard behind.
    """
    import io

    import pyarrow.parquet as pq
    import webdataset as wds
    from PIL import Image

    if samples_per_shard < 1:
        raise ValueError("samples_per_shard must be >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("shard-*.tar"):
        stale.unlink()
    table = pq.read_table(split_parquet, columns=["uid", "url", "text"]).to_pylist()
    if not table:
        raise ValueError(f"{split_parquet}: no rows to train on")

    pattern = str(out_dir / "shard-%05d.tar")
    # An int mtime: a float one makes tarfile add a PAX header to every member (slower reads).
    with wds.ShardWriter(pattern, maxcount=samples_per_shard, verbose=0, mtime=0) as sink:
        for row in table:
            path = file_url_path(row["url"])
            data = path.read_bytes()
            if image_size is not None:
                with Image.open(io.BytesIO(data)) as img:
                    img = img.convert("RGB")
                    if img.size != (image_size, image_size):
                        img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
                    buf = io.BytesIO()
                    img.save(buf, format="PNG", compress_level=1)
                    data = buf.getvalue()
            sink.write(
                {
                    "__key__": row["uid"],
                    "png": data,
                    "txt": row["text"],
                    "json": {"uid": row["uid"]},
                }
            )
    return sorted(out_dir.glob("shard-*.tar"))


def _count_samples(shards: Sequence[Path]) -> int:
    """Samples in webdataset tars = distinct keys (member name up to the first dot)."""
    total = 0
    for shard in shards:
        with tarfile.open(shard) as tar:
            keys = {m.name.split("/")[-1].split(".", 1)[0] for m in tar if m.isfile()}
        total += len(keys)
    return total


# --------------------------------------------------------------------------------------------
# Weights and training
# --------------------------------------------------------------------------------------------


def _load_weights(source: Path) -> dict[str, Any]:
    """State dict from a weights file, an open_clip_train checkpoint or a local-dir model."""
    from open_clip.factory import load_state_dict

    source = Path(source)
    if source.is_dir():
        candidates = [source / WEIGHTS_NAME, *sorted(source.glob("*.safetensors"))]
        candidates += sorted(source.glob("*.pt")) + sorted(source.glob("*.bin"))
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(f"no weights (*.safetensors, *.pt, *.bin) in {source}")
        source = found[0]
    # load_state_dict unwraps {"state_dict": ...} and strips a "module." (DDP) prefix.
    return dict(load_state_dict(str(source), device="cpu"))


def _save_safetensors(state_dict: Mapping[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    # safetensors refuses tensors that share storage or are non-contiguous views.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def _coca_initial_weights(
    model_dir: Path, seed: int, vision_from: Path | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Freshly initialised CoCa weights with the multimodal decoder actually initialised.

    open_clip 3.3.0's ``MultimodalTransformer`` never calls its ``init_parameters`` (and that
    method refers to a ``self.transformer`` it does not have; open_clip issue #554 / PR #551),
    so the decoder's ``text_projection``, created with ``torch.empty``, holds whatever was in
    memory: logits of 1e22 and an infinite caption loss from the first step. Released CoCa
    checkpoints overwrite it, which is why only training from scratch notices. Here the model
    is built as open_clip_train would build it and the decoder gets the initialisation that
    method intended (CLIP's: std width^-0.5 for the projection and attention, scaled by depth
    for the output projections); open_clip_train then loads these as its starting weights.

    ``vision_from`` (a CLIP model dir or weights file): its image tower's weights replace the
    fresh ones wherever names and shapes agree, as BLIP2 and CoCa-style captioners start from
    a pre-trained CLIP image encoder. Returns the weights and the names copied.
    """
    import open_clip
    import torch
    from torch import nn

    with preserved_rng():
        torch.manual_seed(seed)
        model = open_clip.create_model(f"local-dir:{model_dir}", load_weights=False)
        decoder = model.text_decoder
        width, layers = decoder.width, decoder.layers
        proj_std = (width**-0.5) * ((2 * layers) ** -0.5)
        attn_std, fc_std = width**-0.5, (2 * width) ** -0.5
        with torch.no_grad():
            for block in [*decoder.resblocks, *decoder.cross_attn]:
                nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
            nn.init.normal_(decoder.text_projection, std=attn_std)
    state = dict(model.state_dict())
    copied: list[str] = []
    if vision_from is not None:
        for name, value in _load_weights(Path(vision_from)).items():
            if (name.startswith("visual.") and name in state
                    and tuple(state[name].shape) == tuple(value.shape)):
                state[name] = value.to(state[name].dtype)
                copied.append(name)
        if not copied:
            raise ValueError(f"{vision_from}: no image-tower weight matches the captioner's "
                             "(different architecture?)")
    return state, copied


def train_open_clip(
    model_dir: Path,
    shards: Sequence[Path],
    out_dir: Path,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    warmup: int,
    workers: int,
    seed: int,
    pretrained: Path | None = None,
    coca: bool = False,
    vision_from: Path | None = None,
    extra_args: Sequence[str] = (),
    isolated: bool = False,
) -> Path:
    """Train (or resume training) a stand-in with ``open_clip_train``; return the final
    checkpoint (``out_dir/run/checkpoints/epoch_{epochs}.pt``).

    ``model_dir`` supplies the architecture and tokenizer (its weights, if any, are ignored);
    ``pretrained`` the starting weights for fine-tuning: a weights file, an open_clip_train
    checkpoint or a local-dir model. open_clip ignores ``--pretrained`` for ``local-dir:``
    models, so instead the config, tokenizer and those weights are staged as the local-dir model
    ``out_dir/{coca,clip}_model`` that ``--model`` points at (``create_model`` then loads them,
    which out.log records as "Loading full pretrained weights from: ..."). A CoCa trained from
    scratch may take its image tower from a CLIP (``vision_from``). The staged name
    also matters because ``open_clip.create_loss`` picks the CoCa loss only when "coca" occurs
    in ``--model`` (:func:`capmix.train.require_loss_by_name`).

    The run itself is :func:`capmix.train.train_cpu_epochs`: under ``--resume latest
    --save-most-recent`` and the fixed ``--name run``, calling again on the same ``out_dir``
    after a kill (or with more ``epochs``) continues from the last finished epoch;
    ``epoch_latest.pt`` is written atomically, so a kill mid-save cannot leave a truncated
    resume point. A run that already reached ``epochs`` returns at once, before any staging.

    In-process by default (a subprocess would re-import torch, open_clip and transformers,
    ~7 s per run on 2 cores, a third of the smoke budget for three models); ``isolated=True``
    runs ``python -m open_clip_train.main`` instead (output to
    ``open_clip_train.console.log``).
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = [Path(s) for s in shards]
    finished = finished_checkpoint(out_dir, epochs)
    if finished is not None:
        return finished

    staged = out_dir / ("coca_model" if coca else "clip_model")
    model_name = f"local-dir:{staged}"
    require_loss_by_name(model_name, coca=coca)
    staged.mkdir(parents=True, exist_ok=True)
    for old in [*staged.glob("*.safetensors"), *staged.glob("*.bin"), *staged.glob("*.pth")]:
        old.unlink()
    _copy_tokenizer(Path(model_dir), staged)
    shutil.copyfile(Path(model_dir) / CONFIG_NAME, staged / CONFIG_NAME)
    if pretrained is not None:
        _save_safetensors(_load_weights(Path(pretrained)), staged / WEIGHTS_NAME)
    elif coca:
        initial, copied = _coca_initial_weights(staged, seed, vision_from)
        if copied:
            log.info("image tower from %s: %d weights", vision_from, len(copied))
        _save_safetensors(initial, staged / WEIGHTS_NAME)

    return train_cpu_epochs(
        model_name, shards, out_dir, num_samples=_count_samples(shards), epochs=epochs,
        batch_size=batch_size, lr=lr, warmup=warmup, workers=workers, seed=seed, coca=coca,
        extra_args=extra_args, isolated=isolated,
    )


def stage_toy_model(toy_model_dir: Path, work_dir: Path) -> str:
    """A toy stand-in's architecture as a weightless local-dir model; returns ``--model``.

    What a toy training scale trains (:func:`capmix.train.train_clip`): only the config and
    tokenizer are copied, so open_clip initialises the weights from scratch (as DataComp
    trains from scratch). The directory name avoids "coca": open_clip picks its loss by that
    substring in ``--model``; a work dir whose path contains it is refused here.
    """
    staged = Path(work_dir) / "clip_model"
    staged.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_NAME, *TOKENIZER_FILES):
        source = Path(toy_model_dir) / name
        if source.is_file():
            shutil.copyfile(source, staged / name)
    if not (staged / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in the toy model {toy_model_dir}")
    model = f"local-dir:{staged.resolve()}"
    # The work dir's own path may still say "coca" (a strategy or pool named so): refuse
    # before training rather than train a CLIP with the captioning loss.
    require_loss_by_name(model, coca=False)
    return model


def export_model_dir(model_dir: Path, checkpoint: Path, out_dir: Path) -> Path:
    """Make ``out_dir`` a self-contained local-dir model from a training checkpoint.

    Copies the config and tokenizer files of ``model_dir`` and writes the checkpoint's
    ``state_dict`` (without a DDP ``module.`` prefix, without optimizer state) as
    ``open_clip_model.safetensors``, the name open_clip's local-dir loader prefers. The config
    is written last, so a dir with a config is complete.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = _load_weights(Path(checkpoint))
    _save_safetensors(state, out_dir / WEIGHTS_NAME)
    if (Path(model_dir) / "tokenizer.json").is_file():
        _copy_tokenizer(Path(model_dir), out_dir)
    config = json.loads((Path(model_dir) / CONFIG_NAME).read_text(encoding="utf-8"))
    _write_json(out_dir / CONFIG_NAME, config)
    return out_dir


# --------------------------------------------------------------------------------------------
# The toy stand-ins
# --------------------------------------------------------------------------------------------


def training_settings(kind: str, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """A stand-in's training settings: ``DEFAULT_SETTINGS[kind]`` updated with ``settings``
    (config ``toy_models.<kind>``; ``sizes`` merged key by key, so a config can change one
    size). An unknown key is an error rather than ignored: a misspelt setting would otherwise
    train with the default silently."""
    merged = deepcopy(DEFAULT_SETTINGS[kind])
    for key, value in dict(settings or {}).items():
        if key == "sizes":
            merged["sizes"].update(dict(value or {}))
        elif key in merged:
            merged[key] = value
        else:
            raise ValueError(f"toy_models.{kind}: unknown setting {key!r}")
    return merged


def _split_parquet(world_dir: Path, split: str) -> Path:
    path = Path(world_dir) / f"{split}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"toy world split missing: {path}")
    return path


def _split_texts(world_dir: Path, splits: Sequence[str]) -> list[str]:
    import pyarrow.parquet as pq

    texts: list[str] = []
    for split in splits:
        texts.extend(pq.read_table(_split_parquet(world_dir, split), columns=["text"])["text"]
                     .to_pylist())
    return texts


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("open_clip_torch", "torch", "webdataset", "tokenizers", "transformers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "missing"
    return out


def _train_and_export(
    kind: str,
    model_dir: Path,
    parquet: Path,
    out_dir: Path,
    work_dir: Path,
    settings: Mapping[str, Any],
    seed: int,
    *,
    coca: bool,
    pretrained: Path | None,
    extra: Mapping[str, Any],
    vision_from: Path | None = None,
) -> Path:
    """Shards -> open_clip_train -> exported model dir + ``training.json``."""
    start = time.perf_counter()
    config = json.loads((model_dir / CONFIG_NAME).read_text(encoding="utf-8"))
    image_size = int(config["model_cfg"]["vision_cfg"]["image_size"])
    shards = write_training_shards(parquet, work_dir / f"shards_{parquet.stem}",
                                   image_size=image_size)
    shards_s = time.perf_counter() - start
    train_dir = work_dir / "train"
    train_start = time.perf_counter()
    checkpoint = train_open_clip(
        model_dir,
        shards,
        train_dir,
        epochs=int(settings["epochs"]),
        batch_size=int(settings["batch_size"]),
        lr=float(settings["lr"]),
        warmup=int(settings["warmup"]),
        workers=int(settings["workers"]),
        seed=seed,
        pretrained=pretrained,
        coca=coca,
        vision_from=vision_from,
    )
    train_s = time.perf_counter() - train_start
    out_dir = Path(out_dir)
    export_model_dir(model_dir, checkpoint, out_dir)
    summary = parse_train_log(train_log_path(train_dir),
                              samples_per_step=int(settings["batch_size"]))
    num_samples = _count_samples(shards)
    n_params = sum(v.numel() for v in _load_weights(out_dir / WEIGHTS_NAME).values())
    record = {
        "kind": kind,
        "split": parquet.stem,
        "train_samples": num_samples,
        "epochs": int(settings["epochs"]),
        "samples_seen": summary["samples_seen"],
        "final_loss": summary["final_loss"],
        "final_losses": summary["final_losses"],
        "first_step_loss": summary["first_loss"],
        "resumed_from_epochs": summary["resumed_from_epochs"],
        "loaded_pretrained_weights": summary["loaded_pretrained_weights"],
        "wall_time_s": round(time.perf_counter() - start, 2),
        "shard_time_s": round(shards_s, 2),
        "train_time_s": round(train_s, 2),
        # This call's training throughput (includes open_clip_train's start-up).
        "samples_per_s": round(
            sum(summary["samples_per_epoch"].values()) / train_s, 1) if train_s else None,
        "logged_step_samples_per_s": summary["logged_step_samples_per_s"],
        "loss_curve": summary["loss_curve"],
        "parameters": n_params,
        "settings": dict(settings),
        "seed": seed,
        "model_cfg": config["model_cfg"],
        "checkpoint": str(checkpoint),
        "open_clip_train_args": run_params(train_dir),
        "versions": _versions(),
        **extra,
    }
    _write_json(out_dir / "training.json", record)
    log.info("%s: %s", kind, {k: record[k] for k in ("samples_seen", "final_loss",
                                                      "wall_time_s", "samples_per_s")})
    return out_dir


#: The stand-ins trained from scratch: how each one's ``open_clip_config.json`` is built, and
#: whether it is a CoCa (trained with the captioning loss) rather than a CLIP.
_FROM_SCRATCH: dict[str, tuple[Callable[[Path, int, Mapping[str, int]], dict[str, Any]], bool]] = {
    CAPTIONER: (captioner_config, True),
    SCORER: (scorer_config, False),
}


def train_toy_model(
    kind: str,
    world_dir: Path,
    out_dir: Path,
    settings: Mapping[str, Any],
    seed: int,
    work_dir: Path,
    vision_from: Path | None = None,
) -> Path:
    """Train a stand-in from scratch on the ``pretrain`` split; returns ``out_dir``.

    ``kind`` is ``captioner`` (the BLIP2 stand-in, a tiny CoCa) or ``scorer`` (the ViT-L/14
    stand-in, a tiny CLIP); ``captioner_coco`` starts from a trained captioner instead
    (:func:`finetune_toy_captioner`). All stand-ins share one word vocabulary, built from
    ``pretrain`` + ``coco`` texts, so the COCO fine-tune keeps the vocabulary (and the output
    layer) of its base. ``vision_from`` (a CoCa only; the toy scorer's model dir) initialises
    the captioner's image tower, as BLIP2 starts from a pre-trained CLIP image encoder: a tiny
    CoCa trained from scratch on a laptop's budget names colours but guesses shapes, while the
    CLIP's contrastive training has already learned them (bench/toy_models.py).
    """
    if kind not in _FROM_SCRATCH:
        raise ValueError(f"toy model {kind!r} is not trained from scratch (those are "
                         f"{sorted(_FROM_SCRATCH)}; {CAPTIONER_COCO} is a fine-tune)")
    build_config, coca = _FROM_SCRATCH[kind]
    if vision_from is not None and not coca:
        raise ValueError(f"toy model {kind!r}: only a CoCa's image tower starts from another "
                         "model (vision_from)")
    merged = training_settings(kind, settings)
    work_dir = Path(work_dir)
    tokenizer_dir = work_dir / "tokenizer"
    build_tokenizer(_split_texts(world_dir, (TRAIN_SPLIT, COCO_SPLIT)), tokenizer_dir)
    sizes = merged["sizes"]
    config = build_config(tokenizer_dir, _size(sizes, "image_size"), sizes)
    model_dir = _write_model_dir(work_dir / "init_model", config, tokenizer_dir)
    # A CoCa's training.json records where its image tower started (None: from scratch).
    extra = {"vision_from": str(vision_from) if vision_from else None} if coca else {}
    return _train_and_export(
        kind, model_dir, _split_parquet(world_dir, TRAIN_SPLIT), Path(out_dir), work_dir,
        merged, seed, coca=coca, pretrained=None, extra=extra,
        vision_from=Path(vision_from) if vision_from else None,
    )


def finetune_toy_captioner(
    world_dir: Path,
    base_model_dir: Path,
    out_dir: Path,
    settings: Mapping[str, Any],
    seed: int,
    work_dir: Path,
) -> Path:
    """Fine-tune the captioner on the narrow ``coco`` split (the BLIP2-COCO stand-in).

    Starts from ``base_model_dir``'s weights with its architecture and tokenizer; ``sizes`` in
    the settings are ignored (a fine-tune cannot change the architecture).
    """
    merged = training_settings(CAPTIONER_COCO, settings)
    base_model_dir = Path(base_model_dir)
    return _train_and_export(
        CAPTIONER_COCO, base_model_dir, _split_parquet(world_dir, COCO_SPLIT), Path(out_dir),
        Path(work_dir), merged, seed, coca=True, pretrained=base_model_dir,
        extra={"base_model_dir": str(base_model_dir)},
    )
