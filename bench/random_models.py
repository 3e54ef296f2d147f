"""The paper's captioners and scorer at their real sizes with random weights, and a toy pool.

What the GPU benchmarks run on (bench/caption_score.py, bench/gpu_check.py): nothing is
downloaded. Each model is built from its published architecture (the Hugging Face config
values written out below; open_clip's built-in configs by name), randomly initialised, and
wrapped in the pipeline's own captioner/scorer classes, so that the stage code
(``capmix.caption.caption_pool``, ``capmix.score.embed_pool_images``, ...) runs them exactly
as it runs the real checkpoints. Random weights sample random tokens, which makes every
caption as long as the decoding allows: a worst case for captioning throughput.

Tokenizers are word-level over ``w<i>`` words with the real vocabulary size and the real ids
of the special tokens (no tokenizer file is downloaded either); every sampled token then
decodes to one word, so caption lengths can be checked in words.

``device="meta"`` builds a model without memory or time (the CPU smoke checks the real-size
architectures that way: :data:`PUBLISHED_PARAMETERS`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from capmix.captioners import Blip2Captioner, BlipCaptioner, CocaCaptioner
from capmix.config import pipeline_config
from capmix.fetch import FetchSettings, fetch_pool
from capmix.modelrun import low_precision_dtype
from capmix.score import Scorer
from capmix.sources import build_metadata, source_files
from capmix.sourcespec import allows_local_urls
from capmix.toyspec import SPLITS
from capmix.toyworld import generate_world

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3  # PIL.Image.BICUBIC, as the checkpoints' preprocessor configs say

#: Parameters of each released checkpoint (tensors in its weight file, tied ones counted
#: twice, as the Hugging Face model pages count them): a real-size build must match within
#: :data:`PARAMETER_TOLERANCE`. BLIP-large: model.safetensors is 1,879,014,680 bytes of fp32.
#: BLIP2: the hub's "3.87B params". open_clip: its model profile (ViT-L-14 427.62M,
#: coca_ViT-L-14 638.45M).
PUBLISHED_PARAMETERS = {
    "blip2_opt_2.7b": 3.87e9,
    "blip_large": 469.75e6,
    "coca_vit_l_14": 638.45e6,
    "vit_l_14_quickgelu": 427.62e6,
}
PARAMETER_TOLERANCE = 0.01


def parameter_count(model: torch.nn.Module) -> int:
    """Elements of every parameter in the state dict (tied ones twice, as weight files)."""
    return sum(value.numel() for name, value in model.state_dict(keep_vars=True).items()
               if isinstance(value, torch.nn.Parameter))


def model_dtype(precision: str, device: str, who: str) -> torch.dtype:
    """The dtype a Hugging Face captioner's weights get: ``capmix.modelrun``'s rule (fp16/bf16
    on CUDA only), the same one the pipeline's loaders apply."""
    return low_precision_dtype(precision, device, who) or torch.float32


def cast_like_from_pretrained(model: Any, dtype: torch.dtype) -> list[str]:
    """Cast a freshly built HF model as ``from_pretrained(..., dtype=dtype)`` casts a checkpoint.

    ``model.to(dtype)`` alone casts everything; ``from_pretrained`` keeps the modules the
    class lists in ``_keep_in_fp32_modules`` (for fp16) and ``_keep_in_fp32_modules_strict``
    (fp16 and bf16) in fp32 -- BLIP2's Q-Former and query tokens -- and the pipeline loads the
    real models that way (``capmix.captioners``). Returns the kept module names.
    """
    model.to(dtype)
    keep: list[str] = []
    if dtype in (torch.float16, torch.bfloat16):
        keep += list(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    if dtype == torch.float16:
        keep += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    if keep:
        # The same match transformers uses: a module name as a whole dotted component.
        pattern = re.compile("|".join(rf"((^|\.){re.escape(k)}($|\.))" for k in keep))
        for name, param in model.named_parameters():
            if pattern.search(name):
                param.data = param.data.float()
    return keep


def word_vocabulary(size: int, specials: dict[int, str]) -> list[str]:
    """``size`` tokens: ``specials`` at their real ids, ``w<i>`` words everywhere else."""
    return [specials.get(i, f"w{i}") for i in range(size)]


# ------------------------------------------------------------------ BLIP2-OPT-2.7B


def opt_tokenizer() -> Any:
    """A word-level tokenizer of OPT's vocabulary size: ``<s>`` 0 (bos), ``<pad>`` 1, ``</s>`` 2
    (eos), ``<unk>`` 3 as OPT's, and ``<image>`` 4 (the Q-Former outputs' placeholder)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_size = 50272  # OPT's
    specials = {0: "<s>", 1: "<pad>", 2: "</s>", 3: "<unk>", 4: "<image>"}
    vocab = {token: i for i, token in enumerate(word_vocabulary(vocab_size, specials))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def real_size_blip2(device: str, precision: str) -> Blip2Captioner:
    """BLIP2 (ViT-g/14 + Q-Former + OPT-2.7B sizes: Blip2Config's defaults are blip2-opt-2.7b's
    vision and Q-Former) with random weights, built offline."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
    )

    tokenizer = opt_tokenizer()
    processor = Blip2Processor(
        BlipImageProcessor(size={"height": 224, "width": 224}, image_mean=list(OPENAI_MEAN),
                           image_std=list(OPENAI_STD), resample=BICUBIC),
        tokenizer, num_query_tokens=32)
    config = Blip2Config(
        text_config={"model_type": "opt", "vocab_size": len(tokenizer), "hidden_size": 2560,
                     "word_embed_proj_dim": 2560, "num_hidden_layers": 32, "ffn_dim": 10240,
                     "num_attention_heads": 32, "max_position_embeddings": 2048,
                     "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
        num_query_tokens=32, image_token_index=4)
    dtype = model_dtype(precision, device, "blip2_opt_2.7b")
    # Initialised on the device itself: on the CPU 3.9B fp32 weights are 15 GB and a minute.
    with torch.device(device):
        model = Blip2ForConditionalGeneration(config).eval()
    cast_like_from_pretrained(model, dtype)
    return Blip2Captioner("blip2_opt_2.7b-random", model, processor, device, dtype)


# ------------------------------------------------------------------------ BLIP-large

#: Salesforce/blip-image-captioning-large's config.json (ViT-L/16 at 384 px, BERT-base
#: decoder); token ids are bert-base-uncased's plus BLIP's added [DEC] (bos) and [ENC].
BLIP_LARGE_CONFIG: dict[str, Any] = {
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "image_size": 384, "patch_size": 16,
                      "layer_norm_eps": 1e-5},
    "text_config": {"vocab_size": 30524, "hidden_size": 768, "intermediate_size": 3072,
                    "num_hidden_layers": 12, "num_attention_heads": 12,
                    "max_position_embeddings": 512, "layer_norm_eps": 1e-12,
                    "bos_token_id": 30522, "eos_token_id": 2, "sep_token_id": 102,
                    "pad_token_id": 0},
    "projection_dim": 512,
    "image_text_hidden_size": 256,
}
BERT_SPECIALS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]",
                 30522: "[DEC]", 30523: "[ENC]"}


