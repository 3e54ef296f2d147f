"""The captioning backends, on tiny random models of the real classes (no hub, no weights).

What is checked is what the pipeline relies on: each backend loads from a
local directory, its image transform works in DataLoader worker processes, the
paper's decoding parameters reach the library's ``generate`` unchanged (a spy
records what ``generate`` *received*; the text of a random model means
nothing), sampling is reproducible per seed, and load failures are explicit.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from capmix.captioners import (
    BACKENDS,
    CaptionerLoadError,
    Decoding,
    drop_prefix,
    load_captioner,
    regroup,
)
from tests.tiny_models import (
    BLIP2_QUERY_TOKENS,
    make_tiny_blip,
    make_tiny_blip2,
    make_tiny_clip,
    make_tiny_coca,
    make_tiny_coca_clip_bpe,
)

BUILDERS: dict[str, Callable[[Path], Path]] = {
    "hf_blip": make_tiny_blip, "hf_blip2": make_tiny_blip2, "open_clip_coca": make_tiny_coca,
}
HF = ("hf_blip", "hf_blip2")


def images(n: int) -> list[Image.Image]:
    """Different sizes and modes, as a web pool has them (grey and RGBA included)."""
    out = []
    for i in range(n):
        image = Image.new("RGB", (40 + 7 * i, 30 + 5 * i), (37 * i % 256, 90, 200 - 23 * i % 200))
        image.paste((255, 255, 0), (5, 5, 15 + i, 20))
        out.append(image.convert(("RGB", "L", "RGBA")[i % 3]))
    return out


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine
    OpenMP's spinning barriers make them 10-100x slower (seconds per CoCa step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_captioners")
    return {backend: build(root / backend) for backend, build in BUILDERS.items()}


def spec(backend: str, path: Path, **extra) -> dict:
    model = f"local-dir:{path}" if backend == "open_clip_coca" else str(path)
    return {"backend": backend, "model": model, "pretrained": None, "name": f"tiny_{backend}",
            **extra}


@pytest.fixture(scope="module")
def captioners(model_dirs):
    return {backend: load_captioner(spec(backend, path)) for backend, path in model_dirs.items()}


def pixels_for(captioner, n: int) -> torch.Tensor:
    return torch.stack([captioner.preprocess(image) for image in images(n)])


def spy_on(monkeypatch, model, **inject) -> list[dict]:
    """Record what the underlying ``model.generate`` receives and returns; call through
    (with ``inject`` added to its keyword arguments)."""
    calls: list[dict] = []
    real = model.generate

    def spy(*args, **kwargs):
        out = real(*args, **kwargs, **inject)
        calls.append({"args": args, "kwargs": kwargs, "out": out})
        return out

    monkeypatch.setattr(model, "generate", spy)
    return calls


# ------------------------------------------------------------------------ loading


@pytest.mark.parametrize("backend", BACKENDS)
def test_loads_locally_and_returns_num_captions_per_image(captioners, backend):
    captioner = captioners[backend]
    assert captioner.name == f"tiny_{backend}"
    pixels = pixels_for(captioner, 3)
    assert pixels.shape == (3, 3, 32, 32) and pixels.dtype == torch.float32
    captions = captioner.generate(pixels, Decoding(num_captions=2), seed=0)
    assert len(captions) == 3 and all(len(per_image) == 2 for per_image in captions)
    texts = [text for per_image in captions for text in per_image]
    assert all(isinstance(t, str) and t == t.strip() for t in texts)
    assert any(texts)  # the specials (start/end/pad/image tokens) are decoded away, words stay
    for marker in ("<s>", "</s>", "<pad>", "<image>", "[DEC]", "[SEP]", "[PAD]"):
        assert not any(marker in t for t in texts)


class _Images(Dataset):
    """Images made in the worker, run through every backend's transform *as unpickled there*.

    The transforms travel as pickled bytes and are unpickled in the worker: what a
    spawn/forkserver DataLoader does, without paying seconds of imports per spawned
    worker (open_clip and transformers take ~10 s to import on 2 cores).
    """

    def __init__(self, transforms: list) -> None:
        self.blob = pickle.dumps(transforms)
        self.transforms: list | None = None

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        if self.transforms is None:
            self.transforms = pickle.loads(self.blob)
        image = images(4)[i]
        return tuple(transform(image) for transform in self.transforms)


def test_preprocess_is_picklable_and_runs_in_dataloader_workers(captioners):
    transforms = [captioners[b].preprocess for b in BACKENDS]
    for transform in transforms:  # pickling ships the transform, never the model
        assert len(pickle.dumps(transform)) < 100_000
    loader = DataLoader(_Images(transforms), batch_size=2, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2
    for b, backend in enumerate(BACKENDS):
        got = torch.cat([batch[b] for batch in batches])
        torch.testing.assert_close(got, pixels_for(captioners[backend], 4))


# ----------------------------------------------------------- decoding reaches generate


@pytest.mark.parametrize("backend", HF)
def test_hf_decoding_parameters_reach_generate(captioners, backend, monkeypatch):
    captioner = captioners[backend]
    calls = spy_on(monkeypatch, captioner.model)
    decoding = Decoding(top_k=7, temperature=0.75, min_length=3, max_length=9, num_captions=2)
    captions = captioner.generate(pixels_for(captioner, 3), decoding, seed=1)

    (call,) = calls
    kwargs = call["kwargs"]
    # transformers 4.56 BLIP2 counts its image placeholders in the lengths: added back.
    offset = BLIP2_QUERY_TOKENS if backend == "hf_blip2" else 0
    assert {k: kwargs[k] for k in ("do_sample", "top_k", "temperature", "min_length",
                                   "max_length", "num_return_sequences")} == {
        "do_sample": True, "top_k": 7, "temperature": 0.75, "min_length": 3 + offset,
        "max_length": 9 + offset, "num_return_sequences": 2}
    assert kwargs["pixel_values"].shape == (3, 3, 32, 32)
    assert "input_ids" not in kwargs  # the paper's no-prompt captioning
    ids = call["out"]
    assert ids.shape[0] == 6 and ids.shape[1] <= 9 + offset
    # text tokens after the start token: at most max_length - 1 for every backend
    start = 1 + offset
    assert bool((ids[:, :start] == ids[0, :start]).all()) and ids.shape[1] - start <= 8
    assert [len(c) for c in captions] == [2, 2, 2]


def test_blip2_text_budget_is_the_papers_not_the_image_tokens(captioners, monkeypatch):
    """max_length=40 must leave ~39 text tokens, not 40 - num_query_tokens - 1."""
    captioner = captioners["hf_blip2"]
    # never stop early: the end token is masked out, so every row runs to max_length
    eos = captioner.model.config.text_config.eos_token_id
    calls = spy_on(monkeypatch, captioner.model, suppress_tokens=[eos])
    captioner.generate(pixels_for(captioner, 2), Decoding(min_length=5, max_length=12), seed=0)
    ids = calls[0]["out"]
    assert ids.shape[1] == BLIP2_QUERY_TOKENS + 12  # image placeholders + bos + 11 new tokens


def test_hf_prompt_becomes_input_ids_and_is_not_in_the_caption(captioners, monkeypatch):
    blip2 = captioners["hf_blip2"]
    calls = spy_on(monkeypatch, blip2.model)
    captions = blip2.generate(pixels_for(blip2, 2), Decoding(prompt="a photo of"), seed=0)
    input_ids = calls[0]["kwargs"]["input_ids"]
    image_token = blip2.model.config.image_token_index
    prompt = blip2.processor.tokenizer("a photo of").input_ids
    assert input_ids.tolist() == [[image_token] * BLIP2_QUERY_TOKENS + prompt] * 2
    assert len(captions) == 2

    blip = captioners["hf_blip"]
    calls = spy_on(monkeypatch, blip.model)
    blip.generate(pixels_for(blip, 2), Decoding(prompt="a photo of"), seed=0)
    # [CLS] a photo of [SEP]; BLIP's generate then swaps [CLS] for [DEC] in place
    prompt = blip.processor.tokenizer("a photo of").input_ids
    bos = blip.model.config.text_config.bos_token_id
    assert calls[0]["kwargs"]["input_ids"].tolist() == [[bos, *prompt[1:]]] * 2
    # the caption is what follows the prompt: ids start with [DEC] a photo of
    assert calls[0]["out"][:, :4].tolist() == [[bos, *prompt[1:-1]]] * 2


@pytest.mark.parametrize("backend", HF)
@pytest.mark.parametrize("prompt", ["a photo of", "a picture of "])  # LAVIS's BLIP2, BLIP
def test_hf_prompt_is_continued_and_the_caption_returned_without_it(captioners, backend, prompt,
                                                                    monkeypatch):
    """As LAVIS returns captions: the text after the prompt. The prompt's tokens do not eat
    into the caption's length budget (with the end token masked, every row runs to it)."""
    captioner = captioners[backend]
    eos = captioner.model.config.text_config.eos_token_id
    calls = spy_on(monkeypatch, captioner.model, suppress_tokens=[eos])
    decoding = Decoding(prompt=prompt, min_length=3, max_length=9, num_captions=2)
    captions = captioner.generate(pixels_for(captioner, 2), decoding, seed=0)

    ids = calls[0]["out"]
    _, prefix = captioner.prompt_ids(prompt)
    n = prefix.shape[1]  # (image placeholders +) start token + the prompt's tokens
    assert n > (BLIP2_QUERY_TOKENS + 1 if backend == "hf_blip2" else 1)
    assert bool((ids[:, :n] == prefix).all())  # generate continued the prompt
    assert ids.shape[1] == n + 8  # max_length 9 = start token + 8, with or without a prompt
    tokenizer = captioner.processor.tokenizer
    echoed = tokenizer.batch_decode(ids, skip_special_tokens=True)
    assert all(text.startswith(prompt.strip()) for text in echoed)
    after = [text.strip() for text in tokenizer.batch_decode(ids[:, n:], skip_special_tokens=True)]
    assert [text for per_image in captions for text in per_image] == after


