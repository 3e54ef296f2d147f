"""Evaluation suites as config data: the task table, its checks, and DataComp's aggregates.

A suite (``config/eval_suites.yaml``) is a named list of tasks, the groups it aggregates and
where its data lives; this module reads and checks it (:func:`load_suite`,
:func:`eval_problems`), lists what the workflow must build (:func:`real_eval_data_dirs`,
:func:`toy_eval_tasks`), and turns a model's results into DataComp's aggregates
(:func:`aggregate`, :func:`aggregate_file`).

It is imported by the config checker (:mod:`capmix.config`) and by the Snakefile at start-up,
so it stays light: no torch, open_clip, PIL or webdataset, and no other capmix stage. The
evaluation itself is :mod:`capmix.evaluate`; the task directories it reads are written and
fetched by :mod:`capmix.evaldata`; the metrics are :mod:`capmix.evalmetrics`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capmix.imagenet_classes import ClassListError, class_list_problems, class_names

log = logging.getLogger(__name__)

#: How a task is evaluated. ``classification``: zero-shot classification (acc1, acc5,
#: mean_per_class_recall). The WILDS and fairness protocols add DataComp's group metrics over
#: the per-sample metadata (``npy``) the task's shards carry; their fields, in order:
METADATA_FIELDS: dict[str, tuple[str, ...]] = {
    "wilds_iwildcam": ("location", "sequence", "year", "month", "day", "hour", "minute",
                       "second", "y"),
    "wilds_camelyon17": ("hospital", "slide", "y"),
    "wilds_fmow": ("region", "year", "y"),
    "dollar_street": ("income_ds", "income_meta", "region"),
    "geode": ("region", "country"),
    "faces": ("age", "gender", "race", "race_binary"),
}
#: Every protocol a task may name, defined here only: the config schema's enum
#: (``eval_suites.*.tasks[].protocol``) is held equal to it by a test.
PROTOCOLS: tuple[str, ...] = ("classification", "retrieval", "winogavil", *METADATA_FIELDS)
TASK_MANIFEST = "capmix_task.json"  # written into every task directory capmix builds/fetches


class EvalConfigError(ValueError):
    """A suite that cannot be evaluated as configured; the message names suite and task."""


# ------------------------------------------------------------------------------ the suite


@dataclass(frozen=True)
class Task:
    """One evaluation task of a suite (an ``eval_suites.<suite>.tasks`` entry)."""

    key: str
    name: str
    protocol: str = "classification"
    main_metric: str | None = "acc1"
    size: int | None = None
    data: str = ""
    source: Mapping[str, Any] | None = None
    split: str | None = None  # toy suites: the toy world split the task is built from
    #: The suite's class subset (``classes``), for its classification tasks: class names as
    #: in the tasks' classnames.txt, given in the config or by a file (one name a line), or
    #: CaptionNet's class list (``captionnet_file``: indices, WordNet ids or names), mapped
    #: to names through the classnames.txt of the suite's ImageNet-1k task, whose ``data``
    #: directory is ``classes_reference`` (:func:`resolve_class_subset`).
    classes: tuple[str, ...] | None = None
    classes_file: str | None = None
    classes_captionnet: str | None = None
    classes_reference: str | None = None

    @property
    def scored(self) -> bool:
        return self.main_metric is not None


@dataclass(frozen=True)
class Suite:
    """A named list of tasks, the groups it aggregates, and where its data lives."""

    name: str
    tasks: tuple[Task, ...]
    aggregates: Mapping[str, tuple[str, ...]]
    toy: bool = False
    data_dir: str | None = None
    templates: tuple[str, ...] = ()

    def task(self, name: str) -> Task:
        for task in self.tasks:
            if task.name == name or task.key == name:
                return task
        raise KeyError(name)

    @property
    def scored(self) -> list[str]:
        return [t.name for t in self.tasks if t.scored]


def task_class_subset(task: Task) -> tuple[str, ...] | None:
    """The class names a task is restricted to (its suite's ``classes``), or None. A
    ``classes.file`` is read when the task is evaluated (the user supplies it, e.g. the names
    of CaptionNet's 100 classes); a missing or empty file is an error naming it. A
    CaptionNet class list must have been mapped first (:func:`resolve_class_subset`)."""
    if task.classes_captionnet is not None:
        raise EvalConfigError(f"task '{task.name}': the CaptionNet class list "
                              f"{task.classes_captionnet} is not mapped to class names yet "
                              f"(capmix.suites.resolve_class_subset)")
    if task.classes is not None:
        return task.classes
    if task.classes_file is None:
        return None
    path = Path(task.classes_file)
    if not path.is_file():
        raise EvalConfigError(f"task '{task.name}': class subset file {path} is missing")
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                  if line.strip() and not line.lstrip().startswith("#"))
    if not names:
        raise EvalConfigError(f"task '{task.name}': class subset file {path} names no class")
    return names


#: What a suite's ``classes`` may hold: exactly one of these (the schema lists the same).
CLASS_SUBSET_KINDS: tuple[str, ...] = ("names", "file", "captionnet_file")
#: The key of the task whose classnames.txt maps a CaptionNet class list to class names,
#: unless ``classes.imagenet_task`` says otherwise: DataComp's ImageNet-1k task.
DEFAULT_IMAGENET_TASK = "imagenet1k"


def resolve_class_subset(suite: Suite, data_dir: Path) -> Suite:
    """The suite with its CaptionNet class list (``classes.captionnet_file``) read and mapped
    to the class names of its ImageNet-1k task (``{data_dir}/{task data}/classnames.txt``,
    the names its classifier uses); unchanged when it has none. Called before the first task
    is evaluated, so a bad list stops the job before any model work, naming file and line."""
    pending = [t for t in suite.tasks if t.classes_captionnet is not None]
    if not pending:
        return suite
    reference = Path(data_dir) / str(pending[0].classes_reference) / "classnames.txt"
    if not reference.is_file():
        raise EvalConfigError(f"eval suite '{suite.name}': {reference} is missing (the "
                              f"ImageNet-1k class names its CaptionNet class list is mapped to)")
    imagenet_names = [line.strip() for line in reference.read_text(encoding="utf-8").splitlines()
                      if line.strip()]
    try:
        names = class_names(Path(str(pending[0].classes_captionnet)), imagenet_names,
                            str(reference))
    except ClassListError as exc:
        raise EvalConfigError(f"eval suite '{suite.name}': {exc}") from exc
    log.info("eval suite '%s': %d classes from %s (names from %s)", suite.name, len(names),
             pending[0].classes_captionnet, reference)
    tasks = tuple(dataclasses.replace(t, classes=names, classes_captionnet=None)
                  if t.classes_captionnet is not None else t for t in suite.tasks)
    return dataclasses.replace(suite, tasks=tasks)


def default_data_name(key: str) -> str:
    """DataComp's directory name for a webdataset task: ``wds_{key with / as -}_test``."""
    return f"wds_{key.replace('/', '-')}_test"


def suite_problems(name: str, spec: Mapping[str, Any]) -> list[str]:
    """What is wrong with one suite definition, each problem naming the suite and task."""
    problems = []
    names: set[str] = set()
    keys: set[str] = set()
    for entry in spec.get("tasks") or []:
        label = f"eval suite '{name}', task '{entry.get('name')}'"
        if entry.get("protocol", "classification") not in PROTOCOLS:
            problems.append(f"{label}: protocol '{entry.get('protocol')}' is not one of "
                            f"{list(PROTOCOLS)}")
        if entry.get("name") in names:
            problems.append(f"{label}: the name is used twice")
        if entry.get("key") in keys:
            problems.append(f"{label}: the key '{entry.get('key')}' is used twice")
        names.add(entry.get("name"))
        keys.add(entry.get("key"))
        if spec.get("toy") and not entry.get("split"):
            problems.append(f"{label}: a toy task needs the toy world `split` it is built from")
    if not names:
        problems.append(f"eval suite '{name}': no tasks")
    scored = {t.get("name") for t in spec.get("tasks") or [] if t.get("main_metric", "acc1")}
    for group, members in (spec.get("aggregates") or {}).items():
        for member in members:
            if member not in scored:
                problems.append(f"eval suite '{name}', aggregate '{group}': '{member}' is not "
                                f"a scored task of the suite")
    subset = spec.get("classes") or {}
    if subset and sum(bool(subset.get(kind)) for kind in CLASS_SUBSET_KINDS) != 1:
        problems.append(f"eval suite '{name}': `classes` needs exactly one of "
                        f"{', '.join(f'`{k}`' for k in CLASS_SUBSET_KINDS)}")
    if subset.get("captionnet_file"):
        reference = subset.get("imagenet_task") or DEFAULT_IMAGENET_TASK
        if not any(t.get("key") == reference
                   and t.get("protocol", "classification") == "classification"
                   for t in spec.get("tasks") or []):
            problems.append(f"eval suite '{name}': `classes.captionnet_file` is mapped to "
                            f"class names through the ImageNet-1k task '{reference}' "
                            f"(`classes.imagenet_task`), which is not a classification task "
                            f"key of the suite")
    if spec.get("toy") and not spec.get("templates"):
        problems.append(f"eval suite '{name}': a toy suite needs zero-shot `templates`")
    return problems


def eval_problems(config: Mapping[str, Any]) -> list[str]:
    """Every suite's problems, and pools that evaluate on a suite they cannot use."""
    suites = config.get("eval_suites") or {}
    problems = [p for name, spec in sorted(suites.items()) for p in suite_problems(name, spec)]
    for name, spec in sorted(suites.items()):
        # a CaptionNet class list already in place is read now, not after training: its
        # indices and WordNet ids are checked (its names need the task data: at evaluation)
        listed = ((spec.get("classes") or {}).get("captionnet_file"))
        if listed and Path(listed).is_file():
            problems += [f"eval suite '{name}', classes.captionnet_file: {p}"
                         for p in class_list_problems(Path(listed))]
    for pool in config.get("pools", []):
        evaluation = pool.get("eval")
        if not evaluation:
            continue
        where = f"config key 'pools' (pool '{pool['name']}').eval"
        suite = evaluation["suite"]
        if suite not in suites:
            problems.append(f"{where}: unknown suite '{suite}' (defined: {sorted(suites)})")
        elif suites[suite].get("toy") and not pool["source"].get("world"):
            problems.append(f"{where}: suite '{suite}' is built from a toy world, but the "
                            f"pool's source is '{pool['source']['type']}' with no toy `world`")
        elif not suites[suite].get("toy") and not suites[suite].get("data_dir"):
            problems.append(f"{where}: suite '{suite}' has no data_dir to fetch its tasks to")
        if not pool.get("train"):
            problems.append(f"{where}: the pool trains no models (no `train`), so there is "
                            f"nothing to evaluate")
    return problems


def real_eval_data_dirs(config: Mapping[str, Any]) -> list[str]:
    """The directories real (non-toy) suites fetch their task data to, without trailing slash.

    The workflow constrains its ``eval_data`` rule to these, so that a task manifest path
    matches exactly one rule.
    """
    return sorted({spec["data_dir"].rstrip("/")
                   for spec in (config.get("eval_suites") or {}).values()
                   if not spec.get("toy") and spec.get("data_dir")})


def toy_eval_tasks(config: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Data directory name -> (suite, task) of every toy-suite task, sorted by directory.

    A toy world's task data are built by one job (they are small and read the same world), so
    the workflow needs the whole list up front; a directory two toy suites share is built once.
    """
    tasks: dict[str, tuple[str, str]] = {}
    for name, spec in sorted((config.get("eval_suites") or {}).items()):
        if spec.get("toy"):
            for task in load_suite(config, name).tasks:
                tasks.setdefault(task.data, (name, task.name))
    return dict(sorted(tasks.items()))


def load_suite(config: Mapping[str, Any], name: str) -> Suite:
    """The suite ``name`` of ``config['eval_suites']``, checked."""
    suites = config.get("eval_suites") or {}
    if name not in suites:
        raise EvalConfigError(f"unknown eval suite '{name}' (defined: {sorted(suites)})")
    spec = suites[name]
    problems = suite_problems(name, spec)
    if problems:
        raise EvalConfigError("; ".join(problems))
    subset = spec.get("classes") or {}
    names = tuple(subset["names"]) if subset.get("names") else None
    reference = None
    if subset.get("captionnet_file"):
        key = subset.get("imagenet_task") or DEFAULT_IMAGENET_TASK
        reference = next(t.get("data") or default_data_name(t["key"]) for t in spec["tasks"]
                         if t["key"] == key)

    def restricted(t: Mapping[str, Any], value: Any) -> Any:
        return value if t.get("protocol", "classification") == "classification" else None

    tasks = tuple(
        Task(key=t["key"], name=t["name"], protocol=t.get("protocol", "classification"),
             main_metric=t.get("main_metric", "acc1"), size=t.get("size"),
             data=t.get("data") or default_data_name(t["key"]), source=t.get("source"),
             split=t.get("split"), classes=restricted(t, names),
             classes_file=restricted(t, subset.get("file")),
             classes_captionnet=restricted(t, subset.get("captionnet_file")),
             classes_reference=restricted(t, reference))
        for t in spec["tasks"])
    # data_dir without a trailing slash: the workflow matches task paths against it.
    return Suite(name=name, tasks=tasks, toy=bool(spec.get("toy")),
                 aggregates={g: tuple(m) for g, m in (spec.get("aggregates") or {}).items()},
                 data_dir=(spec.get("data_dir") or "").rstrip("/") or None,
                 templates=tuple(spec.get("templates") or ()))


# ------------------------------------------------------------------------------ aggregates


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def aggregate(main_metrics: Mapping[str, Any], suite: Suite) -> dict[str, Any]:
    """DataComp's aggregates of one model's main metrics (task name -> value).

    ``Average`` is the unweighted mean over every scored task of the suite; each group is the
    mean over its tasks. Nothing is averaged over fewer tasks than it is defined on: a group
    with a task missing (absent, null or NaN) is ``None`` and listed in ``missing``.
    """
    present = {n: float(v) for n, v in main_metrics.items() if _is_number(v)}
    groups: dict[str, tuple[str, ...]] = {"Average": tuple(suite.scored), **suite.aggregates}
    values: dict[str, float | None] = {}
    missing: dict[str, list[str]] = {}
    for group, members in groups.items():
        lacking = [m for m in members if m not in present]
        if lacking:
            values[group] = None
            missing[group] = lacking
        else:
            values[group] = float(np.mean([present[m] for m in members]))
    unknown = sorted(set(main_metrics) - {t.name for t in suite.tasks})
    return {
        "suite": suite.name,
        "toy": suite.toy,
        "complete": not missing.get("Average"),
        "n_scored": len(suite.scored),
        "n_present": sum(1 for n in suite.scored if n in present),
        "aggregates": values,
        "missing": missing,
        "not_in_suite": unknown,
        "main_metrics": {n: main_metrics.get(n) for n in suite.scored},
    }


def aggregate_file(results_path: Path, suite: Suite) -> dict[str, Any]:
    """:func:`aggregate` over a results JSONL (DataComp's or ours)."""
    lines = read_results(results_path)
    return aggregate({name: line["metrics"].get("main_metric") for name, line in lines.items()},
                     suite)


# ------------------------------------------------------------------------------ results files
# Read here, beside the aggregator that needs them; written by capmix.evaluate (append_result).


def read_results(path: Path, model_sha256: str | None = None) -> dict[str, dict[str, Any]]:
    """Result lines by task name; with ``model_sha256``, only lines of that checkpoint.

    A truncated last line (a job killed mid-write) is ignored, like a task never run.
    """
    path = Path(path)
    results: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return results
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            log.warning("%s:%d: unreadable line ignored (an interrupted write?)", path, number)
            continue
        if model_sha256 is not None and line.get("model_sha256") != model_sha256:
            continue
        results[line["dataset"]] = line
    return results

