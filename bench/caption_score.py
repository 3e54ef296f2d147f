"""Benchmark: captioning and CLIP scoring, end to end from webdataset shards.

Draws a toy pool, fetches it into webdataset shards with img2dataset, then
times the real stage code (capmix.caption.caption_pool, capmix.score.
embed_pool_images and score_pool_caption_set: DataLoader decoding in worker
processes, batching, model, per-shard parquet/npz writes) and prints images/s.

Models (random weights, never downloaded):
  --captioner tiny                 the tiny BLIP2 of the tests (CPU smoke of the bench)
  --captioner blip2-opt-2.7b       BLIP2 with the real OPT-2.7B / ViT-g / Q-Former sizes,
                                   producing exactly --new-tokens tokens per caption
  --captioner local-dir:PATH       an open_clip CoCa dir, e.g. results/toymodels/default/captioner
  --scorer tiny | vit-l-14         the tiny CLIP of the tests, or open_clip ViT-L-14 (224 px)
  --scorer local-dir:PATH          e.g. results/toymodels/default/scorer

    .venv/bin/python bench/caption_score.py --images 512                       # CPU, tiny models
    .venv/bin/python bench/caption_score.py --images 20000 --captioner blip2-opt-2.7b \\
        --scorer vit-l-14 --device cuda --precision fp16 --batch-size 512 --workers 16
The paper's figures on one A100: BLIP2 75 images/s, ViT-L/14 490 images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.random_models import make_pool, real_size_blip2  # noqa: E402
from capmix.caption import RunSettings, caption_files, caption_pool  # noqa: E402
from capmix.captioners import load_captioner  # noqa: E402
from capmix.modelrun import resolve_device  # noqa: E402
from capmix.score import (  # noqa: E402
    embed_pool_images,
    load_scorer,
    score_pool_caption_set,
)


def bench_decoding(captioner: str, new_tokens: int) -> dict[str, int]:
    """The ``decoding`` of the bench's captioner spec: exactly ``new_tokens`` per caption.

    Only for the random-weight ``blip2-opt-2.7b``, whose captions would otherwise end
    wherever its random end-token probability says; the other captioners keep the
    paper's decoding (an empty dict: ``Decoding``'s defaults).

    Lengths count the start token (``capmix.captioners``): ``min_length = N`` keeps the
    end token out of new tokens 1 .. N-1 and ``max_length = N + 1`` stops after new token
    N, so every caption costs exactly N decoding steps (the N-th may be the end token).
    ``min_length == max_length`` would say it more directly, but ``Decoding`` refuses it
    because open_clip's ``CoCa.generate`` asserts ``seq_len > min_seq_len``, and one
    decoding must serve every backend.
    """
    if captioner != "blip2-opt-2.7b":
        return {}
    if new_tokens < 1:
        raise ValueError(f"--new-tokens must be >= 1 (got {new_tokens})")
    return {"min_length": new_tokens, "max_length": new_tokens + 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--captioner", default="tiny")
    parser.add_argument("--scorer", default="tiny")
    parser.add_argument("--new-tokens", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    device = resolve_device(args.device)
    settings = RunSettings(args.batch_size, device, args.precision, args.workers)

    with tempfile.TemporaryDirectory() as tmp:
        root = make_pool(Path(tmp), args.images, args.image_size)
        n = json.loads((root / "report.json").read_text())["n_fetched"]
        decoding = bench_decoding(args.captioner, args.new_tokens)
        if args.captioner == "blip2-opt-2.7b":
            captioner = real_size_blip2(device, args.precision)
        else:
            if args.captioner == "tiny":
                from tests.tiny_models import make_tiny_blip2

                spec = {"backend": "hf_blip2", "model": str(make_tiny_blip2(root / "blip2"))}
            else:
                spec = {"backend": "open_clip_coca", "model": args.captioner}
            captioner = load_captioner({**spec, "name": "bench"}, device, args.precision)
        out = root / "captions"
        start = time.perf_counter()
        caption_pool("bench", "c", {"decoding": decoding}, 1.0, root / "index.parquet",
                     root / "shards", out, out / "chunk0of1.json", settings, seed=0,
                     captioner=captioner)
        if device == "cuda":
            torch.cuda.synchronize()
        captioning = time.perf_counter() - start
        del captioner

        if args.scorer == "tiny":
            from tests.tiny_models import make_tiny_clip

            scorer_spec = {"model": f"local-dir:{make_tiny_clip(root / 'clip')}"}
        elif args.scorer == "vit-l-14":
            # Random weights, with the QuickGELU activation OpenAI's weights were trained with.
            scorer_spec = {"model": "ViT-L-14-quickgelu", "pretrained": None}
        else:
            scorer_spec = {"model": args.scorer}
        scorer = load_scorer("bench", scorer_spec, device, args.precision)
        emb = root / "images"
        start = time.perf_counter()
        embed_pool_images("bench", "s", scorer_spec, root / "index.parquet", root / "shards", emb,
                          emb / "chunk0of1.json", settings, scorer=scorer)
        embedding = time.perf_counter() - start
        start = time.perf_counter()
        score_pool_caption_set("bench", "s", scorer_spec, "c",
                               caption_files([out / "chunk0of1.json"]), sorted(emb.rglob("*.npz")),
                               root / "s.parquet", root / "s.json", settings, scorer=scorer)
        text_scoring = time.perf_counter() - start

    print(f"{n} images from webdataset shards, device={device}, precision={args.precision}, "
          f"batch={args.batch_size}, workers={args.workers}")
    print(f"captioning ({args.captioner}): {captioning:8.2f} s  {n / captioning:9.1f} images/s")
    print(f"image embeddings ({args.scorer}): {embedding:8.2f} s  {n / embedding:9.1f} images/s")
    print(f"caption scoring, text tower: {text_scoring:8.2f} s  {n / text_scoring:9.1f} captions/s")


if __name__ == "__main__":
    main()
