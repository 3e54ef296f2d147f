"""What a config costs before it runs (capmix.cost): a small config's cost equals a hand
computation, the shipped figures are the paper's and reproduce its Appendix B totals, unknowns
stay unknown, and the CLI, `make cost` and dry runs print the table."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from capmix.config import BASE_CONFIGS, ConfigError, load_schema, pipeline_config
from capmix.cost import (
    DOWNLOADED_BACKENDS,
    SHIPPED_BACKENDS,
    cost_table,
    dry_run_requested,
    main,
    pipeline_cost,
    total_gpu_hours,
)
from capmix.scales import pool_train_strategies
from tests.conftest import REPO, copy_workflow

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

# A DataComp-small pool with round figures, so that the hand computation is exact.
HAND_POOL = {
    "name": "hand",
    "source": {"type": "datacomp", "scale": "small", "hf_repo": "mlfoundations/datacomp_small"},
    "captioners": ["blip2_opt_2.7b"],
    "temperatures": {"blip2_opt_2.7b": [0.75, 1.0]},
    "scorer": "openai_vit_l_14",
    "mix": {"sources": {"synthetic": "blip2_opt_2.7b/0.75"},
            "strategies": ["raw_no_filter", "synthetic_no_filter"]},
    "train": {"scale": "small"},
    "eval": {"suite": "datacomp"},
}
HAND_COSTS = {
    "pool_sizes": {"datacomp": {"small": 3_600_000}},
    "captioners": {"blip2_opt_2.7b": {"images_per_second": 100, "source": "hand"}},
    "scorers": {"openai_vit_l_14": {"images_per_second": 400, "source": "hand"}},
    "train": {"small": {"gpu_hours": 5, "source": "hand"}},
    "eval": {"datacomp": {"gpu_hours": 2, "source": "hand", "estimate": True}},
}


def by_stage(lines):
    stages: dict[str, list] = {}
    for line in lines:
        stages.setdefault(line.stage, []).append(line)
    return stages


def test_a_small_config_costs_what_a_hand_computation_says():
    config = pipeline_config(overrides={"pools": [HAND_POOL], "costs": HAND_COSTS})
    images, lines = pipeline_cost(config)
    assert images["hand"].count == 3_600_000
    stages = by_stage(lines)
    # 3.6M images x 2 temperatures at 100 images/s: 7.2M captions, 20 h.
    (caption,) = stages["caption"]
    assert (caption.count, caption.gpu_hours, caption.basis) == (7_200_000, 20.0, "source")
    # Image embeddings once (no npz here): 3.6M at 400/s = 2.5 h.
    (embed,) = stages["embed_images"]
    assert (embed.count, embed.gpu_hours, embed.basis) == (3_600_000, 2.5, "source")
    # Raw scores ship with DataComp's parquet (free); 2 synthetic sets: 7.2M at 400/s = 5 h,
    # an upper bound (the image+text rate for the text tower alone).
    raw, synthetic = stages["score"]
    assert (raw.gpu_hours, raw.basis) == (0.0, "free")
    assert (synthetic.count, synthetic.gpu_hours, synthetic.basis) == (7_200_000, 5.0,
                                                                       "upper bound")
    # Two CLIPs (one per strategy) at 5 h, 12.8M samples seen each.
    (train,) = stages["train"]
    assert (train.count, train.gpu_hours) == (2 * 12_800_000, 10.0)
    # Each evaluated once at 2 h (an estimate); test images: the suite's sizes, twice.
    (evaluate,) = stages["evaluate"]
    suite_images = sum(t["size"] for t in config["eval_suites"]["datacomp"]["tasks"])
    assert (evaluate.count, evaluate.gpu_hours, evaluate.basis) == (2 * suite_images, 4.0,
                                                                    "estimate")
    assert total_gpu_hours(lines) == 20 + 2.5 + 5 + 10 + 4
    table = cost_table(config)
    assert "| **total** | | | | **41.5** | |" in table
    assert "≤ 5.0" in table and "estimate [" in table


def test_the_shipped_figures_are_the_papers_and_reproduce_its_appendix_b_totals():
    """Appendix B: BLIP2 75 and ViT-L/14 490 samples/s on an A100; a model trains in 4 / 40 /
    960 A100-hours; for the 1.28B large pool, 725 A100-hours of CLIP features and 4,740 of
    BLIP2 captions."""
    costs = pipeline_config()["costs"]
    assert costs["gpu"] == "A100"
    assert costs["captioners"]["blip2_opt_2.7b"]["images_per_second"] == 75
    assert costs["scorers"]["openai_vit_l_14"]["images_per_second"] == 490
    assert {k: v["gpu_hours"] for k, v in costs["train"].items()} == {
        "small": 4, "medium": 40, "large": 960}
    assert costs["pool_sizes"]["datacomp"]["large"] == 1_280_000_000
    large = {**HAND_POOL, "name": "large",
             "source": {"type": "datacomp", "scale": "large",
                        "hf_repo": "mlfoundations/datacomp_large"},
             "temperatures": {"blip2_opt_2.7b": [0.75]}, "train": None, "eval": None}
    _, lines = pipeline_cost(pipeline_config(overrides={"pools": [large]}))
    stages = by_stage(lines)
    assert int(stages["caption"][0].gpu_hours) == 4740
    assert int(stages["embed_images"][0].gpu_hours) == 725
    # Every figure says where it comes from; the estimates say so.
    for part in ("captioners", "scorers", "train", "eval"):
        for name, entry in costs[part].items():
            assert entry["source"], (part, name)
            assert entry["estimate"] == entry["source"].startswith("estimate"), (part, name)


def test_the_medium_config_from_the_command_line(capsys):
    assert main([str(REPO / "config" / "datacomp_medium.yaml")]) == 0
    out = capsys.readouterr().out
    config = pipeline_config(REPO / "config" / "datacomp_medium.yaml")
    pool = next(p for p in config["pools"] if p["name"] == "datacomp_medium")
    models = len(pool_train_strategies(config, pool))
    train = next(line for line in out.splitlines() if "| datacomp_medium | train |" in line)
    assert f"| {models * 40:,.1f} |" in train
    assert "| datacomp_medium | 128,000,000 |" in out
    # the NoCaps pool (a table source) stays unknown until its metadata stage has run
    total = r"\| \*\*total\*\* \| \| \| \| \*\*[0-9,.]+( \+ unknown \(\d+ lines?\))?\*\* \| \|"
    assert re.search(total, out)
    assert "Sources:" in out and "Appendix B" in out


def test_a_table_pool_is_unknown_until_a_run_has_counted_it(tmp_path):
    config = pipeline_config(REPO / "config" / "url_caption_table.yaml")
    images, lines = pipeline_cost(config, tmp_path)
    assert images["cc3m"].count is None
    priced = [line for line in lines if line.stage in ("caption", "embed_images", "score")]
    assert priced and all(line.gpu_hours is None for line in priced)
    assert "+ unknown (" in cost_table(config, tmp_path)
    # After the metadata stage, its rows; after the fetch, the images fetched.
    (tmp_path / "cc3m" / "metadata").mkdir(parents=True)
    (tmp_path / "cc3m" / "metadata" / "manifest.json").write_text(json.dumps({"rows": 1000}))
    assert pipeline_cost(config, tmp_path)[0]["cc3m"].count == 1000
    (tmp_path / "cc3m" / "fetch").mkdir()
    (tmp_path / "cc3m" / "fetch" / "report.json").write_text(json.dumps({"n_fetched": 735}))
    images, lines = pipeline_cost(config, tmp_path)
    assert images["cc3m"].count == 735
    (caption,) = [line for line in lines if line.stage == "caption"]
    assert caption.gpu_hours == pytest.approx(4 * 735 / 75 / 3600)


def test_figures_must_name_what_the_config_defines():
    with pytest.raises(ConfigError, match=r"costs\.captioners\.blip3'.*not in `captioners`"):
        pipeline_config(overrides={"costs": {"captioners": {"blip3": {
            "images_per_second": 1, "source": "x"}}}})
    with pytest.raises(ConfigError, match=r"costs\.train\.huge'"):
        pipeline_config(overrides={"costs": {"train": {"huge": {"gpu_hours": 1,
                                                                "source": "x"}}}})


def test_lists_held_equal():
    """Every DataComp scale a source may name has a pool size; the backend that downloads
    captions is the released one; the Snakefile loads the config files capmix.config does."""
    from capmix.released import BACKEND
    from capmix.shipped import BACKEND as SHIPPED

    assert DOWNLOADED_BACKENDS == (BACKEND,)
    assert SHIPPED_BACKENDS == (SHIPPED,)
    schema = load_schema()
    datacomp = next(branch["then"] for branch in schema["$defs"]["source"]["allOf"]
                    if branch["if"]["properties"]["type"]["const"] == "datacomp")
    sizes = pipeline_config()["costs"]["pool_sizes"]["datacomp"]
    assert sorted(sizes) == sorted(datacomp["properties"]["scale"]["enum"])
    snakefile = (REPO / "Snakefile").read_text()
    loaded = re.findall(r'^configfile: f"\{workflow\.basedir\}/config/([a-z_]+\.yaml)"',
                        snakefile, re.MULTILINE)
    assert loaded == [path.name for path in BASE_CONFIGS]


@pytest.mark.parametrize("argv, expected", [
    (["snakemake", "-n", "--cores", "1"], True),
    (["/x/.venv/bin/snakemake", "--cores", "1", "-np"], True),
    (["snakemake", "--dry-run", "--profile", "slurm"], True),
    (["snakemake", "--cores", "1", "--configfile", "config/smoke.yaml"], False),
    (["snakemake", "--lint"], False),
    (["pytest", "-n", "2"], False),
    ([], False),
])
def test_dry_runs_are_recognised_from_the_command_line(argv, expected):
    assert dry_run_requested(argv) is expected


def test_a_dry_run_prints_the_cost_and_a_run_does_not(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    dry = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--configfile", "config/smoke.yaml"],
                         cwd=workdir, capture_output=True, text=True, timeout=300, env=env)
    assert dry.returncode == 0, dry.stderr
    assert "Cost before commitment: this dry run" in dry.stderr
    assert "| toy_smoke | train |" in dry.stderr
    listed = subprocess.run([SNAKEMAKE, "--cores", "1", "--list-rules"], cwd=workdir,
                            capture_output=True, text=True, timeout=300, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "Cost before commitment" not in listed.stderr + listed.stdout
