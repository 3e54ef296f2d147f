"""Tiny, randomly initialised models of the *real* captioner and scorer classes.

Why: the pipeline's model code (``capmix.captioners``, ``capmix.score``) must be
exercised against the same classes, file layouts and loaders it meets on a
cluster (``from_pretrained(dir)``, open_clip ``local-dir:``), but tests may not
download weights. Each helper builds a model of a few hundred kB with a small
word-level tokenizer, saves it to a directory in the real on-disk format and
returns what a captioner/scorer spec's ``model`` field needs.

Building each takes about a second on a laptop CPU (the CLIP-BPE CoCa, with its
49,408-token vocabulary, a few).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Tests never reach the hub: everything here is loaded from local directories.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from capmix.toymodels import CONFIG_NAME  # noqa: E402

# A closed caption vocabulary, the same spirit as the toy world's descriptions.
WORDS = (
    "a an the of on in with and photo picture image drawing red green blue yellow black white "
    "small large big tiny dog cat bird car tree house boat person man woman sitting standing "
    "running near next to field road water sky grass table two three"
).split()

# OPT-like specials (BLIP2's language model) and CoCa/CLIP specials share one layout.
WORD_LEVEL_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<image>")
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _seed(seed: int) -> None:
    """Random init, but the same tiny model every time a test builds one."""
    torch.manual_seed(seed)


def word_level_tokenizer(add_eos: bool):  # type: ignore[no-untyped-def]
    """A ``PreTrainedTokenizerFast`` over :data:`WORDS` (ids 0-4 are the specials).

    ``add_eos`` picks the template: CoCa/CLIP train on ``<s> text </s>`` (the
    text tower pools at, and the decoder stops on, ``</s>``); an OPT-style
    decoder prompt is ``<s> text`` so that generation continues the prompt.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate((*WORD_LEVEL_SPECIALS, *WORDS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    template = "<s> $A </s>" if add_eos else "<s> $A"
    backend.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", additional_special_tokens=["<image>"])


# ---------------------------------------------------------------- Hugging Face BLIP


def make_tiny_blip(directory: Path | str) -> Path:
    """A tiny ``BlipForConditionalGeneration`` + ``BlipProcessor`` saved in ``directory``.

    Vision: 32 px, patch 8, hidden 32, 1 layer, 2 heads. Text decoder: BERT
    word-piece vocab of the :data:`BERT_SPECIALS` + :data:`WORDS`, hidden 32,
    1 layer. Token ids follow the real BLIP checkpoint's roles: generation starts
    from ``[DEC]`` (bos), stops at ``[SEP]`` (sep/eos) and pads with ``[PAD]``.
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
    vocab = [*BERT_SPECIALS, *WORDS]
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), bos_token="[DEC]",
                                  additional_special_tokens=["[ENC]"])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("[PAD]", "[SEP]", "[DEC]")}

    config = BlipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
                       "projection_dim": 32},
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "encoder_hidden_size": 32,
                     "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "max_position_embeddings": 64, "projection_dim": 32,
                     "bos_token_id": ids["[DEC]"], "eos_token_id": ids["[SEP]"],
                     "sep_token_id": ids["[SEP]"], "pad_token_id": ids["[PAD]"]},
        projection_dim=32, image_text_hidden_size=32,
    )
    _seed(1)
    BlipForConditionalGeneration(config).eval().save_pretrained(directory)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32},
                                         image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))
    BlipProcessor(image_processor, tokenizer).save_pretrained(directory)
    return directory


# --------------------------------------------------------------- Hugging Face BLIP2


BLIP2_QUERY_TOKENS = 4


def make_tiny_blip2(directory: Path | str) -> Path:
    """A tiny ``Blip2ForConditionalGeneration`` (OPT decoder) + ``Blip2Processor``.

    Vision 32 px/patch 8/hidden 32/1 layer; Q-Former hidden 32, 1 layer,
    :data:`BLIP2_QUERY_TOKENS` queries; OPT hidden 32, 1 layer, word-level vocab
    (``<s>``=0 bos, ``<pad>``=1, ``</s>``=2 eos, ``<unk>``=3, ``<image>``=4).
    ``image_token_index`` and the OPT bos/eos/pad ids must be set, or 4.56's
    ``generate`` cannot place the query outputs / stop sampling.
    """
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
    )

    directory = Path(directory)
    tokenizer = word_level_tokenizer(add_eos=False)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32},
                                         image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=BLIP2_QUERY_TOKENS)
    tokenizer = processor.tokenizer  # the processor registers <image> (already in the vocab)
    config = Blip2Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        qformer_config={"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "intermediate_size": 64,
                        "encoder_hidden_size": 32, "cross_attention_frequency": 1,
                        "max_position_embeddings": 64},
        text_config={"model_type": "opt", "vocab_size": len(tokenizer), "hidden_size": 32,
                     "word_embed_proj_dim": 32, "num_hidden_layers": 1, "ffn_dim": 64,
                     "num_attention_heads": 2, "max_position_embeddings": 128,
                     "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        num_query_tokens=BLIP2_QUERY_TOKENS,
        image_text_hidden_size=32,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    _seed(2)
    Blip2ForConditionalGeneration(config).eval().save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


# ----------------------------------------------------------------------- open_clip


def init_coca_text_projection(model) -> None:  # type: ignore[no-untyped-def]
    """Give a freshly built open_clip CoCa's decoder ``text_projection`` its intended init.

    open_clip 3.3.0 never initialises it (it is ``torch.empty`` garbage, |w| up to ~1e33, and
    ``MultimodalTransformer.init_parameters()`` is uncallable: it reads a missing
    ``.transformer``). Pretrained checkpoints overwrite it; a random model that must sample
    (these tiny ones, and the real-size random CoCa of bench/random_models.py) needs it.
    """
    decoder = model.text_decoder
    with torch.no_grad():
        torch.nn.init.normal_(decoder.text_projection, std=decoder.width ** -0.5)


def _open_clip_dir(directory: Path, model_cfg: dict, seed: int) -> Path:
    """Write ``open_clip_config.json``, the HF tokenizer files and random weights.

    open_clip's ``local-dir:`` loader reads the config, takes the first preferred
    checkpoint name (``open_clip_model.safetensors``), and, if
    ``text_cfg.hf_tokenizer_name`` is set, loads an ``HFTokenizer`` from the same
    directory (the name itself is then ignored); without it, CLIP's BPE tokenizer.
    """
    import open_clip
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    word_level_tokenizer(add_eos=True).save_pretrained(directory)
    _seed(seed)
    model = open_clip.create_model(f"local-dir:{directory}", pretrained=None)
    if hasattr(model, "text_decoder"):
        init_coca_text_projection(model)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "open_clip_model.safetensors"))
    return directory


def _text_cfg(vocab_size: int, pad_id: int, eos_id: int, **extra) -> dict:
    return {"context_length": 48, "vocab_size": vocab_size, "width": 64, "heads": 4, "layers": 2,
            "hf_tokenizer_name": "local", "pad_id": pad_id, "eos_id": eos_id, **extra}


def make_tiny_coca(directory: Path | str) -> Path:
    """A tiny open_clip CoCa in a ``local-dir:`` directory (pass ``f"local-dir:{dir}"``).

    Vision 32 px/patch 8/width 64/2 layers with attentional pooling; text tower
    and multimodal decoder width 64, 4 heads, 2 layers, context 48 (room for the
    paper's ``max_length=40``), vocab = the word-level tokenizer's 52 tokens
    (``<s>`` sot=0, ``<pad>``=1, ``</s>`` eos=2).
    """
    tokenizer = word_level_tokenizer(add_eos=True)
    vocab, pad, eos = len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id
    model_cfg = {
        "embed_dim": 64,  # CoCa: the attentional pooler's tokens feed the 64-wide decoder
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2,
                       "head_width": 16, "attentional_pool": True, "attn_pooler_heads": 4,
                       "output_tokens": True},
        "text_cfg": _text_cfg(vocab, pad, eos, embed_cls=True, output_tokens=True),
        "multimodal_cfg": {"context_length": 48, "vocab_size": vocab, "width": 64, "heads": 4,
                           "layers": 2, "attn_pooler_heads": 4},
        "custom_text": True,
        "pad_id": pad,  # CoCa's own pad id (generation fills finished rows with it)
    }
    return _open_clip_dir(Path(directory), model_cfg, seed=3)


def make_tiny_coca_clip_bpe(directory: Path | str) -> Path:
    """A tiny open_clip CoCa over CLIP's BPE vocabulary, as the pretrained ``coca_ViT-L-14``.

    Same sizes as :func:`make_tiny_coca` but ``vocab_size`` 49,408 and no
    ``hf_tokenizer_name``, so ``open_clip.get_tokenizer`` returns CLIP's
    ``SimpleTokenizer`` and the ids are the real ones: start 49406, end 49407 and
    pad **0**, which CLIP's BPE decodes as "!". About 40 MB on disk.
    """
    vocab = 49408
    model_cfg = {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2,
                       "head_width": 16, "attentional_pool": True, "attn_pooler_heads": 4,
                       "output_tokens": True},
        "text_cfg": {"context_length": 48, "vocab_size": vocab, "width": 64, "heads": 4,
                     "layers": 2, "pad_id": 0, "eos_id": 49407, "embed_cls": True,
                     "output_tokens": True},
        "multimodal_cfg": {"context_length": 48, "vocab_size": vocab, "width": 64, "heads": 4,
                           "layers": 2, "attn_pooler_heads": 4},
        "custom_text": True,
        "pad_id": 0,
    }
    return _open_clip_dir(Path(directory), model_cfg, seed=5)


def make_tiny_clip(directory: Path | str, quick_gelu: bool = False) -> Path:
    """A tiny open_clip CLIP in a ``local-dir:`` directory (pass ``f"local-dir:{dir}"``).

    ViT 32 px/patch 8/width 64/2 layers; text width 64, 4 heads, 2 layers,
    context 48, the same word-level tokenizer as the CoCa; the text feature is
    pooled at ``</s>`` (``pool_type="eos"``) because CLIP's default ``argmax``
    pooling assumes the end token has the largest id, true only for CLIP's BPE.
    ``quick_gelu``: QuickGELU activations, as OpenAI's CLIPs (``ViT-L-14-quickgelu``).
    """
    tokenizer = word_level_tokenizer(add_eos=True)
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2,
                       "head_width": 16},
        "text_cfg": _text_cfg(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id,
                              pool_type="eos"),
        "custom_text": True,
        **({"quick_gelu": True} if quick_gelu else {}),
    }
    return _open_clip_dir(Path(directory), model_cfg, seed=4)


# Sentences per language for the tiny fastText language-id model (lid.176.bin's labels).
LID_SENTENCES = {
    "en": ["a dog runs on the beach", "the cat is sitting on a chair", "a photo of a red car",
           "two people walking in the park", "a house with a garden and a tree",
           "the best way to learn how to swim", "a small boat on the lake at sunset"],
    "de": ["ein Hund läuft am Strand", "die Katze sitzt auf einem Stuhl",
           "ein Foto von einem roten Auto", "zwei Menschen gehen im Park spazieren",
           "ein Haus mit einem Garten und einem Baum", "Gespeicherte Orte von Anna",
           "ein kleines Boot auf dem See bei Sonnenuntergang"],
    "es": ["un perro corre en la playa", "el gato está sentado en una silla",
           "una foto de un coche rojo", "dos personas caminando en el parque",
           "una casa con un jardín y un árbol", "formas de aprender a nadar",
           "un pequeño barco en el lago al atardecer"],
}


def make_tiny_fasttext_lid(directory: Path | str) -> Path:
    """A fastText language-id model: the class and file format of DataComp's lid.176.bin
    (``fasttext.load_model``, ``predict`` -> ``__label__xx``), trained here in well under a
    second on :data:`LID_SENTENCES` with character n-grams, as lid.176 is. Needs the
    ``fasttext`` package (fasttext-wheel)."""
    import fasttext

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    train = directory / "lid.train.txt"
    train.write_text("".join(f"__label__{lang} {text}\n" for lang, texts in LID_SENTENCES.items()
                             for text in texts * 5), encoding="utf-8")
    model = fasttext.train_supervised(input=str(train), epoch=50, lr=0.5, dim=16, minCount=1,
                                      minn=2, maxn=4, wordNgrams=1, thread=1, seed=0, verbose=0)
    path = directory / "lid.tiny.bin"
    model.save_model(str(path))
    return path


def tiny_clip_builtin_config(directory: Path | str) -> dict:
    """The model config of :func:`make_tiny_clip`'s model in ``directory``, as a *built-in*
    open_clip config (what ``open_clip.get_model_config(name)`` returns): registered under a
    name, it is loaded like ``ViT-L-14`` with a pretrained tag. Its tokenizer is the word-level
    one saved in ``directory`` (``hf_tokenizer_name`` names the folder, which
    ``get_tokenizer`` loads with ``from_pretrained``, no hub)."""
    directory = Path(directory)
    model_cfg = json.loads((directory / CONFIG_NAME).read_text())["model_cfg"]
    model_cfg["text_cfg"]["hf_tokenizer_name"] = str(directory)
    return model_cfg
