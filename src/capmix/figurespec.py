"""Which figures and tables a pool can draw, and from which files (light: no drawing).

The figures and tables are config data (``config/figures.yaml``, top-level ``figures``,
checked by the schema's ``$defs/figure``): each names the paper's figure or table, the
results it reads, the drawing function (:data:`PLOTS`, implemented in :mod:`capmix.figures`
and :mod:`capmix.tables`), its report category and caption. This module resolves, for one
pool and before anything runs, the files each entry reads and why an entry cannot be drawn
(no drawing function yet, a result the pool's targets do not make), so that the workflow's
rule waits for exactly those files and the index lists the rest with the reason. It imports
only the standard library, because the Snakefile calls it at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: Report categories (schema ``$defs/figure.category``) -> the heading `snakemake --report`
#: groups them under.
CATEGORIES: dict[str, str] = {
    "paper figure": "Paper figures",
    "table": "Paper tables",
    "data quality": "Data quality",
    "fetch": "Fetch",
    "training curves": "Training curves",
}
#: Drawing functions (schema ``$defs/figure.plot``; figures.DRAWERS and tables.WRITERS).
FIGURE_PLOTS = ("image_grid", "accuracy_scatter", "accuracy_bars", "caption_stats",
                "cosine_histograms", "noise_diversity", "task_differences", "retrieval_bars",
                "pool_scaling", "retrieval_scatter", "class_groups", "diversity_scaling",
                "caption_quality", "fetch_outcomes", "training_loss")
TABLE_PLOTS = ("quality_table", "retrieval_table", "temperature_table", "subset_table",
               "fairness_table")
PLOTS = (*FIGURE_PLOTS, *TABLE_PLOTS)
#: Result kinds an entry may read besides analyses, with the target that makes them.
RESULT_TARGETS = {"quality": "quality", "eval": "eval", "eval_lines": "eval",
                  "training": "models", "fetch": "fetch", "samples": "subsets",
                  "nocaps_quality": "quality", "no_filter_eval": "eval"}
#: Result kinds an entry reads where the pool has them and goes without where it does not
#: (its table then has no such column): the quality JSONs of the pool's NoCaps pool
#: (``pools[].findings.pools.nocaps``: Table 1's CIDEr) and the evaluation of each caption
#: set's no-filter model (Table 1's ImageNet and Flickr columns), both by caption set.
OPTIONAL_KINDS = ("nocaps_quality", "no_filter_eval")
ANALYSES_PREFIX = "analyses:"
#: Where a pool's figures go: one folder of drawn files and an index of every entry.
FIGURES_DIR = "results/{pool}/figures"
INDEX = f"{FIGURES_DIR}/index.json"
FILES_DIR = f"{FIGURES_DIR}/files"
#: The cross-pool Figure 8 (rule figure_8_pools, config ``figure_8``): every listed pool's
#: pool_scaling rows in one figure (PNG, PDF) and table (CSV + cells sidecar, Markdown, LaTeX).
POOLS_FIGURE_8 = "results/figures/figure_8_pools"
#: The files one drawn entry writes, by kind.
EXTENSIONS = {"figure": (".png", ".pdf"), "table": (".csv", ".cells.json", ".md", ".tex")}

Plan = dict[str, Any]


def figure_problems(config: Mapping[str, Any]) -> list[str]:
    """Start-up checks of ``figures`` a schema cannot express: unique ids, a plot that draws
    the entry's kind (a figure by a figure function, a table by a table one), and ``needs``
    wherever there is no plot (the index says what the entry is waiting for)."""
    problems, seen = [], set()
    for index, entry in enumerate(config.get("figures") or []):
        where = f"config key 'figures[{index}]' ({entry.get('id')})"
        if entry.get("id") in seen:
            problems.append(f"{where}: the id '{entry['id']}' is used twice")
        seen.add(entry.get("id"))
        plot = entry.get("plot")
        allowed = FIGURE_PLOTS if entry.get("kind") == "figure" else TABLE_PLOTS
        if plot is not None and plot not in allowed:
            problems.append(f"{where}: plot '{plot}' does not draw a {entry.get('kind')} "
                            f"(use one of {', '.join(allowed)})")
        if plot is None and not entry.get("needs"):
            problems.append(f"{where}: an entry without a plot must say what it `needs`")
    return problems


def figure_entries(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``figures`` entries, each with ``options`` filled in (ValueError: the problems of
    :func:`figure_problems`)."""
    problems = figure_problems(config)
    if problems:
        raise ValueError("; ".join(problems))
    return [{**entry, "options": dict(entry.get("options") or {})}
            for entry in config.get("figures") or []]


