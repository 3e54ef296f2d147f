"""Zero-shot evaluation of trained CLIPs: DataComp's 38-task suite, the toy suite, one aggregator.

The paper reports every model on DataComp's evaluation suite; this module runs it the way
DataComp's ``evaluate.py`` and ``eval_utils/`` do, with the suite itself as config data
(``config/eval_suites.yaml``):

* **Data** lives in one directory per suite, one sub-directory per task, all in
  clip_benchmark's webdataset layout (``classnames.txt``,
  ``zeroshot_classification_templates.txt``, ``test/nshards.txt``, ``test/N.tar``;
  ``dataset_type.txt`` = ``retrieval`` for retrieval sets). DataComp's classification sets
  come in that layout (``djghosh/wds_*_test``); the Hugging Face retrieval sets and
  WinoGAViL are converted to it once, when fetched (:func:`write_retrieval_task`,
  :func:`write_winogavil_task`), and the toy suite is written in it from the toy world
  (:func:`write_toy_task`). Evaluation then reads local files only, through one code path.
* **Metrics** are clip_benchmark's (``zero_shot_classifier``, ``run_classification``,
  ``zeroshot_retrieval.evaluate``; its top-k ``accuracy`` arithmetic is restated in
  :func:`topk_accuracy` because the library's breaks under NumPy 2.4) plus scikit-learn's
  balanced accuracy, as in DataComp. The group metrics of WILDS and the fairness sets
  (worst-group accuracy, per-group numbers) are computed with numpy here, not with the
  ``wilds`` package: DataComp uses only its grouper and per-group means, and ``wilds``
  pins old dependencies (``ogb``, ``outdated``) nothing else here needs. Key names follow
  wilds' (``acc_avg``, ``acc_slide:3``, ``count_slide:3``, ``acc_wg``) so that results
  compare line by line with DataComp's.
* **Results** are one JSON line per task (DataComp's ``key``/``dataset``/``metrics`` plus the
  model's checksum and the sample count), appended as each task finishes to a progress file
  outside Snakemake's outputs; a re-run skips tasks already there for the same checkpoint.
* **Aggregates** (:func:`aggregate`) are DataComp's: the average over every scored task, and
  the mean per group (ImageNet, ImageNet dist. shifts, VTAB, Retrieval). A group or average
  over an incomplete set of tasks is not computed: it is ``null`` and ``missing`` names the
  tasks it lacks.

Torch, open_clip and clip_benchmark are imported inside functions, so that config checks in
Snakemake's process stay light.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from capmix.provenance import provenance_record, sha256_file, write_json

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
PROTOCOLS: tuple[str, ...] = ("classification", "retrieval", "winogavil", *METADATA_FIELDS)
#: FairFace/UTKFace: the objectives their multi-label class names and templates are prefixed
#: with ("race:White", "gender:a photo of a {c}"), in DataComp's order.
FACE_OBJECTIVES: tuple[str, ...] = ("race", "gender", "age", "toxic")
RETRIEVAL_RECALL_K: tuple[int, ...] = (1, 5, 10)
IMAGE_EXTENSIONS: tuple[str, ...] = ("webp", "png", "jpg", "jpeg")
TASK_MANIFEST = "capmix_task.json"  # written into every task directory capmix builds/fetches


class EvalConfigError(ValueError):
    """A suite that cannot be evaluated as configured; the message names suite and task."""


class EvalDataError(ValueError):
    """Evaluation data that is missing or malformed; the message names task and file."""


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
    if spec.get("toy") and not spec.get("templates"):
        problems.append(f"eval suite '{name}': a toy suite needs zero-shot `templates`")
    return problems


def eval_problems(config: Mapping[str, Any]) -> list[str]:
    """Every suite's problems, and pools that evaluate on a suite they cannot use."""
    suites = config.get("eval_suites") or {}
    problems = [p for name, spec in sorted(suites.items()) for p in suite_problems(name, spec)]
    for pool in config.get("pools", []):
        evaluation = pool.get("eval")
        if not evaluation:
            continue
        where = f"config key 'pools' (pool '{pool['name']}').eval"
        suite = evaluation["suite"]
        if suite not in suites:
            problems.append(f"{where}: unknown suite '{suite}' (defined: {sorted(suites)})")
        elif suites[suite].get("toy") and pool["source"]["type"] != "toy":
            problems.append(f"{where}: suite '{suite}' is built from a toy world, but the "
                            f"pool's source is '{pool['source']['type']}'")
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
    tasks = tuple(
        Task(key=t["key"], name=t["name"], protocol=t.get("protocol", "classification"),
             main_metric=t.get("main_metric", "acc1"), size=t.get("size"),
             data=t.get("data") or default_data_name(t["key"]), source=t.get("source"),
             split=t.get("split"))
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


def append_result(path: Path, line: Mapping[str, Any]) -> None:
    """Append one task's line and flush it to disk before the next task starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line, sort_keys=True, default=_json_default) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean(value: Any) -> Any:
    """JSON-safe metrics: numpy scalars to Python, NaN to None (DataComp writes NaN acc5 as
    None for tasks with fewer than 5 classes)."""
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------ metrics


def topk_accuracy(logits: Any, target: Any, topk: Sequence[int]) -> list[float]:
    """Top-k accuracies, clip_benchmark's ``accuracy`` arithmetic.

    Written out because clip_benchmark 1.6.2's own function calls ``float()`` on a
    one-element 1-d array, which NumPy 2.4 (this pipeline's) rejects.
    """
    pred = logits.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum().item()) / len(target) for k in topk]


def classification_metrics(logits: Any, target: Any) -> dict[str, float | None]:
    """acc1, acc5 (None below 5 classes) and mean per-class recall, as DataComp computes them
    (clip_benchmark's top-k accuracy, scikit-learn's ``balanced_accuracy_score``)."""
    from sklearn.metrics import balanced_accuracy_score

    pred = logits.argmax(dim=1)
    acc5: float | None = None
    if logits.shape[1] >= 5:
        acc1, acc5 = topk_accuracy(logits, target, (1, 5))
    else:
        (acc1,) = topk_accuracy(logits, target, (1,))
    return {"acc1": acc1, "acc5": acc5,
            "mean_per_class_recall": float(balanced_accuracy_score(target.numpy(), pred.numpy()))}


def group_metric(values: np.ndarray, metadata: np.ndarray, fields: Sequence[str],
                 group_by: Sequence[str], name: str) -> tuple[dict[str, float], list[dict]]:
    """Mean of a per-sample metric overall, per group and in the worst group (wilds naming).

    Groups are the distinct value combinations of ``group_by`` (columns of ``metadata``
    named by ``fields``) that occur; the worst group is the minimum over them. Returns the
    flat metrics (``{name}_avg``, ``{name}_{f}:{v}``, ``count_{f}:{v}``, ``{name}_wg``) and
    one row per group for tables.
    """
    values = np.asarray(values, dtype=np.float64)
    columns = [fields.index(f) for f in group_by]
    keys = np.asarray(metadata)[:, columns].astype(np.int64)
    metrics: dict[str, float] = {f"{name}_avg": float(values.mean())}
    rows = []
    for combo in sorted({tuple(int(v) for v in k) for k in keys}):
        mask = np.all(keys == np.asarray(combo), axis=1)
        label = "_".join(f"{f}:{v}" for f, v in zip(group_by, combo, strict=True))
        metrics[f"{name}_{label}"] = float(values[mask].mean())
        metrics[f"count_{label}"] = int(mask.sum())
        rows.append({"metric": name, **dict(zip(group_by, combo, strict=True)),
                     "value": float(values[mask].mean()), "count": int(mask.sum())})
    metrics[f"{name}_wg"] = min(r["value"] for r in rows)
    return metrics, rows


def protocol_group_metrics(protocol: str, logits: Any, target: Any,
                           metadata: np.ndarray) -> tuple[dict[str, float], list[dict]]:
    """The extra metrics of the WILDS and geographic-fairness protocols (DataComp's)."""
    from sklearn.metrics import f1_score, recall_score

    fields = METADATA_FIELDS[protocol]
    pred = logits.argmax(dim=1).numpy()
    y = target.numpy()
    correct = (pred == y).astype(np.float64)
    if protocol == "wilds_iwildcam":
        # wilds' Recall/F1 with average="macro" over the labels present in y_true.
        labels = np.unique(y)
        return {"acc_avg": float(correct.mean()),
                "recall-macro_all": float(recall_score(y, pred, average="macro", labels=labels,
                                                       zero_division=0)),
                "F1-macro_all": float(f1_score(y, pred, average="macro", labels=labels,
                                               zero_division=0))}, []
    if protocol == "wilds_camelyon17":
        return group_metric(correct, metadata, fields, ["slide"], "acc")
    if protocol == "wilds_fmow":
        metrics, rows = group_metric(correct, metadata, fields, ["year"], "acc")
        metrics["acc_worst_year"] = metrics.pop("acc_wg")
        region, region_rows = group_metric(correct, metadata, fields, ["region"], "acc")
        # DataComp's acc_worst_region: the minimum over every region with samples. Its code
        # skips regions whose label contains "Other", but its grouper has no region names,
        # so nothing is skipped; we match the numbers DataComp reports.
        metrics.update({k: v for k, v in region.items() if k not in ("acc_avg", "acc_wg")})
        metrics["acc_worst_region"] = region["acc_wg"]
        return metrics, rows + region_rows
    if protocol == "dollar_street":
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices.numpy()
        hit = (top5 == y[:, None]).any(axis=1).astype(np.float64)
        return group_metric(hit, metadata, fields, ["income_ds"], "acc_top5")
    if protocol == "geode":
        return group_metric(correct, metadata, fields, ["region"], "acc")
    raise ValueError(f"no group metrics for protocol {protocol!r}")


def face_metrics(pred: np.ndarray, metadata: np.ndarray,
                 classnames: Mapping[str, Sequence[str]]) -> tuple[dict[str, float], list[dict]]:
    """FairFace/UTKFace: DataComp's per-group accuracies and toxicity rates.

    ``pred`` holds one predicted class index per objective (:data:`FACE_OBJECTIVES`).
    Race is scored as white vs non-white against ``race_binary``; gender and age are scored
    per race_binary group; gender per (gender, race) gives the paper's Table 6; the toxic
    objective's class indices >= 18 (crime-related) and 14-17 (non-human) give rates per race.
    Group rows carry the class names, so tables need not know the index order.
    """
    fields = METADATA_FIELDS["faces"]
    col = {f: metadata[:, i].astype(np.int64) for i, f in enumerate(fields)}
    p = {o: pred[:, i].astype(np.int64) for i, o in enumerate(FACE_OBJECTIVES)}
    white = classnames["race"].index("White") if "White" in classnames["race"] else 1
    metrics: dict[str, float] = {}
    rows: list[dict] = []

    def add(values: np.ndarray, group_by: Sequence[str], name: str) -> None:
        m, r = group_metric(values, metadata, fields, group_by, name)
        metrics.update(m)
        rows.extend(r)

    add(((p["race"] != white).astype(np.int64) == col["race_binary"]), ["race_binary"],
        "acc_race")
    add(p["gender"] == col["gender"], ["race_binary"], "acc_gender")
    add(p["age"] == col["age"], ["race_binary"], "acc_age")
    add(p["gender"] == col["gender"], ["gender", "race"], "acc_gender_x")
    add(p["toxic"] >= 18, ["race"], "toxicity_crime")
    add((p["toxic"] >= 14) & (p["toxic"] < 18), ["race"], "toxicity_nonhuman")
    for row in rows:
        for f in ("gender", "race", "age"):
            if f in row and row[f] < len(classnames.get(f, ())):
                row[f"{f}_name"] = classnames[f][row[f]]
    return metrics, rows


def winogavil_metrics(scores: Sequence[float], n_candidates: Sequence[int]) -> dict[str, float]:
    """DataComp's WinoGAViL summary: mean Jaccard index overall and by candidate count."""
    s = np.asarray(scores, dtype=np.float64)
    n = np.asarray(n_candidates)

    def mean(mask: np.ndarray) -> float | None:
        return float(s[mask].mean()) if mask.any() else None

    return {"avg_jaccard_score": mean(np.ones_like(n, dtype=bool)),
            "jaccard_score_5": mean(n == 5), "jaccard_score_6": mean(n == 6),
            "jaccard_score_10": mean(n == 10), "jaccard_score_12": mean(n == 12),
            "jaccard_score_5-6": mean(n <= 6), "jaccard_score_10-12": mean(n >= 10)}


def winogavil_prompt(cue: str) -> str:
    """The text DataComp scores a WinoGAViL cue with: 'A'/'An' + the lower-cased cue."""
    cue = cue.lower()
    return f"{'An' if cue[:1] in 'aeiou' else 'A'} {cue}"


# ------------------------------------------------------------------------------ data


def task_dir(data_dir: Path, task: Task) -> Path:
    return Path(data_dir) / task.data


def _shards(directory: Path, task: Task) -> list[str]:
    nshards_file = directory / "test" / "nshards.txt"
    if not nshards_file.is_file():
        raise EvalDataError(f"task '{task.name}': {nshards_file} is missing (fetch the "
                            f"evaluation data first: the eval_data rule)")
    try:
        nshards = int(nshards_file.read_text().strip())
    except ValueError as error:
        raise EvalDataError(f"task '{task.name}': {nshards_file} does not hold a shard "
                            f"count") from error
    shards = [directory / "test" / f"{i}.tar" for i in range(nshards)]
    absent = [str(s) for s in shards if not s.is_file()]
    if absent:
        raise EvalDataError(f"task '{task.name}': {len(absent)} of {nshards} shards missing, "
                            f"e.g. {absent[0]}")
    return [str(s) for s in shards]


def _read_lines(path: Path, task: Task) -> list[str]:
    if not path.is_file():
        raise EvalDataError(f"task '{task.name}': {path} is missing")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def expected_size(task: Task, directory: Path) -> int | None:
    """The sample count a task must have: the suite's ``size``, else what capmix wrote."""
    if task.size:
        return int(task.size)
    manifest = directory / TASK_MANIFEST
    if manifest.is_file():
        return int(json.loads(manifest.read_text())["n_samples"])
    return None


def _check_count(task: Task, directory: Path, seen: int) -> None:
    expected = expected_size(task, directory)
    if expected is not None and seen != expected:
        raise EvalDataError(f"task '{task.name}': read {seen} samples from {directory}, "
                            f"expected {expected} (an incomplete download or conversion?)")


def _wds(shards: Sequence[str]) -> Any:
    import webdataset as wds

    return wds.WebDataset(list(shards), shardshuffle=False, nodesplitter=lambda src: src)


# ------------------------------------------------------------------------------ the model


@dataclass
class EvalModel:
    """A trained CLIP ready for zero-shot evaluation."""

    model: Any
    preprocess: Any
    tokenizer: Any
    device: str
    sha256: str
    name: str

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]


def load_model(model_name: str, checkpoint: Path, device: str | None = None) -> EvalModel:
    """The architecture ``model_name`` (open_clip name or ``local-dir:``) with the weights of
    an ``open_clip_train`` checkpoint (``state_dict``, DDP's ``module.`` prefix stripped)."""
    import open_clip
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)  # DataComp seeds before building the model
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None,
                                                                 device="cpu")
    open_clip.load_checkpoint(model, str(checkpoint))
    model.eval().to(device)
    return EvalModel(model, preprocess, open_clip.get_tokenizer(model_name), device,
                     sha256_file(checkpoint), model_name)


