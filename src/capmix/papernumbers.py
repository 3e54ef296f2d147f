"""The paper's numbers as data: load ``config/paper_numbers.yaml``, look numbers up, compare ours.

Every figure and table capmix regenerates shows our number beside the paper's and the
difference, and says whether ours reproduces it. That needs the paper's numbers in one
checked place, each tied to the table or figure, row and column it was printed in, and to
the capmix run and metric that measures the same thing; and one tolerance per metric, so
that "reproduced" means the same in every table. Transcription errors are the risk here,
so loading checks more than the schema can (:func:`problems`): every printed number must
equal its normalised value, every asterisk must be flagged as prior work, every metric must
have a tolerance, every derivation must name existing entries. :func:`derivation_problems`
and :func:`reference_problems` check the transcription against itself (a stated gain against
the table cells it follows from) and against capmix's config (strategy, scale, captioner and
pool names; settings that must equal the paper's), for the tests.

Toy-world numbers are never compared with the paper's: :meth:`PaperNumbers.compare_entry`
with ``toy=True`` returns ours alone, labelled toy.

A light module (the config layer may import it): stdlib, PyYAML and jsonschema only.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from capmix.config import REPO_ROOT, key_path
from capmix.strategies import expand_strategies

DEFAULT_PATH = REPO_ROOT / "config" / "paper_numbers.yaml"
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "paper_numbers.schema.yaml"
#: Slack for float arithmetic when a difference sits exactly on a tolerance (0.317 - 0.307).
EPSILON = 1e-9
#: The variables a ``formula`` may use, bound to ``derived_from`` in order.
FORMULA_NAMES = ("a", "b", "c", "d")

_NUMBER = re.compile(r"^(?P<mantissa>-?[0-9]+(?:\.[0-9]+)?)"
                     r"(?:(?:×10\^|e)(?P<exponent>-?[0-9]+)|(?P<suffix>[MB]))?(?P<percent>%)?×?$")
_SUFFIX = {"M": 10**6, "B": 10**9}


class PaperNumbersError(ValueError):
    """A paper-numbers file that cannot be used; names the file, the entry id and the key."""


@dataclass(frozen=True)
class Tolerance:
    """When our number counts as the paper's, for one metric."""

    metric: str
    measured_by: str
    description: str
    source: str
    absolute: float | None = None
    relative: float | None = None

    def limit(self, paper: float) -> float:
        """The largest |ours - paper| that still counts as reproduced."""
        if self.absolute is not None:
            return self.absolute
        return (self.relative or 0.0) * abs(paper)


@dataclass(frozen=True)
class Entry:
    """One number of the paper, where it was printed, and what capmix measures for it."""

    id: str
    where: str
    row: str
    column: str
    value: float
    printed: str
    unit: str
    printed_scale: int | None = None
    kind: str = "result"
    bound: str | None = None
    source: str | None = None
    source_ref: str | None = None
    emphasis: str | None = None  # underlined / bold, where the source text keeps the mark
    stated_in: str | None = None
    derived_from: tuple[str, ...] = ()
    formula: str | None = None
    ambiguous: bool = False
    note: str | None = None
    capmix: Mapping[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str | None:
        """The capmix metric (a key of the file's tolerances), if capmix measures this number."""
        return self.capmix.get("metric")

    @property
    def prior_work(self) -> bool:
        """The paper marks it as obtained from earlier work (its asterisk)."""
        return self.source == "prior work"


@dataclass(frozen=True)
class Comparison:
    """Our number beside the paper's: the difference (ours - paper) and whether it is within
    the metric's tolerance. ``toy`` comparisons carry ours only (no paper, no verdict)."""

    metric: str | None
    ours: float | None
    paper: float | None
    difference: float | None
    tolerance: float | None
    within: bool | None
    toy: bool = False
    bound: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "ours": self.ours, "paper": self.paper,
                "difference": self.difference, "tolerance": self.tolerance,
                "within": self.within, "toy": self.toy, "bound": self.bound}


