"""Zero-shot evaluation of trained CLIPs: DataComp's 38-task suite and the toy suite.

The paper reports every model on DataComp's evaluation suite; this module runs it the way
DataComp's ``evaluate.py`` and ``eval_utils/`` do. It is the stage; what it stands on lives
beside it:

* **The suites** are config data (``config/eval_suites.yaml``), read, checked and aggregated
  by :mod:`capmix.suites` (:class:`~capmix.suites.Suite`, :func:`~capmix.suites.load_suite`,
  :func:`~capmix.suites.aggregate`). Aggregates are DataComp's: the average over every scored
  task, and the mean per group (ImageNet, ImageNet dist. shifts, VTAB, Retrieval); a group or
  average over an incomplete set of tasks is ``null`` and ``missing`` names the tasks it lacks.
* **Data** lives in one directory per suite, one sub-directory per task, all in
  clip_benchmark's webdataset layout; :mod:`capmix.evaldata` writes and fetches those
  directories and checks them. Evaluation reads local files only, through one code path.
* **Metrics** are clip_benchmark's (``zero_shot_classifier``, ``run_classification``,
  ``zeroshot_retrieval.evaluate``) plus those of :mod:`capmix.evalmetrics` (top-k,
  balanced and per-class accuracy, the WILDS/fairness group metrics, WinoGAViL's Jaccard
  summary).
* **The model** is an ``open_clip_train`` checkpoint loaded with :mod:`capmix.modelrun`
  (:func:`load_model`). It runs fp32, except where DataComp autocasts: retrieval and
  WinoGAViL on CUDA (:data:`AMP_PROTOCOLS`, :data:`AMP_DEVICE_TYPES`).
* **Results** are one JSON line per task (DataComp's ``key``/``dataset``/``metrics`` plus the
  model's checksum, the sample count and the ``precision`` it ran in; classification tasks
  add ``per_class``: ``classnames``, ``acc1`` and ``n_samples``, lists in class-index order),
  appended as each task finishes to a progress file outside Snakemake's outputs; a re-run
  skips tasks already there for the same checkpoint (:func:`evaluate_model`).

``python -m capmix.evaluate RESULTS.jsonl --suite datacomp`` prints a results file's
aggregates (:func:`main`). Torch, open_clip and clip_benchmark are imported inside functions.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capmix.evaldata import (
    EvalDataError,
    check_sample_count,
    read_task_lines,
    task_dir,
    task_shards,
)
from capmix.evalmetrics import (
    FACE_OBJECTIVES,
    classification_metrics,
    face_metrics,
    per_class_accuracy,
    protocol_group_metrics,
    winogavil_metrics,
    winogavil_prompt,
)
from capmix.modelrun import load_open_clip, resolve_device, torch_device_type
from capmix.provenance import file_checksum, provenance_record, write_json
from capmix.suites import (
    METADATA_FIELDS,
    Suite,
    Task,
    aggregate,
    aggregate_file,
    load_suite,
    read_results,
    resolve_class_subset,
    task_class_subset,
)

log = logging.getLogger(__name__)

#: The recall@k clip_benchmark's retrieval metric reports (DataComp's).
RETRIEVAL_RECALL_K: tuple[int, ...] = (1, 5, 10)
#: The sample keys an image may be stored under in a task's shards, in the order tried.
IMAGE_EXTENSIONS: tuple[str, ...] = ("webp", "png", "jpg", "jpeg")
#: The protocols DataComp runs under autocast: retrieval (``eval_utils/retr_eval.py`` calls
#: clip_benchmark's ``zeroshot_retrieval.evaluate`` with its default ``amp=True``) and
#: WinoGAViL (``eval_utils/wino_eval.py``: ``torch.cuda.amp.autocast()`` around both
#: encoders and the similarities). Both run here in the autocast clip_benchmark's retrieval
#: enters, ``torch.autocast(device, enabled=amp)``, not in a precision setting of
#: :mod:`capmix.modelrun`: DataComp fixes it per protocol. Classification runs fp32, its
#: images as DataComp's (``run_classification(..., amp=False)``) and its class prompts too
#: (DataComp leaves ``zero_shot_classifier`` at clip_benchmark's default ``amp=True``).
AMP_PROTOCOLS: frozenset[str] = frozenset({"retrieval", "winogavil"})
#: The device types DataComp's autocast acts on: ``torch.cuda.amp.autocast`` is CUDA's (fp16,
#: torch's default there), a no-op for a model on the CPU, so there every protocol runs fp32.
AMP_DEVICE_TYPES: tuple[str, ...] = ("cuda",)


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
        return torch_device_type(self.device)


def load_model(model_name: str, checkpoint: Path, device: str | None = None,
               gpus: int | None = 0) -> EvalModel:
    """The architecture ``model_name`` (open_clip name or ``local-dir:``) with the weights of
    an ``open_clip_train`` checkpoint (``state_dict``, DDP's ``module.`` prefix stripped).

    ``device`` None (or ``auto``): CUDA when torch can use it, unless the job requested
    ``gpus`` (the suite's ``resources.gpu``): then, as for ``cuda``, a job that sees no GPU
    fails before loading anything (:func:`capmix.modelrun.resolve_device`). The weights stay
    fp32; :func:`uses_amp` says which tasks run under autocast.
    """
    import open_clip
    import torch

    device = resolve_device(device or "auto", gpus, f"evaluate {checkpoint}")
    torch.manual_seed(0)  # DataComp seeds before building the model
    loaded = load_open_clip(model_name, pretrained=None, device="cpu")
    open_clip.load_checkpoint(loaded.model, str(checkpoint))
    loaded.model.eval().to(device)
    return EvalModel(loaded.model, loaded.preprocess, loaded.tokenizer, device,
                     file_checksum(checkpoint)[0], model_name)


def uses_amp(model: EvalModel, task: Task) -> bool:
    """Whether ``task`` runs under autocast (torch's default dtype for the device: fp16 on
    CUDA), as DataComp runs it: its protocol is in :data:`AMP_PROTOCOLS` and the model is on
    a device type in :data:`AMP_DEVICE_TYPES`."""
    return task.protocol in AMP_PROTOCOLS and model.device_type in AMP_DEVICE_TYPES


# ------------------------------------------------------------------------------ protocols


def _wds(shards: Sequence[str]) -> Any:
    """A task's shards as one webdataset, in order and not split across nodes: every sample
    is read once, so the count read can be checked against the task's size."""
    import webdataset as wds

    return wds.WebDataset(list(shards), shardshuffle=False, nodesplitter=lambda src: src)


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
              metadata: bool) -> tuple[Any, Any, np.ndarray | None, int, list[str]]:
    """Logits, targets (and per-sample metadata) of zero-shot classification on one task,
    the number of samples read and the class names."""
    from clip_benchmark.metrics import zeroshot_classification as zsc

    shards = task_shards(directory, task)
    classnames = read_task_lines(directory / "classnames.txt", task)
    templates = read_task_lines(directory / "zeroshot_classification_templates.txt", task)
    kept = restricted_classes(task, classnames)
    if kept is not None:
        # The suite's class subset (e.g. CaptionNet's 100 ImageNet classes): the classifier
        # knows only those classes, and only their images are decoded and scored.
        position = {index: i for i, index in enumerate(kept)}
        classnames = [classnames[i] for i in kept]
    classifier = zsc.zero_shot_classifier(model.model, model.tokenizer, classnames, templates,
                                          model.device_type, amp=False)
    pipeline = _wds(shards)
    if kept is not None:
        pipeline = pipeline.select(lambda sample: int(sample["cls"]) in position)
    dataset = pipeline.decode("pil").to_tuple(";".join(IMAGE_EXTENSIONS), "cls") \
        .map_tuple(model.preprocess, (lambda c: position[int(c)]) if kept is not None else int)
    loader = _Counted(_loader(dataset, batch_size, workers))
    logits, target = zsc.run_classification(model.model, classifier, loader, model.device_type,
                                            amp=False)
    if logits.shape[1] != len(classnames):
        raise EvalDataError(f"task '{task.name}': {logits.shape[1]} classes scored, "
                            f"{len(classnames)} class names")
    if len(target) and not 0 <= int(target.min()) <= int(target.max()) < len(classnames):
        raise EvalDataError(f"task '{task.name}': labels outside 0..{len(classnames) - 1}, "
                            f"the {len(classnames)} class names ({directory})")
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
    if kept is not None:
        # every sample of the task is counted against its size (labels only, no decoding)
        return logits, target, meta, sum(1 for _ in _wds(shards).to_tuple("cls")), classnames
    return logits, target, meta, loader.n, classnames


def restricted_classes(task: Task, classnames: Sequence[str]) -> list[int] | None:
    """The indices (in the task's class order) of the suite's class subset, or None when the
    task is not restricted. A class of the subset the task lacks is fine (ImageNet-R and -A
    have 200 of ImageNet's classes); a task left with none is an error naming it."""
    wanted = task_class_subset(task)
    if wanted is None:
        return None
    chosen = set(wanted)
    kept = [i for i, name in enumerate(classnames) if name in chosen]
    if not kept:
        raise EvalDataError(f"task '{task.name}': none of its {len(classnames)} classes is in "
                            f"the suite's class subset ({len(chosen)} names, e.g. "
                            f"{sorted(chosen)[:3]})")
    return kept


def _retrieval(model: EvalModel, task: Task, directory: Path, batch_size: int,
               workers: int, amp: bool) -> tuple[dict[str, Any], int]:
    from clip_benchmark.datasets.builder import image_captions_collate_fn
    from clip_benchmark.metrics import zeroshot_retrieval as zsr

    dataset = _wds(task_shards(directory, task)).decode("pil") \
        .to_tuple(";".join(IMAGE_EXTENSIONS), "txt").map_tuple(model.preprocess, str.splitlines)
    loader = _Counted(_loader(dataset, batch_size, workers, image_captions_collate_fn))
    metrics = zsr.evaluate(model.model, loader, model.tokenizer, model.device_type, amp=amp,
                           recall_k_list=list(RETRIEVAL_RECALL_K))
    metrics["mean_recall@1"] = 0.5 * (metrics["text_retrieval_recall@1"]
                                      + metrics["image_retrieval_recall@1"])
    return metrics, loader.n


def _winogavil(model: EvalModel, task: Task, directory: Path,
               amp: bool) -> tuple[dict[str, Any], int]:
    import torch
    from sklearn.metrics import jaccard_score

    scores, sizes = [], []
    for sample in _wds(task_shards(directory, task)).decode("pil"):
        info = sample["json"]
        images = [sample[f"{i}.png"] for i in range(len(info["candidates"]))]
        y_true = np.isin(info["candidates"], info["associations"])
        # The autocast clip_benchmark's retrieval enters (torch.autocast(device, enabled=amp)),
        # around what DataComp's wino_eval autocasts: both encoders and the similarities.
        with torch.no_grad(), torch.autocast(model.device_type, enabled=amp):
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

    shards = task_shards(directory, task)
    split: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"classnames": [],
                                                                    "templates": []})
    for what, fname in (("classnames", "classnames.txt"),
                        ("templates", "zeroshot_classification_templates.txt")):
        for line in read_task_lines(directory / fname, task):
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
    per_class: dict[str, list] | None = None
    amp = uses_amp(model, task)
    if task.protocol == "retrieval":
        metrics, n = _retrieval(model, task, directory, batch_size, workers, amp)
    elif task.protocol == "winogavil":
        metrics, n = _winogavil(model, task, directory, amp)
    elif task.protocol == "faces":
        metrics, groups, n = _faces(model, task, directory, batch_size, workers)
    else:
        with_meta = task.protocol in METADATA_FIELDS
        logits, target, meta, n, classnames = _classify(model, task, directory, batch_size,
                                                        workers, with_meta)
        metrics = classification_metrics(logits, target)
        acc1, counts = per_class_accuracy(logits, target)
        per_class = {"classnames": classnames, "acc1": acc1, "n_samples": counts}
        if task.classes is not None:
            metrics["n_classes"] = len(classnames)
            metrics["n_samples_in_classes"] = int(len(target))
        if with_meta:
            assert meta is not None
            extra, groups = protocol_group_metrics(task.protocol, logits, target, meta)
            metrics.update(extra)
    check_sample_count(task, directory, n)
    metrics = _clean(metrics)
    metrics["main_metric"] = metrics.get(task.main_metric) if task.main_metric else None
    line: dict[str, Any] = {"key": task.key, "dataset": task.name, "metrics": metrics,
                            "n_samples": n, "precision": "amp" if amp else "fp32",
                            "wall_s": round(time.monotonic() - started, 3)}
    if groups:
        line["groups"] = _clean(groups)
    if per_class is not None:
        line["per_class"] = per_class
    return line


# ------------------------------------------------------------------------------ results files
# Written here, one line per task; read back by capmix.suites.read_results.


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


# ------------------------------------------------------------------------------ the stage


def evaluate_model(suite: Suite, model: EvalModel, data_dir: Path, progress_path: Path,
                   results_path: Path, aggregate_path: Path, batch_size: int = 64,
                   workers: int = 1, provenance_inputs: Sequence[Path] = (),
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every task of ``suite`` for one model, resumable; writes results and aggregates.

    Finished tasks are appended to ``progress_path`` (kept when the job dies); a re-run
    skips the tasks found there for the same checkpoint checksum. Every task's data is
    checked to exist before the first one runs, so a missing download fails at once, and so
    is the suite's class subset (a CaptionNet class list mapped to the ImageNet task's names).
    """
    for task in suite.tasks:
        task_shards(task_dir(data_dir, task), task)
    suite = resolve_class_subset(suite, data_dir)
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