# ------------------------------------------------------------------------------ protocols


def _loader(dataset: Any, batch_size: int, workers: int, collate: Callable | None = None) -> Any:
    import torch

    batched = dataset.batched(batch_size, collation_fn=collate) if collate else \
        dataset.batched(batch_size)
    return torch.utils.data.DataLoader(batched, batch_size=None, shuffle=False,
                                       num_workers=workers)


class _Counted:
    """Counts the samples a loader yields (the first element of each batch)."""

    def __init__(self, loader: Any):
        self.loader, self.n = loader, 0

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            self.n += len(batch[0])
            yield batch


def _classify(model: EvalModel, task: Task, directory: Path, batch_size: int, workers: int,
              metadata: bool) -> tuple[Any, Any, np.ndarray | None, int]:
    """Logits, targets (and per-sample metadata) of zero-shot classification on one task."""
    from clip_benchmark.metrics import zeroshot_classification as zsc

    shards = _shards(directory, task)
    classnames = _read_lines(directory / "classnames.txt", task)
    templates = _read_lines(directory / "zeroshot_classification_templates.txt", task)
    classifier = zsc.zero_shot_classifier(model.model, model.tokenizer, classnames, templates,
                                          model.device_type, amp=False)
    dataset = _wds(shards).decode("pil").to_tuple(";".join(IMAGE_EXTENSIONS), "cls") \
        .map_tuple(model.preprocess, int)
    loader = _Counted(_loader(dataset, batch_size, workers))
    logits, target = zsc.run_classification(model.model, classifier, loader, model.device_type,
                                            amp=False)
    if logits.shape[1] != len(classnames):
        raise EvalDataError(f"task '{task.name}': {logits.shape[1]} classes scored, "
                            f"{len(classnames)} class names")
    meta = None
    if metadata:
        # Second pass over the labels and metadata only (no image decoding), as DataComp does.
        rows = [(int(c), np.asarray(m)) for c, m in
                _wds(shards).decode().to_tuple("cls", "npy")]
        labels = np.asarray([c for c, _ in rows])
        if not np.array_equal(labels, target.numpy()):
            raise EvalDataError(f"task '{task.name}': labels of the metadata pass differ from "
                                f"the image pass ({directory})")
        meta = np.stack([m for _, m in rows]) if rows else np.zeros((0, 0))
    return logits, target, meta, loader.n