@dataclass(frozen=True)
class PaperNumbers:
    """A checked paper-numbers file: its header, tolerances and entries."""

    path: Path
    paper: Mapping[str, Any]
    tolerances: Mapping[str, Tolerance]
    entries: tuple[Entry, ...]

    def wheres(self) -> list[str]:
        """Every table and figure with entries, in file order."""
        return list(dict.fromkeys(e.where for e in self.entries))

    def table(self, where: str) -> list[Entry]:
        """Every entry of one table or figure ("Table 5", "Figure 13"), in file order."""
        found = [e for e in self.entries if e.where == where]
        if not found:
            raise KeyError(f"{self.path}: no entries for '{where}' "
                           f"(known: {', '.join(self.wheres())})")
        return found

    def by_id(self, entry_id: str) -> Entry:
        for e in self.entries:
            if e.id == entry_id:
                return e
        raise KeyError(f"{self.path}: no entry with id '{entry_id}'")

    def entry(self, where: str, row: str, column: str) -> Entry:
        """The entry at (where, row, column); the error lists the rows or columns there are."""
        in_table = self.table(where)
        in_row = [e for e in in_table if e.row == row]
        if not in_row:
            rows = list(dict.fromkeys(e.row for e in in_table))
            raise KeyError(f"{self.path}: {where} has no row '{row}' (rows: {'; '.join(rows)})")
        for e in in_row:
            if e.column == column:
                return e
        columns = [e.column for e in in_row]
        raise KeyError(f"{self.path}: {where}, row '{row}' has no column '{column}' "
                       f"(columns: {'; '.join(columns)})")

    def tolerance(self, metric: str) -> Tolerance:
        try:
            return self.tolerances[metric]
        except KeyError:
            raise KeyError(f"{self.path}: no tolerance for metric '{metric}' "
                           f"(known: {', '.join(self.tolerances)})") from None

    def compare(self, ours: float, paper: float, metric: str,
                bound: str | None = None) -> Comparison:
        """Ours minus the paper's, and whether it is within the metric's tolerance.

        ``bound`` is the paper's wording: ``lower`` ("more than x") holds when ours >= x,
        ``upper`` ("less than x") when ours <= x; otherwise (and for ``approx``) the tolerance
        decides.
        """
        tolerance = self.tolerance(metric)
        difference = ours - paper
        limit = tolerance.limit(paper)
        if bound == "lower":
            within = ours >= paper - EPSILON
        elif bound == "upper":
            within = ours <= paper + EPSILON
        else:
            within = abs(difference) <= limit + EPSILON
        return Comparison(metric=metric, ours=ours, paper=paper, difference=difference,
                          tolerance=limit, within=within, bound=bound)

    def compare_entry(self, ours: float | None, entry: Entry | str,
                      toy: bool = False) -> Comparison:
        """Our number for one entry. A toy-world number is shown alone, labelled toy: the toy
        world is not the paper's setting, so there is nothing to compare it with. ``ours=None``
        (not measured) gives the paper's number without a verdict."""
        if isinstance(entry, str):
            entry = self.by_id(entry)
        if toy or ours is None:
            return Comparison(metric=entry.metric, ours=ours, paper=None if toy else entry.value,
                              difference=None, tolerance=None, within=None, toy=toy,
                              bound=entry.bound)
        if entry.metric is None:
            raise KeyError(f"{self.path}: entry '{entry.id}' has no capmix metric, so nothing "
                           f"of ours compares with it")
        return self.compare(ours, entry.value, entry.metric, entry.bound)


# ------------------------------------------------------------------------------ printed numbers