def entry_files(entry: Mapping[str, Any]) -> list[str]:
    """The file names a drawn entry writes (under the pool's FILES_DIR)."""
    return [entry["id"] + ext for ext in EXTENSIONS[entry["kind"]]]


def plan_figures(config: Mapping[str, Any], pool_name: str, targets: Sequence[str],
                 files: Mapping[str, Any]) -> Plan:
    """Every entry of ``figures`` for ``pool_name``: the files it reads, or why it is not
    drawn (pure).

    ``targets`` are the pool's targets; ``files`` the workflow's paths for the pool:
    ``analyses`` (name -> JSON), ``quality`` (caption set -> JSON), ``eval`` (strategy ->
    aggregate JSON), ``eval_lines`` (strategy -> its result lines, JSONL), ``training``
    (strategy -> training JSON), ``fetch`` (the fetch report),
    ``samples`` (``index``: the fetch index, ``table``: the mix table, ``subsets``: strategy
    -> its samples), ``shards`` (the fetched shards' folder, read with the fetch index) and,
    optionally, ``nocaps_quality`` (caption set -> its quality JSON on the pool's NoCaps
    pool) and ``no_filter_eval`` (caption set -> the aggregate JSON of the model trained on
    it with no filter; capmix.strategies.no_filter_strategies). An entry whose result kind
    the pool's targets do not make is not drawn, and says so; an optional kind
    (:data:`OPTIONAL_KINDS`) the pool does not have is left out of the entry's reads.
    """
    pools = {p["name"]: p for p in config.get("pools") or []}
    if pool_name not in pools:
        raise KeyError(f"no pool named '{pool_name}' (have: {sorted(pools)})")
    pool = pools[pool_name]
    toy = pool["source"]["type"] == "toy"
    planned = []
    for entry in figure_entries(config):
        reads: dict[str, Any] = {}
        reason = None
        if entry["plot"] is None:
            reason = f"not available: needs {entry['needs']}"
        for kind in entry["reads"]:
            if reason:
                break
            if kind.startswith(ANALYSES_PREFIX):
                name = kind[len(ANALYSES_PREFIX):]
                if "analyses" not in targets:
                    reason = (f"not available: pool '{pool_name}' does not build the target "
                              "'analyses'")
                elif name not in files["analyses"]:
                    reason = f"not available: no analysis '{name}' (capmix.analysisplan)"
                else:
                    reads.setdefault("analyses", {})[name] = files["analyses"][name]
                continue
            target = RESULT_TARGETS[kind]
            if kind in OPTIONAL_KINDS:
                if target in targets and files.get(kind):
                    reads[kind] = files[kind]
                continue
            if target not in targets:
                reason = (f"not available: pool '{pool_name}' does not build the target "
                          f"'{target}'")
            elif kind == "samples":
                reads[kind], reason = _samples(entry, files, pool_name)
            else:
                reads[kind] = files[kind]
        planned.append({"id": entry["id"], "paper": entry["paper"], "kind": entry["kind"],
                        "category": entry["category"], "plot": entry["plot"],
                        "options": entry["options"], "configs": list(entry["configs"]),
                        "caption": entry["caption"], "reads": reads, "reason": reason})
    train = pool.get("train") or {}
    return {"pool": pool_name, "toy": toy, "train_scale": train.get("scale"),
            "shards": files.get("shards"), "entries": planned}