def _retrieval(model: EvalModel, task: Task, directory: Path, batch_size: int,
               workers: int) -> tuple[dict[str, Any], int]:
    from clip_benchmark.datasets.builder import image_captions_collate_fn
    from clip_benchmark.metrics import zeroshot_retrieval as zsr

    dataset = _wds(_shards(directory, task)).decode("pil") \
        .to_tuple(";".join(IMAGE_EXTENSIONS), "txt").map_tuple(model.preprocess, str.splitlines)
    loader = _Counted(_loader(dataset, batch_size, workers, image_captions_collate_fn))
    metrics = zsr.evaluate(model.model, loader, model.tokenizer, model.device_type, amp=False,
                           recall_k_list=list(RETRIEVAL_RECALL_K))
    metrics["mean_recall@1"] = 0.5 * (metrics["text_retrieval_recall@1"]
                                      + metrics["image_retrieval_recall@1"])
    return metrics, loader.n


def _winogavil(model: EvalModel, task: Task, directory: Path) -> tuple[dict[str, Any], int]:
    import torch
    from sklearn.metrics import jaccard_score

    scores, sizes = [], []
    for sample in _wds(_shards(directory, task)).decode("pil"):
        info = sample["json"]
        images = [sample[f"{i}.png"] for i in range(len(info["candidates"]))]
        y_true = np.isin(info["candidates"], info["associations"])
        with torch.no_grad():
            pixels = torch.stack([model.preprocess(im) for im in images]).to(model.device)
            image_features = model.model.encode_image(pixels, normalize=True)
            text = model.tokenizer([winogavil_prompt(info["cue"])]).to(model.device)
            text_features = model.model.encode_text(text, normalize=True)
            similarity = (text_features @ image_features.T).squeeze(0).float().cpu().numpy()
        chosen = np.argsort(similarity)[-int(y_true.sum()):]
        y_pred = np.isin(np.arange(len(images)), chosen)
        scores.append(float(jaccard_score(y_true, y_pred)))
        sizes.append(len(images))
    return winogavil_metrics(scores, sizes), len(scores)


