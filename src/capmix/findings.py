"""The findings table: does each finding of the paper hold in our results?

The paper's claims are comparisons between two measured quantities ("BLIP2 captions, no
filtering, beat raw captions on ImageNet"). They are config data (``config/findings.yaml``,
top-level ``findings``), so adding one is a config edit, not code. A pool opts in with a
``findings`` block that names its caption sets (``aliases``) and the other pools it reads
measurements from, by role (``pools``, e.g. the NoCaps-like pool for CIDEr).

Three steps, each testable without Snakemake:

* :func:`plan_findings` (config -> plan, pure): every quantity resolved to a results file and
  a field in it, or to the reason the pool cannot measure it (an alias or role the pool does
  not define, a strategy it does not train). The workflow takes the rule's inputs from the
  plan (:func:`finding_inputs`) and passes the plan as a param, so that a pool's table
  waits only for what it can measure, and editing the catalogue re-runs the table.
* :func:`compute_findings` (plan + loaded JSON -> table, pure): values, comparisons, verdicts.
  A missing or null value makes its comparison ``null`` ("not measured") with the reason: a
  half-finished run still gets a table, never an exception after the work was done.
* :func:`write_findings` and :func:`combine`: JSON (with provenance) and a readable markdown
  table per pool and seed; and the same across seeds (mean, standard deviation, how many
  seeds hold). ``python -m capmix.findings combine OUT_PREFIX FILE...`` runs the latter.

Verdicts are three-valued, as a conjunction's: a finding holds (``true``) when every
comparison holds, fails (``false``) as soon as one measured comparison fails (the whole
cannot hold, whatever the rest would show), and is ``null`` (not measured) otherwise.
Tables of toy pools say they are toy-world measurements, not the paper's numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from capmix import captionsets
from capmix.captionsets import RAW

#: ``expect`` -> the relation a and b must stand in (strictly).
RELATIONS = {"greater": ">", "less": "<"}
TOY_NOTE = (
    "Toy-world measurements: procedurally generated images and captions, and stand-in models "
    "trained by this pipeline. They test whether the paper's findings hold in this small "
    "world; they are not the paper's numbers."
)
SAME_MEASUREMENT = "both sides are the same measurement"

Plan = dict[str, Any]
Table = dict[str, Any]


# ------------------------------------------------------------------------------ config


def quantity_label(spec: Mapping[str, Any]) -> str:
    """A quantity as people read it, from its spec alone (so it is the same for every seed and
    pool): ``model synthetic_no_filter: Average``, ``captions synthetic [nocaps]: cider``."""
    role = f" [{spec['pool']}]" if spec.get("pool") else ""
    if "eval" in spec:
        return f"model {spec['eval']}{role}: {spec['metric']}"
    return f"captions {spec.get('quality')}{role}: {spec['metric']}"


def normalise_caption_set(caption_set: str) -> str:
    """``captioner/temperature`` as the workflow's paths write it (0.75, 1 -> 1.0)."""
    if "/" not in caption_set:
        return caption_set
    captioner, _, temperature = caption_set.rpartition("/")
    return captionsets.caption_set_name(captioner, float(temperature))


def pool_caption_sets(config: Mapping[str, Any], pool: Mapping[str, Any]) -> list[str]:
    """The caption sets a pool scores (:func:`capmix.captionsets.pool_caption_sets`)."""
    return captionsets.pool_caption_sets(config.get("captioners") or {}, pool)