def _samples(entry: Mapping[str, Any], files: Mapping[str, Any],
             pool: str) -> tuple[dict[str, str], str | None]:
    """An image grid's files: the fetch index, the mix table and the samples of the subset
    it shows the complement of (``options.kept_by``), or why the pool has none."""
    kept_by = (entry.get("options") or {}).get("kept_by")
    samples = files.get("samples") or {}
    if not samples.get("table") or kept_by not in (samples.get("subsets") or {}):
        return {}, (f"not available: pool '{pool}' builds no subset '{kept_by}' (the images "
                    f"{entry['paper']} shows are those it discards)")
    return {"index": samples["index"], "table": samples["table"],
            "kept": samples["subsets"][kept_by]}, None


def plan_inputs(plan: Mapping[str, Any]) -> list[str]:
    """Every file the plan's drawable entries read, each once, sorted (the rule's inputs)."""
    found: set[str] = set()
    for entry in plan["entries"]:
        if entry["reason"]:
            continue
        for value in entry["reads"].values():
            if isinstance(value, str):
                found.add(value)
            else:
                found.update(value.values())
    return sorted(found)


def figure_8_pools(config: Mapping[str, Any]) -> list[str]:
    """The pools the cross-pool Figure 8 joins: ``figure_8.pools`` as listed, or (null, the
    default) every pool of the config that trains and evaluates models (a pool's
    pool_scaling has a row per evaluated model only)."""
    listed = (config.get("figure_8") or {}).get("pools")
    if listed is not None:
        return list(listed)
    return [p["name"] for p in config.get("pools") or [] if p.get("train") and p.get("eval")]


def missing_pool_files(files: Mapping[str, str], config_pools: Sequence[str],
                       exists: Callable[[str], bool],
                       pool_configs: Callable[[], Mapping[str, Sequence[str]]]
                       ) -> dict[str, str]:
    """The pools the cross-pool Figure 8 cannot show yet, each with why: every pool
    (``files``: pool -> its pool_scaling JSON) that this run's config does not define
    (``config_pools``) and whose file does not exist, with the config that makes it
    (``pool_configs()``: pool -> config files, :func:`capmix.config.pool_config_files`;
    called only when a pool is missing, since it reads every config file) and how. The
    figure shows the other pools and names these under its panels, so one scale's run draws
    its figures before the other scales have run. Empty: every input is there or
    will be made by this run."""
    problems: dict[str, str] = {}
    defined: Mapping[str, Sequence[str]] | None = None
    for pool, path in files.items():
        if pool in config_pools or exists(path):
            continue
        defined = pool_configs() if defined is None else defined
        configs = defined.get(pool) or []
        if configs:
            how = " or ".join(f"`snakemake {path} --configfile {c}`" for c in configs)
            made = (f"the config that defines it ({', '.join(configs)}) makes it: run {how} "
                    "(or that config's whole run) first")
        else:
            made = "no config under config/ defines it"
        problems[pool] = (f"{path} is missing and pool '{pool}' is not in this run's config; "
                          f"{made}, or leave '{pool}' out of `figure_8.pools`")
    return problems


def category_heading(category: str) -> str:
    """The report heading of a category (KeyError names the known ones)."""
    try:
        return CATEGORIES[category]
    except KeyError:
        raise KeyError(f"unknown figure category '{category}' (known: "
                       f"{', '.join(CATEGORIES)})") from None


def read_captions(config: Mapping[str, Any], report_dir: Path) -> dict[str, str]:
    """Entry id -> its caption text (workflow/report/<caption>); a missing file is named."""
    captions = {}
    for entry in figure_entries(config):
        path = Path(report_dir) / entry["caption"]
        if not path.exists():
            raise FileNotFoundError(f"config key 'figures' ({entry['id']}): caption file "
                                    f"{path} does not exist")
        captions[entry["id"]] = path.read_text(encoding="utf-8").strip()
    return captions
