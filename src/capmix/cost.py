"""What a config will cost before it runs: per pool and GPU stage, images or samples and
GPU-hours, from published throughputs (config ``costs``, ``config/costs.yaml``).

The paper's Appendix B gives the figures a budget needs: BLIP2 (OPT-2.7B) captions 75
images/s and CLIP ViT-L/14 computes features for 490 samples/s on one A100, and one CLIP
trains in 4 / 40 / 960 A100-hours at DataComp small / medium / large. They are config data,
each with its ``source`` (and ``estimate: true`` where it is derived rather than reported),
so a new captioner or scale adds its figure where it adds its entry. :func:`pipeline_cost`
turns a validated config into :class:`CostLine` s:

* ``caption``: images x temperatures x ``num_captions`` per captioner, at its rate;
* ``embed_images``: the pool's images once per scorer (free where DataComp ships them);
* ``score``: images x caption sets (text tower; raw is free where DataComp ships its score);
  the scorer's rate is the paper's image+text figure, so text alone costs at most this;
* ``train``: one CLIP per trained strategy at its scale's hours (samples seen = scale's);
* ``evaluate``: one run of the suite per trained model (test images = the tasks' sizes).

Which stages count follows the pool's targets, as ``rule all`` does. CPU stages (fetch,
mixing, shards, quality) and downloads are not counted. A pool's images are the DataComp
scale's pool size (metadata rows: fewer are fetched), a toy split's size, or what an earlier
run recorded (``results/{pool}/fetch/report.json``, else ``metadata/manifest.json``); else
unknown, and so is every figure that depends on it.

``python -m capmix.cost [CONFIG ...]`` prints the table for the config the workflow would run
with (the shipped base plus CONFIGs, as ``--configfile``), ``make cost CONFIG=...`` too, and
the Snakefile prints it at the start of every dry run (:func:`dry_run_requested`).

A light module: the Snakefile imports it, so it reads config and small JSON files only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capmix.captionsets import RAW, caption_set_name, pool_caption_sets, pool_temperatures
from capmix.scales import pool_train_strategies
from capmix.strategies import pool_needs_clusters, pool_sources
from capmix.suites import load_suite

__all__ = ["BASES", "DOWNLOADED_BACKENDS", "SHIPPED_BACKENDS", "CostLine", "PoolImages",
           "cost_table", "dry_run_requested", "pipeline_cost", "pool_images", "total_gpu_hours"]

#: Captioner backends that download captions instead of generating them (no GPU):
#: ``capmix.released.BACKEND`` (a test holds them equal; that module loads pandas).
DOWNLOADED_BACKENDS: tuple[str, ...] = ("released",)
#: Captioner backends that read captions the source ships in its metadata (no GPU, no
#: download): ``capmix.shipped.BACKEND`` (a test holds them equal).
SHIPPED_BACKENDS: tuple[str, ...] = ("shipped",)

#: What a line's GPU-hours rest on. ``source``: a figure its source reports (the paper's
#: Appendix B, ...); ``estimate``: a figure derived from one (``estimate: true``, its source
#: says how); ``upper bound``: the scorer's image+text rate applied to text alone; ``free``:
#: no GPU (shipped with the metadata, downloaded, or a toy stand-in on the CPU);
#: ``unknown``: no figure in ``costs``, or the pool's size is not known.
BASES: tuple[str, ...] = ("source", "estimate", "upper bound", "free", "unknown")

#: Targets that caption / score every caption set of a pool; those that need only the sets
#: the pool's strategies read; those that train and those that evaluate (``rule all``).
CAPTION_ALL = frozenset({"captions", "scores", "quality"})
SCORE_ALL = frozenset({"scores", "quality"})
MIX = frozenset({"subsets", "train_shards", "models", "eval", "findings"})
TRAIN = frozenset({"models", "eval", "findings"})
EVALUATE = frozenset({"eval", "findings"})

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class PoolImages:
    """How many images a pool has (None: unknown) and where that number comes from."""

    count: int | None
    basis: str


@dataclass(frozen=True)
class CostLine:
    """One stage of one pool: what it processes, how many, and GPU-hours (None: unknown)."""

    pool: str
    stage: str
    what: str
    count: int | None
    unit: str
    gpu_hours: float | None
    basis: str
    source: str | None = None
    detail: str = ""
    missing: str = ""  # unknown for want of a figure: the config key that would give it


def pool_images(config: Mapping[str, Any], pool: Mapping[str, Any],
                results: Path | None = None) -> PoolImages:
    """The images a pool's GPU stages process: an earlier run's count, else the config's."""
    if results is not None:
        report = Path(results) / pool["name"] / "fetch" / "report.json"
        manifest = Path(results) / pool["name"] / "metadata" / "manifest.json"
        if report.is_file():
            return PoolImages(int(json.loads(report.read_text())["n_fetched"]),
                              f"fetched ({report})")
        if manifest.is_file():
            return PoolImages(int(json.loads(manifest.read_text())["rows"]),
                              f"metadata rows ({manifest}; fewer will be fetched)")
    source = pool["source"]
    if source["type"] == "toy":
        world = source["world"]
        size = config["toy_worlds"][world]["splits"][source["split"]]
        return PoolImages(int(size), f"toy world '{world}', split '{source['split']}'")
    if source["type"] == "datacomp":
        sizes = (config.get("costs") or {}).get("pool_sizes", {}).get("datacomp", {})
        scale = source["scale"]
        if source.get("max_files"):
            return PoolImages(None, f"DataComp {scale}, first {source['max_files']} parquet "
                                    "files only (run the metadata stage to count them)")
        if scale not in sizes:
            return PoolImages(None, f"DataComp {scale}: no costs.pool_sizes.datacomp entry")
        return PoolImages(int(sizes[scale]), f"DataComp {scale} candidate pool (metadata rows; "
                                             "fewer images are fetched)")
    return PoolImages(None, f"{source['type']} source: size unknown until its metadata stage "
                            "has run")