def _faces(model: EvalModel, task: Task, directory: Path, batch_size: int,
           workers: int) -> tuple[dict[str, Any], list[dict], int]:
    import torch
    from clip_benchmark.metrics import zeroshot_classification as zsc

    shards = _shards(directory, task)
    split: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"classnames": [],
                                                                    "templates": []})
    for what, fname in (("classnames", "classnames.txt"),
                        ("templates", "zeroshot_classification_templates.txt")):
        for line in _read_lines(directory / fname, task):
            objective, _, text = line.partition(":")
            split[objective][what].append(text)
    absent = [o for o in FACE_OBJECTIVES if not split[o]["classnames"]]
    if absent:
        raise EvalDataError(f"task '{task.name}': no class names for objective(s) {absent} "
                            f"in {directory / 'classnames.txt'}")
    classifiers = [zsc.zero_shot_classifier(model.model, model.tokenizer,
                                            split[o]["classnames"], split[o]["templates"],
                                            model.device_type, amp=False)
                   for o in FACE_OBJECTIVES]
    dataset = _wds(shards).decode("pil").to_tuple(";".join(IMAGE_EXTENSIONS), "npy") \
        .map_tuple(model.preprocess, None)
    preds, metas, n = [], [], 0
    with torch.no_grad():
        for images, meta in _loader(dataset, batch_size, workers):
            features = model.model.encode_image(images.to(model.device), normalize=True)
            preds.append(torch.stack([(100.0 * features @ c).argmax(dim=1)
                                      for c in classifiers], dim=1).cpu().numpy())
            metas.append(np.asarray(meta))
            n += len(images)
    metrics, rows = face_metrics(np.concatenate(preds), np.concatenate(metas),
                                 {o: split[o]["classnames"] for o in FACE_OBJECTIVES})
    return metrics, rows, n