def printed_number(printed: str) -> tuple[float, float, bool]:
    """The number a printed string shows, the unit of its last digit, and whether it is a
    percentage: '12.8M*' -> (12.8e6, 1e5, False), '2.8%' -> (2.8, 0.1, True),
    '2.82×10^6' -> (2.82e6, 1e4, False), '5e-4' -> (5e-4, 1e-4, False),
    '4,740' -> (4740, 10, False).

    The unit of the last digit is what a derived number may differ by (the paper rounds or
    truncates: 1.28e9 / 490 / 3600 = 725.6 is printed 725).
    """
    text = printed.strip().rstrip("*").lstrip("~±+").replace(",", "")
    match = _NUMBER.match(text)
    if not match:
        raise ValueError(f"printed number '{printed}' is not a number the paper's style allows "
                         f"(e.g. 0.273, 12.8M*, 2.8%, 2.82×10^6, 2×)")
    mantissa = match["mantissa"]
    if "." in mantissa:
        step = 10.0 ** -len(mantissa.split(".")[1])
    else:
        digits = mantissa.lstrip("-").rstrip("0")
        step = 10.0 ** (len(mantissa.lstrip("-")) - len(digits)) if digits else 1.0
    scale = 1.0
    if match["exponent"]:
        scale = 10.0 ** int(match["exponent"])
    elif match["suffix"]:
        scale = float(_SUFFIX[match["suffix"]])
    return float(mantissa) * scale, step * scale, bool(match["percent"])


def normalised(printed: str, printed_scale: int | None = None) -> tuple[float, float]:
    """The value a printed string stands for, and its last-digit unit, normalised as the file
    stores values (percentages and ``printed_scale: 100`` numbers divided by 100)."""
    number, step, percent = printed_number(printed)
    divisor = 100.0 if (percent or printed_scale) else 1.0
    return number / divisor, step / divisor


def evaluate_formula(formula: str, values: Sequence[float]) -> float:
    """Arithmetic (+ - * / and parentheses) over a, b, c, d bound to ``values`` in order.

    Parsed with :mod:`ast` and walked by hand, so a formula in a data file can never run code.
    """
    names = dict(zip(FORMULA_NAMES, values, strict=False))

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id in names:
            return float(names[node.id])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp):
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            if isinstance(node.op, ast.Div):
                return left / right
        raise ValueError(f"formula '{formula}': only + - * / ( ) and the names "
                         f"{', '.join(FORMULA_NAMES[:len(values)])} are allowed")

    return walk(ast.parse(formula, mode="eval"))


# ------------------------------------------------------------------------------ checks


def _entry_label(document: Mapping[str, Any], index: int) -> str:
    entries = document.get("entries")
    entry = entries[index] if isinstance(entries, list) and index < len(entries) else None
    entry_id = entry.get("id") if isinstance(entry, Mapping) else None
    return f"entry '{entry_id}' (entries[{index}])" if entry_id else f"entries[{index}]"


def schema_problems(document: Any, schema: Mapping[str, Any]) -> list[str]:
    """Every schema violation, naming the entry (by id) and the key within it."""
    lines = []
    validator = Draft202012Validator(schema)
    for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.path))):
        path = list(error.absolute_path)
        if len(path) >= 2 and path[0] == "entries" and isinstance(path[1], int) \
                and isinstance(document, Mapping):
            where = _entry_label(document, path[1])
            key = key_path(path[2:]) if len(path) > 2 else "(the entry)"
            lines.append(f"{where}, key '{key}': {error.message}")
        else:
            lines.append(f"key '{key_path(path)}': {error.message}")
    return lines


