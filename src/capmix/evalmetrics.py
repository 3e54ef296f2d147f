"""Evaluation metrics, as DataComp computes them, on logits and per-sample metadata.

* clip_benchmark's top-k accuracy (:func:`topk_accuracy`, restated because the library's
  breaks under NumPy 2.4) and scikit-learn's balanced accuracy
  (:func:`classification_metrics`), and the accuracy of each class behind the latter
  (:func:`per_class_accuracy`; the paper's Figure 11 compares them on ImageNet);
* the group metrics of WILDS and the fairness sets (:func:`group_metric`,
  :func:`protocol_group_metrics`, :func:`face_metrics`): worst-group accuracy and per-group
  numbers, computed with numpy rather than the ``wilds`` package (DataComp uses only its
  grouper and per-group means, and ``wilds`` pins old dependencies nothing else here needs).
  Key names follow wilds' (``acc_avg``, ``acc_slide:3``, ``count_slide:3``, ``acc_wg``) so
  that results compare line by line with DataComp's;
* WinoGAViL's Jaccard summary and the prompt its cues are scored with.

Pure functions of arrays: the models and data loading are :mod:`capmix.evaluate`'s. Logits
and targets are torch tensors, but torch is never imported here, and scikit-learn only where
it is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from capmix.suites import METADATA_FIELDS

#: FairFace/UTKFace: the objectives their multi-label class names and templates are prefixed
#: with ("race:White", "gender:a photo of a {c}"), in DataComp's order.
FACE_OBJECTIVES: tuple[str, ...] = ("race", "gender", "age", "toxic")


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


def per_class_accuracy(logits: Any, target: Any) -> tuple[list[float | None], list[int]]:
    """Top-1 accuracy of each class (the share of its samples predicted as it; None for a
    class with no samples) and its sample count, in class-index order (the task's
    ``classnames.txt``). Their mean over the classes with samples is
    ``mean_per_class_recall``."""
    n_classes = int(logits.shape[1])
    y = target.numpy().astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels outside the {n_classes} classes scored")
    hit = logits.argmax(dim=1).numpy() == y
    counts = np.bincount(y, minlength=n_classes)
    hits = np.bincount(y[hit], minlength=n_classes)
    return ([float(h / c) if c else None for h, c in zip(hits, counts, strict=True)],
            [int(c) for c in counts])


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

