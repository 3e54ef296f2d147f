"""The paper's figures from a pool's finished results, and the stage that draws them all.

One drawing function per kind of plot (:data:`DRAWERS`, named by ``plot`` in
config/figures.yaml) turns the analyses JSONs (:mod:`capmix.analyses`) or result JSONs into a
matplotlib Figure, with the paper's axis labels, panel titles and legends; a toy pool's title
says "toy". The Figure is returned before saving so that tests can inspect its axes.
:func:`run_figures` is the stage (rule draw_figures): every entry of the plan
(:func:`capmix.figurespec.plan_figures`) is drawn (PNG + PDF) or written (tables:
:mod:`capmix.tables`), or listed in the index with why it is not. Nothing is taken from the
paper except, for real pools, the paper's numbers beside ours in the tables: every plotted
value is measured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display: jobs run headless
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from capmix import tables  # noqa: E402
from capmix.figurespec import entry_files  # noqa: E402
from capmix.papernumbers import Entry, PaperNumbers  # noqa: E402
from capmix.papernumbers import load as load_paper_numbers  # noqa: E402
from capmix.provenance import code_version, write_json  # noqa: E402
from capmix.tables import NotAvailable, analysis, paper_entry, read_json  # noqa: E402

log = logging.getLogger(__name__)


def title(entry: Mapping[str, Any], plan: Mapping[str, Any], what: str) -> str:
    """A figure's title: the paper's figure, what it shows, the pool, and "toy" for toy
    pools (their numbers are not the paper's setting)."""
    return f"{entry['paper']}: {what} ({'toy, ' if plan['toy'] else ''}pool {plan['pool']})"


def _figure(n_panels: int, width: float = 5.0, bars: int = 0) -> tuple[Figure, list[Any]]:
    """One row of ``n_panels`` panels; tall enough for ``bars`` labelled horizontal bars (a
    pool's every training set) to keep their labels apart."""
    height = max(4.2, 0.16 * bars + 1.2)
    figure, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, height), squeeze=False)
    return figure, list(axes[0])


def _short(name: str) -> str:
    return name.replace("_", " ")


# ------------------------------------------------------------------------------ analyses


def caption_stats(entry: Mapping[str, Any], plan: Mapping[str, Any]) -> Figure:
    """Figure 3: mean words per caption and mean grounding ratio per training set."""
    document, _ = analysis(entry, "caption_stats")
    sets = document["training_sets"]
    names = list(sets)
    figure, (words, grounding) = _figure(2, bars=len(names))
    words.barh([_short(n) for n in names], [sets[n]["words"]["mean"] or 0 for n in names])
    words.set_xlabel("Average number of words per caption")
    words.set_title("Number of words")
    grounding.barh([_short(n) for n in names],
                   [sets[n]["grounding"]["mean"] or 0 for n in names])
    grounding.set_xlabel("Average grounding ratio (visual tokens / tokens)")
    grounding.set_title("Grounding ratio")
    grounding.tick_params(labelleft=False)
    figure.suptitle(title(entry, plan, "information per caption"))
    return figure


def cosine_histograms(entry: Mapping[str, Any], plan: Mapping[str, Any]) -> Figure:
    """Figure 4: raw vs synthetic image-text cosine histograms on the same images, one panel
    per synthetic caption set."""
    document, _ = analysis(entry, "cosine_histograms")
    pairs = document["pairs"]
    figure, axes = _figure(len(pairs))
    for ax, (caption_set, pair) in zip(axes, pairs.items(), strict=True):
        for side, label in (("raw", "Raw"), ("synthetic", caption_set)):
            histogram = pair[side]["histogram"]
            mean = pair[side]["mean"]
            ax.stairs(histogram["counts"], histogram["edges"],
                      label=f"{label} (mean {mean:.3f})" if mean is not None else label)
        ax.set_xlabel("Image-text cosine similarity")
        ax.set_ylabel("Number of images")
        ax.set_title(f"Raw vs {caption_set} ({pair['n_images']} images)")
        ax.legend()
    figure.suptitle(title(entry, plan, "image-text alignment"))
    return figure


#: Legends with more entries than this go beside the axes, not on them: the default run's
#: Figure 5 has one entry per training set (62), which inside the axes hid the points.
LEGEND_INSIDE_MAX = 12