def problems(document: Mapping[str, Any]) -> list[str]:
    """What a schema-valid file gets wrong that the schema cannot see."""
    found: list[str] = []
    entries = document["entries"]
    tolerances = document["tolerances"]
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        label = _entry_label(document, index)
        entry_id = entry["id"]
        if entry_id in seen:
            found.append(f"{label}, key 'id': '{entry_id}' is also entries[{seen[entry_id]}]'s id")
        seen.setdefault(entry_id, index)
        printed = entry["printed"]
        try:
            value, _ = normalised(printed, entry.get("printed_scale"))
        except ValueError as error:
            found.append(f"{label}, key 'printed': {error}")
        else:
            if not math.isclose(value, entry["value"], rel_tol=1e-9, abs_tol=1e-12):
                found.append(f"{label}, key 'value': {entry['value']!r} is not what '{printed}' "
                             f"prints ({value!r} once normalised)")
        if "%" in printed and entry.get("printed_scale"):
            found.append(f"{label}, key 'printed_scale': '{printed}' already says '%'")
        if printed.rstrip().endswith("*") and entry.get("source") != "prior work":
            found.append(f"{label}, key 'source': '{printed}' carries the paper's asterisk, so "
                         f"source must be 'prior work'")
        metric = entry.get("capmix", {}).get("metric")
        if metric is not None and metric not in tolerances:
            found.append(f"{label}, key 'capmix.metric': '{metric}' has no tolerance "
                         f"(allowed: {', '.join(tolerances)})")
        derived = entry.get("derived_from", [])
        if bool(derived) != bool(entry.get("formula")):
            found.append(f"{label}, key 'formula': derived_from and formula go together")
        if len(derived) > len(FORMULA_NAMES):
            found.append(f"{label}, key 'derived_from': at most {len(FORMULA_NAMES)} entries")
    ids = set(seen)
    for index, entry in enumerate(entries):
        for j, other in enumerate(entry.get("derived_from", [])):
            if other not in ids:
                found.append(f"{_entry_label(document, index)}, key 'derived_from[{j}]': no entry "
                             f"with id '{other}'")
            elif other == entry["id"]:
                found.append(f"{_entry_label(document, index)}, key 'derived_from[{j}]': an "
                             f"entry cannot follow from itself")
        formula = entry.get("formula")
        if formula:
            try:
                # Distinct primes, so that no well-formed formula divides by zero here.
                evaluate_formula(formula, [2.0, 3.0, 5.0, 7.0][:len(entry.get("derived_from", []))])
            except (ValueError, SyntaxError, ZeroDivisionError) as error:
                found.append(f"{_entry_label(document, index)}, key 'formula': {error}")
    return found


def derivation_problems(numbers: PaperNumbers) -> list[str]:
    """Entries whose stated number does not follow from the entries it is derived from.

    A derived number may differ from its formula by one unit of its last printed digit (the
    paper rounds "0.317 - 0.297" to "2%" and truncates 725.6 to "725"); a ``lower``/``upper``
    bound must hold as an inequality.
    """
    found = []
    for entry in numbers.entries:
        if not entry.derived_from or entry.formula is None:
            continue
        inputs = [numbers.by_id(i).value for i in entry.derived_from]
        computed = evaluate_formula(entry.formula, inputs)
        _, step = normalised(entry.printed, entry.printed_scale)
        if entry.bound == "lower":
            ok = computed >= entry.value - EPSILON
        elif entry.bound == "upper":
            ok = computed <= entry.value + EPSILON
        else:
            ok = abs(computed - entry.value) <= step + EPSILON
        if not ok:
            inputs_named = ", ".join(entry.derived_from)
            found.append(f"entry '{entry.id}': '{entry.printed}' ({entry.value}) but "
                         f"{entry.formula} over {inputs_named} gives {computed:.6g}")
    return found


def lookup(document: Any, dotted: str) -> Any:
    """``a.b.0.c`` in nested mappings and lists; KeyError names the part that is missing.

    Keys may hold dots themselves (captioner ``blip2_opt_2.7b``): at each mapping the longest
    run of parts that is a key wins.
    """
    node = document
    parts = dotted.split(".")
    i = 0
    while i < len(parts):
        if isinstance(node, list) and parts[i].isdigit() and int(parts[i]) < len(node):
            node, i = node[int(parts[i])], i + 1
            continue
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if isinstance(node, Mapping) and key in node:
                node, i = node[key], j
                break
        else:
            raise KeyError(f"'{parts[i]}' of '{dotted}'")
    return node


def dataclass_default(source: str, dotted: str) -> Any:
    """The default of ``Class.field`` in a module's source, read with :mod:`ast` so that
    checking a setting never imports the module (captioners imports torch)."""
    class_name, field_name = dotted.split(".")
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) \
                        and item.target.id == field_name and item.value is not None:
                    return ast.literal_eval(item.value)
    raise KeyError(f"'{dotted}'")


def config_value(config_key: str, root: Path = REPO_ROOT) -> Any:
    """The capmix value a ``config_key`` (``FILE:dotted.path``) names."""
    file_name, _, dotted = config_key.partition(":")
    path = root / file_name
    if file_name.endswith(".py"):
        return dataclass_default(path.read_text(), dotted)
    with open(path) as handle:
        return lookup(yaml.safe_load(handle), dotted)