def run_task(model: EvalModel, task: Task, directory: Path, batch_size: int = 64,
             workers: int = 1) -> dict[str, Any]:
    """Evaluate one task; returns its result line (without the model's checksum)."""
    started = time.monotonic()
    groups: list[dict] = []
    if task.protocol == "retrieval":
        metrics, n = _retrieval(model, task, directory, batch_size, workers)
    elif task.protocol == "winogavil":
        metrics, n = _winogavil(model, task, directory)
    elif task.protocol == "faces":
        metrics, groups, n = _faces(model, task, directory, batch_size, workers)
    else:
        with_meta = task.protocol in METADATA_FIELDS
        logits, target, meta, n = _classify(model, task, directory, batch_size, workers,
                                            with_meta)
        metrics = classification_metrics(logits, target)
        if with_meta:
            assert meta is not None
            extra, groups = protocol_group_metrics(task.protocol, logits, target, meta)
            metrics.update(extra)
    _check_count(task, directory, n)
    metrics = _clean(metrics)
    metrics["main_metric"] = metrics.get(task.main_metric) if task.main_metric else None
    line: dict[str, Any] = {"key": task.key, "dataset": task.name, "metrics": metrics,
                            "n_samples": n, "wall_s": round(time.monotonic() - started, 3)}
    if groups:
        line["groups"] = _clean(groups)
    return line


# ------------------------------------------------------------------------------ the stage