def _pools(config: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {p["name"]: p for p in config.get("pools") or [] if isinstance(p, Mapping)}


def findings_problems(config: Mapping[str, Any]) -> list[str]:
    """Start-up checks a schema cannot express, each naming the config key and value.

    What the catalogue asks and a pool does not define or produce is *not* a problem: it is
    reported as not measured in that pool's table (the catalogue serves every pool). What a
    pool's own ``findings`` block says must exist, and a comparison of a quantity with itself
    can never hold.
    """
    problems = []
    for finding_id, finding in (config.get("findings") or {}).items():
        if not isinstance(finding, Mapping):
            continue  # the schema reports it
        for index, comparison in enumerate(finding.get("compare") or []):
            if isinstance(comparison, Mapping) and comparison.get("a") is not None \
                    and comparison.get("a") == comparison.get("b"):
                problems.append(
                    f"config key 'findings.{finding_id}.compare[{index}]': a and b are the same "
                    f"quantity ({quantity_label(comparison['a'])}), so it can never hold")
    pools = _pools(config)
    for index, pool in enumerate(config.get("pools") or []):
        block = pool.get("findings") if isinstance(pool, Mapping) else None
        if not block:
            continue
        where = f"config key 'pools[{index}].findings"
        available = set(pool_caption_sets(config, pool))
        for role, other in (block.get("pools") or {}).items():
            if other not in pools:
                problems.append(f"{where}.pools.{role}': unknown pool '{other}' (allowed: one "
                                f"of {', '.join(sorted(pools))})")
            else:
                available |= set(pool_caption_sets(config, pools[other]))
        for alias, value in (block.get("aliases") or {}).items():
            try:
                concrete = normalise_caption_set(str(value))
            except ValueError:
                concrete = str(value)  # the schema's pattern reports it
            if concrete not in available:
                problems.append(
                    f"{where}.aliases.{alias}': '{value}' is not a caption set of pool "
                    f"'{pool['name']}' or of its role pools (allowed: one of "
                    f"{', '.join(sorted(available))})")
    return problems


# ------------------------------------------------------------------------------ plan


def plan_findings(config: Mapping[str, Any], pool_name: str, results: str = "results") -> Plan:
    """Every finding of the catalogue, its quantities resolved for ``pool_name`` (pure).

    Each side of a comparison gets ``label``, ``quantity`` (the spec), ``pool`` (the pool it is
    read from), ``file`` and ``key`` (the field: a list of keys into the file's JSON), or a
    ``reason`` it cannot be measured on this pool. A comparison whose sides resolve to the same
    field has ``reason`` "both sides are the same measurement".
    """
    pools = _pools(config)
    if pool_name not in pools:
        raise KeyError(f"no pool named '{pool_name}' (have: {sorted(pools)})")
    pool = pools[pool_name]
    findings = []
    for finding_id, finding in (config.get("findings") or {}).items():
        comparisons = []
        for spec in finding["compare"]:
            a = _resolve(config, pool, spec["a"], results)
            b = _resolve(config, pool, spec["b"], results)
            same = a["file"] is not None and (a["file"], a["key"]) == (b["file"], b["key"])
            comparisons.append({"a": a, "expect": spec["expect"],
                                "relation": RELATIONS[spec["expect"]], "b": b,
                                "reason": SAME_MEASUREMENT if same else None})
        findings.append({"id": str(finding_id), "paper": finding["paper"],
                         "claim": " ".join(str(finding["claim"]).split()),
                         "comparisons": comparisons})
    return {"pool": pool_name, "toy": pool["source"]["type"] == "toy",
            "seed": config.get("seed"), "findings": findings}


def plan_inputs(plan: Mapping[str, Any]) -> list[str]:
    """The files the plan's measurable quantities read, each once, sorted."""
    return sorted({side["file"] for finding in plan["findings"]
                   for comparison in finding["comparisons"] if comparison["reason"] is None
                   for side in (comparison["a"], comparison["b"]) if side["file"] is not None})


def finding_inputs(config: Mapping[str, Any], pool_name: str,
                   results: str = "results") -> list[str]:
    """What the findings rule of ``pool_name`` reads (its input function uses this)."""
    return plan_inputs(plan_findings(config, pool_name, results))


def _resolve(config: Mapping[str, Any], pool: Mapping[str, Any], spec: Mapping[str, Any],
             results: str) -> dict[str, Any]:
    side: dict[str, Any] = {"label": quantity_label(spec), "quantity": dict(spec),
                            "pool": None, "file": None, "key": None, "reason": None}
    target_name = pool["name"]
    role = spec.get("pool")
    if role is not None:
        roles = (pool.get("findings") or {}).get("pools") or {}
        if role not in roles:
            return {**side, "reason": f"pool role '{role}' is not defined for pool "
                                      f"'{pool['name']}' (pools[].findings.pools)"}
        target_name = roles[role]
    target = _pools(config).get(target_name)
    if target is None:
        return {**side, "reason": f"unknown pool '{target_name}'"}
    side["pool"] = target_name
    if "eval" in spec:
        return _resolve_eval(config, target, spec, side, results)
    return _resolve_quality(config, pool, target, spec, side, results)


def _resolve_eval(config: Mapping[str, Any], target: Mapping[str, Any],
                  spec: Mapping[str, Any], side: dict[str, Any], results: str) -> dict[str, Any]:
    """An aggregate or task of one model's evaluation (results/{pool}/eval/*.aggregate.json)."""
    from capmix.scales import pool_train_strategies
    from capmix.strategies import expand_strategies
    from capmix.suites import load_suite

    strategy, metric, name = spec["eval"], spec["metric"], target["name"]
    side["strategy"] = strategy
    if strategy not in expand_strategies(config.get("strategies") or {}):
        return {**side, "reason": f"strategy '{strategy}' is not in the strategy catalogue "
                                  f"(config key 'strategies'), so pool '{name}' trains no "
                                  "model on it"}
    if not target.get("train"):
        return {**side, "reason": f"pool '{name}' trains no models (no pools[].train)"}
    if strategy not in pool_train_strategies(config, target):
        return {**side, "reason": f"strategy '{strategy}' is not trained by pool '{name}' "
                                  "(pools[].train.strategies)"}
    if not target.get("eval"):
        return {**side, "reason": f"pool '{name}' evaluates no models (no pools[].eval)"}
    try:
        suite = load_suite(config, target["eval"]["suite"])
    except ValueError as error:
        return {**side, "reason": str(error)}
    aggregates = ["Average", *suite.aggregates]
    if metric in aggregates:
        key = ["aggregates", metric]
    elif metric in suite.scored:
        key = ["main_metrics", metric]
    else:
        return {**side, "reason": f"metric '{metric}' is neither an aggregate "
                                  f"({', '.join(aggregates)}) nor a scored task "
                                  f"({', '.join(suite.scored)}) of suite '{suite.name}'"}
    return {**side, "file": f"{results}/{name}/eval/{strategy}.aggregate.json", "key": key}


def _resolve_quality(config: Mapping[str, Any], pool: Mapping[str, Any],
                     target: Mapping[str, Any], spec: Mapping[str, Any], side: dict[str, Any],
                     results: str) -> dict[str, Any]:
    """A field of one caption set's quality (results/{pool}/quality/{scorer}/{set}.json).

    Aliases are the asking pool's (``pool``), also when the file is a role's pool's: the
    pool that states the finding says which of its caption sets "synthetic" means.
    """
    caption_set, name = spec["quality"], target["name"]
    if caption_set != RAW and "/" not in caption_set:
        aliases = (pool.get("findings") or {}).get("aliases") or {}
        if caption_set not in aliases:
            return {**side, "reason": f"alias '{caption_set}' is not defined for pool "
                                      f"'{pool['name']}' (pools[].findings.aliases)"}
        caption_set = aliases[caption_set]
    caption_set = normalise_caption_set(caption_set)
    side["caption_set"] = caption_set
    scorer = target.get("scorer")
    if scorer is None:
        return {**side, "reason": f"pool '{name}' has no scorer, so no caption-set quality"}
    produced = pool_caption_sets(config, target)
    if caption_set not in produced:
        return {**side, "reason": f"caption set '{caption_set}' is not produced for pool "
                                  f"'{name}' (it has: {', '.join(produced)})"}
    return {**side, "file": f"{results}/{name}/quality/{scorer}/{caption_set}.json",
            "key": spec["metric"].split(".")}


# ------------------------------------------------------------------------------ table


def read_documents(paths: Iterable[str | Path]) -> dict[str, Any]:
    """path -> its JSON object, or a string saying why it could not be read (never raises)."""
    documents: dict[str, Any] = {}
    for path in paths:
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            documents[str(path)] = f"{path} does not exist"
            continue
        except (OSError, ValueError) as error:
            documents[str(path)] = f"{path} is unreadable ({error})"
            continue
        documents[str(path)] = (document if isinstance(document, dict)
                                else f"{path} is not a JSON object")
    return documents


def show_key(key: Sequence[str]) -> str:
    """A field as a dotted path; a part that is not a plain word is quoted."""
    return ".".join(k if re.fullmatch(r"[A-Za-z0-9_]+", k) else repr(k) for k in key)


def value_at(document: Mapping[str, Any], key: Sequence[str]) -> tuple[float | None, str | None]:
    """The number at ``key`` in ``document``, or None and why there is none."""
    node: Any = document
    for part in key:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None, f"no field {show_key(key)}"
    if node is None:
        reason = f"{show_key(key)} is null"
        missing = (document.get("missing") or {}).get(key[-1]) if key[0] == "aggregates" \
            else None
        if missing:
            reason += f" (tasks missing: {', '.join(map(str, missing))})"
        return None, reason
    if isinstance(node, bool) or not isinstance(node, int | float):
        return None, f"{show_key(key)} is not a number ({node!r})"
    if not math.isfinite(node):
        return None, f"{show_key(key)} is not finite ({node!r})"
    return float(node), None


def _measure(side: Mapping[str, Any], documents: Mapping[str, Any]) -> dict[str, Any]:
    measured = {**side, "value": None}
    if side["reason"] is not None:
        return measured
    document = documents.get(side["file"])
    if document is None:
        return {**measured, "reason": f"{side['file']} was not read"}
    if not isinstance(document, Mapping):
        return {**measured, "reason": str(document)}
    value, reason = value_at(document, side["key"])
    if reason is not None:
        reason = f"{side['file']}: {reason}"
    return {**measured, "value": value, "reason": reason}


def verdict(outcomes: Sequence[bool | None]) -> bool | None:
    """All of ``outcomes`` (three-valued): False if any is False, True if all are True."""
    if any(o is False for o in outcomes):
        return False
    if outcomes and all(o is True for o in outcomes):
        return True
    return None


def compute_findings(plan: Mapping[str, Any], documents: Mapping[str, Any]) -> Table:
    """The findings table of a plan, given its files' JSON (``documents``: path -> object, or
    a string saying why the file could not be read). Pure; never raises on missing data."""
    findings = []
    for finding in plan["findings"]:
        comparisons = []
        for comparison in finding["comparisons"]:
            a, b = _measure(comparison["a"], documents), _measure(comparison["b"], documents)
            reason, holds = comparison["reason"], None
            if reason is None:
                missing = [f"{name}: {side['reason']}" for name, side in (("a", a), ("b", b))
                           if side["reason"] is not None]
                if missing:
                    reason = "; ".join(missing)
                elif comparison["expect"] == "greater":
                    holds = a["value"] > b["value"]
                else:
                    holds = a["value"] < b["value"]
            comparisons.append({**comparison, "a": a, "b": b, "holds": holds, "reason": reason})
        holds = verdict([c["holds"] for c in comparisons])
        reason = None
        if holds is None:
            reason = "; ".join(f"comparison {i}: {c['reason']}"
                               for i, c in enumerate(comparisons, 1) if c["holds"] is None)
        findings.append({**finding, "comparisons": comparisons, "holds": holds,
                         "reason": reason})
    verdicts = [f["holds"] for f in findings]
    return {
        "pool": plan["pool"], "toy": plan["toy"], "seed": plan["seed"],
        "note": TOY_NOTE if plan["toy"] else f"Measurements on pool '{plan['pool']}'.",
        "findings": findings,
        "summary": {"holds": verdicts.count(True), "fails": verdicts.count(False),
                    "not_measured": verdicts.count(None), "total": len(verdicts)},
    }


def write_findings(plan: Mapping[str, Any], json_path: Path, md_path: Path,
                   csv_path: Path | None = None) -> Table:
    """The findings rule: read what the plan measures, write the table as JSON and markdown,
    and (``csv_path``) as CSV with its cell sidecar (:func:`table_rows`)."""
    from capmix.lineage import write_table
    from capmix.provenance import provenance_record, write_json, write_text_atomic

    files = plan_inputs(plan)
    documents = read_documents(files)
    table = compute_findings(plan, documents)
    readable = [f for f in files if isinstance(documents[f], Mapping)]
    table["provenance"] = provenance_record(
        "findings", inputs=readable, params={"pool": plan["pool"], "seed": plan["seed"]},
        packages=())
    write_json(json_path, table)
    write_text_atomic(md_path, render_markdown(table))
    if csv_path is not None:
        write_table(csv_path, *table_rows(table))
    return table


#: The CSV's columns; the first holds the row labels (``F2.1``: finding F2, comparison 1).
CSV_HEADER = ("row", "finding", "paper", "quantity a", "ours a", "relation", "quantity b",
              "ours b", "holds", "reason")


def table_rows(table: Mapping[str, Any]) -> tuple[list[str], list[list[Any]],
                                                    list[dict[str, Any]]]:
    """Header, rows and cells of the CSV table: one row per comparison, values unrounded;
    each value cell names the results file it was read from and the field in it, and the
    ``holds`` cell both files (the cell contract of ``capmix.lineage.write_table``)."""
    rows, cells = [], []
    for finding in table["findings"]:
        for number, c in enumerate(finding["comparisons"], 1):
            label = f"{finding['id']}.{number}"
            rows.append([label, finding["id"], finding["paper"], c["a"]["label"],
                         c["a"]["value"], c["relation"], c["b"]["label"], c["b"]["value"],
                         _holds_cell(c["holds"]), c["reason"] or ""])
            for column, side in (("ours a", c["a"]), ("ours b", c["b"])):
                if side["file"] is not None:
                    cells.append({"row": label, "column": column, "sources": [side["file"]],
                                  "field": ".".join(side["key"]), "key": list(side["key"])})
            sources = [side["file"] for side in (c["a"], c["b"]) if side["file"] is not None]
            if sources:
                cells.append({"row": label, "column": "holds",
                              "sources": list(dict.fromkeys(sources))})
    return list(CSV_HEADER), rows, cells


# ------------------------------------------------------------------------------ markdown


def format_value(value: float | None) -> str:
    """3 significant digits (0.105, 0.0475, 1.03, 12.3); whole numbers as they are."""
    if value is None:
        return "n/a"
    if (float(value).is_integer() and abs(value) >= 1) or abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _holds_cell(holds: bool | None) -> str:
    return {True: "yes", False: "no", None: "not measured"}[holds]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row(cells: Iterable[Any]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _header(*names: str) -> list[str]:
    return [_row(names), _row(["---"] * len(names))]


def render_markdown(table: Mapping[str, Any]) -> str:
    """One pool's findings as markdown: every comparison, the verdicts, why some are not
    measured."""
    seed = f" (seed {table['seed']})" if table.get("seed") is not None else ""
    summary = table["summary"]
    lines = [f"# The paper's findings on pool `{table['pool']}`{seed}", "",
             f"**{table['note']}**" if table["toy"] else table["note"], "",
             f"Holds: {summary['holds']}, fails: {summary['fails']}, not measured: "
             f"{summary['not_measured']} (of {summary['total']} findings). Relation: what the "
             "paper finds (a > b or a < b, strictly).", ""]
    lines += _header("finding", "paper", "quantity a", "ours a", "relation", "quantity b",
                     "ours b", "holds")
    notes = []
    for finding in table["findings"]:
        for number, c in enumerate(finding["comparisons"], 1):
            lines.append(_row([finding["id"], finding["paper"], c["a"]["label"],
                               format_value(c["a"]["value"]), c["relation"], c["b"]["label"],
                               format_value(c["b"]["value"]), _holds_cell(c["holds"])]))
            if c["holds"] is None:
                notes.append(f"- {finding['id']}, comparison {number}: {c['reason']}")
    lines += ["", "## Verdicts", ""]
    lines += _header("finding", "paper", "claim", "holds")
    lines += [_row([f["id"], f["paper"], f["claim"], _holds_cell(f["holds"])])
              for f in table["findings"]]
    if notes:
        lines += ["", "## Not measured", "", *notes]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ across seeds


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    numbers = [v for v in values if v is not None]
    return {"mean": math.fsum(numbers) / len(numbers) if numbers else None,
            "std": statistics.stdev(numbers) if len(numbers) > 1 else None,
            "n": len(numbers), "values": list(values)}


def combine_tables(tables: Sequence[Mapping[str, Any]], names: Sequence[str]) -> Table:
    """Several seeds' findings tables as one: per quantity the mean, sample standard deviation
    (n - 1; null below two values) and n over the seeds that measured it; per comparison and
    finding how many seeds measured it and how many of those hold.

    Findings are matched by id and comparisons by position; their quantities must agree
    (the same catalogue), else ValueError naming the file.
    """
    if not tables:
        raise ValueError("no findings tables to combine")
    order: dict[str, Mapping[str, Any]] = {}
    for table, name in zip(tables, names, strict=True):
        for finding in table["findings"]:
            first = order.setdefault(finding["id"], finding)
            for ours, theirs in zip(finding["comparisons"], first["comparisons"], strict=False):
                if (ours["a"]["label"], ours["expect"], ours["b"]["label"]) != (
                        theirs["a"]["label"], theirs["expect"], theirs["b"]["label"]):
                    raise ValueError(f"{name}: finding {finding['id']} compares "
                                     f"{ours['a']['label']} {ours['relation']} "
                                     f"{ours['b']['label']}, other files "
                                     f"{theirs['a']['label']} {theirs['relation']} "
                                     f"{theirs['b']['label']} (different catalogues)")
            if len(finding["comparisons"]) != len(first["comparisons"]):
                raise ValueError(f"{name}: finding {finding['id']} has "
                                 f"{len(finding['comparisons'])} comparisons, other files "
                                 f"{len(first['comparisons'])} (different catalogues)")
    by_id = [{f["id"]: f for f in table["findings"]} for table in tables]
    findings = []
    for finding_id, first in order.items():
        present = [t.get(finding_id) for t in by_id]
        comparisons = []
        for index, comparison in enumerate(first["comparisons"]):
            rows = [f["comparisons"][index] if f else None for f in present]
            outcomes = [r["holds"] if r else None for r in rows]
            comparisons.append({
                "a": {"label": comparison["a"]["label"],
                      **_stats([r["a"]["value"] if r else None for r in rows])},
                "expect": comparison["expect"], "relation": comparison["relation"],
                "b": {"label": comparison["b"]["label"],
                      **_stats([r["b"]["value"] if r else None for r in rows])},
                "seeds_measured": sum(o is not None for o in outcomes),
                "seeds_holding": outcomes.count(True)})
        outcomes = [f["holds"] if f else None for f in present]
        findings.append({"id": finding_id, "paper": first["paper"], "claim": first["claim"],
                         "comparisons": comparisons,
                         "seeds_measured": sum(o is not None for o in outcomes),
                         "seeds_holding": outcomes.count(True)})
    toy = all(t.get("toy") for t in tables)
    return {
        "toy": toy,
        "note": TOY_NOTE if toy else "Measurements on pools that are not all toy pools.",
        "n_files": len(tables),
        "files": [{"path": name, "pool": t.get("pool"), "seed": t.get("seed"),
                   "toy": t.get("toy")} for t, name in zip(tables, names, strict=True)],
        "findings": findings,
    }


def combine(paths: Sequence[str | Path]) -> Table:
    """:func:`combine_tables` over findings.json files (ValueError if one is not one)."""
    tables = []
    for path in paths:
        try:
            table = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable findings table ({error})") from error
        if not isinstance(table, dict) or not isinstance(table.get("findings"), list):
            raise ValueError(f"{path}: not a findings table (no 'findings' list)")
        tables.append(table)
    return combine_tables(tables, [str(p) for p in paths])


def _mean_cell(side: Mapping[str, Any]) -> str:
    if side["mean"] is None:
        return "n/a"
    spread = f" ± {format_value(side['std'])}" if side["std"] is not None else ""
    return f"{format_value(side['mean'])}{spread} (n={side['n']})"


def _count_cell(item: Mapping[str, Any], n_files: int) -> str:
    cell = f"{item['seeds_holding']}/{item['seeds_measured']}"
    if item["seeds_measured"] < n_files:
        cell += f" ({n_files - item['seeds_measured']} not measured)"
    return cell


def render_combined_markdown(combined: Mapping[str, Any]) -> str:
    """The across-seeds table: mean ± sample standard deviation (n), and seeds holding out
    of seeds measured."""
    pools = sorted({str(f["pool"]) for f in combined["files"]})
    seeds = ", ".join(str(f["seed"]) for f in combined["files"])
    n = combined["n_files"]
    lines = [f"# The paper's findings across {n} runs (pool {', '.join(pools)}; seeds {seeds})",
             "", f"**{combined['note']}**" if combined["toy"] else combined["note"], "",
             "Values: mean ± sample standard deviation (n runs that measured it). Holds: runs "
             "where it holds / runs where it was measured.", ""]
    lines += _header("finding", "paper", "quantity a", "ours a", "relation", "quantity b",
                     "ours b", "holds")
    for finding in combined["findings"]:
        for c in finding["comparisons"]:
            lines.append(_row([finding["id"], finding["paper"], c["a"]["label"],
                               _mean_cell(c["a"]), c["relation"], c["b"]["label"],
                               _mean_cell(c["b"]), _count_cell(c, n)]))
    lines += ["", "## Verdicts", ""]
    lines += _header("finding", "paper", "claim", "holds")
    lines += [_row([f["id"], f["paper"], f["claim"], _count_cell(f, n)])
              for f in combined["findings"]]
    lines += ["", "## Runs", ""]
    lines += [f"- `{f['path']}`: pool {f['pool']}, seed {f['seed']}" for f in combined["files"]]
    return "\n".join(lines) + "\n"


def write_combined(paths: Sequence[str | Path], out_prefix: str | Path) -> tuple[Table, str]:
    """OUT_PREFIX.json (with provenance) and OUT_PREFIX.md from several findings.json files."""
    from capmix.provenance import provenance_record, write_json, write_text_atomic

    combined = combine(paths)
    markdown = render_combined_markdown(combined)
    combined["provenance"] = provenance_record("findings_combine", inputs=paths, packages=())
    out_prefix = Path(out_prefix)
    write_json(out_prefix.with_name(out_prefix.name + ".json"), combined)
    write_text_atomic(out_prefix.with_name(out_prefix.name + ".md"), markdown)
    return combined, markdown


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m capmix.findings",
        description="The paper's findings across seeds, from results/{pool}/findings.json files.")
    commands = parser.add_subparsers(dest="command", required=True)
    combine_parser = commands.add_parser(
        "combine", help="write OUT_PREFIX.json and OUT_PREFIX.md; print the markdown")
    combine_parser.add_argument("out_prefix", help="e.g. results/findings_seeds")
    combine_parser.add_argument("files", nargs="+", help="findings.json of each seed")
    args = parser.parse_args(argv)
    try:
        _, markdown = write_combined(args.files, args.out_prefix)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