def _targets(config: Mapping[str, Any], pool: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(pool.get("targets") or config.get("targets") or [])


def _mixed_sets(config: Mapping[str, Any], pool: Mapping[str, Any]) -> set[str]:
    """The caption sets the pool's strategies read, and those its findings' aliases name."""
    sets = {s for sets in pool_sources(config, pool).values() for s in sets}
    own = set(pool_caption_sets(config.get("captioners") or {}, pool))
    aliases = set(((pool.get("findings") or {}).get("aliases") or {}).values())
    return sets | (aliases & own)


def scored_sets(config: Mapping[str, Any], pool: Mapping[str, Any]) -> list[str]:
    """The caption sets a pool's targets score (raw first), as ``rule all`` would build."""
    targets = _targets(config, pool)
    if pool.get("scorer") is None:
        return []
    every = pool_caption_sets(config.get("captioners") or {}, pool)
    wanted = set(every) if targets & SCORE_ALL else set()
    if targets & MIX:
        wanted |= _mixed_sets(config, pool)
    return [s for s in every if s in wanted]


def captioned_sets(config: Mapping[str, Any], pool: Mapping[str, Any]) -> list[str]:
    """The synthetic caption sets a pool's targets generate."""
    targets = _targets(config, pool)
    every = pool_caption_sets(config.get("captioners") or {}, pool)
    wanted = set(every) if targets & CAPTION_ALL else set()
    if targets & MIX:
        wanted |= _mixed_sets(config, pool)
    return [s for s in every if s in wanted and s != RAW]


def _reference_pools(config: Mapping[str, Any]) -> set[str]:
    """Pools whose image embeddings another pool's image clusters read."""
    names = set()
    for pool in config.get("pools") or []:
        spec = ((pool.get("mix") or {}).get("image_clusters")) or {}
        if spec.get("reference_pool") and _targets(config, pool) & MIX \
                and pool_needs_clusters(config, pool):
            names.add(spec["reference_pool"])
    return names


def _hours(count: int | None, rate: float) -> float | None:
    return None if count is None else count / rate / SECONDS_PER_HOUR


def _times(count: int | None, factor: int) -> int | None:
    return None if count is None else count * factor


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _gpu(config: Mapping[str, Any]) -> str:
    return (config.get("costs") or {}).get("gpu", "GPU")


def _rate_basis(entry: Mapping[str, Any]) -> str:
    return "estimate" if entry.get("estimate") else "source"


def _caption_lines(config: Mapping[str, Any], pool: Mapping[str, Any],
                   images: int | None) -> list[CostLine]:
    captioners = config.get("captioners") or {}
    rates = (config.get("costs") or {}).get("captioners") or {}
    sets = captioned_sets(config, pool)
    lines = []
    for name in pool.get("captioners") or []:
        temperatures = [t for t in pool_temperatures(captioners, pool, name)
                        if caption_set_name(name, t) in sets]
        if not temperatures:
            continue
        spec = captioners[name]
        per_image = len(temperatures) * int((spec.get("decoding") or {}).get("num_captions", 1))
        count = _times(images, per_image)
        what = f"{name} at T = {', '.join(str(float(t)) for t in temperatures)}"
        per_set = per_image // len(temperatures)
        detail = f"{per_set} captions per image and temperature" if per_set > 1 else ""
        if spec["backend"] in DOWNLOADED_BACKENDS:
            lines.append(CostLine(pool["name"], "caption", what, count, "captions", 0.0, "free",
                                  "downloaded (the released captions)", detail))
        elif spec["backend"] in SHIPPED_BACKENDS:
            lines.append(CostLine(pool["name"], "caption", what, count, "captions", 0.0, "free",
                                  "shipped in the source's metadata", detail))
        elif spec.get("toy_model"):
            lines.append(CostLine(pool["name"], "caption", what, count, "captions", 0.0, "free",
                                  "toy stand-in (CPU)", detail))
        elif name in rates:
            entry = rates[name]
            lines.append(CostLine(pool["name"], "caption", what, count, "captions",
                                  _hours(count, entry["images_per_second"]),
                                  _rate_basis(entry) if count is not None else "unknown",
                                  entry["source"], detail))
        else:
            lines.append(CostLine(pool["name"], "caption", what, count, "captions", None,
                                  "unknown", None, detail, f"costs.captioners.{name}"))
    return lines


def _scorer_lines(config: Mapping[str, Any], pool: Mapping[str, Any], images: int | None,
                  reference: bool) -> list[CostLine]:
    scorer = pool.get("scorer")
    sets = scored_sets(config, pool)
    if scorer is None or not (sets or reference or (
            _targets(config, pool) & MIX and pool_needs_clusters(config, pool))):
        return []
    spec = (config.get("scorers") or {})[scorer]
    entry = ((config.get("costs") or {}).get("scorers") or {}).get(scorer)
    source = pool["source"]
    datacomp = source["type"] == "datacomp"
    name = pool["name"]

    def priced(stage: str, what: str, count: int | None, unit: str, bound: bool,
               detail: str = "") -> CostLine:
        if spec.get("toy_model"):
            return CostLine(name, stage, what, count, unit, 0.0, "free", "toy stand-in (CPU)",
                            detail)
        if entry is None:
            return CostLine(name, stage, what, count, unit, None, "unknown", None, detail,
                            f"costs.scorers.{scorer}")
        if count is None:
            return CostLine(name, stage, what, None, unit, None, "unknown", entry["source"],
                            detail)
        basis = "upper bound" if bound else _rate_basis(entry)
        return CostLine(name, stage, what, count, unit, _hours(count, entry["images_per_second"]),
                        basis, entry["source"], detail)

    lines = []
    shipped_images = spec.get("shipped_image_embeddings")
    if datacomp and shipped_images and source.get("include_npz"):
        lines.append(CostLine(name, "embed_images", f"{scorer}: image tower", images, "images",
                              0.0, "free", f"shipped with DataComp's metadata (npz "
                              f"'{shipped_images}')"))
    else:
        lines.append(priced("embed_images", f"{scorer}: image tower", images, "images", False))
    if RAW in sets:
        shipped_raw = spec.get("shipped_raw_score")
        if datacomp and shipped_raw:
            lines.append(CostLine(name, "score", f"{scorer}: raw", images, "captions", 0.0,
                                  "free", f"shipped with DataComp's metadata "
                                          f"('{shipped_raw}')"))
        else:
            lines.append(priced("score", f"{scorer}: raw", images, "captions", True))
    for captioner in pool.get("captioners") or []:
        own = [s for s in sets if s.rpartition("/")[0] == captioner]
        if own:
            temperatures = ", ".join(s.rpartition("/")[2] for s in own)
            decoding = (config.get("captioners") or {})[captioner].get("decoding") or {}
            per_image = len(own) * int(decoding.get("num_captions", 1))
            lines.append(priced("score", f"{scorer}: {captioner} at T = {temperatures}",
                                _times(images, per_image), "captions", True,
                                "text tower only"))
    return lines


def _train_lines(config: Mapping[str, Any], pool: Mapping[str, Any]) -> list[CostLine]:
    train = pool.get("train")
    if not train or not _targets(config, pool) & TRAIN:
        return []
    scale_name = train["scale"]
    scale = config["train_scales"][scale_name]
    models = len(pool_train_strategies(config, pool))
    if not models:
        return []
    samples = models * int(scale["samples_seen"])
    what = f"{_plural(models, 'CLIP')} at scale {scale_name}"
    detail = f"{scale['samples_seen']:,} samples seen each"
    free = None if scale.get("gpus_per_node") else "toy scale (CPU)"
    return _per_model_lines(config, pool, "train", scale_name, models, what, samples,
                            "samples seen", detail, free)


def _suite_images(config: Mapping[str, Any], pool: Mapping[str, Any], suite: Any) -> int | None:
    sizes = []
    for task in suite.tasks:
        if task.size is not None:
            sizes.append(int(task.size))
        elif suite.toy and task.split and pool["source"]["type"] == "toy":
            sizes.append(int(config["toy_worlds"][pool["source"]["world"]]["splits"][task.split]))
        else:
            return None
    return sum(sizes)


def _eval_lines(config: Mapping[str, Any], pool: Mapping[str, Any]) -> list[CostLine]:
    evaluation = pool.get("eval")
    if not evaluation or not pool.get("train") or not _targets(config, pool) & EVALUATE:
        return []
    models = len(pool_train_strategies(config, pool))
    if not models:
        return []
    suite = load_suite(config, evaluation["suite"])
    per_model = _suite_images(config, pool, suite)
    count = _times(per_model, models)
    what = f"{_plural(models, 'model')} on suite {suite.name}"
    detail = _plural(len(suite.tasks), "task") + (f", {per_model:,} test images per model"
                                                   if per_model is not None else "")
    free = "toy suite (CPU)" if suite.toy else None
    return _per_model_lines(config, pool, "evaluate", suite.name, models, what, count,
                            "test images", detail, free)


def _per_model_lines(config: Mapping[str, Any], pool: Mapping[str, Any], stage: str, key: str,
                     models: int, what: str, count: int | None, unit: str, detail: str,
                     free: str | None) -> list[CostLine]:
    """A stage priced per model (training at a scale, evaluation on a suite): free on the CPU,
    unknown without a ``costs.{train,eval}.<key>`` entry, else models x its GPU-hours."""
    if free is not None:
        return [CostLine(pool["name"], stage, what, count, unit, 0.0, "free", free, detail)]
    section = "train" if stage == "train" else "eval"
    entry = ((config.get("costs") or {}).get(section) or {}).get(key)
    if entry is None:
        return [CostLine(pool["name"], stage, what, count, unit, None, "unknown", None, detail,
                         f"costs.{section}.{key}")]
    return [CostLine(pool["name"], stage, what, count, unit, models * float(entry["gpu_hours"]),
                     _rate_basis(entry), entry["source"],
                     detail + f"; {entry['gpu_hours']:g} {_gpu(config)}-hours each")]


def pipeline_cost(config: Mapping[str, Any], results: Path | None = None,
                  ) -> tuple[dict[str, PoolImages], list[CostLine]]:
    """Every pool's images, and a line per (pool, GPU stage) its targets run.

    ``config`` is validated (defaults filled in, as ``capmix.config`` returns it); ``results``
    is the results root whose earlier fetch or metadata counts replace the config's sizes.
    """
    references = _reference_pools(config)
    images: dict[str, PoolImages] = {}
    lines: list[CostLine] = []
    for pool in config.get("pools") or []:
        counted = pool_images(config, pool, results)
        images[pool["name"]] = counted
        lines += _caption_lines(config, pool, counted.count)
        lines += _scorer_lines(config, pool, counted.count, pool["name"] in references)
        lines += _train_lines(config, pool)
        lines += _eval_lines(config, pool)
    return images, lines


def total_gpu_hours(lines: Sequence[CostLine]) -> float:
    """The GPU-hours of the lines whose figure is known (unknown ones are listed apart)."""
    return sum(line.gpu_hours for line in lines if line.gpu_hours is not None)


def _number(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def _hours_text(hours: float | None, bound: bool = False) -> str:
    if hours is None:
        return "unknown"
    return ("≤ " if bound else "") + f"{hours:,.1f}"


def cost_table(config: Mapping[str, Any], results: Path | None = None,
               title: str = "") -> str:
    """The cost of a config as markdown: pool sizes, a line per stage, totals, sources."""
    images, lines = pipeline_cost(config, results)
    gpu = _gpu(config)
    sources: list[str] = []
    for line in lines:
        if line.source and line.basis != "free" and line.source not in sources:
            sources.append(line.source)
    out = [f"Cost before commitment{': ' + title if title else ''} (GPU-hours on one {gpu}; "
           "python -m capmix.cost)", ""]
    out += ["| pool | images | from |", "| --- | ---: | --- |"]
    out += [f"| {name} | {_number(counted.count)} | {counted.basis} |"
            for name, counted in images.items()]
    out += ["", f"| pool | stage | what | count | {gpu}-hours | basis |",
            "| --- | --- | --- | ---: | ---: | --- |"]

    def basis(line: CostLine) -> str:
        if line.basis == "free":
            return f"free: {line.source}"
        if line.missing:
            return f"unknown: no `{line.missing}`"
        if line.basis == "unknown":
            return f"unknown: pool size [{sources.index(line.source) + 1}]"
        if line.source in sources:
            return f"{line.basis} [{sources.index(line.source) + 1}]"
        return line.basis

    def total_text(subset: Sequence[CostLine]) -> str:
        unknown = sum(line.gpu_hours is None for line in subset)
        return f"{total_gpu_hours(subset):,.1f}" + (f" + unknown ({_plural(unknown, 'line')})"
                                                     if unknown else "")

    for line in lines:
        what = f"{line.what} ({line.detail})" if line.detail else line.what
        count = "unknown" if line.count is None else f"{line.count:,} {line.unit}"
        out.append(f"| {line.pool} | {line.stage} | {what} | {count} "
                   f"| {_hours_text(line.gpu_hours, line.basis == 'upper bound')} "
                   f"| {basis(line)} |")
    if len(images) > 1:
        for name in images:
            own = [line for line in lines if line.pool == name]
            if own:
                out.append(f"| {name} | total | | | {total_text(own)} | |")
    out.append(f"| **total** | | | | **{total_text(lines)}** | |")
    stages = list(dict.fromkeys(line.stage for line in lines))
    out += ["", f"By stage ({gpu}-hours): " + ", ".join(
        f"{stage} {total_text([line for line in lines if line.stage == stage])}"
        for stage in stages) + "."]
    bounded = sum(line.gpu_hours or 0.0 for line in lines if line.basis == "upper bound")
    estimated = sum(line.gpu_hours or 0.0 for line in lines if line.basis == "estimate")
    if bounded or estimated:
        out += ["", f"Of the total, {bounded:,.1f} are upper bounds and {estimated:,.1f} "
                    "estimates."]
    notes = {
        "source": "source: a figure its source reports",
        "estimate": "estimate: derived from a reported figure, not measured (the source says "
                    "how)",
        "upper bound": "upper bound (≤): the scorer's image+text rate applied to its text "
                       "tower alone",
        "free": "free: no GPU",
        "unknown": "unknown: no figure in config `costs`, or the pool's size is unknown; not "
                   "in the total",
    }
    out += [""] + [f"- {notes[b]}" for b in BASES if any(line.basis == b for line in lines)]
    out.append("- not counted: CPU stages (fetch, metadata, mixing, training shards, quality) "
               "and downloads")
    if sources:
        out += ["", "Sources:"] + [f"{i}. {s}" for i, s in enumerate(sources, 1)]
    return "\n".join(out) + "\n"


def dry_run_requested(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is a ``snakemake`` command line asking for a dry run (``-n``,
    ``--dry-run``, ``-np``, ...), read by Snakemake's own argument parser.

    The Snakefile prints the cost then: Snakemake runs ``onstart`` only on real runs, and a
    job's own Snakemake process (SLURM, ``--mode remote``) is not the main process.
    """
    if not argv or not Path(argv[0]).name.startswith("snakemake") \
            and not str(argv[0]).endswith("snakemake/__main__.py"):
        return False
    tokens = list(argv[1:])
    if not any(t.startswith("--dry") or (t.startswith("-") and not t.startswith("--")
                                          and "n" in t) for t in tokens):
        return False  # the common case: no need to build Snakemake's parser
    try:
        from snakemake.cli import get_argument_parser

        args, _ = get_argument_parser().parse_known_args(tokens)
    except (ImportError, SystemExit):
        return False
    return bool(getattr(args, "dryrun", False))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m capmix.cost [CONFIG ...]``: the cost table of the config the workflow would
    run with (the shipped base plus CONFIGs, as ``snakemake --configfile``)."""
    import argparse

    from capmix.config import ConfigError, pipeline_config

    parser = argparse.ArgumentParser(prog="python -m capmix.cost", description=main.__doc__)
    parser.add_argument("files", nargs="*", type=Path, help="config files (as --configfile)")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="results root: pools already fetched are counted from it "
                             "(default: results)")
    args = parser.parse_args(argv)
    try:
        config = pipeline_config(*args.files)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    title = ", ".join(str(f) for f in args.files) or "the embedded default"
    sys.stdout.write(cost_table(config, args.results, title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
