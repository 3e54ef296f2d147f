"""Captioning model backends: the paper's BLIP, BLIP2 and OpenCLIP-CoCa, behind one interface.

The caption stage (``capmix.caption``) only needs two operations from a model:
turn a PIL image into a pixel tensor (run in DataLoader worker processes, so it
must be picklable and must not drag the model along), and sample captions for
a batch of pixel tensors with the paper's decoding (top-K sampling, no prompt,
``top_k=50``, ``temperature`` in {0.5, 0.75, 1.0, 1.5}, ``min_length=5``,
``max_length=40``). Each backend wraps the library's own model, processor and
``generate``; nothing here re-implements sampling.

Lengths. ``Decoding.min_length``/``max_length`` count the caption's text tokens
*including the start token* (BLIP's ``[DEC]``, OPT's ``</s>``/bos, CoCa's
start-of-text) and the end token, which is how HF BLIP's ``generate`` and
open_clip's CoCa ``seq_len`` count them. transformers 4.56's BLIP2 ``generate``
also counts the ``num_query_tokens`` image placeholders it prepends (32 for
``blip2-opt-2.7b``), so ``max_length=40`` would leave 7 tokens of text and
``min_length=5`` would never bite; the BLIP2 backend therefore adds
``num_query_tokens`` to both, so the three backends mean the same lengths
(within one token of what the paper's transformers version did).

Prompts (``Decoding.prompt``, BLIP and BLIP2 only; the paper's runs used none, see
README "Captioning and scoring"). The caption continues the prompt, and is returned
*without* it, as LAVIS's ``generate`` returns it (BLIP: ``caption[len(prompt):]``;
BLIP2-OPT: only the new tokens). The prompt's tokens are not counted in the lengths
either (they are added like BLIP2's placeholders), so ``max_length=40`` is the same
caption budget with or without one; this is LAVIS's BLIP2 reading, whose OPT generates
from ``inputs_embeds`` and counts new tokens only (LAVIS's BLIP counts the prompt in).

Seeding. Every ``generate`` forks the torch RNG and seeds it with ``seed`` right
before sampling: the same (pixels, decoding, seed) gives the same captions on
the same device and library versions, and the caller's RNG state is untouched.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from capmix.modelrun import load_open_clip
from capmix.released import BACKEND as RELEASED_BACKEND
from capmix.shipped import BACKEND as SHIPPED_BACKEND
from capmix.weights import CACHE_KEY, cached_hf_snapshot, weights_source

log = logging.getLogger(__name__)

BACKENDS = ("hf_blip", "hf_blip2", "open_clip_coca")
PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
}

# CLIP's SimpleTokenizer (open_clip's default, used by the pretrained coca_ViT-L-14).
CLIP_SOT, CLIP_EOT, CLIP_PAD = 49406, 49407, 0


class CaptionerLoadError(ValueError):
    """A captioner model that does not load; names the captioner, the path and the cause."""


@dataclass(frozen=True)
class Decoding:
    """The paper's decoding: top-K sampling.

    Lengths count text tokens including the start and end tokens (see the module
    docstring for how each backend is made to agree on that).
    """

    top_k: int = 50
    temperature: float = 1.0
    min_length: int = 5
    max_length: int = 40
    num_captions: int = 1  # captions per image (num_return_sequences)
    prompt: str | None = None  # optional text prompt (BLIP/BLIP2); None = no prompt (paper)

    def __post_init__(self) -> None:
        # Config data reaches here unchecked by the models: fail before hours of sampling.
        problems = []
        if self.top_k < 1:
            problems.append(f"top_k={self.top_k} (must be >= 1)")
        if not self.temperature > 0:
            problems.append(f"temperature={self.temperature} (must be > 0)")
        if not 0 <= self.min_length < self.max_length:
            problems.append(f"min_length={self.min_length}, max_length={self.max_length} "
                            "(need 0 <= min_length < max_length)")
        if self.num_captions < 1:
            problems.append(f"num_captions={self.num_captions} (must be >= 1)")
        if problems:
            raise ValueError("invalid decoding: " + "; ".join(problems))


class Captioner(Protocol):
    """What the caption stage needs from a captioning model."""

    name: str

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Image -> pixel tensor (C, H, W); picklable, run in DataLoader workers."""
        ...

    def generate(self, pixels: torch.Tensor, decoding: Decoding, seed: int) -> list[list[str]]:
        """Pixels (B, C, H, W) -> for each image, ``decoding.num_captions`` captions."""
        ...