def legend(ax: Any, fontsize: float = 6) -> None:
    """The axes' legend: inside where it fits, else beside them in columns of 30 (saved with
    ``bbox_inches="tight"``, so the figure grows to hold it)."""
    entries = len(ax.get_legend_handles_labels()[1])
    if entries <= LEGEND_INSIDE_MAX:
        ax.legend(fontsize=fontsize, loc="best")
        return
    ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.02, 1.0),
              borderaxespad=0.0, ncol=-(-entries // 30))


def noise_diversity(entry: Mapping[str, Any], plan: Mapping[str, Any]) -> Figure:
    """Figure 5: per training set, noise (mean cosine of its own captions) against diversity
    (unique trigrams); marker area follows the set's size."""
    document, _ = analysis(entry, "noise_diversity")
    sets = document["training_sets"]
    figure, (ax,) = _figure(1, 7.0)
    largest = max((s["n_samples"] for s in sets.values()), default=1) or 1
    for name, s in sets.items():
        if s["mean_cos"] is None:
            continue
        ax.scatter(s["mean_cos"], s["unique_trigrams"], s=400 * s["n_samples"] / largest,
                   alpha=0.6, label=_short(name))
    ax.set_xlabel("Average image-text cosine similarity")
    ax.set_ylabel("Number of unique trigrams")
    ax.set_title("Noise vs diversity (circle size: training set size)")
    legend(ax)
    figure.suptitle(title(entry, plan, "noise and diversity"))
    return figure


def diversity_scaling(entry: Mapping[str, Any], plan: Mapping[str, Any]) -> Figure:
    """Figure 12: unique nouns and unique trigrams in nested random subsets, raw vs each
    synthetic caption set."""
    document, _ = analysis(entry, "diversity_scaling")
    figure, axes = _figure(2)
    for metric, ax, label in (("unique_nouns", axes[0], "Number of unique nouns"),
                              ("unique_trigrams", axes[1], "Number of unique trigrams")):
        raw_drawn = False
        for caption_set, pair in document["pairs"].items():
            sides = [("synthetic", caption_set)] + ([] if raw_drawn else [("raw", "Raw")])
            for side, name in sides:
                points = [p for p in pair[side] if metric in p]
                ax.plot([p["size"] for p in points], [p[metric] for p in points],
                        marker="o", label=name)
            raw_drawn = True
        ax.set_xscale("log")
        ax.set_xlabel("Number of captions")
        ax.set_ylabel(label)
        ax.set_title(label.replace("Number of u", "U"))
        ax.legend()
    figure.suptitle(title(entry, plan, "text diversity with scale"))
    return figure


def task_differences(entry: Mapping[str, Any], plan: Mapping[str, Any]) -> Figure:
    """Figures 6 and 10: per evaluation task, model a minus model b (sorted)."""
    document, _ = analysis(entry, "task_differences")
    name = entry["options"]["pair"]
    pair = document["pairs"].get(name)
    if pair is None:
        raise NotAvailable(f"not available: no model pair '{name}' (analyses.model_pairs)")
    if not pair["available"]:
        raise NotAvailable(pair["reason"])
    rows = sorted(pair["tasks"], key=lambda r: r["difference"])
    figure, (ax,) = _figure(1, 8.0, bars=len(rows))
    ax.barh([r["task"] for r in rows], [r["difference"] for r in rows],
            color=["tab:green" if r["difference"] > 0 else "tab:red" for r in rows])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"Accuracy difference ({_short(pair['a'])} - {_short(pair['b'])})")
    ax.set_title(f"{pair['improved']} of {pair['compared']} tasks improved")
    figure.suptitle(title(entry, plan, "per-task differences"))
    return figure


def _retrieval_models(entry: Mapping[str, Any]) -> dict[str, Any]:
    return analysis(entry, "retrieval")[0]


def retrieval_bars(entry: Mapping[str, Any], plan: Mapping[str, Any]) -> Figure:
    """Figure 7: per retrieval task, each model's score (mean of image and text R@1)."""
    document = _retrieval_models(entry)
    tasks, models = document["retrieval_tasks"], document["models"]
    figure, axes = _figure(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        names = list(models)
        ax.bar(range(len(names)), [models[m]["tasks"][task]["main"] or 0 for m in names],
               color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), [_short(n) for n in names], rotation=60,
                      ha="right", fontsize=6)
        ax.set_ylabel("Retrieval score (mean R@1)")
        ax.set_title(task)
    figure.suptitle(title(entry, plan, "retrieval"))
    figure.tight_layout()
    return figure