def test_coca_decoding_parameters_reach_generate(captioners, monkeypatch):
    captioner = captioners["open_clip_coca"]
    calls = spy_on(monkeypatch, captioner.model)
    decoding = Decoding(top_k=7, temperature=0.75, min_length=3, max_length=9, num_captions=2)
    pixels = pixels_for(captioner, 3)
    captions = captioner.generate(pixels, decoding, seed=1)

    (call,) = calls
    tokenizer = captioner.tokenizer.tokenizer  # the word-level HF tokenizer in the local dir
    assert call["kwargs"] == {
        "generation_type": "top_k", "top_k": 7, "temperature": 0.75, "seq_len": 9,
        "min_seq_len": 3, "sot_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    # num_captions > 1: each image repeated in place, captions regrouped per image
    torch.testing.assert_close(call["args"][0], pixels.repeat_interleave(2, dim=0))
    ids = call["out"]
    assert ids.shape[0] == 6 and ids.shape[1] <= 9
    assert bool((ids[:, 0] == tokenizer.bos_token_id).all())
    assert [len(c) for c in captions] == [2, 2, 2]


def test_coca_refuses_prompts_and_lengths_past_its_context(captioners):
    captioner = captioners["open_clip_coca"]
    pixels = pixels_for(captioner, 1)
    with pytest.raises(ValueError, match="no prompt"):
        captioner.generate(pixels, Decoding(prompt="a photo of"), seed=0)
    with pytest.raises(ValueError, match="context length 48"):
        captioner.generate(pixels, Decoding(max_length=60), seed=0)


def test_clip_tokenizer_decoding_strips_markers_as_the_paper_did(captioners):
    """The pretrained coca_ViT-L-14 path: CLIP BPE ids, decoded with open_clip.decode."""
    import open_clip

    captioner = captioners["open_clip_coca"]
    clip = type(captioner)("clip", captioner.model, captioner.preprocess,
                           open_clip.tokenizer.SimpleTokenizer(), "cpu", None)
    assert (clip.sot_id, clip.eos_id, clip.pad_id) == (49406, 49407, 0)
    ids = open_clip.tokenize(["a dog on the grass", "two cats"], context_length=12)
    assert clip.decode(ids) == ["a dog on the grass", "two cats"]


def test_coca_decode_cuts_at_the_first_pad_or_end_token(captioners):
    """open_clip's CoCa.generate ends a row that samples the pad id without an end token and
    pads it on: the caption is what comes before the first pad or end token."""
    import open_clip

    captioner = captioners["open_clip_coca"]
    clip = type(captioner)("clip", captioner.model, captioner.preprocess,
                           open_clip.tokenizer.SimpleTokenizer(), "cpu", None)
    sot, eot = clip.sot_id, clip.eos_id
    a_dog = open_clip.tokenize(["a dog"])[0, 1:3].tolist()
    ids = torch.tensor([[sot, *a_dog, 0, 0, 0, 0],      # sampled the pad: no end token
                        [sot, *a_dog, eot, 0, 0, 0],    # ended normally, padded after
                        [sot, *a_dog, 0, *a_dog, 0],    # whatever follows a pad is not text
                        [sot, 0, 0, 0, 0, 0, 0]])
    assert clip.decode(ids) == ["a dog", "a dog", "a dog", ""]
    assert open_clip.decode(torch.tensor([0, 0])) == "!!"  # what the old cut let through

    # the word-level tokenizer of the toy models: <pad> is id 1
    tokenizer = captioner.hf_tokenizer
    words = tokenizer("a red car", add_special_tokens=False).input_ids
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    rows = torch.tensor([[tokenizer.bos_token_id, *words[:2], pad, words[2], eos]])
    assert captioner.decode(rows) == ["a red"]


def test_coca_with_clip_bpe_captions_never_hold_the_pads_text(tmp_path, monkeypatch):
    """The pretrained coca_ViT-L-14 path for real: CLIP's BPE, pad id 0 ("!"), top-K
    ``generate``; the decoder is nudged towards id 0 so that rows do sample it, and away
    from every other token with a "!" in it, so that any "!" in a caption is a pad's."""
    captioner = load_captioner(spec("open_clip_coca", make_tiny_coca_clip_bpe(tmp_path / "c")))
    assert (captioner.sot_id, captioner.eos_id, captioner.pad_id) == (49406, 49407, 0)
    bias = torch.zeros(49408)
    for token, i in captioner.tokenizer.encoder.items():
        if "!" in token:
            bias[i] = -float("inf")
    bias[0] = 5.0
    captioner.model.text_decoder.register_forward_hook(lambda module, args, out: out + bias)
    calls = spy_on(monkeypatch, captioner.model)
    captions = captioner.generate(pixels_for(captioner, 4), Decoding(max_length=16,
                                                                     num_captions=3), seed=0)
    ids = calls[0]["out"]
    sampled_pad = [(row[1:] == 0).any() and not (row == 49407).any() for row in ids]
    assert any(sampled_pad)  # the case at hand: rows that end in pads, no end token
    texts = [text for per_image in captions for text in per_image]
    assert len(texts) == 12 and not any("!" in text for text in texts)


def test_the_benchs_blip2_decoding_is_accepted_and_yields_exactly_new_tokens(captioners,
                                                                            monkeypatch):
    """bench/caption_score.py --captioner blip2-opt-2.7b: its decoding must pass ``Decoding``
    (it once set min_length == max_length, refused before any GPU work) and give every
    caption exactly --new-tokens new tokens, the end token never before the last."""
    from bench.caption_score import bench_decoding

    assert bench_decoding("tiny", 30) == {}  # the other captioners: the paper's decoding
    new_tokens = 6
    decoding = Decoding(**bench_decoding("blip2-opt-2.7b", new_tokens))
    captioner = captioners["hf_blip2"]
    calls = spy_on(monkeypatch, captioner.model)
    captioner.generate(pixels_for(captioner, 3), decoding, seed=0)
    ids = calls[0]["out"]
    start = BLIP2_QUERY_TOKENS + 1  # image placeholders + bos
    assert ids.shape == (3, start + new_tokens)
    eos = captioner.model.config.text_config.eos_token_id
    assert not (ids[:, start:start + new_tokens - 1] == eos).any()


# ---------------------------------------------------------------------- seeding


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_captions_other_seed_other_captions(captioners, backend):
    captioner = captioners[backend]
    pixels = pixels_for(captioner, 4)
    decoding = Decoding(temperature=1.5, max_length=12)
    state = torch.get_rng_state()
    first = captioner.generate(pixels, decoding, seed=123)
    assert captioner.generate(pixels, decoding, seed=123) == first
    assert captioner.generate(pixels, decoding, seed=124) != first
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone


# ------------------------------------------------------------------------ errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_model_path_names_captioner_and_path(tmp_path, backend):
    missing = tmp_path / "no_such_model"
    with pytest.raises(CaptionerLoadError) as error:
        load_captioner(spec(backend, missing, name="my_captioner"))
    message = str(error.value)
    assert "my_captioner" in message and str(missing) in message
    assert isinstance(error.value, ValueError) and error.value.__cause__ is not None


def test_a_clip_is_not_a_coca(tmp_path):
    clip = make_tiny_clip(tmp_path / "clip")
    with pytest.raises(CaptionerLoadError, match="not a CoCa"):
        load_captioner(spec("open_clip_coca", clip))


@pytest.mark.parametrize("backend", ["nope", "released"])
def test_unknown_backend_is_named(backend):
    with pytest.raises(ValueError, match=f"'{backend}'") as error:
        load_captioner({"backend": backend, "model": "x", "name": "c"})
    assert all(allowed in str(error.value) for allowed in BACKENDS)


def test_low_precision_on_cpu_stays_fp32_and_says_so(model_dirs, caplog):
    with caplog.at_level(logging.INFO, logger="capmix.captioners"):
        captioner = load_captioner(spec("hf_blip", model_dirs["hf_blip"]), precision="fp16")
    assert next(captioner.model.parameters()).dtype == torch.float32
    assert "fp16" in caplog.text and "fp32" in caplog.text
    with pytest.raises(ValueError, match="precision"):
        load_captioner(spec("hf_blip", model_dirs["hf_blip"]), precision="fp8")


@pytest.mark.parametrize("bad", [{"top_k": 0}, {"temperature": 0.0}, {"num_captions": 0},
                                 {"min_length": 40, "max_length": 40}])
def test_invalid_decoding_is_rejected(bad):
    with pytest.raises(ValueError, match="invalid decoding"):
        Decoding(**bad)


def test_helpers():
    assert regroup(["a", "b", "c", "d"], 2) == [["a", "b"], ["c", "d"]]
    with pytest.raises(ValueError):
        regroup(["a", "b", "c"], 2)
    ids = torch.tensor([[4, 4, 0, 7, 8], [4, 4, 0, 9, 2]])
    assert drop_prefix(ids, torch.tensor([[4, 4, 0]])).tolist() == [[7, 8], [9, 2]]
    # a version of generate that returns only new tokens: nothing is cut
    assert drop_prefix(ids[:, 3:], torch.tensor([[4, 4, 0]])).tolist() == [[7, 8], [9, 2]]


def test_the_schema_allows_exactly_the_captioner_backends():
    """One list of backends: the model backends here, plus the released and shipped readers."""
    from capmix.config import load_schema
    from capmix.released import BACKEND as RELEASED_BACKEND
    from capmix.shipped import BACKEND as SHIPPED_BACKEND

    enum = load_schema()["$defs"]["captioner"]["properties"]["backend"]["enum"]
    assert enum == [*BACKENDS, RELEASED_BACKEND, SHIPPED_BACKEND]