# ------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def seeded(seed: int, device: str) -> Iterator[None]:
    """Seed torch's global RNG for one ``generate`` and restore the caller's state after.

    Both HF ``generate`` and open_clip's CoCa sample with ``torch.multinomial`` on
    the global generator (neither takes a ``torch.Generator``), so the global RNG
    is what has to be seeded; forking it keeps the seeding local.
    """
    where = torch.device(device)
    devices = []
    if where.type == "cuda":
        devices = [where.index if where.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def regroup(texts: Sequence[str], per_image: int) -> list[list[str]]:
    """Flat ``B * n`` captions (image-major, as ``num_return_sequences`` orders them) -> B lists."""
    if len(texts) % per_image:
        raise ValueError(f"{len(texts)} captions do not split into groups of {per_image}")
    return [list(texts[i:i + per_image]) for i in range(0, len(texts), per_image)]


def drop_prefix(ids: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """Drop the prompt ids ``generate`` echoes in front of the new tokens.

    HF decoder-only ``generate`` returns prompt + new tokens; whether the prompt is
    there depends on the model class and transformers version, so check instead of
    assuming: only a prefix every row actually starts with is removed.
    """
    n = prefix.shape[-1]
    if n and ids.shape[1] >= n and bool((ids[:, :n] == prefix.to(ids.device)).all()):
        return ids[:, n:]
    return ids


def _autocast_dtype(name: str, precision: str, device: str) -> torch.dtype | None:
    """The low-precision dtype to run in, or None for fp32 (always on CPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"captioner '{name}': unknown precision '{precision}' "
                         f"(allowed: {', '.join(PRECISIONS)})")
    dtype = PRECISIONS[precision]
    if dtype is torch.float32:
        return None
    if torch.device(device).type != "cuda":
        log.info("captioner %s: precision %s requested on %s; running fp32", name, precision,
                 device)
        return None
    return dtype


@dataclass(frozen=True)
class HFImageTransform:
    """PIL image -> (C, H, W) with a Hugging Face image processor.

    A separate small object (not a bound method of the captioner) so that
    pickling it for a DataLoader worker ships the image processor, not the model.
    """

    image_processor: Any

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


# ------------------------------------------------------------- Hugging Face BLIP(2)


class HFCaptioner:
    """BLIP / BLIP2 through ``<Model>.generate(pixel_values=..., do_sample=True, ...)``.

    Subclasses only say how a prompt becomes ``input_ids`` and which ids the model
    puts in front of the caption (dropped before decoding).
    """

    def __init__(self, name: str, model: Any, processor: Any, device: str,
                 dtype: torch.dtype) -> None:
        self.name = name
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.preprocess: Callable[[Image.Image], torch.Tensor] = HFImageTransform(
            processor.image_processor)

    def prompt_ids(self, prompt: str | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(input_ids for one image or None, the ids ``generate`` echoes before the caption)."""
        raise NotImplementedError

    def length_offset(self, prompt: str | None) -> int:
        """Tokens ``generate`` counts in min/max_length that are not the caption: all it
        echoes before the caption but the start token (BLIP2's image placeholders, a
        prompt's tokens; see the module doc)."""
        return int(self.prompt_ids(prompt)[1].shape[1]) - 1

    def generate_kwargs(self, decoding: Decoding) -> dict[str, Any]:
        """The sampling arguments handed to the model's ``generate`` (the paper's decoding)."""
        offset = self.length_offset(decoding.prompt)
        return {
            "do_sample": True,
            "top_k": decoding.top_k,
            "temperature": decoding.temperature,
            "min_length": decoding.min_length + offset,
            "max_length": decoding.max_length + offset,
            "num_return_sequences": decoding.num_captions,
        }

    @torch.inference_mode()
    def generate(self, pixels: torch.Tensor, decoding: Decoding, seed: int) -> list[list[str]]:
        pixels = pixels.to(self.device, self.dtype)
        input_ids, prefix = self.prompt_ids(decoding.prompt)
        kwargs = self.generate_kwargs(decoding)
        if input_ids is not None:
            kwargs["input_ids"] = input_ids.to(self.device).repeat(pixels.shape[0], 1)
        with seeded(seed, self.device):
            ids = self.model.generate(pixel_values=pixels, **kwargs)
        texts = self.processor.batch_decode(drop_prefix(ids, prefix), skip_special_tokens=True)
        return regroup([text.strip() for text in texts], decoding.num_captions)


class BlipCaptioner(HFCaptioner):
    """``BlipForConditionalGeneration``: the text decoder starts from ``[DEC]`` (bos)."""

    def prompt_ids(self, prompt: str | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        bos = self.model.config.text_config.bos_token_id
        if prompt is None:
            return None, torch.tensor([[bos]])
        # BLIP's generate swaps [CLS] for [DEC] and drops the trailing [SEP] itself.
        ids = self.processor.tokenizer(prompt, return_tensors="pt").input_ids
        return ids, torch.cat([torch.tensor([[bos]]), ids[:, 1:-1]], dim=1)


class Blip2Captioner(HFCaptioner):
    """``Blip2ForConditionalGeneration`` (OPT or T5 language model).

    In transformers 4.56 the model itself prepends ``num_query_tokens`` image
    placeholders + bos when no ``input_ids`` are given (the paper's no-prompt
    case). With a prompt the placeholders are written here rather than left to
    the processor: a processor saved without ``num_query_tokens`` would omit them
    and the image would be silently ignored.
    """

    def _image_prefix(self) -> list[int]:
        config = self.model.config
        return [config.image_token_index] * config.num_query_tokens

    def length_offset(self, prompt: str | None) -> int:
        if self.model.config.use_decoder_only_language_model:
            return super().length_offset(prompt)
        return 0  # T5: encoder-decoder, generated ids hold only the decoder's text

    def prompt_ids(self, prompt: str | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        if prompt is None:
            bos = self.model.config.text_config.bos_token_id
            return None, torch.tensor([[*self._image_prefix(), bos]])
        text = self.processor.tokenizer(prompt, return_tensors="pt").input_ids
        ids = torch.cat([torch.tensor([self._image_prefix()]), text], dim=1)
        return ids, ids


def _load_hf(name: str, spec: Mapping[str, Any], device: str, dtype: torch.dtype | None,
             model_class: str, processor_class: str, captioner: type[HFCaptioner]) -> HFCaptioner:
    path = spec["model"]
    offline: dict[str, Any] = {}
    cache_dir = spec.get(CACHE_KEY)
    if cache_dir is not None and weights_source(spec) is not None:
        # A GPU job: the Hub repo from the weights cache only (rule model_weights filled it),
        # as its cached snapshot folder: given a repo id, transformers 4.56's from_pretrained
        # asks the Hub for custom_generate/generate.py even with local_files_only=True.
        path = cached_hf_snapshot(path, cache_dir)
        offline = {"cache_dir": str(cache_dir), "local_files_only": True}
    import transformers

    dtype = dtype or torch.float32
    processor = getattr(transformers, processor_class).from_pretrained(path, **offline)
    model = getattr(transformers, model_class).from_pretrained(path, dtype=dtype, **offline)
    return captioner(name, model.to(device).eval(), processor, device, dtype)


# -------------------------------------------------------------------- open_clip CoCa


class CocaCaptioner:
    """open_clip CoCa through ``model.generate(..., generation_type="top_k")``.

    open_clip 3.3.0's CoCa needs ``transformers.BeamSearchScorer``, present in the
    pinned transformers 4.56.2 and removed in 4.57: it is imported with the logits
    processors in one ``try`` when open_clip loads, so without it *every* generation
    type (top-K too) fails an assert. That is why transformers is pinned below 4.57,
    and why loading checks it up front.
    """

    def __init__(self, name: str, model: Any, preprocess: Callable[[Image.Image], torch.Tensor],
                 tokenizer: Any, device: str, autocast_dtype: torch.dtype | None) -> None:
        import open_clip

        self.name = name
        self.model = model
        self.preprocess = preprocess  # open_clip's val transform: a picklable torchvision Compose
        self.tokenizer = tokenizer
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.hf_tokenizer: Any = None
        if isinstance(tokenizer, open_clip.tokenizer.HFTokenizer):
            # A word-level HF tokenizer (the toy world's models) saved in the local-dir.
            hf = self.hf_tokenizer = tokenizer.tokenizer
            sot = hf.bos_token_id if hf.bos_token_id is not None else hf.cls_token_id
            eos = hf.eos_token_id if hf.eos_token_id is not None else hf.sep_token_id
            if sot is None or eos is None or hf.pad_token_id is None:
                raise ValueError(f"captioner '{name}': the HF tokenizer needs bos/cls, eos/sep "
                                 f"and pad tokens (got sot={sot}, eos={eos}, "
                                 f"pad={hf.pad_token_id})")
            self.sot_id, self.eos_id, self.pad_id = int(sot), int(eos), int(hf.pad_token_id)
        else:
            self.sot_id, self.eos_id, self.pad_id = CLIP_SOT, CLIP_EOT, CLIP_PAD

    def generate_kwargs(self, decoding: Decoding) -> dict[str, Any]:
        """The sampling arguments handed to ``CoCa.generate`` (the paper's decoding)."""
        return {
            "generation_type": "top_k",
            "top_k": decoding.top_k,
            "temperature": decoding.temperature,
            "seq_len": decoding.max_length,
            "min_seq_len": decoding.min_length,
            "sot_token_id": self.sot_id,
            "eos_token_id": self.eos_id,
            "pad_token_id": self.pad_id,
        }

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        # Autocast, not cast weights: open_clip's fp16 weight conversion skips the CoCa
        # decoder's text_projection, and generate then fails on a dtype mismatch.
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=self.autocast_dtype)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Token ids -> text, cut at the first end *or pad* token after the start token.

        Why the pad too: open_clip 3.3.0's top-K ``CoCa.generate`` marks a row finished
        when its last token is the end token *or* ``pad_token_id``, and from then on
        appends ``pad_token_id`` until every row is done; a row that samples the pad id
        therefore never gets an end token. With CLIP's BPE the pad id is 0, which
        ``open_clip.decode`` renders as "!": cut only at the end token, such a row came
        out as "a dog on the grass!!!!!!!" (and, with an HF tokenizer, its words after a
        sampled pad survived ``skip_special_tokens``).

        A genuine id 0 in CLIP's BPE: id 0 is the byte "!" as a *word-internal* piece
        (no ``</w>``); a plain "!" word is id 256 (``!</w>``), "!!" 748, "!!!" 995, so
        ordinary exclamation marks are untouched. Id 0 appears only in a punctuation run
        that starts with "!" and has no merge, e.g. ``!"!`` -> [0, 10377]. Since
        ``generate`` already ends a row at a sampled id 0, nothing can follow it; cutting
        there drops at most that one "!" piece.
        """
        stops = {self.eos_id, self.pad_id}
        rows = []
        for row in ids.tolist():
            end = next((i for i, token in enumerate(row[1:], 1) if token in stops), None)
            rows.append(row if end is None else row[:end])
        if self.hf_tokenizer is None:
            import open_clip

            # As the paper's code did: decode with CLIP's BPE and strip the markers.
            return [open_clip.decode(torch.tensor(row)).split("<end_of_text>")[0]
                    .replace("<start_of_text>", "").strip() for row in rows]
        texts = self.hf_tokenizer.batch_decode(rows, skip_special_tokens=True)
        return [text.strip() for text in texts]

    @torch.inference_mode()
    def generate(self, pixels: torch.Tensor, decoding: Decoding, seed: int) -> list[list[str]]:
        if decoding.prompt is not None:
            raise ValueError(f"captioner '{self.name}': open_clip_coca takes no prompt "
                             f"(got {decoding.prompt!r})")
        context = int(self.model.context_length)
        if decoding.max_length > context:
            # Past its context CoCa.generate fails with an opaque NaN-probability error.
            raise ValueError(f"captioner '{self.name}': max_length {decoding.max_length} exceeds "
                             f"the CoCa text context length {context}")
        pixels = pixels.to(self.device).repeat_interleave(decoding.num_captions, dim=0)
        with seeded(seed, self.device), self._autocast():
            ids = self.model.generate(pixels, **self.generate_kwargs(decoding))
        return regroup(self.decode(ids), decoding.num_captions)


def _load_coca(name: str, spec: Mapping[str, Any], device: str,
               dtype: torch.dtype | None) -> CocaCaptioner:
    from open_clip import coca_model

    if not getattr(coca_model, "_has_transformers", True):
        raise ImportError("open_clip's CoCa generate is unavailable: it needs "
                          "transformers.BeamSearchScorer (transformers < 4.57)")
    model_name = spec["model"]
    # The scorer's loading path: a pretrained tag's activation and preprocessing included.
    loaded = load_open_clip(model_name, spec.get("pretrained"), device,
                            cache_dir=spec.get(CACHE_KEY))
    model = loaded.model
    if not hasattr(model, "generate") or not hasattr(model, "text_decoder"):
        raise ValueError(f"'{model_name}' is a {type(model).__name__}, not a CoCa")
    return CocaCaptioner(name, model, loaded.preprocess, loaded.tokenizer, device, dtype)


# ------------------------------------------------------------------------ loading


def load_captioner(spec: Mapping[str, Any], device: str = "cpu",
                   precision: str = "fp32") -> Captioner:
    """Build the captioner a config entry describes.

    ``spec``: ``backend`` (one of :data:`BACKENDS`), ``model`` (HF repo id or local
    dir; open_clip model name or ``local-dir:PATH``), ``pretrained`` (open_clip tag
    or checkpoint path, else None) and ``name`` (for messages and logs). fp16/bf16
    apply on CUDA only (BLIP/BLIP2 weights are cast, as the paper ran BLIP2 in
    fp16; CoCa runs under autocast); on CPU the model stays fp32.
    """
    backend = spec.get("backend")
    name = str(spec.get("name") or spec.get("model") or backend)
    if backend not in BACKENDS:
        hint = {RELEASED_BACKEND: " (released captions are read by capmix.released)",
                SHIPPED_BACKEND: " (shipped captions are read by capmix.shipped)"}.get(
                    str(backend), "")
        raise ValueError(f"captioner '{name}': unknown backend {backend!r}; allowed: "
                         f"{', '.join(BACKENDS)}{hint}")
    if not spec.get("model"):
        raise CaptionerLoadError(f"captioner '{name}': spec has no 'model' to load")
    dtype = _autocast_dtype(name, precision, device)
    try:
        if backend == "hf_blip":
            return _load_hf(name, spec, device, dtype, "BlipForConditionalGeneration",
                            "BlipProcessor", BlipCaptioner)
        if backend == "hf_blip2":
            return _load_hf(name, spec, device, dtype, "Blip2ForConditionalGeneration",
                            "Blip2Processor", Blip2Captioner)
        return _load_coca(name, spec, device, dtype)
    except Exception as error:  # noqa: BLE001 - every load failure becomes one clear message
        raise CaptionerLoadError(
            f"captioner '{name}': cannot load {backend} model '{spec['model']}' "
            f"(pretrained={spec.get('pretrained')!r}): {type(error).__name__}: {error}"
        ) from error
