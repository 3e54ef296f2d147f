"""Benchmark: training the toy world's stand-in models (CoCa captioner, its COCO fine-tune, CLIP).

Draws the "smoke" and/or "default" toy world (only the splits the stand-ins train on, plus
held-out ``nocaps`` / ``eval_retrieval`` images to judge them), trains the three stand-ins with
``capmix.toymodels.DEFAULT_SETTINGS`` (or settings from the config) and prints, per model,
training samples/s and wall time, then a quality check: captions of held-out images against
their ground truth, and how often the scorer ranks an image's caption above a random one and
above the same caption with the shape or the colour swapped. Prints only; never asserts.

    .venv/bin/python bench/toy_models.py --worlds smoke default
    .venv/bin/python bench/toy_models.py --worlds default --configfile my_toy_models.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from capmix import toymodels as tm
from capmix.config import pipeline_config
from capmix.toykinds import CAPTIONER, SCORER
from capmix.toyspec import CLASSNAMES, COLOURS, tokens

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = 200  # held-out images per quality check


def _world(root: Path, config: dict[str, Any], name: str, seed: int) -> Path:
    from capmix.toyspec import SPLITS
    from capmix.toyworld import generate_world

    spec = json.loads(json.dumps(config["toy_worlds"][name]))
    kept = {"pretrain", "coco"}
    spec["splits"] = {s: (spec["splits"].get(s, 0) if s in kept else 0) for s in SPLITS}
    spec["splits"].update({"nocaps": HELD_OUT, "eval_retrieval": HELD_OUT})
    out = root / name
    generate_world(out, spec, seed)
    return out


def _images(frame: pd.DataFrame, preprocess: Any) -> torch.Tensor:
    return torch.stack([preprocess(Image.open(tm.file_url_path(u)).convert("RGB"))
                        for u in frame["url"]])


def _caption_quality(model_dir: Path, world: Path, temperature: float) -> None:
    import open_clip

    frame = pd.read_parquet(world / "nocaps.parquet")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    model.eval()
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(_images(frame, preprocess), generation_type="top_k", top_k=50,
                             temperature=temperature, seq_len=32, min_seq_len=5,
                             **tm.generation_token_ids(model_dir))
    captions = tm.decode_captions(tokenizer, out)
    gen_s = time.perf_counter() - start

    pairs = list(zip(frame["description"], captions, strict=True))

    def precision(vocab: set[str]) -> float:
        hits = [w in tokens(gt) for gt, c in pairs for w in tokens(c) if w in vocab]
        return float(np.mean(hits)) if hits else float("nan")

    main_colour = np.mean([c in tokens(g) for c, g in zip(frame["colour"], captions, strict=True)])
    main_shape = np.mean([s in tokens(g) for s, g in zip(frame["shape"], captions, strict=True)])
    template = re.compile(r"an? .* on an? .*background\.")
    coco_like = np.mean([bool(template.fullmatch(c)) for c in captions])
    print(f"    captions at T={temperature}: colour words right {precision(set(COLOURS)):.2f}, "
          f"shape words right {precision(set(CLASSNAMES)):.2f} (main object named: colour "
          f"{main_colour:.2f}, shape {main_shape:.2f}); {len(set(captions))}/{len(captions)} "
          f"distinct, {np.mean([len(c.split()) for c in captions]):.1f} words, COCO template "
          f"{coco_like:.2f}; {len(captions) / gen_s:.0f} captions/s")
    for gt, cap in pairs[:3]:
        print(f"      truth: {gt}\n      model: {cap}")


def _scorer_quality(model_dir: Path, world: Path) -> None:
    import open_clip

    frame = pd.read_parquet(world / "eval_retrieval.parquet")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    model.eval()
    rng = np.random.default_rng(0)
    truth = list(frame["description"])

    def swap(text: str, word: str, vocab: list[str]) -> str:
        other = [w for w in vocab if w != word and w not in text.split()]
        return re.sub(rf"\b{word}\b", str(rng.choice(other)), text, count=1)

    n = len(frame)
    colours = zip(truth, frame["colour"], strict=True)
    shapes = zip(truth, frame["shape"], strict=True)
    variants = {
        "random caption": [truth[(i + int(rng.integers(1, n))) % n] for i in range(n)],
        "colour swapped": [swap(t, c, list(COLOURS)) for t, c in colours],
        "shape swapped": [swap(t, s, list(CLASSNAMES)) for t, s in shapes],
    }
    with torch.no_grad():
        image = model.encode_image(_images(frame, preprocess), normalize=True)

        def score(texts: list[str]) -> np.ndarray:
            return (image * model.encode_text(tokenizer(texts), normalize=True)).sum(1).numpy()

        right = score(truth)
        result = {k: float(np.mean(right > score(v))) for k, v in variants.items()}
    print("    scorer ranks the true caption above: "
          + ", ".join(f"{k} {v:.3f}" for k, v in result.items()) + f" (n={n})")


def _report(kind: str, model_dir: Path) -> None:
    record = json.loads((model_dir / "training.json").read_text())
    print(f"  {kind:15s}: {record['samples_seen']:6d} samples ({record['epochs']} epochs of "
          f"{record['train_samples']}) in {record['train_time_s']:6.1f} s = "
          f"{record['samples_per_s']:6.1f} samples/s (open_clip's per-step figure "
          f"{record['logged_step_samples_per_s'] or float('nan'):.0f}/s); wall incl. shards "
          f"{record['wall_time_s']:.1f} s; final loss {record['final_loss']:.3f}; "
          f"{record['parameters']:,} parameters")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", nargs="+", default=["smoke", "default"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.75)
    parser.add_argument("--keep", type=Path, default=None, help="keep the results here")
    parser.add_argument("--configfile", type=Path, nargs="*", default=[],
                        help="config files merged over the default (as snakemake --configfile)")
    args = parser.parse_args()

    config = pipeline_config(*args.configfile)
    settings = {k: config.get("toy_models", {}).get(k, {}) for k in tm.DEFAULT_SETTINGS}
    print(f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; settings = "
          f"DEFAULT_SETTINGS updated with config toy_models: {settings}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for name in args.worlds:
            world = _world(root / "worlds", config, name, args.seed)
            out = root / "models" / name
            print(f"world {name}: pretrain {len(pd.read_parquet(world / 'pretrain.parquet'))}, "
                  f"coco {len(pd.read_parquet(world / 'coco.parquet'))}")
            total = time.perf_counter()
            # the scorer first: the captioner's image tower may start from it (vision_from)
            scorer = tm.train_toy_model(SCORER, world, out / "scorer", settings[SCORER],
                                        args.seed, out / "_work" / "scorer")
            vision = scorer if settings[CAPTIONER].get("vision_from") == SCORER else None
            captioner = tm.train_toy_model(CAPTIONER, world, out / "captioner",
                                           settings[CAPTIONER], args.seed,
                                           out / "_work" / "captioner", vision_from=vision)
            coco = tm.finetune_toy_captioner(world, captioner, out / "captioner_coco",
                                             settings["captioner_coco"], args.seed,
                                             out / "_work" / "captioner_coco")
            total = time.perf_counter() - total
            for kind, model_dir in (("captioner", captioner), ("captioner_coco", coco),
                                    ("scorer", scorer)):
                _report(kind, model_dir)
            print(f"  all three      : {total:.1f} s wall (load average now "
                  f"{os.getloadavg()[0]:.2f})")
            for kind, model_dir in (("captioner", captioner), ("captioner_coco", coco)):
                print(f"  {kind} quality on {HELD_OUT} held-out images:")
                _caption_quality(model_dir, world, args.temperature)
            _scorer_quality(scorer, world)


if __name__ == "__main__":
    main()