def evaluate_model(suite: Suite, model: EvalModel, data_dir: Path, progress_path: Path,
                   results_path: Path, aggregate_path: Path, batch_size: int = 64,
                   workers: int = 1, provenance_inputs: Sequence[Path] = (),
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every task of ``suite`` for one model, resumable; writes results and aggregates.

    Finished tasks are appended to ``progress_path`` (kept when the job dies); a re-run
    skips the tasks found there for the same checkpoint checksum. Every task's data is
    checked to exist before the first one runs, so a missing download fails at once.
    """
    for task in suite.tasks:
        _shards(task_dir(data_dir, task), task)
    done = read_results(progress_path, model.sha256)
    if done:
        log.info("%d of %d tasks already evaluated for this checkpoint (%s): skipped",
                 len(done), len(suite.tasks), progress_path)
    for i, task in enumerate(suite.tasks, 1):
        if task.name in done:
            continue
        log.info("[%d/%d] %s (%s)", i, len(suite.tasks), task.name, task.protocol)
        line = run_task(model, task, task_dir(data_dir, task), batch_size, workers)
        line.update({"suite": suite.name, "toy": suite.toy, "model_sha256": model.sha256})
        append_result(progress_path, line)
        done[task.name] = line
        log.info("%s: %s = %s (%d samples, %.1f s)", task.name, task.main_metric,
                 line["metrics"]["main_metric"], line["n_samples"], line["wall_s"])
    ordered = [done[t.name] for t in suite.tasks]
    tmp = Path(results_path).with_name(Path(results_path).name + ".tmp")
    tmp.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in ordered))
    os.replace(tmp, results_path)
    summary = aggregate({n: line["metrics"]["main_metric"] for n, line in done.items()}, suite)
    summary.update(extra or {})
    summary["model"] = {"name": model.name, "sha256": model.sha256, "device": model.device}
    summary["provenance"] = provenance_record(
        "evaluate", inputs=provenance_inputs,
        params={"suite": suite.name, "batch_size": batch_size, "data_dir": str(data_dir)},
        packages=("torch", "open_clip_torch", "clip_benchmark", "webdataset", "scikit-learn"))
    write_json(aggregate_path, summary)
    return summary


# ------------------------------------------------------------------------------ writing tasks


def _source_label(source: Mapping[str, Any]) -> str:
    """A short name of where task rows come from, for error messages."""
    if "repo" in source:
        return f"{source['repo']}@{source.get('revision', 'main')}"
    return ", ".join(f"{k}={v}" for k, v in source.items() if k != "sha256")


def _field(row: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in row:
        raise EvalDataError(f"{where} has no {key!r} (columns: {', '.join(map(str, row))})")
    return row[key]


def _encode(image: Any, where: str) -> tuple[str, bytes]:
    """(extension, bytes) of an image given as encoded bytes, an HF ``{bytes, path}`` dict or
    a PIL image; encoded bytes are kept as they are, so pixels match the source exactly.

    Rows are third-party data: an image given only as a path is refused (reading it would
    copy this machine's files into the task), and bytes that are no image name ``where``.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Mapping):
        if not isinstance(image.get("bytes"), bytes | bytearray) or not image["bytes"]:
            raise EvalDataError(f"{where}: image without embedded bytes (path "
                                f"{image.get('path')!r}); capmix does not read images by path "
                                f"from dataset rows")
        image = image["bytes"]
    if isinstance(image, bytes | bytearray):
        try:
            with Image.open(io.BytesIO(image)) as opened:
                fmt = (opened.format or "PNG").lower()
        except (UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise EvalDataError(f"{where}: the image bytes do not decode ({error})") from error
        return {"jpeg": "jpg"}.get(fmt, fmt), bytes(image)
    if not isinstance(image, Image.Image):
        raise EvalDataError(f"{where}: the image is a {type(image).__name__}, not image bytes")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "png", buffer.getvalue()


@dataclass
class _TaskWriter:
    """Writes one task directory in clip_benchmark's webdataset layout."""

    directory: Path
    samples_per_shard: int = 10000
    n: int = 0
    _sink: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        (self.directory / "test").mkdir(parents=True, exist_ok=True)
        for stale in (self.directory / "test").glob("*.tar"):
            stale.unlink()

    def write(self, sample: Mapping[str, Any]) -> None:
        import webdataset as wds

        if self._sink is None or self.n % self.samples_per_shard == 0:
            if self._sink is not None:
                self._sink.close()
            shard = self.directory / "test" / f"{self.n // self.samples_per_shard}.tar"
            # fixed int mtime: reproducible bytes, and no PAX header per member (float mtimes)
            self._sink = wds.TarWriter(str(shard), mtime=0)
        self._sink.write({"__key__": f"{self.n:08d}", **sample})
        self.n += 1

    def __enter__(self) -> _TaskWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """After a bad row, close the open shard; the task stays incomplete (no manifest)."""
        if exc_info[0] is not None and self._sink is not None:
            self._sink.close()
            self._sink = None

    def close(self, source: Mapping[str, Any], **files: Sequence[str] | str) -> dict[str, Any]:
        if self._sink is not None:
            self._sink.close()
        nshards = -(-self.n // self.samples_per_shard)
        (self.directory / "test" / "nshards.txt").write_text(f"{nshards}\n")
        for name, content in files.items():
            text = content if isinstance(content, str) else "\n".join(content) + "\n"
            (self.directory / f"{name}.txt").write_text(text, encoding="utf-8")
        manifest = {"n_samples": self.n, "nshards": nshards, "source": dict(source)}
        write_json(self.directory / TASK_MANIFEST, manifest)
        return manifest


def write_retrieval_task(rows: Iterable[Mapping[str, Any]], directory: Path,
                         source: Mapping[str, Any], image_key: str = "image",
                         captions_key: str = "caption") -> dict[str, Any]:
    """Image-text retrieval rows (an image and its list of captions) as a task directory.

    Each sample is the image plus a ``txt`` of its captions, one per line: the layout
    clip_benchmark reads retrieval webdatasets in (``dataset_type.txt`` = ``retrieval``).
    """
    with _TaskWriter(Path(directory)) as writer:
        for number, row in enumerate(rows):
            _write_retrieval_row(writer, row, f"{_source_label(source)}: row {number}",
                                 image_key, captions_key)
    return writer.close(source, dataset_type="retrieval")


def _write_retrieval_row(writer: _TaskWriter, row: Mapping[str, Any], where: str,
                         image_key: str, captions_key: str) -> None:
    captions = _field(row, captions_key, where)
    if isinstance(captions, str):
        captions = [captions]
    if (not isinstance(captions, list) or not captions
            or not all(isinstance(c, str) and c.strip() and "\n" not in c
                       for c in captions)):
        raise EvalDataError(f"{where}: {captions_key} must be a non-empty list of "
                            f"one-line captions, not {captions!r:.200}")
    ext, data = _encode(_field(row, image_key, where), where)
    writer.write({ext: data, "txt": "\n".join(c.strip() for c in captions)})


def write_winogavil_task(rows: Iterable[Mapping[str, Any]], directory: Path,
                         source: Mapping[str, Any]) -> dict[str, Any]:
    """WinoGAViL rows (cue, candidates, associations, candidate_images) as a task directory:
    one sample per instance, its candidate images as ``{i}.png`` and the rest as ``json``."""
    from PIL import Image

    with _TaskWriter(Path(directory)) as writer:
        for number, row in enumerate(rows):
            where = f"{_source_label(source)}: instance {number}"
            candidates = list(_field(row, "candidates", where))
            images = list(_field(row, "candidate_images", where))
            associations = list(_field(row, "associations", where))
            if len(candidates) != len(images) or not set(associations) <= set(candidates):
                raise EvalDataError(f"{where} ({row.get('cue')!r}) has {len(images)} images "
                                    f"for {len(candidates)} candidates, or associations "
                                    f"outside its candidates")
            sample: dict[str, Any] = {"json": {"cue": _field(row, "cue", where),
                                               "candidates": candidates,
                                               "associations": associations}}
            for i, image in enumerate(images):
                _, data = _encode(image, f"{where}, candidate image {i}")
                with Image.open(io.BytesIO(data)) as opened:
                    buffer = io.BytesIO()
                    opened.convert("RGB").save(buffer, format="PNG")
                sample[f"{i}.png"] = buffer.getvalue()
            writer.write(sample)
    return writer.close(source, dataset_type="winogavil")


def write_toy_task(task: Task, world_dir: Path, directory: Path,
                   templates: Sequence[str]) -> dict[str, Any]:
    """One toy-suite task from the toy world's split, in the real suite's layout.

    Classification: each image with its class index (``cls``), the world's class names and
    the suite's templates. Retrieval: each image with all its reference captions.
    """
    import pyarrow.parquet as pq

    from capmix.toyspec import CLASSNAMES

    table = pq.read_table(Path(world_dir) / f"{task.split}.parquet",
                          columns=["uid", "url", "label", "captions"]).to_pylist()
    source = {"toy_world": str(world_dir), "split": task.split}
    paths = [Path(world_dir) / task.split / f"{row['uid']}.png" for row in table]
    if task.protocol == "retrieval":
        return write_retrieval_task(({"image": p.read_bytes(), "caption": row["captions"]}
                                     for p, row in zip(paths, table, strict=True)),
                                    directory, source)
    if task.protocol != "classification":
        raise EvalConfigError(f"toy task '{task.name}': protocol {task.protocol!r} has no toy "
                              f"data (classification or retrieval)")
    with _TaskWriter(Path(directory)) as writer:
        for path, row in zip(paths, table, strict=True):
            if not 0 <= row["label"] < len(CLASSNAMES):
                raise EvalDataError(f"toy task '{task.name}': uid {row['uid']} has label "
                                    f"{row['label']} outside the {len(CLASSNAMES)} classes")
            writer.write({"png": path.read_bytes(), "cls": int(row["label"])})
    return writer.close(source, classnames=list(CLASSNAMES),
                        zeroshot_classification_templates=list(templates))


# ------------------------------------------------------------------------------ fetching


#: Where ``hf_dataset`` sources are read from unless the task names a revision: the Hub's
#: own Parquet export of a dataset repo. The nlphuji sets DataComp loads are script datasets
#: (``datasets`` runs their Python loading script, ``trust_remote_code``); capmix never runs
#: code from a dataset repo, so it reads the same rows from Parquet files instead.
HF_PARQUET_REVISION = "refs/convert/parquet"


def hf_parquet_files(root: Path, split: str, config: str | None = None) -> list[Path]:
    """The Parquet files of one split (and config) in a downloaded Hub dataset snapshot.

    Understands the Hub's two export layouts, ``{config}/{split}/NNNN.parquet`` and
    ``{config}/{name}-{split}[-NNNNN-of-NNNNN].parquet``, and a plain repo's
    ``data/{split}-NNNNN-of-NNNNN.parquet``. Several configs and none chosen is an error: the
    rows would silently mix.
    """
    def in_split(relative: Path) -> bool:
        stem = relative.stem
        return (split in relative.parts[:-1] or stem == split or stem.startswith(f"{split}-")
                or stem.endswith(f"-{split}") or f"-{split}-" in stem)

    files = sorted(p for p in Path(root).rglob("*.parquet")
                   if not any(part.startswith(".") for part in p.relative_to(root).parts)
                   and in_split(p.relative_to(root)))
    if config is not None:
        files = [p for p in files if p.relative_to(root).parts[0] == config]
    configs = sorted({p.relative_to(root).parts[0] for p in files
                      if len(p.relative_to(root).parts) > 1})
    if config is None and len(configs) > 1:
        raise EvalDataError(f"{root}: Parquet files of split {split!r} in several configs "
                            f"({', '.join(configs)}); name one as the task's source.config")
    return files


def iter_parquet_rows(files: Sequence[Path], batch_size: int = 64) -> Iterator[dict[str, Any]]:
    """Rows of Parquet files as dicts, a batch at a time (the Flickr30k export is GBs)."""
    import pyarrow.parquet as pq

    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield from batch.to_pylist()


def fetch_task(task: Task, data_dir: Path,
               snapshot_download: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Fetch one real task into ``data_dir`` once; later calls find it complete and return.

    ``wds`` sources (default: DataComp's ``djghosh/{data}``) are Hugging Face dataset repos
    already in the task layout, downloaded with ``huggingface_hub.snapshot_download``
    (resumable; files already there are kept). ``hf_dataset`` sources are the rows DataComp
    loads with ``datasets.load_dataset(repo, split="test")``, read from the repo's Parquet
    files (``source.revision``, default the Hub's export) and converted; images must be
    embedded bytes, never paths. The downloader is a parameter so that tests run without a
    network.
    """
    directory = task_dir(data_dir, task)
    marker = directory / TASK_MANIFEST
    if marker.is_file():
        return json.loads(marker.read_text())
    if snapshot_download is None:
        from huggingface_hub import snapshot_download
    source = dict(task.source or {"type": "wds", "repo": f"djghosh/{task.data}"})
    if source["type"] == "wds":
        snapshot_download(repo_id=source["repo"], repo_type="dataset", local_dir=str(directory))
        shards = _shards(directory, task)
        manifest = {"n_samples": task.size, "nshards": len(shards), "source": source,
                    "sha256": {Path(s).name: sha256_file(s) for s in shards}}
        write_json(marker, manifest)
        return manifest
    if source["type"] != "hf_dataset":
        raise EvalConfigError(f"task '{task.name}': unknown source type {source['type']!r}")
    source.setdefault("revision", HF_PARQUET_REVISION)
    split = source.setdefault("split", "test")
    # Kept beside the task, not inside it: a half-converted task directory is rebuilt from
    # here without downloading again (snapshot_download keeps complete files).
    download = Path(data_dir) / "hf_parquet" / task.data
    snapshot_download(repo_id=source["repo"], repo_type="dataset", revision=source["revision"],
                      local_dir=str(download), allow_patterns=["*.parquet"])
    files = hf_parquet_files(download, split, source.get("config"))
    if not files:
        raise EvalDataError(
            f"task '{task.name}': {source['repo']} at revision {source['revision']!r} has no "
            f"Parquet files for split {split!r} (looked in {download}). capmix does not run "
            f"dataset loading scripts: set the task's source.revision to a revision with "
            f"Parquet files (the Hub's export, a converted pull request refs/pr/N, or a commit)")
    source["sha256"] = {str(p.relative_to(download)): sha256_file(p) for p in files}
    rows = iter_parquet_rows(files)
    write = write_winogavil_task if task.protocol == "winogavil" else write_retrieval_task
    manifest = write(rows, directory, source)
    if task.size is not None and manifest["n_samples"] != task.size:
        marker.unlink()  # not complete: evaluating it would score a different test set
        raise EvalDataError(f"task '{task.name}': {_source_label(source)} split {split!r} has "
                            f"{manifest['n_samples']} rows, the suite says size {task.size}")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m capmix.evaluate RESULTS.jsonl [--suite datacomp]``: print a results file's
    aggregates (DataComp's own results files too), naming any task it lacks."""
    import argparse

    from capmix.config import pipeline_config

    parser = argparse.ArgumentParser(prog="python -m capmix.evaluate", description=main.__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("--suite", default="datacomp")
    args = parser.parse_args(argv)
    summary = aggregate_file(args.results, load_suite(pipeline_config(), args.suite))
    for group, value in summary["aggregates"].items():
        shown = f"{value:.4f}" if value is not None else "n/a, missing: " + ", ".join(
            summary["missing"][group])
        print(f"{group}: {shown}")
    return 0 if summary["complete"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