def reference_problems(numbers: PaperNumbers, config: Mapping[str, Any],
                       pools: Iterable[str], root: Path = REPO_ROOT) -> list[str]:
    """Entries naming a strategy, scale, captioner or pool capmix does not have, or a setting
    whose capmix value differs from the paper's.

    ``config`` holds ``strategies`` (config/strategies.yaml's catalogue, unexpanded),
    ``train_scales`` and ``captioners``; ``pools`` the pool names of the shipped configs.
    """
    strategies = set(expand_strategies(config.get("strategies") or {}))
    known = {"strategy": strategies, "versus": strategies,
             "scale": set(config.get("train_scales") or {}),
             "captioner": set(config.get("captioners") or {}), "pool": set(pools)}
    found = []
    for entry in numbers.entries:
        for key, allowed in known.items():
            name = entry.capmix.get(key)
            if name is not None and name not in allowed:
                found.append(f"entry '{entry.id}', key 'capmix.{key}': unknown {key} '{name}'")
        caption_set = entry.capmix.get("caption_set")
        if caption_set and caption_set != "raw":
            captioner = caption_set.split("/")[0]
            if captioner not in known["captioner"]:
                found.append(f"entry '{entry.id}', key 'capmix.caption_set': unknown captioner "
                             f"'{captioner}'")
        config_key = entry.capmix.get("config_key")
        if config_key:
            try:
                ours = config_value(config_key, root)
            except (KeyError, OSError) as error:
                found.append(f"entry '{entry.id}', key 'capmix.config_key': {config_key} does "
                             f"not resolve ({error})")
                continue
            if not isinstance(ours, int | float) or not math.isclose(
                    float(ours), entry.value, rel_tol=1e-9):
                found.append(f"entry '{entry.id}': the paper says {entry.printed}, capmix's "
                             f"{config_key} is {ours!r}")
    return found


# ------------------------------------------------------------------------------ loading


def _tolerance(metric: str, spec: Mapping[str, Any]) -> Tolerance:
    return Tolerance(metric=metric, measured_by=spec["measured_by"],
                     description=spec["description"], source=spec["source"],
                     absolute=spec.get("absolute"), relative=spec.get("relative"))


def _entry(spec: Mapping[str, Any]) -> Entry:
    return Entry(id=spec["id"], where=spec["where"], row=spec["row"], column=spec["column"],
                 value=float(spec["value"]), printed=spec["printed"], unit=spec["unit"],
                 printed_scale=spec.get("printed_scale"), kind=spec.get("kind", "result"),
                 bound=spec.get("bound"), source=spec.get("source"),
                 source_ref=spec.get("source_ref"), emphasis=spec.get("emphasis"),
                 stated_in=spec.get("stated_in"),
                 derived_from=tuple(spec.get("derived_from", ())), formula=spec.get("formula"),
                 ambiguous=bool(spec.get("ambiguous", False)), note=spec.get("note"),
                 capmix=dict(spec.get("capmix", {})))


def parse(document: Any, path: Path = DEFAULT_PATH,
          schema: Mapping[str, Any] | None = None) -> PaperNumbers:
    """A paper-numbers document, checked; PaperNumbersError lists every problem at once."""
    if schema is None:
        with open(SCHEMA_PATH) as handle:
            schema = yaml.safe_load(handle)
    found = schema_problems(document, schema)
    if not found:
        found = problems(document)
    if found:
        raise PaperNumbersError(f"{path}: {len(found)} problem(s):\n  " + "\n  ".join(found))
    return PaperNumbers(
        path=path, paper=dict(document["paper"]),
        tolerances={m: _tolerance(m, s) for m, s in document["tolerances"].items()},
        entries=tuple(_entry(e) for e in document["entries"]))


def load(path: Path | str = DEFAULT_PATH) -> PaperNumbers:
    """Load and check a paper-numbers file (default: config/paper_numbers.yaml)."""
    path = Path(path)
    try:
        with open(path) as handle:
            document = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise PaperNumbersError(f"{path}: not YAML: {error}") from None
    return parse(document, path)