def real_size_blip(directory: Path, device: str, precision: str) -> BlipCaptioner:
    """BLIP-large (``BlipForConditionalGeneration``) with random weights, built offline.

    ``directory`` receives the tokenizer's ``vocab.txt`` (BertTokenizerFast reads a file).
    """
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    size = BLIP_LARGE_CONFIG["text_config"]["vocab_size"]
    vocab_file.write_text("\n".join(word_vocabulary(size, BERT_SPECIALS)) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), bos_token="[DEC]",
                                  additional_special_tokens=["[ENC]"])
    size_px = BLIP_LARGE_CONFIG["vision_config"]["image_size"]
    processor = BlipProcessor(
        BlipImageProcessor(size={"height": size_px, "width": size_px},
                           image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD),
                           resample=BICUBIC),
        tokenizer)
    config = BlipConfig(**json.loads(json.dumps(BLIP_LARGE_CONFIG)))
    dtype = model_dtype(precision, device, "blip_large")
    with torch.device(device):
        model = BlipForConditionalGeneration(config).eval()
    cast_like_from_pretrained(model, dtype)
    return BlipCaptioner("blip_large-random", model, processor, device, dtype)


# ------------------------------------------------------------------------- open_clip


def open_clip_parts(model_name: str, device: str) -> tuple[Any, Any, Any]:
    """open_clip's model (random init: ``pretrained=None``), val transform and tokenizer.

    On a real device open_clip's own path: initialise on the CPU (seconds for an L/14), then
    move. On ``meta`` the modules are created there directly, so that checking a real-size
    architecture initialises no weights at all.
    """
    import open_clip

    place = torch.device("meta") if device == "meta" else contextlib.nullcontext()
    with place:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=None, device=device)
    return model.eval(), preprocess, open_clip.get_tokenizer(model_name)


def random_coca(model_name: str, device: str, precision: str) -> CocaCaptioner:
    """An open_clip CoCa with random weights (``coca_ViT-L-14``, or a ``local-dir:``)."""
    from tests.tiny_models import init_coca_text_projection

    model, preprocess, tokenizer = open_clip_parts(model_name, device)
    init_coca_text_projection(model)
    dtype = low_precision_dtype(precision, device, model_name)
    return CocaCaptioner(f"{model_name}-random", model, preprocess, tokenizer, device, dtype)


def random_scorer(model_name: str, device: str, precision: str) -> Scorer:
    """An open_clip CLIP scorer with random weights (``ViT-L-14-quickgelu``, or a local-dir)."""
    model, preprocess, tokenizer = open_clip_parts(model_name, device)
    dtype = low_precision_dtype(precision, device, model_name)
    return Scorer(f"{model_name}-random", model, preprocess, tokenizer, device, dtype)


# ------------------------------------------------------------------------ the toy pool


def make_pool(root: Path, images: int, image_size: int, samples_per_shard: int = 1000,
              processes: int | None = None) -> Path:
    """A toy world's pool of ``images`` drawn and fetched with img2dataset into webdataset
    shards under ``root`` (``shards/``, ``index.parquet``, ``report.json``), as the pipeline's
    fetch stage does for a toy pool (file:// URLs, allowed for toy sources)."""
    config = pipeline_config()
    spec = json.loads(json.dumps(config["toy_worlds"]["default"]))
    spec["splits"] = {split: 0 for split in SPLITS} | {"pool": images}
    spec.update(image_size=image_size, dead_url_fraction=0.0, corrupt_file_fraction=0.0)
    generate_world(root / "world", spec, seed=0)
    source = {"type": "toy", "world": "bench", "split": "pool", "keep_columns": "all"}
    build_metadata("bench", source, source_files(source, [root / "world" / "pool.parquet"]),
                   root / "metadata")
    settings = FetchSettings.from_config(
        {"image_size": image_size, "samples_per_shard": samples_per_shard, "retries": 0,
         "threads_per_process": 8}, source["type"], allows_local_urls(source))
    fetch_pool("bench", root / "metadata", root / "shards", root / "index.parquet",
               root / "report.json", settings,
               processes=processes or min(8, os.cpu_count() or 1))
    return root


def shard_files(root: Path) -> list[Path]:
    """The pool's webdataset shards, in order."""
    return sorted((root / "shards").rglob("*.tar"))
