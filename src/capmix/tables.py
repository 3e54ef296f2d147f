"""The paper's tables from a pool's finished results: CSV (with its cell sidecar), Markdown, LaTeX.

One writer per kind of table (:data:`WRITERS`, named by ``plot`` in config/figures.yaml)
collects our numbers, each with the result file and field it came from; :func:`render` turns
them into the three formats. Where the pool's setting is the paper's (a real pool trained at
the scale the paper's entry names), every number stands beside the paper's
(config/paper_numbers.yaml), with the difference and whether it is within the metric's
tolerance (:meth:`capmix.papernumbers.PaperNumbers.compare_entry`); a toy pool's table shows
ours only, labelled toy, because the toy world is not the paper's setting. The CSV is written
with :func:`capmix.lineage.write_table`, so ``capmix provenance T.csv --cell ROW COL`` walks
any cell back to the job that made it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capmix.lineage import write_table
from capmix.papernumbers import Entry, PaperNumbers, lookup
from capmix.provenance import write_text_atomic


class NotAvailable(Exception):
    """The pool's results do not support this figure or table; the message says why."""


@dataclass
class Cell:
    """One number of ours: its value, the result file it came from and the dotted field."""

    value: Any
    source: str
    field: str
    paper: Entry | None = None


@dataclass
class TableData:
    """A table before rendering: rows of (label, column -> Cell), in order."""

    title: str
    row_label: str
    columns: list[str]
    rows: list[tuple[str, dict[str, Cell]]] = field(default_factory=list)


def read_json(path: str) -> Any:
    """A result JSON (an error names the file)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot be read as JSON ({error})") from error


def analysis(entry: Mapping[str, Any], name: str) -> tuple[dict[str, Any], str]:
    """An analysis document the entry reads and its path; NotAvailable with its reason."""
    path = entry["reads"]["analyses"][name]
    document = read_json(path)
    if not document.get("available"):
        raise NotAvailable(document.get("reason") or f"not available: {name} ({path})")
    return document, path


def paper_entry(numbers: PaperNumbers | None, where: str, **match: Any) -> Entry | None:
    """The paper's entry in ``where`` whose capmix keys equal ``match`` (None: no such
    number, or no paper numbers because the pool is a toy one)."""
    if numbers is None:
        return None
    try:
        entries = numbers.table(where)
    except KeyError:
        return None
    for entry in entries:
        if entry.kind == "result" and all(entry.capmix.get(k) == v for k, v in match.items()):
            return entry
    return None


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    if isinstance(value, list | tuple):
        return ", ".join(_format(v) for v in value)
    return str(value)


def render(table: TableData, numbers: PaperNumbers | None, toy: bool
           ) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """Header, rows and cell records of a table. A toy table has one column per quantity,
    "<name> (ours, toy)"; otherwise each quantity with a paper number in some row gets
    "(ours)", "(paper)", "(difference)" and "(reproduced)" columns."""
    with_paper = {c for c in table.columns if not toy and any(
        cells.get(c) is not None and cells[c].paper is not None for _, cells in table.rows)}
    header = [table.row_label]
    for column in table.columns:
        if toy:
            header.append(f"{column} (ours, toy)")
        elif column in with_paper:
            header += [f"{column} (ours)", f"{column} (paper)", f"{column} (difference)",
                       f"{column} (reproduced)"]
        else:
            header.append(f"{column} (ours)")
    rows, records = [], []
    for label, cells in table.rows:
        row = [label]
        for column in table.columns:
            cell = cells.get(column)
            ours_column = f"{column} (ours, toy)" if toy else f"{column} (ours)"
            row.append(_format(cell.value) if cell else "")
            if cell is not None and cell.value is not None:
                records.append({"row": label, "column": ours_column, "sources": [cell.source],
                                "field": cell.field})
            if column not in with_paper:
                continue
            if cell is None or cell.paper is None or numbers is None:
                row += ["", "", ""]
                continue
            ours = cell.value if isinstance(cell.value, int | float) else None
            comparison = numbers.compare_entry(ours, cell.paper)
            row += [cell.paper.printed, _format(comparison.difference),
                    _format(comparison.within)]
            records.append({"row": label, "column": f"{column} (paper)",
                            "sources": [str(numbers.path)], "field": f"entries.{cell.paper.id}"})
            if comparison.difference is not None:
                for suffix in ("difference", "reproduced"):
                    records.append({"row": label, "column": f"{column} ({suffix})",
                                    "sources": [cell.source, str(numbers.path)],
                                    "field": cell.field})
        rows.append(row)
    return header, rows, records


def markdown(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table under its title (for READMEs and issues)."""
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"
              for row in rows]
    return "\n".join(lines) + "\n"


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#",
                "$": r"\$", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    """LaTeX's special characters escaped, one character at a time."""
    return "".join(_TEX_SPECIAL.get(c, c) for c in text)