def retrieval_scatter(entry: Mapping[str, Any], plan: Mapping[str, Any]) -> Figure:
    """Figure 9: per retrieval task, retrieval score against ImageNet accuracy per model."""
    document = _retrieval_models(entry)
    tasks, models = document["retrieval_tasks"], document["models"]
    figure, axes = _figure(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        for name, row in models.items():
            ax.scatter(row["imagenet"], row["tasks"][task]["main"], label=_short(name))
        ax.set_xlabel("ImageNet accuracy")
        ax.set_ylabel(f"{task} retrieval score")
        ax.set_title(task)
    legend(axes[-1])
    figure.suptitle(title(entry, plan, "retrieval vs ImageNet"))
    return figure


def retrieval_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ``retrieval:<task>`` columns of pool_scaling rows, in first-seen order."""
    return list(dict.fromkeys(k for row in rows for k in row if k.startswith("retrieval:")))


def pool_scaling(entry: Mapping[str, Any], plan: Mapping[str, Any]) -> Figure:
    """Figure 8 (this pool's column): ImageNet accuracy and retrieval per strategy at the
    pool's size; the pools together: :func:`pools_scaling` (rule figure_8_pools)."""
    document, _ = analysis(entry, "pool_scaling")
    rows = document["rows"]
    retrieval = retrieval_columns(rows[:1])
    figure, axes = _figure(1 + len(retrieval))
    names = [_short(r["strategy"]) for r in rows]
    colours = [f"C{i}" for i in range(len(rows))]
    axes[0].bar(range(len(rows)), [r["imagenet"] or 0 for r in rows], color=colours)
    axes[0].set_ylabel("ImageNet accuracy")
    axes[0].set_title(f"ImageNet (pool size {rows[0]['n_pool'] if rows else 0})")
    for ax, key in zip(axes[1:], retrieval, strict=True):
        ax.bar(range(len(rows)), [r[key] or 0 for r in rows], color=colours)
        ax.set_ylabel("Retrieval score")
        ax.set_title(key.split(":", 1)[1])
    for ax in axes:
        ax.set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=6)
    figure.suptitle(title(entry, plan, "pool scaling"))
    figure.tight_layout()
    return figure


def class_groups(entry: Mapping[str, Any], plan: Mapping[str, Any]) -> Figure:
    """Figure 11: per-class ImageNet accuracy of model a against model b, by class group."""
    document, _ = analysis(entry, "class_groups")
    figure, (ax,) = _figure(1, 6.0)
    for group in document["groups"]:
        rows = [r for r in document["classes"] if r["group"] == group
                and r["a"] is not None and r["b"] is not None]
        ax.scatter([r["b"] for r in rows], [r["a"] for r in rows], label=group, alpha=0.6)
    ax.plot([0, 1], [0, 1], color="black", linewidth=0.8)
    ax.set_xlabel(f"Per-class accuracy, {_short(document['b'])}")
    ax.set_ylabel(f"Per-class accuracy, {_short(document['a'])}")
    ax.set_title(f"{document['task']} classes by group")
    ax.legend()
    figure.suptitle(title(entry, plan, "per-class accuracy"))
    return figure


# ------------------------------------------------------------------------------ results


def discarded_samples(entry: Mapping[str, Any], plan: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Figure 1 / Appendix A's samples: ``options.n`` images, drawn at random (seeded) from
    those the subset ``options.kept_by`` discards, each with its image bytes and every caption
    set's caption (the mix table's ``caption:<set>`` columns)."""
    import numpy as np
    import pandas as pd

    from capmix.mixparts import read_table, table_columns
    from capmix.shards import ShardTask, read_shard

    files, options = entry["reads"]["samples"], entry["options"]
    columns = [c for c in table_columns(files["table"]) if c.startswith("caption:")]
    table = read_table(files["table"], ["uid", *columns])
    kept = set(pd.read_parquet(files["kept"], columns=["uid"])["uid"])
    discarded = table[~table["uid"].isin(kept)].reset_index(drop=True)
    if discarded.empty:
        raise NotAvailable(f"not available: subset '{options['kept_by']}' keeps every image")
    rng = np.random.default_rng(int(options.get("seed", 0)))
    picked = discarded.iloc[np.sort(rng.choice(len(discarded), min(int(options["n"]),
                                                                   len(discarded)),
                                               replace=False))]
    index = pd.read_parquet(files["index"], columns=["uid", "status", "shard"])
    index = index[index["status"] == "fetched"]
    wanted = set(picked["uid"])
    images: dict[str, bytes] = {}
    for shard in sorted(set(index.loc[index["uid"].isin(wanted), "shard"])):
        uids = tuple(sorted(index.loc[index["shard"] == shard, "uid"]))
        task = ShardTask(str(shard), Path(plan["shards"]) / str(shard), Path(), uids)
        images.update((s.uid, s.image) for s in read_shard(task) if s.uid in wanted)
    return [{"uid": row["uid"], "image": images.get(row["uid"]),
             "captions": {c.split(":", 1)[1]: row[c] for c in columns
                          if isinstance(row[c], str)}}
            for _, row in picked.iterrows()]


def image_grid(entry: Mapping[str, Any], plan: Mapping[str, Any]) -> Figure:
    """Figure 1 and Appendix A: images the subset ``options.kept_by`` discards, each with
    its raw caption and every synthetic caption."""
    import io
    import textwrap

    from PIL import Image

    samples = discarded_samples(entry, plan)
    columns = 4
    rows = -(-len(samples) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.6 * rows),
                                squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, sample in zip(axes.flat, samples, strict=False):
        if sample["image"] is not None:
            ax.imshow(Image.open(io.BytesIO(sample["image"])).convert("RGB"))
        lines = [textwrap.shorten(f"{name}: {text}", 90)
                 for name, text in sample["captions"].items()]
        ax.set_title("\n".join(textwrap.fill(line, 45) for line in lines), fontsize=6,
                     loc="left")
    figure.suptitle(title(entry, plan, f"images discarded by {entry['options']['kept_by']}"))
    figure.tight_layout()
    return figure


def accuracy_scatter(entry: Mapping[str, Any], plan: Mapping[str, Any]) -> Figure:
    """Figure 2 (left): average accuracy against ImageNet accuracy per evaluated strategy."""
    files = entry["reads"]["eval"]
    if not files:
        raise NotAvailable(f"not available: pool '{plan['pool']}' evaluates no models")
    figure, (ax,) = _figure(1, 7.0)
    for strategy, path in files.items():
        aggregates = read_json(path).get("aggregates") or {}
        ax.scatter(aggregates.get("ImageNet"), aggregates.get("Average"),
                   label=_short(strategy))
    ax.set_xlabel("ImageNet accuracy")
    ax.set_ylabel("Average accuracy")
    ax.set_title("Filtering strategies")
    legend(ax)
    figure.suptitle(title(entry, plan, "ImageNet and average accuracy"))
    return figure


#: The accuracies :func:`accuracy_bars` draws: the aggregate's field and its axis label.
BAR_METRICS = (("ImageNet", "ImageNet accuracy"), ("Average", "Average accuracy"))


def accuracy_bars(entry: Mapping[str, Any], plan: Mapping[str, Any]) -> Figure:
    """Figure 13: ImageNet and average accuracy of the models trained on the strategies
    ``options.strategies`` lists (in that order, labelled by ``options.labels``), the ones in
    ``options.hatched`` hatched (the paper's "controlled for noise" subset). A real pool's bars
    stand beside the paper's numbers (``options.where`` in config/paper_numbers.yaml) at the
    pool's training scale, drawn as outlined bars; a toy pool's never do. Strategies the pool
    did not evaluate are named under the figure."""
    options = entry["options"]
    files = entry["reads"]["eval"]
    listed = list(options.get("strategies") or files)
    shown = [s for s in listed if s in files]
    if not shown:
        raise NotAvailable(f"not available: pool '{plan['pool']}' evaluates none of "
                           f"{', '.join(listed)}")
    labels = {s: options.get("labels", {}).get(s, _short(s)) for s in shown}
    hatched = set(options.get("hatched") or [])
    numbers = None if plan["toy"] else load_paper_numbers()
    where = options.get("where", entry["paper"])
    aggregates = {s: read_json(files[s]).get("aggregates") or {} for s in shown}
    figure, axes = _figure(len(BAR_METRICS), 4.5)
    width = 0.8 / (2 if numbers is not None else 1)
    for ax, (metric, label) in zip(axes, BAR_METRICS, strict=True):
        for i, strategy in enumerate(shown):
            ours = aggregates[strategy].get(metric)
            x = i - (width / 2 if numbers is not None else 0)
            ax.bar(x, ours or 0.0, width, color=f"C{i}", edgecolor="black",
                   hatch="//" if strategy in hatched else None,
                   label="ours" if i == 0 else None)
            if ours is not None:
                ax.annotate(f"{ours:.3f}", (x, ours), ha="center", va="bottom", fontsize=6)
            paper = paper_entry(numbers, where, strategy=strategy, scale=plan["train_scale"],
                                metric=metric)
            if paper is not None:
                ax.bar(i + width / 2, paper.value, width, fill=False, edgecolor=f"C{i}",
                       hatch="//" if strategy in hatched else None,
                       label="paper" if i == 0 else None)
                ax.annotate(f"{paper.value:.3f}", (i + width / 2, paper.value), ha="center",
                            va="bottom", fontsize=6)
        ax.set_xticks(range(len(shown)), [labels[s] for s in shown], rotation=30, ha="right",
                      fontsize=7)
        ax.set_ylabel(label)
        ax.set_title(label)
        if numbers is not None:
            legend(ax)
    missing = [s for s in listed if s not in files]
    if missing:
        figure.text(0.01, 0.01, f"not evaluated in this pool: {', '.join(missing)}",
                    fontsize=6)
    figure.suptitle(title(entry, plan, "accuracy by caption source"))
    figure.tight_layout()
    return figure


def caption_quality(entry: Mapping[str, Any], plan: Mapping[str, Any]) -> Figure:
    """Data quality: per caption set, mean image-text cosine and CLIP-S (quality JSONs)."""
    files = entry["reads"]["quality"]
    names = list(files)
    figure, axes = _figure(2, bars=len(names))
    documents = [read_json(files[n]) for n in names]
    for ax, key, label in ((axes[0], "mean_cos", "Cosine similarity"),
                           (axes[1], "clip_s", "CLIP-S")):
        ax.barh(names, [d.get(key) or 0 for d in documents])
        ax.set_xlabel(label)
        ax.set_title(label)
    figure.suptitle(title(entry, plan, "caption quality per caption set"))
    figure.tight_layout()
    return figure


def fetch_outcomes(entry: Mapping[str, Any], plan: Mapping[str, Any]) -> Figure:
    """Fetch: how many samples were fetched and why the others failed."""
    report = read_json(entry["reads"]["fetch"])
    labels = ["fetched", *report.get("failures_by_reason", {})]
    counts = [report.get("n_fetched", 0), *report.get("failures_by_reason", {}).values()]
    figure, (ax,) = _figure(1, 6.0)
    ax.bar(labels, counts, color=["tab:green"] + ["tab:red"] * (len(labels) - 1))
    ax.set_ylabel("Number of samples")
    ax.set_title(f"{report.get('n_total', sum(counts))} candidates")
    figure.suptitle(title(entry, plan, "fetch outcomes"))
    return figure


def loss_series(record: Mapping[str, Any], name: str) -> tuple[list[float], list[float], bool]:
    """One model's ``name`` loss against samples seen, from its training record, and whether
    that is the whole curve.

    ``loss_curve`` (:func:`capmix.train.parse_train_log`): every logged progress line's
    current value; ``contrastive_loss`` falls back to the total ``loss`` on a line without it.
    A record written before the curve was kept has only ``first_loss`` (logged at the end of
    the first epoch, so drawn at ``samples_seen / checkpoints``) and ``final_loss`` (the last
    epoch's mean, drawn at ``samples_seen``): two points, and False; for those the caption
    loss is not known (no points).
    """
    curve = record.get("loss_curve")
    if curve:
        fallback = "loss" if name == "contrastive_loss" else name
        points = [(p["samples_seen"], p["losses"].get(name, p["losses"].get(fallback)))
                  for p in curve]
        points = [(x, y) for x, y in points if y is not None]
        return [x for x, _ in points], [y for _, y in points], True
    if name != "contrastive_loss":
        return [], [], False
    seen = record.get("samples_seen") or 0
    first_at = seen / record["checkpoints"] if record.get("checkpoints") else 0
    return [first_at, seen], [record.get("first_loss"), record.get("final_loss")], False


def training_loss(entry: Mapping[str, Any], plan: Mapping[str, Any]) -> Figure:
    """Training curves: each model's loss at every logged step against samples seen (the
    training record's ``loss_curve``); a second panel for the caption loss when a model (a
    CoCa) has one. An older record without the curve is drawn from its first and final loss
    only, dashed, and its legend entry says so."""
    files = entry["reads"]["training"]
    if not files:
        raise NotAvailable(f"not available: pool '{plan['pool']}' trains no models")
    records = {strategy: read_json(path) for strategy, path in files.items()}
    captioning = [s for s, r in records.items()
                  if any("caption_loss" in p["losses"] for p in r.get("loss_curve") or [])]
    panels = [("contrastive_loss", "Contrastive loss", list(records))]
    if captioning:
        panels.append(("caption_loss", "Caption loss", captioning))
    figure, axes = _figure(len(panels), 7.0)
    for ax, (name, label, strategies) in zip(axes, panels, strict=True):
        partial = False
        for strategy in strategies:
            x, y, whole = loss_series(records[strategy], name)
            partial |= not whole
            ax.plot(x, y, marker="o" if not whole or len(x) <= 40 else None, markersize=3,
                    linestyle="-" if whole else "--",
                    label=_short(strategy) + ("" if whole else " (first/final loss only)"))
        ax.set_xlabel("Samples seen")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per logged step" + (" (dashed: no curve recorded)"
                                                   if partial else ""))
        legend(ax)
    figure.suptitle(title(entry, plan, "training"))
    return figure


Drawer = Callable[[Mapping[str, Any], Mapping[str, Any]], Figure]
DRAWERS: dict[str, Drawer] = {
    "image_grid": image_grid,
    "accuracy_scatter": accuracy_scatter,
    "accuracy_bars": accuracy_bars,
    "caption_stats": caption_stats,
    "cosine_histograms": cosine_histograms,
    "noise_diversity": noise_diversity,
    "task_differences": task_differences,
    "retrieval_bars": retrieval_bars,
    "pool_scaling": pool_scaling,
    "retrieval_scatter": retrieval_scatter,
    "class_groups": class_groups,
    "diversity_scaling": diversity_scaling,
    "caption_quality": caption_quality,
    "fetch_outcomes": fetch_outcomes,
    "training_loss": training_loss,
}


# ------------------------------------------------------------------------------ across pools

#: The retrieval task of Figure 8's right panel: the paper leaves MS-COCO out (BLIP2 was
#: trained on its captions). A suite without it (the toy one) shows each retrieval task.
FIGURE_8_RETRIEVAL = "Flickr"
#: Where the paper's numbers at Figure 8's points are (the figure itself prints none):
#: Table 4's ImageNet accuracy of the same strategy at the same training scale.
FIGURE_8_PAPER = "Table 4"


def figure_8_panels(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """Figure 8's panels as (column, title, y label): ImageNet, then Flickr retrieval (each
    retrieval task when the suite has no Flickr)."""
    retrieval = retrieval_columns(rows)
    wanted = f"retrieval:{FIGURE_8_RETRIEVAL}"
    panels = [("imagenet", "ImageNet", "ImageNet accuracy")]
    for key in [wanted] if wanted in retrieval else retrieval:
        task = key.split(":", 1)[1]
        name = task if "retrieval" in task.lower() else f"{task} retrieval"
        panels.append((key, name, f"{name} score (mean R@1)"))
    return panels


def _pool_size(n: float) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:g}"


def shared_strategies(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The strategies every pool with rows evaluates (Figure 8's "select baselines": the
    medium pool also trains Table 5's sweeps), in first-seen order; every strategy when no
    one is shared."""
    order = list(dict.fromkeys(r["strategy"] for r in rows))
    pools = {r["pool"] for r in rows}
    shared = [s for s in order
              if {r["pool"] for r in rows if r["strategy"] == s} == pools]
    return shared or order


def figure_8_paper(row: Mapping[str, Any], toy_pools: Sequence[str],
                   numbers: PaperNumbers | None) -> Entry | None:
    """The paper's number beside one joined row: Table 4's ImageNet accuracy of the row's
    strategy at its training scale (:data:`FIGURE_8_PAPER`); None for a toy pool's row or
    where the paper has none."""
    if row["pool"] in toy_pools:
        return None
    return paper_entry(numbers, FIGURE_8_PAPER, strategy=row["strategy"],
                       scale=row["train_scale"], metric="ImageNet")


def pools_scaling(rows: Sequence[Mapping[str, Any]], pools: Sequence[str],
                  toy_pools: Sequence[str], numbers: PaperNumbers | None = None,
                  missing: Mapping[str, str] | None = None,
                  strategies: Sequence[str] | None = None) -> Figure:
    """Figure 8 across pools: per panel (:func:`figure_8_panels`), one line per strategy
    (``strategies``; None: :func:`shared_strategies`) through its pools' points, x =
    candidate pool size (log). ``rows``: the joined
    pool_scaling rows (:func:`capmix.analyses.combine_pool_scaling`); for rows of a real pool
    (not in ``toy_pools``) the paper's number at the same strategy and training scale
    (:data:`FIGURE_8_PAPER`, from ``numbers``) is marked as a hollow marker of the line's
    colour. ``missing``: pool -> why it has no rows (written under the panels)."""

    panels = figure_8_panels(rows)
    figure, axes = _figure(len(panels), 5.5)
    strategies = list(strategies) if strategies is not None else shared_strategies(rows)
    marked = False
    for i, strategy in enumerate(strategies):
        points = sorted((r for r in rows if r["strategy"] == strategy),
                        key=lambda r: r["n_pool"])
        style = {"color": f"C{i % 10}", "linestyle": ("-", "--", ":")[i // 10 % 3]}
        for ax, (key, _, _) in zip(axes, panels, strict=True):
            shown = [r for r in points if r.get(key) is not None]
            ax.plot([r["n_pool"] for r in shown], [r[key] for r in shown], marker="o",
                    label=_short(strategy), **style)
        for row in points:
            paper = figure_8_paper(row, toy_pools, numbers)
            if paper is not None:
                axes[0].scatter([row["n_pool"]], [paper.value], s=70, marker="D",
                                facecolors="none", edgecolors=style["color"], zorder=3)
                marked = True
    if marked:  # one legend entry for every hollow marker, in the legend beside the lines
        axes[-1].scatter([], [], s=70, marker="D", facecolors="none", edgecolors="black",
                         label=f"paper ({FIGURE_8_PAPER}, ImageNet)")
    sizes = sorted({r["n_pool"] for r in rows})
    for ax, (_, panel, label) in zip(axes, panels, strict=True):
        ax.set_xscale("log")
        if sizes:
            ax.set_xticks(sizes, [_pool_size(n) for n in sizes])
            ax.minorticks_off()
        ax.set_xlabel("Candidate pool size")
        ax.set_ylabel(label)
        ax.set_title(panel)
    legend(axes[-1], fontsize=7)
    toy = any(p in toy_pools for p in pools)
    figure.suptitle(f"Figure 8: performance across candidate pool sizes "
                    f"({'toy, ' if toy else ''}pools {', '.join(pools)})")
    if missing:
        import textwrap

        figure.text(0.01, -0.02, "\n".join(textwrap.fill(f"{p}: {why}", 150)
                                            for p, why in missing.items()),
                    fontsize=7, ha="left", va="top")
    figure.tight_layout()
    return figure


#: The cross-pool table's columns besides the retrieval tasks, in order.
FIGURE_8_COLUMNS = ("pool", "strategy", "n_pool", "train_scale", "n_samples", "imagenet")


def pools_scaling_table(documents: Mapping[str, Mapping[str, Any]],
                        rows: Sequence[Mapping[str, Any]], toy_pools: Sequence[str],
                        numbers: PaperNumbers | None
                        ) -> tuple[list[str], list[list[Any]], list[dict[str, Any]]]:
    """The joined rows as a table (header, rows, cell records for
    :func:`capmix.lineage.write_table`): one row per pool and strategy (label
    ``<pool>/<strategy>``), every number with the pool_scaling JSON and field it came from,
    the paper's ImageNet accuracy (:data:`FIGURE_8_PAPER`) beside ours for a real pool, and
    the source file."""

    source = {doc["pool"]: path for path, doc in documents.items()}
    index = {(doc["pool"], r["strategy"]): i for doc in documents.values()
             for i, r in enumerate(doc.get("rows") or [])}
    papers = [figure_8_paper(r, toy_pools, numbers) for r in rows]
    columns = [*FIGURE_8_COLUMNS, *(["imagenet (paper)"] if any(papers) else []),
               *retrieval_columns(rows), "average"]
    header, table, cells = ["row", *columns, "source"], [], []
    for row, paper in zip(rows, papers, strict=True):
        label = f"{row['pool']}/{row['strategy']}"
        path = source[row["pool"]]
        line: list[Any] = [label]
        for column in columns:
            if column == "imagenet (paper)":
                line.append(paper.printed if paper else "")
                if paper and numbers is not None:
                    cells.append({"row": label, "column": column,
                                  "sources": [str(numbers.path)], "field": f"entries.{paper.id}"})
                continue
            value = row.get(column)
            line.append("" if value is None else value)
            if value is not None:
                cells.append({"row": label, "column": column, "sources": [path],
                              "field": f"rows.{index[(row['pool'], row['strategy'])]}.{column}"})
        table.append([*line, path])
    return header, table, cells


def run_pools_figure(paths: Sequence[str], figure_paths: Sequence[Path], table_path: Path,
                     numbers: PaperNumbers | None = None,
                     strategies: Sequence[str] | None = None,
                     absent: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The figure_8_pools rule: the pool_scaling JSONs of ``paths`` (one per pool) joined
    (:func:`capmix.analyses.combine_pool_scaling`), drawn (:func:`pools_scaling`, lines for
    ``strategies``) to every path of ``figure_paths`` (PNG, PDF) and tabled (every joined
    row, :func:`pools_scaling_table`) to ``table_path`` (CSV + cells sidecar). Pools
    without rows (no evaluated model) and ``absent`` ones (pool -> why: not run yet) are
    named under the figure with why. A real pool's
    ImageNet points stand beside the paper's (``numbers``, default
    config/paper_numbers.yaml); a toy pool's never do."""
    from capmix.analyses import combine_pool_scaling
    from capmix.lineage import write_table

    documents = {str(p): read_json(str(p)) for p in paths}
    pools = [doc.get("pool") or Path(path).parent.parent.name
             for path, doc in documents.items()]
    toy_pools = [pool for pool, doc in zip(pools, documents.values(), strict=True)
                 if doc.get("toy")]
    if numbers is None and len(toy_pools) < len(pools):
        numbers = load_paper_numbers()
    missing = {pool: doc.get("reason") or "not available"
               for pool, doc in zip(pools, documents.values(), strict=True)
               if not doc.get("available")}
    rows = combine_pool_scaling(documents.values()).to_dict("records")
    rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in rows]  # a retrieval task one pool's suite lacks: NaN in the join
    missing.update(absent or {})
    for pool, why in missing.items():
        log.info("%s: no rows (%s)", pool, why)
    save_figure(pools_scaling(rows, pools, toy_pools, numbers, missing, strategies),
                [Path(p) for p in figure_paths])
    header, table, cells = pools_scaling_table(documents, rows, toy_pools, numbers)
    Path(table_path).parent.mkdir(parents=True, exist_ok=True)
    write_table(table_path, header, table, cells)
    log.info("figure 8 across pools %s: %d rows", ", ".join(pools), len(rows))
    return {"pools": pools, "rows": len(rows), "missing": missing}


# ------------------------------------------------------------------------------ the stage


def draw_entry(entry: Mapping[str, Any], plan: Mapping[str, Any], out_dir: Path,
               numbers: PaperNumbers | None) -> list[Path]:
    """Draw or write one entry into ``out_dir``; NotAvailable says why it cannot be."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if entry["kind"] == "table":
        table = tables.WRITERS[entry["plot"]](entry, plan, numbers)
        return tables.write_all(table, out_dir, entry["id"], numbers, plan["toy"])
    paths = [out_dir / name for name in entry_files(entry)]
    save_figure(DRAWERS[entry["plot"]](entry, plan), paths)
    return paths


def save_figure(figure: Figure, paths: Sequence[Path]) -> None:
    """Write ``figure`` to each path (PNG, PDF: by suffix; a PDF without its creation date,
    so a redraw of the same data is the same file), then close it."""
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path, bbox_inches="tight", dpi=120,
                           metadata={"CreationDate": None} if path.suffix == ".pdf" else None)
    finally:
        plt.close(figure)


def run_figures(plan: Mapping[str, Any], out_dir: Path, index_path: Path,
                numbers: PaperNumbers | None = None) -> dict[str, Any]:
    """The draw_figures rule: every entry of the plan drawn into ``out_dir`` or listed with
    why not, and the index (entry -> drawn files / reason, configs, category) written.

    A real pool's tables carry the paper's numbers (``numbers``, default
    config/paper_numbers.yaml); a toy pool's never do.
    """
    if numbers is None and not plan["toy"]:
        numbers = load_paper_numbers()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"pool": plan["pool"], "toy": plan["toy"],
                             "code_version": code_version(), "entries": {}}
    for entry in plan["entries"]:
        record = {"paper": entry["paper"], "kind": entry["kind"],
                  "category": entry["category"], "configs": entry["configs"],
                  "caption": entry["caption"], "reads": entry["reads"]}
        reason = entry["reason"]
        files: Sequence[Path] = []
        if reason is None:
            try:
                files = draw_entry(entry, plan, out_dir, None if plan["toy"] else numbers)
            except NotAvailable as why:
                reason = str(why)
        record.update(status="drawn" if reason is None else "not available",
                      reason=reason, files=[str(p) for p in files])
        index["entries"][entry["id"]] = record
        log.info("%s: %s", entry["id"], reason or f"drawn ({len(files)} files)")
    write_json(Path(index_path), index)
    return index
