"""The figures and tables (capmix.figurespec, capmix.figures, capmix.tables) on hand-made
analyses and result files: panels and labels of a drawn figure, a table in every format with
its cell sidecar (paper vs ours for a real pool, ours only for a toy one), the figures config,
and the listing of what is not drawn."""

import json
from pathlib import Path

import pytest
import yaml

from capmix import figures, figurespec, tables
from capmix.config import pipeline_config
from capmix.lineage import find_cell
from tests.conftest import REPO


def write(path: Path, document: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return str(path)


def plan_for(entries: list[dict], toy: bool, pool: str = "p", scale: str | None = "medium"):
    return {"pool": pool, "toy": toy, "train_scale": scale, "entries": entries}


def entry(plot: str, kind: str = "figure", reads: dict | None = None, **options) -> dict:
    return {"id": f"x_{plot}", "paper": "Figure 4", "kind": kind, "category": "paper figure",
            "plot": plot, "options": options, "configs": ["default"], "caption": "x.rst",
            "reads": reads or {}, "reason": None}


def test_figures_config_parses_and_every_entry_names_the_paper():
    config = pipeline_config()
    entries = figurespec.figure_entries(config)
    ids = {e["id"] for e in entries}
    for n in range(1, 14):
        assert f"figure_{n}" in ids
    for n in range(1, 7):
        assert f"table_{n}" in ids
    for e in entries:
        assert e["paper"].startswith(("Figure", "Table", "Section", "Appendix")), e
        assert (REPO / "workflow" / "report" / e["caption"]).exists(), e["caption"]
        assert e["plot"] is not None or e["needs"], e
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    figure = schema["$defs"]["figure"]["properties"]
    assert figure["category"]["enum"] == list(figurespec.CATEGORIES)
    assert figure["plot"]["enum"] == [None, *figurespec.PLOTS]
    assert set(figures.DRAWERS) == set(figurespec.FIGURE_PLOTS)
    assert set(tables.WRITERS) == set(figurespec.TABLE_PLOTS)


def test_figure_config_mistakes_name_the_entry():
    from capmix.config import check_references

    config = pipeline_config()
    by_id = {e["id"]: e for e in config["figures"]}
    config["figures"] = [*config["figures"], {**by_id["figure_2"], "plot": "subset_table"},
                         {**by_id["figure_3"], "id": "figure_x", "plot": None}]
    problems = [p for p in check_references(config) if "figures[" in p]
    assert any("'figure_2' is used twice" in p for p in problems), problems
    assert any("plot 'subset_table' does not draw a figure" in p for p in problems), problems
    assert any("(figure_x): an entry without a plot must say what it `needs`" in p
               for p in problems), problems


def test_figure_renders_with_its_panels_and_labels(tmp_path):
    histogram = {"edges": [0.0, 0.5, 1.0], "counts": [3, 1]}
    doc = {"available": True, "reason": None, "pairs": {
        "cap/0.75": {"n_images": 4, "raw": {"mean": 0.2, "histogram": histogram},
                     "synthetic": {"mean": 0.6, "histogram": {**histogram, "counts": [1, 3]}}},
        "coco/0.75": {"n_images": 4, "raw": {"mean": 0.2, "histogram": histogram},
                      "synthetic": {"mean": 0.4, "histogram": histogram}}}}
    path = write(tmp_path / "cosine_histograms.json", doc)
    spec = entry("cosine_histograms", reads={"analyses": {"cosine_histograms": path}})
    figure = figures.cosine_histograms(spec, plan_for([spec], toy=True))
    axes = figure.get_axes()
    assert len(axes) == 2
    assert [ax.get_title() for ax in axes] == ["Raw vs cap/0.75 (4 images)",
                                               "Raw vs coco/0.75 (4 images)"]
    assert axes[0].get_xlabel() == "Image-text cosine similarity"
    assert axes[0].get_ylabel() == "Number of images"
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend == ["Raw (mean 0.200)", "cap/0.75 (mean 0.600)"]
    assert "toy" in figure.get_suptitle()
    paths = figures.draw_entry(spec, plan_for([spec], toy=True), tmp_path / "out", None)
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_task_differences_pair_not_trained_is_not_available(tmp_path):
    doc = {"available": True, "reason": None, "pairs": {"figure_6": {
        "available": False, "reason": "not available: pool 'p' evaluates no model on 'x'"}}}
    path = write(tmp_path / "task_differences.json", doc)
    spec = entry("task_differences", reads={"analyses": {"task_differences": path}},
                 pair="figure_6")
    with pytest.raises(tables.NotAvailable, match="evaluates no model on 'x'"):
        figures.task_differences(spec, plan_for([spec], toy=True))


def subset_inputs(tmp_path: Path) -> dict:
    rows = [{"strategy": "raw_top_30", "n_samples": 300, "share_of_pool": 0.3,
             "thresholds": {"raw": 0.25}},
            {"strategy": "raw_no_filter", "n_samples": 1000, "share_of_pool": 1.0,
             "thresholds": None}]
    analysis = write(tmp_path / "analyses/subset_table.json",
                     {"available": True, "reason": None, "rows": rows})
    aggregate = write(tmp_path / "eval/raw_top_30.aggregate.json",
                      {"aggregates": {"ImageNet": 0.28, "Average": 0.33}})
    return entry("subset_table", kind="table", where="Table 4",
                 reads={"analyses": {"subset_table": analysis},
                        "eval": {"raw_top_30": aggregate}}) | {"id": "table_4",
                                                               "paper": "Table 4"}


def test_table_shows_paper_ours_and_difference_for_a_real_pool(tmp_path):
    spec = subset_inputs(tmp_path)
    plan = plan_for([spec], toy=False, scale="medium")
    index = figures.run_figures(plan, tmp_path / "files", tmp_path / "index.json")
    assert index["entries"]["table_4"]["status"] == "drawn"
    csv_path = tmp_path / "files/table_4.csv"
    for suffix in (".csv", ".cells.json", ".md", ".tex"):
        assert (tmp_path / f"files/table_4{suffix}").exists(), suffix
    header = csv_path.read_text().splitlines()[0].split(",")
    for column in ("ImageNet accuracy (ours)", "ImageNet accuracy (paper)",
                   "ImageNet accuracy (difference)", "ImageNet accuracy (reproduced)"):
        assert column in header
    cell = find_cell(csv_path, "raw_top_30", "ImageNet accuracy (difference)")
    assert float(cell["value"]) == pytest.approx(0.28 - 0.273, abs=1e-4)
    assert cell["field"] == "aggregates.ImageNet"
    assert find_cell(csv_path, "raw_top_30", "ImageNet accuracy (paper)")["value"] == "0.273*"
    assert find_cell(csv_path, "raw_top_30", "ImageNet accuracy (reproduced)")["value"] == "yes"
    ours = find_cell(csv_path, "raw_top_30", "Training set size (ours)")
    assert ours["value"] == "300" and ours["field"] == "rows.0.n_samples"
    threshold = find_cell(csv_path, "raw_top_30", "Threshold (ours)")
    assert (threshold["value"], threshold["field"]) == ("0.25", "rows.0.thresholds.raw")
    assert "| raw_top_30 |" in (tmp_path / "files/table_4.md").read_text()
    assert r"\begin{tabular}" in (tmp_path / "files/table_4.tex").read_text()


def test_toy_table_shows_ours_only_labelled_toy(tmp_path):
    spec = subset_inputs(tmp_path)
    figures.run_figures(plan_for([spec], toy=True), tmp_path / "files",
                        tmp_path / "index.json")
    header = (tmp_path / "files/table_4.csv").read_text().splitlines()[0]
    assert "ImageNet accuracy (ours, toy)" in header and "paper" not in header
    assert "toy world: ours only" in (tmp_path / "files/table_4.md").read_text()
    cell = find_cell(tmp_path / "files/table_4.csv", "raw_top_30", "ImageNet accuracy (ours, toy)")
    assert cell["value"] == "0.28"


def test_not_available_listing(tmp_path):
    config = pipeline_config(REPO / "config" / "smoke.yaml")
    # every entry of config/figures.yaml has a drawing function now; one waiting for one
    config["figures"].append({"id": "figure_99", "paper": "Figure 99", "kind": "figure",
                              "category": "paper figure", "plot": None, "reads": ["eval"],
                              "configs": [], "needs": "a LAION-5B config",
                              "caption": "figure_2.rst"})
    files = {"analyses": {"caption_stats": "a.json"}, "quality": {}, "eval": {},
             "training": {}, "fetch": "f.json"}
    plan = figurespec.plan_figures(config, "toy_smoke_in1k", ["fetch"], files)
    by_id = {e["id"]: e for e in plan["entries"]}
    assert by_id["fetch_outcomes"]["reason"] is None
    assert figurespec.plan_inputs(plan) == ["f.json"]
    assert "does not build the target 'analyses'" in by_id["figure_3"]["reason"]
    assert by_id["figure_99"]["reason"] == "not available: needs a LAION-5B config"
    assert "does not build the target 'eval'" in by_id["table_6"]["reason"]
    unavailable = write(tmp_path / "caption_stats.json",
                        {"available": False, "reason": "not available: no strategies"})
    spec = entry("caption_stats", reads={"analyses": {"caption_stats": unavailable}})
    needs = {**by_id["figure_99"]}
    index = figures.run_figures(plan_for([spec, needs], toy=True), tmp_path / "files",
                                tmp_path / "index.json")
    listed = json.loads((tmp_path / "index.json").read_text())["entries"]
    assert listed == index["entries"]
    assert listed["x_caption_stats"] == {**listed["x_caption_stats"],
                                         "status": "not available", "files": [],
                                         "reason": "not available: no strategies"}
    assert listed["figure_99"]["status"] == "not available"
    assert not list((tmp_path / "files").iterdir())


def fairface_results(tmp_path: Path, strategy: str, male: float, female: float) -> str:
    """A model's result lines: one toy task and DataComp's FairFace line whose groups rows
    give gender accuracy per (gender, race) (capmix.evalmetrics.face_metrics' rows)."""
    races = ["Black", "Latino_Hispanic"]
    groups = [{"metric": "acc_race", "race_binary": 0, "value": 0.5, "count": 10}]
    for g, (gender, value) in enumerate((("male", male), ("female", female))):
        for r, race in enumerate(races):
            groups.append({"metric": "acc_gender_x", "gender": g, "race": r,
                           "gender_name": gender, "race_name": race,
                           "value": value + r / 100, "count": 30 if g == 0 else 10})
    lines = [{"dataset": "ImageNet 1k", "metrics": {"acc1": 0.3}},
             {"dataset": "FairFace", "metrics": {}, "groups": groups}]
    path = tmp_path / f"eval/{strategy}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def test_fairness_table_gender_accuracy_per_race_with_the_papers(tmp_path):
    files = {"raw_top_30": fairface_results(tmp_path, "raw_top_30", 0.93, 0.2),
             "synthetic_top_30": fairface_results(tmp_path, "synthetic_top_30", 0.8, 0.4)}
    spec = entry("fairness_table", kind="table", reads={"eval_lines": files}) | {
        "id": "table_6", "paper": "Table 6"}
    index = figures.run_figures(plan_for([spec], toy=False, scale="medium"),
                                tmp_path / "files", tmp_path / "index.json")
    assert index["entries"]["table_6"]["status"] == "drawn", index["entries"]["table_6"]
    csv_path = tmp_path / "files/table_6.csv"
    rows = [line.split(",")[0] for line in csv_path.read_text().splitlines()[1:]]
    assert rows == ["female / raw_top_30", "female / synthetic_top_30", "male / raw_top_30",
                    "male / synthetic_top_30", "Overall / raw_top_30",
                    "Overall / synthetic_top_30"]
    cell = find_cell(csv_path, "male / raw_top_30", "Black (ours)")
    assert float(cell["value"]) == pytest.approx(0.93)
    assert cell["sources"] == [files["raw_top_30"]] and cell["field"].startswith("line 2:")
    # DataComp's "Latino_Hispanic" is the paper's "Latino/Hispanic" (0.908 for this row).
    assert find_cell(csv_path, "male / raw_top_30",
                     "Latino_Hispanic (paper)")["value"] == "90.8"
    # Overall: both genders weighted by their counts (30 male, 10 female faces per race).
    overall = find_cell(csv_path, "Overall / raw_top_30", "Black (ours)")
    assert float(overall["value"]) == pytest.approx((0.93 * 30 + 0.2 * 10) / 40)
    assert find_cell(csv_path, "Overall / raw_top_30", "Black (paper)")["value"] == "56.7"


def test_fairness_table_without_a_fairface_task_is_not_available(tmp_path):
    path = tmp_path / "eval/raw_top_30.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"dataset": "toy ImageNet", "metrics": {"acc1": 0.4}}) + "\n")
    spec = entry("fairness_table", kind="table",
                 reads={"eval_lines": {"raw_top_30": str(path)}}) | {"id": "table_6",
                                                                    "paper": "Table 6"}
    index = figures.run_figures(plan_for([spec], toy=True), tmp_path / "files",
                                tmp_path / "index.json")
    assert index["entries"]["table_6"]["status"] == "not available"
    assert "'FairFace' task" in index["entries"]["table_6"]["reason"]


def _curve(losses: list[dict], per_step: int = 8) -> list[dict]:
    return [{"epoch": 0, "step": i + 1, "samples_seen": per_step * (i + 1), "losses": values}
            for i, values in enumerate(losses)]


def test_training_loss_draws_each_models_whole_curve(tmp_path):
    clip = _curve([{"contrastive_loss": v, "loss": v} for v in (5.0, 4.5, 4.25, 4.0)])
    coca = _curve([{"contrastive_loss": c, "caption_loss": cap, "loss": c + 2 * cap}
                   for c, cap in ((4.0, 6.0), (3.5, 5.0), (3.0, 4.5))])
    reads = {"training": {
        "raw_no_filter": write(tmp_path / "a/training.json", {"loss_curve": clip}),
        "coca_model": write(tmp_path / "b/training.json", {"loss_curve": coca}),
        # written before the curve was kept: first and final loss only
        "old_run": write(tmp_path / "c/training.json", {
            "samples_seen": 96, "checkpoints": 3, "first_loss": 5.5, "final_loss": 4.75}),
    }}
    spec = entry("training_loss", reads=reads)
    figure = figures.training_loss(spec, plan_for([spec], toy=True))
    contrastive, caption = figure.get_axes()
    lines = contrastive.get_lines()
    assert len(lines) == 3  # one line per model
    assert [list(line.get_xdata()) for line in lines] == [[8, 16, 24, 32], [8, 16, 24],
                                                          [32.0, 96]]
    assert [list(line.get_ydata()) for line in lines] == [[5.0, 4.5, 4.25, 4.0],
                                                          [4.0, 3.5, 3.0], [5.5, 4.75]]
    assert contrastive.get_xlabel() == "Samples seen"
    assert contrastive.get_ylabel() == "Contrastive loss"
    assert "no curve recorded" in contrastive.get_title()
    labels = [t.get_text() for t in contrastive.get_legend().get_texts()]
    assert labels == ["raw no filter", "coca model", "old run (first/final loss only)"]
    # the caption-loss panel holds the models that have one
    (coca_line,) = caption.get_lines()
    assert list(coca_line.get_ydata()) == [6.0, 5.0, 4.5]
    assert caption.get_ylabel() == "Caption loss"
    # without a captioning model: one panel
    del reads["training"]["coca_model"]
    assert len(figures.training_loss(spec, plan_for([spec], toy=True)).get_axes()) == 1


def _grid_inputs(tmp_path: Path) -> tuple[dict, dict, dict]:
    """10 fetched images in 2 webdataset shards (one colour each), a mix table with the raw
    and one synthetic caption per uid, and a subset that keeps 4 of them."""
    import io
    import tarfile

    import pandas as pd
    from PIL import Image

    uids = [f"{i:032x}" for i in range(10)]
    colours = {uid: (20 * i, 200 - 15 * i, 60 + 10 * i) for i, uid in enumerate(uids)}
    shards = tmp_path / "shards"
    shards.mkdir()
    index = []
    for n, shard_uids in enumerate((uids[:5], uids[5:])):
        shard = f"{n:05d}.tar"
        with tarfile.open(shards / shard, "w") as tar:
            for k, uid in enumerate(shard_uids):
                image = io.BytesIO()
                Image.new("RGB", (8, 8), colours[uid]).save(image, format="PNG")
                for ext, data in (("png", image.getvalue()),
                                  ("json", json.dumps({"uid": uid}).encode()),
                                  ("txt", f"raw {uid[-2:]}".encode())):
                    member = tarfile.TarInfo(f"{n:05d}{k:04d}.{ext}")
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
                index.append({"uid": uid, "status": "fetched", "shard": shard})
    pd.DataFrame(index).to_parquet(tmp_path / "index.parquet", index=False)
    mix = pd.DataFrame({"uid": uids,
                        "caption:raw": [f"raw caption of {u[-2:]}" for u in uids],
                        "caption:blip2": [f"a synthetic caption of {u[-2:]}" for u in uids],
                        }).sort_values("uid")
    (tmp_path / "mix").mkdir()  # the mix table in two uid-range parts
    mix[:5].to_parquet(tmp_path / "mix" / "part-00000.parquet", index=False)
    mix[5:].to_parquet(tmp_path / "mix" / "part-00001.parquet", index=False)
    (tmp_path / "mix.json").write_text(json.dumps(
        {"parts": ["mix/part-00000.parquet", "mix/part-00001.parquet"]}))
    kept = uids[::3]  # 4 kept, 6 discarded
    pd.DataFrame({"uid": kept}).to_parquet(tmp_path / "kept.parquet", index=False)
    spec = entry("image_grid", kept_by="raw_top_30", n=4, seed=1,
                 reads={"samples": {"index": str(tmp_path / "index.parquet"),
                                    "table": str(tmp_path / "mix.json"),
                                    "kept": str(tmp_path / "kept.parquet")}})
    plan = {**plan_for([spec], toy=True), "shards": str(shards)}
    return spec, plan, {"kept": set(kept), "colours": colours}


def test_image_grid_shows_discarded_images_with_every_caption(tmp_path):
    import numpy as np

    spec, plan, world = _grid_inputs(tmp_path)
    figure = figures.image_grid(spec, plan)
    panels = [ax for ax in figure.get_axes() if ax.get_images()]
    assert len(panels) == 4  # options.n, of the 6 discarded
    shown = []
    for ax in panels:
        text = " ".join(ax.get_title(loc="left").split())  # unwrapped
        (uid,) = [u for u in world["colours"] if f"raw caption of {u[-2:]}" in text]
        assert uid not in world["kept"]
        assert f"raw: raw caption of {uid[-2:]}" in text
        assert f"blip2: a synthetic caption of {uid[-2:]}" in text
        # the panel's image is that uid's image (read from its shard)
        pixels = np.asarray(ax.get_images()[0].get_array())
        assert tuple(pixels[0, 0][:3]) == world["colours"][uid]
        shown.append(uid)
    assert len(set(shown)) == 4
    assert "images discarded by raw_top_30" in figure.get_suptitle()
    # The same seed draws the same images; the sample is seeded, not fixed.
    again = figures.image_grid(spec, plan)
    assert [ax.get_title(loc="left") for ax in again.get_axes() if ax.get_images()] == [
        ax.get_title(loc="left") for ax in panels]
    assert [s["uid"] for s in figures.discarded_samples(spec, plan)] == sorted(shown)
    others = {tuple(s["uid"] for s in figures.discarded_samples(
        {**spec, "options": {**spec["options"], "seed": seed}}, plan)) for seed in range(2, 8)}
    assert len(others | {tuple(sorted(shown))}) > 1


def pool_scaling_doc(pool: str, n_pool: int, scale: str, values: dict, toy: bool = False) -> dict:
    """A pool's analyses/pool_scaling.json: strategy -> (ImageNet, Flickr, MSCOCO)."""
    rows = [{"pool": pool, "n_pool": n_pool, "train_scale": scale, "strategy": strategy,
             "n_samples": n_pool // 2, "imagenet": imagenet, "retrieval:Flickr": flickr,
             "retrieval:MSCOCO": coco, "average": 0.2}
            for strategy, (imagenet, flickr, coco) in values.items()]
    return {"analysis": "pool_scaling", "available": True, "reason": None, "pool": pool,
            "toy": toy, "rows": rows}


def figure_8_documents(tmp_path: Path) -> list[str]:
    """Two real pools (small and medium, two strategies each) and one with no models."""
    return [
        write(tmp_path / "results/medium/analyses/pool_scaling.json",
              pool_scaling_doc("medium", 1000, "medium", {"raw_no_filter": (0.18, 0.3, 0.2),
                                                          "synthetic_no_filter": (0.28, 0.5,
                                                                                  0.4)})),
        write(tmp_path / "results/small/analyses/pool_scaling.json",
              pool_scaling_doc("small", 100, "small", {"raw_no_filter": (0.03, 0.1, 0.1),
                                                       "synthetic_no_filter": (0.07, 0.2,
                                                                               0.2)})),
        write(tmp_path / "results/none/analyses/pool_scaling.json",
              {"analysis": "pool_scaling", "available": False, "pool": "none", "toy": False,
               "reason": "not available: pool 'none' evaluates no models"}),
    ]


def test_figure_8_across_pools_has_a_line_per_strategy_by_pool_size(tmp_path):
    from capmix.analyses import combine_pool_scaling
    from capmix.papernumbers import load

    documents = [json.loads(Path(p).read_text()) for p in figure_8_documents(tmp_path)]
    rows = combine_pool_scaling(documents).to_dict("records")
    figure = figures.pools_scaling(rows, ["medium", "small", "none"], [], load(),
                                   {"none": "not available: pool 'none' evaluates no models"})
    axes = figure.get_axes()
    assert len(axes) == 2  # ImageNet and Flickr only: the paper leaves MS-COCO out
    assert [ax.get_title() for ax in axes] == ["ImageNet", "Flickr retrieval"]
    assert [ax.get_ylabel() for ax in axes] == ["ImageNet accuracy",
                                                "Flickr retrieval score (mean R@1)"]
    assert all(ax.get_xlabel() == "Candidate pool size" and ax.get_xscale() == "log"
               for ax in axes)
    for ax in axes:
        lines = {line.get_label(): list(line.get_xdata()) for line in ax.get_lines()}
        assert lines == {"raw no filter": [100, 1000], "synthetic no filter": [100, 1000]}
    imagenet = {line.get_label(): list(line.get_ydata()) for line in axes[0].get_lines()}
    assert imagenet["synthetic no filter"] == [0.07, 0.28]
    # The paper's Table 4 ImageNet at each real point (small and medium, both strategies).
    marks = sorted(tuple(o) for c in axes[0].collections for o in c.get_offsets())
    assert marks == [(100, 0.025), (100, 0.076), (1000, 0.176), (1000, 0.281)]
    legend = [t.get_text() for t in axes[1].get_legend().get_texts()]
    assert legend == ["raw no filter", "synthetic no filter", "paper (Table 4, ImageNet)"]
    assert "evaluates no models" in " ".join(t.get_text() for t in figure.texts)
    assert "toy" not in figure.get_suptitle()
    # Lines for the strategies every pool evaluates (medium also trains Table 5's sweeps).
    rows.append({**rows[-1], "strategy": "raw_top_10"})
    assert figures.shared_strategies(rows) == ["raw_no_filter", "synthetic_no_filter"]
    picked = figures.pools_scaling(rows, ["medium", "small"], [], None,
                                   strategies=["raw_top_10"])
    assert [line.get_label() for line in picked.get_axes()[0].get_lines()] == ["raw top 10"]


def test_figure_8_across_pools_writes_the_joined_rows_with_their_sources(tmp_path):
    paths = figure_8_documents(tmp_path)
    out = tmp_path / "results/figures/figure_8_pools"
    result = figures.run_pools_figure(paths, [out.with_suffix(".png"), out.with_suffix(".pdf")],
                                      out.with_suffix(".csv"),
                                      absent={"large": "not run yet (config/large.yaml)"})
    assert result["pools"] == ["medium", "small", "none"] and result["rows"] == 4
    # A pool with no rows and one not run yet are both named under the figure.
    assert set(result["missing"]) == {"none", "large"}
    assert all(out.with_suffix(s).stat().st_size > 1000 for s in (".png", ".pdf"))
    lines = out.with_suffix(".csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header == ["row", "pool", "strategy", "n_pool", "train_scale", "n_samples",
                      "imagenet", "imagenet (paper)", "retrieval:Flickr", "retrieval:MSCOCO",
                      "average", "source"]
    by_row = {line.split(",")[0]: dict(zip(header, line.split(","), strict=True))
              for line in lines[1:]}
    assert list(by_row) == ["small/raw_no_filter", "small/synthetic_no_filter",
                            "medium/raw_no_filter", "medium/synthetic_no_filter"]
    assert by_row["medium/raw_no_filter"]["source"] == paths[0]
    assert by_row["small/raw_no_filter"]["source"] == paths[1]
    assert by_row["small/raw_no_filter"]["imagenet (paper)"] == "0.025*"
    cell = find_cell(out.with_suffix(".csv"), "medium/synthetic_no_filter", "retrieval:Flickr")
    assert cell["value"] == "0.5" and cell["sources"] == [paths[0]]
    assert cell["field"] == "rows.1.retrieval:Flickr"
    paper = find_cell(out.with_suffix(".csv"), "small/raw_no_filter", "imagenet (paper)")
    assert paper["field"] == "entries.t4_small_raw_no_filter_imagenet"


def test_figure_8_of_a_toy_pool_shows_ours_only(tmp_path):
    path = write(tmp_path / "pool_scaling.json", pool_scaling_doc(
        "toy_default", 2304, "toy", {"raw_no_filter": (0.15, 0.01, 0.0)}, toy=True))
    doc = json.loads(Path(path).read_text())
    for row in doc["rows"]:  # the toy suite: one retrieval task, no Flickr
        row["retrieval:toy retrieval"] = row.pop("retrieval:Flickr")
        del row["retrieval:MSCOCO"]
    path = write(tmp_path / "pool_scaling.json", doc)
    out = tmp_path / "f8"
    figures.run_pools_figure([path], [out.with_suffix(".png")], out.with_suffix(".csv"))
    header = out.with_suffix(".csv").read_text().splitlines()[0]
    assert "paper" not in header and "retrieval:toy retrieval" in header
    figure = figures.pools_scaling(doc["rows"], ["toy_default"], ["toy_default"])
    assert [ax.get_title() for ax in figure.get_axes()] == ["ImageNet", "toy retrieval"]
    assert "(toy, pools toy_default)" in figure.get_suptitle()


def test_figure_8_pools_default_and_a_missing_pool_names_its_config():
    config = pipeline_config()
    assert config["figure_8"] == {"pools": None, "strategies": None}
    assert figurespec.figure_8_pools(config) == ["toy_default"]  # trains and evaluates
    small = pipeline_config(REPO / "config" / "datacomp_small.yaml")
    assert figurespec.figure_8_pools(small) == ["datacomp_small", "datacomp_medium",
                                                "datacomp_400m", "datacomp_large"]
    from capmix.config import pool_config_files

    files = {p: f"results/{p}/analyses/pool_scaling.json" for p in figurespec.figure_8_pools(small)}
    existing = {files["datacomp_400m"]}
    problems = figurespec.missing_pool_files(files, ["datacomp_small"], existing.__contains__,
                                             pool_config_files)
    # Made by this run (small) or there already (400m): shown; the other two named.
    assert list(problems) == ["datacomp_medium", "datacomp_large"]
    assert problems["datacomp_medium"].startswith(
        "results/datacomp_medium/analyses/pool_scaling.json is missing and pool "
        "'datacomp_medium' is not in this run's")
    assert "config/datacomp_medium.yaml" in problems["datacomp_medium"]
    assert "config/datacomp_large.yaml" in problems["datacomp_large"]
    assert "no config under config/ defines it" in figurespec.missing_pool_files(
        {"elsewhere": "x.json"}, [], lambda _: False, dict)["elsewhere"]


def test_retrieval_table_names_the_toy_suites_retrieval_as_what_it_is(tmp_path):
    doc = {"available": True, "reason": None,
           "models": {"raw_top_30": {"retrieval_mean": 0.1, "imagenet": 0.4}}}
    spec = entry("retrieval_table", kind="table",
                 reads={"analyses": {"retrieval": write(tmp_path / "retrieval.json", doc)}})
    toy = tables.retrieval_table(spec, plan_for([spec], toy=True), None)
    real = tables.retrieval_table(spec, plan_for([spec], toy=False), None)
    assert toy.columns[0] == "Retrieval (the toy suite's, in Flickr and MS-COCO's place)"
    assert real.columns[0] == "Flickr and MS-COCO retrieval"
    assert dict(toy.rows)["raw_top_30"][toy.columns[0]].value == 0.1


FIGURE_13 = {"raw_no_filter": (0.31, 0.35), "shipped_no_filter": (0.21, 0.28),
             "synthetic_no_filter": (0.30, 0.34), "synthetic_min_0p28": (0.26, 0.32)}


def figure_13_entry(tmp_path: Path) -> dict:
    """config/figures.yaml's Figure 13, reading four of its five models' evaluations (the
    fifth, raw_min_0p28, not evaluated)."""
    (spec,) = [e for e in figurespec.figure_entries(pipeline_config())
               if e["id"] == "figure_13"]
    files = {s: write(tmp_path / f"eval/{s}.aggregate.json",
                      {"aggregates": {"ImageNet": a, "Average": b}})
             for s, (a, b) in FIGURE_13.items()}
    return {**spec, "reads": {"eval": files}, "reason": None}


def test_figure_13_bars_ours_beside_the_papers_hatched_for_the_thresholded_images(tmp_path):
    spec = figure_13_entry(tmp_path)
    figure = figures.accuracy_bars(spec, plan_for([spec], toy=False, pool="laion_coco"))
    imagenet, average = figure.get_axes()
    assert imagenet.get_ylabel() == "ImageNet accuracy"
    assert [t.get_text() for t in imagenet.get_xticklabels()] == [
        "Raw", "BLIP (shipped)", "BLIP2", "BLIP2, BLIP2 score >= 0.28"]
    bars = imagenet.patches
    ours = [b for b in bars if b.get_fill()]
    paper = [b for b in bars if not b.get_fill()]
    assert [round(b.get_height(), 3) for b in ours] == [0.31, 0.21, 0.30, 0.26]
    # the paper's Figure 13 at medium scale: Raw 32.3, BLIP 20.5, BLIP2 29.3, BLIP2 >= .28 26.8
    assert [round(b.get_height(), 3) for b in paper] == [0.323, 0.205, 0.293, 0.268]
    assert [bool(b.get_hatch()) for b in ours] == [False, False, False, True]
    assert [round(b.get_height(), 3) for b in average.patches if b.get_fill()] == [
        0.35, 0.28, 0.34, 0.32]
    texts = " ".join(t.get_text() for t in figure.texts)
    assert "not evaluated in this pool: raw_min_0p28" in texts
    # a toy pool: ours only
    toy = figures.accuracy_bars(spec, plan_for([spec], toy=True, pool="t"))
    assert all(b.get_fill() for b in toy.get_axes()[0].patches)
    assert "toy" in toy.get_suptitle()
    none = {**spec, "reads": {"eval": {}}}
    with pytest.raises(tables.NotAvailable, match="evaluates none of raw_no_filter"):
        figures.accuracy_bars(none, plan_for([none], toy=True))


def test_figure_13_table_sizes_and_accuracies_beside_the_papers(tmp_path):
    (spec,) = [e for e in figurespec.figure_entries(pipeline_config())
               if e["id"] == "figure_13_table"]
    rows = [{"strategy": "synthetic_min_0p28", "n_samples": 41_500_000, "share_of_pool": 0.4,
             "thresholds": {"blip2_opt_2.7b/0.75": 0.28}},
            {"strategy": "raw_top_30", "n_samples": 31_000_000, "share_of_pool": 0.3,
             "thresholds": {"raw": 0.3}}]  # not one of Figure 13's: left out
    analysis = write(tmp_path / "analyses/subset_table.json",
                     {"available": True, "reason": None, "rows": rows})
    aggregate = write(tmp_path / "eval/synthetic_min_0p28.aggregate.json",
                      {"aggregates": {"ImageNet": 0.27, "Average": 0.33}})
    spec = {**spec, "reads": {"analyses": {"subset_table": analysis},
                              "eval": {"synthetic_min_0p28": aggregate}}, "reason": None}
    figures.run_figures(plan_for([spec], toy=False, pool="laion_coco"), tmp_path / "files",
                        tmp_path / "index.json")
    csv_path = tmp_path / "files/figure_13_table.csv"
    size = find_cell(csv_path, "synthetic_min_0p28", "Training set size (paper)")
    assert size["value"] == "41M"  # as the paper prints it
    imagenet = find_cell(csv_path, "synthetic_min_0p28", "ImageNet accuracy (difference)")
    assert float(imagenet["value"]) == pytest.approx(0.27 - 0.268, abs=1e-4)
    assert "raw_top_30" not in csv_path.read_text()
    # a pool that evaluates none of the five (the toy pools): not drawn, and says why
    spec["reads"]["eval"] = {}
    with pytest.raises(tables.NotAvailable, match="evaluates none of raw_no_filter"):
        tables.subset_table(spec, plan_for([spec], toy=True), None)
