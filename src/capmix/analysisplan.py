"""What the analyses stage computes for a pool, and from which files (light: no stage).

The paper's figures and tables are drawn from measurements on finished results: caption text
statistics of each training set (Figures 3, 5, 12), score histograms (Figure 4), differences
between evaluated models (Figures 6-11, Table 2) and the subsets' sizes and thresholds
(Tables 4, 5). :mod:`capmix.analyses` computes them; this module says, for one pool and
before anything runs, which analyses its config can feed and with which files, so that the
workflow's rule waits for exactly those files and records why the others are not available.
It imports only light modules, because the Snakefile calls it at start-up (as
:mod:`capmix.findings` is called for the findings table).

:data:`ANALYSES` is the one list of analyses (the rule's outputs, one JSON each); the models
compared by Figures 6, 10 and 11 are config data (``config/analyses.yaml``, top-level
``analyses``), like the findings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from capmix.captionsets import RAW

#: Every analysis, by the name of its file (results/{pool}/analyses/{name}.json), with the
#: figures and tables of the paper it feeds.
ANALYSES: dict[str, tuple[str, ...]] = {
    "caption_stats": ("Figure 3",),
    "cosine_histograms": ("Figure 4",),
    "noise_diversity": ("Figure 5",),
    "diversity_scaling": ("Figure 12", "Section 7"),
    "task_differences": ("Figure 6", "Figure 10"),
    "retrieval": ("Table 2", "Figure 7", "Figure 9"),
    "pool_scaling": ("Figure 8",),
    "class_groups": ("Figure 11",),
    "subset_table": ("Table 4", "Table 5"),
}
#: The suite aggregate that names the ImageNet task (Figures 8, 9, 11).
IMAGENET_GROUP = "ImageNet"
#: How retrieval tasks are recognised in a suite (Table 2, Figures 7, 8, 9).
RETRIEVAL_PROTOCOL = "retrieval"

Plan = dict[str, Any]


def _pools(config: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {p["name"]: p for p in config.get("pools") or []}


def coco_task(config: Mapping[str, Any], pool: Mapping[str, Any]) -> tuple[Any, Any, str | None]:
    """The MS-COCO captions the real pools' visual vocabulary is built from: the suite and
    task (``analyses.visual_vocabulary.task`` of the pool's suite), or why there are none."""
    from capmix.suites import load_suite

    name = config["analyses"]["visual_vocabulary"]["task"]
    if not pool.get("eval"):
        return None, None, (f"pool '{pool['name']}' evaluates on no suite, so it has no "
                            f"'{name}' task captions to build the MS-COCO vocabulary from")
    suite = load_suite(config, pool["eval"]["suite"])
    try:
        return suite, suite.task(name), None
    except KeyError:
        return suite, None, (f"suite '{suite.name}' has no task '{name}' "
                             "(analyses.visual_vocabulary.task)")


def analyses_problems(config: Mapping[str, Any]) -> list[str]:
    """Start-up checks of ``analyses`` a schema cannot express: the models compared must be
    strategies of the catalogue (whether a pool trains them is reported per pool, as not
    available), and the grounding-ratio and histogram bins must divide their range."""
    from capmix.strategies import expand_strategies

    settings = config.get("analyses") or {}
    known = expand_strategies(config.get("strategies") or {})
    problems = []
    pairs = {f"model_pairs.{n}": p for n, p in (settings.get("model_pairs") or {}).items()}
    if settings.get("class_groups"):
        pairs["class_groups"] = settings["class_groups"]
    for where, pair in pairs.items():
        for side in ("a", "b"):
            if pair.get(side) not in known:
                problems.append(f"config key 'analyses.{where}.{side}': '{pair.get(side)}' is "
                                "not a strategy of the catalogue (config key 'strategies')")
    histograms = settings.get("cosine_histograms") or {}
    bins = [("caption_stats.ratio_bin_width", 0.0, 1.0,
             (settings.get("caption_stats") or {}).get("ratio_bin_width")),
            ("cosine_histograms.bin_width", histograms.get("low"), histograms.get("high"),
             histograms.get("bin_width"))]
    for where, low, high, width in bins:
        if None in (low, high, width):
            continue
        steps = (high - low) / width
        if high <= low or abs(steps - round(steps)) > 1e-6:
            problems.append(f"config key 'analyses.{where}': {width} does not divide "
                            f"[{low}, {high}] into whole bins")
    return problems


def _pair(spec: Mapping[str, Any], evaluated: Sequence[str], pool: str) -> dict[str, Any]:
    missing = [s for s in (spec["a"], spec["b"]) if s not in evaluated]
    reason = None
    if missing:
        reason = (f"not available: pool '{pool}' evaluates no model on "
                  f"{' or '.join(repr(m) for m in missing)} (pools[].train.strategies, "
                  f"pools[].eval)")
    return {"a": spec["a"], "b": spec["b"], "paper": spec["paper"], "reason": reason}


def plan_analyses(config: Mapping[str, Any], pool_name: str,
                  files: Mapping[str, Any]) -> Plan:
    """Every analysis of :data:`ANALYSES` for ``pool_name``, its inputs resolved (pure).

    ``files`` are the workflow's paths (common.smk's patterns, formatted for the pool):
    ``subsets`` (strategy -> {summary, samples}), ``mix_table`` (or None), ``scores`` and
    ``captions`` (caption set -> scores parquet / caption manifests), ``eval`` (evaluated
    strategy -> {results, aggregate}) and ``coco_task`` (the MS-COCO task manifest, or None).
    """
    pools = _pools(config)
    if pool_name not in pools:
        raise KeyError(f"no pool named '{pool_name}' (have: {sorted(pools)})")
    pool = pools[pool_name]
    settings = config["analyses"]
    toy = pool["source"]["type"] == "toy"
    evaluated = list(files["eval"])
    suite = None
    if pool.get("eval"):
        from capmix.suites import load_suite

        suite = load_suite(config, pool["eval"]["suite"])
    vocabulary: dict[str, Any]
    if toy:
        vocabulary = {"kind": "toy", "reason": None}
    else:
        _, task, why = coco_task(config, pool)
        vocabulary = {"kind": "coco", "task": task.name if task else None,
                      "manifest": files.get("coco_task"),
                      "min_count": settings["visual_vocabulary"]["min_count"],
                      "reason": None if task else f"not available: {why}"}
    return {
        "pool": pool_name, "toy": toy, "seed": config.get("seed", 0),
        "settings": {k: settings[k] for k in ("caption_stats", "cosine_histograms",
                                              "noise_diversity", "diversity_scaling")},
        "raw": RAW,
        "scores": dict(files["scores"]),
        "captions": {k: list(v) for k, v in files["captions"].items()},
        "subsets": {k: dict(v) for k, v in files["subsets"].items()},
        "mix_table": files.get("mix_table"),
        "eval": {k: dict(v) for k, v in files["eval"].items()},
        "suite": None if suite is None else {
            "name": suite.name,
            "scored": suite.scored,
            "retrieval": [t.name for t in suite.tasks
                          if t.protocol == RETRIEVAL_PROTOCOL and t.scored],
            "imagenet": list(suite.aggregates.get(IMAGENET_GROUP, ())),
        },
        "train_scale": (pool.get("train") or {}).get("scale"),
        "model_pairs": {name: _pair(spec, evaluated, pool_name)
                        for name, spec in (settings.get("model_pairs") or {}).items()},
        "class_groups": {**_pair(settings["class_groups"], evaluated, pool_name),
                         "living_roots": dict(settings["class_groups"]["living_roots"])},
        "vocabulary": vocabulary,
    }


def plan_inputs(plan: Mapping[str, Any]) -> list[str]:
    """Every file the plan reads, each once, sorted (the rule's inputs)."""
    files: set[str] = set(plan["scores"].values())
    files.update(m for manifests in plan["captions"].values() for m in manifests)
    files.update(p for subset in plan["subsets"].values() for p in subset.values())
    files.update(p for run in plan["eval"].values() for p in run.values())
    if plan["mix_table"]:
        files.add(plan["mix_table"])
    if plan["vocabulary"].get("manifest"):
        files.add(plan["vocabulary"]["manifest"])
    return sorted(files)