def latex(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A booktabs tabular (the paper's style) with its title as a comment, for a manuscript."""
    lines = [f"% {title}", r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
             r"\toprule", " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(str(c)) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_all(table: TableData, out_dir: Path, name: str, numbers: PaperNumbers | None,
              toy: bool) -> list[Path]:
    """``name``.csv (+ .cells.json), .md and .tex in ``out_dir``; the paths written."""
    header, rows, records = render(table, numbers, toy)
    title = table.title + (" (toy world: ours only)" if toy else "")
    out_dir = Path(out_dir)
    csv_path = out_dir / f"{name}.csv"
    write_table(csv_path, header, rows, records)
    write_text_atomic(out_dir / f"{name}.md", markdown(title, header, rows))
    write_text_atomic(out_dir / f"{name}.tex", latex(title, header, rows))
    return [csv_path, out_dir / f"{name}.cells.json", out_dir / f"{name}.md",
            out_dir / f"{name}.tex"]


# ------------------------------------------------------------------------------ the tables

#: Table 1's columns from a caption set's quality JSON: column -> field (the paper's order;
#: CIDEr from the pool's own JSON on a pool with reference captions, else from its NoCaps
#: pool's, ``reads.nocaps_quality``).
QUALITY_COLUMNS = {"NoCaps CIDEr": "cider", "CLIP-S": "clip_s", "Cosine similarity": "mean_cos",
                   "No. of unique trigrams": "unique_trigrams"}
#: Table 1's columns from the evaluation of the model trained on the caption set with no
#: filter (``reads.no_filter_eval``): column -> (paper metric, fields tried in order). The
#: Flickr column is DataComp's Flickr task (``main_metrics.Flickr``); the toy suite has no
#: Flickr, and its one retrieval task (the Retrieval aggregate) goes in a column named as what
#: it is, in Flickr's place.
MODEL_COLUMNS = {"ImageNet accuracy": ("ImageNet", ("aggregates.ImageNet",)),
                 "Flickr retrieval": ("Flickr", ("main_metrics.Flickr",))}
TOY_FLICKR_FIELD = "aggregates.Retrieval"
TOY_RETRIEVAL_COLUMN = "Retrieval (the toy suite's, in Flickr's place)"


def model_cells(path: str, numbers: PaperNumbers | None, where: str,
                scale: str | None) -> dict[str, Cell]:
    """Table 1's ImageNet and Flickr cells of one no-filter model's aggregate JSON, each
    beside the paper's number for the strategy it names (``strategy``) at ``scale``."""
    document = read_json(path)
    strategy = document.get("strategy")
    cells = {}
    for column, (metric, fields) in MODEL_COLUMNS.items():
        if column == "Flickr retrieval" and document.get("toy"):
            fields = (*fields, TOY_FLICKR_FIELD)
        for name in fields:
            try:
                value = lookup(document, name)
            except KeyError:  # the field is not there: try the next one
                value = None
            if value is not None:
                if name == TOY_FLICKR_FIELD:
                    column = TOY_RETRIEVAL_COLUMN
                cells[column] = Cell(value, path, name, paper_entry(
                    numbers, where, strategy=strategy, scale=scale, metric=metric))
                break
    return cells


def quality_table(entry: Mapping[str, Any], plan: Mapping[str, Any],
                  numbers: PaperNumbers | None) -> TableData:
    """Table 1: per caption set of the pool, its NoCaps CIDEr (the pool's own quality JSON on
    a pool with reference captions, else its NoCaps pool's, ``reads.nocaps_quality``),
    CLIP-S, cosine similarity and unique trigrams (quality JSONs), and the ImageNet accuracy
    and Flickr retrieval of the model trained on that caption set with no filter
    (``reads.no_filter_eval``). A cell without a value is left empty; a column no row has
    is left out."""
    reads = entry["reads"]
    nocaps = reads.get("nocaps_quality") or {}
    models = reads.get("no_filter_eval") or {}
    table = TableData(f"{entry['paper']}: caption quality, pool {plan['pool']}",
                      "Caption set", [])
    for caption_set, path in reads["quality"].items():
        document = read_json(path)
        cells: dict[str, Cell] = {}
        for column, key in QUALITY_COLUMNS.items():
            source, found = path, document
            if found.get(key) is None and key == "cider" and caption_set in nocaps:
                source = nocaps[caption_set]
                found = read_json(source)
            if found.get(key) is None:
                continue
            cells[column] = Cell(found[key], source, key, paper_entry(
                numbers, entry["paper"], caption_set=caption_set, metric=key,
                pool=found.get("pool", plan["pool"])))
        if caption_set in models:
            cells.update(model_cells(models[caption_set], numbers, entry["paper"],
                                     plan["train_scale"]))
        table.rows.append((caption_set, cells))
    if not table.rows:
        raise NotAvailable(f"not available: pool '{plan['pool']}' has no quality results")
    present = {c for _, cells in table.rows for c in cells}
    table.columns = [c for c in (*QUALITY_COLUMNS, *MODEL_COLUMNS, TOY_RETRIEVAL_COLUMN)
                     if c in present]
    return table


def retrieval_table(entry: Mapping[str, Any], plan: Mapping[str, Any],
                    numbers: PaperNumbers | None) -> TableData:
    """Table 2: per evaluated model, the mean retrieval score (over Flickr and MS-COCO; on
    the toy suite, its one retrieval task, in a column that says so) and ImageNet accuracy."""
    document, path = analysis(entry, "retrieval")
    retrieval = ("Retrieval (the toy suite's, in Flickr and MS-COCO's place)" if plan["toy"]
                 else "Flickr and MS-COCO retrieval")
    table = TableData(f"{entry['paper']}: retrieval, pool {plan['pool']}", "Strategy",
                      [retrieval, "ImageNet accuracy"])
    for strategy, row in document["models"].items():
        table.rows.append((strategy, {
            retrieval: Cell(
                row["retrieval_mean"], path, f"models.{strategy}.retrieval_mean",
                paper_entry(numbers, entry["paper"], strategy=strategy,
                            scale=plan["train_scale"], metric="Flickr+MSCOCO")),
            "ImageNet accuracy": Cell(row["imagenet"], path, f"models.{strategy}.imagenet")}))
    return table


def temperature_table(entry: Mapping[str, Any], plan: Mapping[str, Any],
                      numbers: PaperNumbers | None) -> TableData:
    """Table 3: per captioner and sampling temperature, the captions' cosine similarity and
    unique trigrams (quality JSONs), and the ImageNet and Average accuracy of the paper's
    temperature strategies the pool evaluates."""
    by_captioner: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
    for caption_set, path in entry["reads"]["quality"].items():
        if "/" in caption_set:
            captioner, temperature = caption_set.split("/")
            by_captioner.setdefault(captioner, {})[f"T={temperature}"] = (path, read_json(path))
    swept = {c: t for c, t in by_captioner.items() if len(t) > 1}
    if not swept:
        raise NotAvailable(f"not available: pool '{plan['pool']}' captions with one "
                           "temperature per captioner (captioners.<name>.temperatures)")
    columns = sorted({t for temps in swept.values() for t in temps},
                     key=lambda t: float(t[2:]))
    table = TableData(f"{entry['paper']}: sampling temperature, pool {plan['pool']}",
                      "Captioner / metric", list(columns))
    for captioner, temps in swept.items():
        for label, key in (("Cosine similarity", "mean_cos"),
                           ("No. of unique trigrams", "unique_trigrams")):
            table.rows.append((f"{captioner} / {label}", {
                t: Cell(doc[key], path, key) for t, (path, doc) in temps.items()}))
    evaluated = entry["reads"].get("eval") or {}
    paper_rows: dict[str, dict[str, Cell]] = {}
    if numbers is not None:
        for paper in numbers.table(entry["paper"]):
            strategy, metric = paper.capmix.get("strategy"), paper.capmix.get("metric")
            if strategy in evaluated and paper.capmix.get("scale") == plan["train_scale"]:
                path = evaluated[strategy]
                value = (read_json(path).get("aggregates") or {}).get(metric)
                if paper.column not in table.columns:
                    table.columns.append(paper.column)
                paper_rows.setdefault(paper.row, {})[paper.column] = Cell(
                    value, path, f"aggregates.{metric}", paper)
    table.rows += list(paper_rows.items())
    return table


SUBSET_COLUMNS = ("Training set size", "Share of the pool", "Threshold", "ImageNet accuracy",
                  "Average accuracy")


def subset_table(entry: Mapping[str, Any], plan: Mapping[str, Any],
                 numbers: PaperNumbers | None) -> TableData:
    """Tables 4 and 5: per subset, its size, share of the pool and thresholds (subsets'
    summaries via the subset_table analysis) and, where evaluated, ImageNet and Average.
    ``options.strategies`` keeps those rows only, and the table is drawn only if one of them
    is evaluated (Figure 13's table: its five LAION-COCO models).
    With ``options.layout: grid`` (Table 5), the paper's fraction grid instead
    (:func:`subset_grid`)."""
    if entry["options"].get("layout") == "grid":
        return subset_grid(entry, plan, numbers)
    document, path = analysis(entry, "subset_table")
    where = entry["options"].get("where", entry["paper"])
    evaluated = entry["reads"].get("eval") or {}
    listed = entry["options"].get("strategies")
    if listed is not None and not set(listed) & set(evaluated):
        raise NotAvailable(f"not available: pool '{plan['pool']}' evaluates none of "
                           f"{', '.join(listed)}")
    table = TableData(f"{where}: training sets, pool {plan['pool']}", "Strategy",
                      list(SUBSET_COLUMNS))
    scale = plan["train_scale"]
    for index, row in enumerate(document["rows"]):
        strategy = row["strategy"]
        if listed is not None and strategy not in listed:
            continue
        threshold, threshold_field = (threshold_cell(row, index)
                                      or (None, f"rows.{index}.thresholds"))
        cells = {
            "Training set size": Cell(row["n_samples"], path, f"rows.{index}.n_samples",
                                      paper_entry(numbers, where, strategy=strategy,
                                                  scale=scale, metric="n_samples")),
            "Share of the pool": Cell(row["share_of_pool"], path,
                                      f"rows.{index}.share_of_pool"),
            "Threshold": Cell(threshold, path, threshold_field)}
        if strategy in evaluated:
            aggregates = read_json(evaluated[strategy]).get("aggregates") or {}
            for column, metric in (("ImageNet accuracy", "ImageNet"),
                                   ("Average accuracy", "Average")):
                cells[column] = Cell(aggregates.get(metric), evaluated[strategy],
                                     f"aggregates.{metric}",
                                     paper_entry(numbers, where, strategy=strategy,
                                                 scale=scale, metric=metric))
        table.rows.append((strategy, cells))
    return table


#: The grid's quantities, in each family's order: row label -> the paper numbers' metric.
GRID_QUANTITIES = {"Training set size": "n_samples", "Threshold": "threshold",
                   "ImageNet accuracy": "ImageNet", "Average accuracy": "Average"}


def fraction_column(fraction: float) -> str:
    """A sweep fraction as the paper's column: 0.1 -> '10%', 0.125 -> '12.5%'."""
    return f"{round(fraction * 100, 6):g}%"


def threshold_cell(row: Mapping[str, Any], index: int) -> tuple[Any, str] | None:
    """A subset's cosine threshold and its field: the number where one part sets it, the
    list where several do (each part's, in order); None where none does."""
    thresholds = row.get("thresholds")
    if isinstance(thresholds, Mapping):
        values, fields = list(thresholds.values()), [f"thresholds.{k}" for k in thresholds]
    else:
        values = list(thresholds or [])
        fields = [f"thresholds.{i}" for i in range(len(values))]
    if not values:
        return None
    if len(values) == 1:
        return values[0], f"rows.{index}.{fields[0]}"
    return values, f"rows.{index}.thresholds"


def family_labels(numbers: PaperNumbers | None, where: str,
                  members: Mapping[str, Sequence[str]]) -> dict[tuple[str, str], str]:
    """(family, metric) -> the paper's row label of that family's line of ``where``, from
    the paper's entries for the family's strategies; plus (family, "") -> the family's own
    label (the part of a size/ImageNet/Average line's label before its " / quantity").
    Keys are in the order of the paper's entries (so of its rows)."""
    labels: dict[tuple[str, str], str] = {}
    if numbers is None:
        return labels
    try:
        entries = numbers.table(where)
    except KeyError:
        return labels
    family_of = {s: family for family, names in members.items() for s in names}
    quantity_of = {metric: label for label, metric in GRID_QUANTITIES.items()}
    for paper in entries:
        family = family_of.get(paper.capmix.get("strategy"))
        metric = paper.capmix.get("metric")
        if family is None or metric not in quantity_of:
            continue
        labels.setdefault((family, metric), paper.row)
        suffix = f" / {quantity_of[metric]}"
        if metric != "threshold" and paper.row.endswith(suffix):
            labels.setdefault((family, ""), paper.row[: -len(suffix)])
    return labels


def subset_grid(entry: Mapping[str, Any], plan: Mapping[str, Any],
                numbers: PaperNumbers | None) -> TableData:
    """Table 5 as the paper prints it: one column per sweep fraction the pool has (10%, 20%,
    ...), and per strategy family one row per quantity: training set size, cosine
    threshold, ImageNet and Average accuracy (the latter two where a fraction's model is
    evaluated); a quantity no fraction of the family has is left out.

    Families and fractions are the strategy catalogue's (config/strategies.yaml: a family
    with ``fractions`` expands to ``{family}_{percent}``, capmix.strategies.expand_strategies;
    the subset summaries and so the subset_table analysis carry each subset's ``family`` and
    ``fraction``). Strategies without a fraction (raw_no_filter, raw_min_0p28, ...) have no
    place in a fraction grid and are left to Table 4, which lists every subset. Rows are
    labelled as the paper's (config/paper_numbers.yaml: "Only raw captions / ImageNet
    accuracy", "Cosine similarity threshold / Raw captions") where it prints that family's
    line, else "<family> / <quantity>" with the paper's family label, or the family's name;
    families the paper prints come first, in its order, the rest in the analysis's.
    """
    document, path = analysis(entry, "subset_table")
    where = entry["options"].get("where", entry["paper"])
    evaluated = entry["reads"].get("eval") or {}
    scale = plan["train_scale"]
    swept = [(i, row) for i, row in enumerate(document["rows"])
             if row.get("fraction") is not None and row.get("family")]
    if not swept:
        raise NotAvailable(f"not available: pool '{plan['pool']}' builds no strategy with "
                           "fractions (config/strategies.yaml `fractions`)")
    fractions = sorted({float(row["fraction"]) for _, row in swept})
    members: dict[str, list[str]] = {}
    for _, row in swept:
        members.setdefault(row["family"], []).append(row["strategy"])
    labels = family_labels(numbers, where, members)
    printed = list(dict.fromkeys(family for family, _ in labels))
    order = sorted(members, key=lambda f: printed.index(f) if f in printed else len(printed))
    grid: dict[str, dict[str, dict[str, Cell]]] = {f: {} for f in order}
    for index, row in swept:
        strategy, column = row["strategy"], fraction_column(float(row["fraction"]))
        found = [("n_samples", row.get("n_samples"), path, f"rows.{index}.n_samples")]
        threshold = threshold_cell(row, index)
        if threshold is not None:
            found.append(("threshold", threshold[0], path, threshold[1]))
        if strategy in evaluated:
            aggregates = read_json(evaluated[strategy]).get("aggregates") or {}
            found += [(metric, aggregates.get(metric), evaluated[strategy],
                       f"aggregates.{metric}") for metric in ("ImageNet", "Average")]
        for metric, value, source, name in found:
            if value is not None:
                grid[row["family"]].setdefault(metric, {})[column] = Cell(
                    value, source, name, paper_entry(numbers, where, strategy=strategy,
                                                     scale=scale, metric=metric))
    table = TableData(f"{where}: training sets by fraction, pool {plan['pool']}",
                      "Strategy / quantity", [fraction_column(f) for f in fractions])
    for family, lines in grid.items():
        name = labels.get((family, ""), family)
        for quantity, metric in GRID_QUANTITIES.items():
            if metric in lines:
                label = labels.get((family, metric), f"{name} / {quantity}")
                table.rows.append((label, lines[metric]))
    return table


#: The evaluation task Table 6 reads (config/eval_suites.yaml's name for DataComp's
#: fairness/fairface) and the groups rows it takes (capmix.evalmetrics.face_metrics).
FAIRFACE_TASK = "FairFace"
GENDER_X_RACE = "acc_gender_x"


def _name_key(name: Any) -> str:
    """A class name compared by letters and digits only: DataComp's "Latino_Hispanic" is the
    paper's "Latino/Hispanic", "Southeast Asian" its "South East Asian"."""
    return "".join(c for c in str(name).lower() if c.isalnum())


def _fairface_line(path: str) -> dict[str, Any] | None:
    """The FairFace result line of a model's results JSONL (None: the model has none)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error})") from error
    found = None
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not JSON ({error})") from error
        if line.get("dataset") == FAIRFACE_TASK:
            found = {**line, "_line": number}
    return found


def fairness_table(entry: Mapping[str, Any], plan: Mapping[str, Any],
                   numbers: PaperNumbers | None) -> TableData:
    """Table 6: FairFace zero-shot gender accuracy per race, for every evaluated model.

    Rows "<gender> / <model>" (the accuracy on that gender's faces of each race) and
    "Overall / <model>" (both genders, weighted by their counts, which is the paper's Overall:
    the mean of Male and Female to the printed digit), one column per race, from the groups
    rows ``acc_gender_x`` DataComp's fairness evaluation writes (capmix.evalmetrics.face_metrics)
    into the model's FairFace result line. Race and gender names are matched to the paper's by
    letters only (see :func:`_name_key`).
    """
    files = entry["reads"].get("eval_lines") or {}
    found = {s: (path, _fairface_line(path)) for s, path in files.items()}
    found = {s: (path, line) for s, (path, line) in found.items() if line is not None}
    if not found:
        raise NotAvailable(f"not available: no model of pool '{plan['pool']}' was evaluated on "
                           f"a '{FAIRFACE_TASK}' task (its suite, eval_suites.<suite>.tasks, "
                           "has none: DataComp's suite has it, the toy suite does not)")
    scale = plan["train_scale"]
    races: dict[str, str] = {}
    by_gender: dict[str, dict[str, dict[str, Cell]]] = {}  # gender -> strategy -> race
    overall: dict[str, dict[str, Cell]] = {}  # strategy -> race
    for strategy, (path, line) in found.items():
        rows = [(i, r) for i, r in enumerate(line.get("groups") or [])
                if r.get("metric") == GENDER_X_RACE]
        if not rows:
            raise ValueError(f"{path}, line {line['_line']}: the FairFace result has no "
                             f"'{GENDER_X_RACE}' groups rows (not DataComp's face metrics)")
        totals: dict[str, list[float]] = {}
        for index, row in rows:
            gender = str(row.get("gender_name", row.get("gender")))
            race = str(row.get("race_name", row.get("race")))
            races.setdefault(_name_key(race), race)
            field = f"line {line['_line']}: groups.{index}.value"
            cell = Cell(row["value"], path, field, paper_entry(
                numbers, entry["paper"], strategy=strategy, scale=scale,
                metric="FairFace:" + GENDER_X_RACE,
                group={"gender": _paper_name(numbers, entry, "gender", gender),
                       "race": _paper_name(numbers, entry, "race", race)}))
            by_gender.setdefault(gender, {}).setdefault(strategy, {})[_name_key(race)] = cell
            sums = totals.setdefault(_name_key(race), [0.0, 0.0])
            sums[0] += row["value"] * row["count"]
            sums[1] += row["count"]
        overall[strategy] = {
            race: Cell(weighted / count if count else None, path,
                       f"line {line['_line']}: groups ({GENDER_X_RACE}, count-weighted over "
                       "genders)", paper_entry(
                           numbers, entry["paper"], strategy=strategy, scale=scale,
                           metric="FairFace:acc_gender_by_race",
                           group={"race": _paper_name(numbers, entry, "race", races[race])}))
            for race, (weighted, count) in totals.items()}
    columns = sorted(races)
    table = TableData(f"{entry['paper']}: FairFace gender accuracy per race, pool "
                      f"{plan['pool']}", "Gender / model", [races[r] for r in columns])
    for gender in sorted(by_gender):
        for strategy, cells in by_gender[gender].items():
            table.rows.append((f"{gender} / {strategy}",
                               {races[r]: c for r, c in cells.items()}))
    for strategy, cells in overall.items():
        table.rows.append((f"Overall / {strategy}", {races[r]: c for r, c in cells.items()}))
    return table


def _paper_name(numbers: PaperNumbers | None, entry: Mapping[str, Any], key: str,
                name: str) -> str:
    """The paper's spelling of a gender or race name (its entries' capmix.group), else ours."""
    if numbers is not None:
        for paper in numbers.table(entry["paper"]):
            theirs = (paper.capmix.get("group") or {}).get(key)
            if theirs is not None and _name_key(theirs) == _name_key(name):
                return theirs
    return name


TableWriter = Callable[[Mapping[str, Any], Mapping[str, Any], PaperNumbers | None], TableData]
WRITERS: dict[str, TableWriter] = {
    "quality_table": quality_table,
    "retrieval_table": retrieval_table,
    "temperature_table": temperature_table,
    "subset_table": subset_table,
    "fairness_table": fairness_table,
}
