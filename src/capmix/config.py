"""Configuration: schema validation with readable errors, and cross-references.

The schema (``workflow/schemas/config.schema.yaml``) is the single description of
what a config may say; ``snakemake.utils.validate`` applies it and fills its
defaults at start-up. jsonschema's own messages bury the offending key in a
schema path, so :func:`explain_errors` re-states every violation as
"key: problem (allowed: ...)". Checks a schema cannot express (a pool naming a
toy world that is not defined, two pools with one name) live in
:func:`check_references`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from capmix.toykinds import CAPTIONER

#: PyYAML's safe loader, LibYAML's C one where PyYAML has it: the same documents, ten times
#: faster (the schema and every config are read at each Snakemake start, jobs' included).
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: A file that may define pools: a line that starts a top-level ``pools`` key.
_POOLS_KEY = re.compile(r"^[{]?\s*['\"]?pools['\"]?\s*:", re.M)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
#: What the Snakefile loads (`configfile:`), in order: the strategy catalogue, the training
#: scales, the evaluation suites, the costs, the paper's findings, the analyses behind its
#: figures, the figures and tables themselves, the published files (assets), the embedded
#: default.
BASE_CONFIGS = tuple(REPO_ROOT / "config" / name for name in (
    "strategies.yaml", "train_scales.yaml", "eval_suites.yaml", "costs.yaml", "findings.yaml",
    "analyses.yaml", "figures.yaml", "assets.yaml", "config.yaml"))


class ConfigError(ValueError):
    """A config that cannot be run; the message names every offending key."""


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    with open(path) as handle:
        return yaml.load(handle, Loader=SafeLoader)


def key_path(path: Iterable[Any]) -> str:
    """Render a jsonschema instance path as ``pools[0].source.type``."""
    rendered = ""
    for part in path:
        if isinstance(part, int):
            rendered += f"[{part}]"
        else:
            rendered += f".{part}" if rendered else str(part)
    return rendered or "(top level)"


def _allowed(error: ValidationError) -> str:
    """What the schema would have accepted at the failing key."""
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "enum":
        return "one of " + ", ".join(repr(v) for v in error.validator_value)
    if error.validator == "type":
        return f"type {error.validator_value}"
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        return "keys " + ", ".join(allowed) if allowed else "no extra keys"
    if error.validator in ("minimum", "maximum", "minItems", "minLength", "pattern", "const"):
        return f"{error.validator} {error.validator_value!r}"
    if error.validator == "not" and isinstance(error.validator_value, Mapping) \
            and "const" in error.validator_value:
        return f"anything but {error.validator_value['const']!r}"
    if error.validator == "required":
        return "required keys " + ", ".join(error.validator_value)
    if error.validator == "oneOf":
        return " or ".join(_one_of(sub) for sub in error.validator_value)
    return str(error.validator)


def _one_of(sub: Any) -> str:
    """One alternative of a ``oneOf``: its type (and values), or the keys it requires."""
    if isinstance(sub, Mapping) and "type" not in sub and "enum" not in sub and "required" in sub:
        return "key " + "+".join(sub["required"])
    sub = sub if isinstance(sub, Mapping) else {}
    return sub.get("type", "?") + (f" in {sub['enum']}" if "enum" in sub else "")


def explain_errors(config: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Every schema violation as 'config key <path>: <message> (allowed: <...>)'."""
    validator = Draft202012Validator(schema)
    lines = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.path))):
        lines.append(
            f"config key '{key_path(error.absolute_path)}': {error.message} "
            f"(allowed: {_allowed(error)})"
        )
    return lines


def check_references(config: Mapping[str, Any]) -> list[str]:
    """Cross-reference checks a JSON schema cannot express."""
    problems = []
    names = [pool["name"] for pool in config.get("pools", [])]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"config key 'pools': pool name '{name}' is used more than once")
    worlds = config.get("toy_worlds", {})
    from capmix.toyspec import validate_spec

    for name, spec in sorted(worlds.items()):
        try:
            validate_spec(spec)
        except ValueError as error:
            problems.append(f"config key 'toy_worlds.{name}': {error}")
    for kind, settings in sorted((config.get("toy_models") or {}).items()):
        if (settings or {}).get("vision_from") and kind != CAPTIONER:
            problems.append(f"config key 'toy_models.{kind}.vision_from': only the captioner's "
                            "image tower can start from another toy model")
    from capmix.fetch_reasons import FAILURE_REASONS

    captioners, scorers = config.get("captioners", {}), config.get("scorers", {})
    targets = set(config.get("targets", []))
    for index, pool in enumerate(config.get("pools", [])):
        source = pool["source"]
        where = f"config key 'pools[{index}]"
        if source.get("world") is not None and source["world"] not in worlds:
            problems.append(
                f"{where}.source.world': toy world '{source['world']}' "
                f"is not defined (allowed: one of {', '.join(sorted(worlds)) or 'none defined'})"
            )
        for name in pool.get("captioners", []):
            spec = captioners.get(name)
            if spec is None:
                problems.append(f"{where}.captioners': unknown captioner '{name}' (allowed: one "
                                f"of {', '.join(sorted(captioners)) or 'none defined'})")
            elif spec.get("toy_model") and not source.get("world"):
                problems.append(f"{where}.captioners': '{name}' is a toy stand-in, trained in a "
                                f"toy world, but pool '{pool['name']}' has no toy world "
                                f"(source.world)")
        scorer = pool.get("scorer")
        if scorer is not None and scorer not in scorers:
            problems.append(f"{where}.scorer': unknown scorer '{scorer}' (allowed: one of "
                            f"{', '.join(sorted(scorers)) or 'none defined'})")
        elif scorer is not None and scorers[scorer].get("toy_model") and not source.get("world"):
            problems.append(f"{where}.scorer': '{scorer}' is a toy stand-in but pool "
                            f"'{pool['name']}' has no toy world (source.world)")
        unknown = sorted(set((pool.get("fetch") or {}).get("retry_reasons") or [])
                         - set(FAILURE_REASONS))
        if unknown:
            problems.append(f"{where}.fetch.retry_reasons': unknown reason(s) {unknown} "
                            f"(allowed: {', '.join(FAILURE_REASONS)})")
        if targets & {"scores", "quality"} and scorer is None:
            problems.append(f"{where}.scorer': targets {sorted(targets & {'scores', 'quality'})} "
                            f"need a scorer for pool '{pool['name']}'")
    problems += cost_problems(config)
    from capmix.analysisplan import analyses_problems
    from capmix.assetspec import asset_problems
    from capmix.captionsets import temperature_problems
    from capmix.findings import findings_problems
    from capmix.scales import train_problems
    from capmix.shipped import temperature_problems as shipped_temperature_problems
    from capmix.strategies import strategy_problems
    from capmix.suites import eval_problems
    from capmix.weights import weights_problems

    return (problems + asset_problems(config) + temperature_problems(config)
            + shipped_temperature_problems(config)
            + strategy_problems(config)
            + train_problems(config)
            + eval_problems(config) + findings_problems(config) + weights_problems(config)
            + analyses_problems(config))


def cost_problems(config: Mapping[str, Any]) -> list[str]:
    """Every figure in ``costs`` names a captioner, scorer, training scale or suite that the
    config defines (a misspelt name would otherwise price its stage as unknown)."""
    problems = []
    costs = config.get("costs") or {}
    for part, defined in (("captioners", "captioners"), ("scorers", "scorers"),
                          ("train", "train_scales"), ("eval", "eval_suites")):
        known = config.get(defined) or {}
        for name in sorted(set(costs.get(part) or {}) - set(known)):
            problems.append(f"config key 'costs.{part}.{name}': '{name}' is not in `{defined}` "
                            f"(allowed: one of {', '.join(sorted(known)) or 'none defined'})")
    from capmix.figurespec import figure_problems

    problems += figure_problems(config)
    return problems


def fill_defaults(config: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Fill schema defaults in place, as ``snakemake.utils.validate(set_default=True)``.

    Used outside Snakemake (tests, notebooks). Defaults are deep-copied so two
    pools never share one mutable default.
    """
    from jsonschema import validators

    base_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for prop, prop_schema in properties.items():
                if isinstance(prop_schema, Mapping) and "default" in prop_schema:
                    instance.setdefault(prop, copy.deepcopy(prop_schema["default"]))
        yield from base_properties(validator, properties, instance, subschema)

    defaulting = validators.extend(Draft202012Validator, {"properties": set_defaults})
    for _ in defaulting(schema).iter_errors(config):
        pass
    return config


def validate_config(config: dict[str, Any], schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate, fill defaults and cross-check; raise :class:`ConfigError` naming every key."""
    schema = load_schema(schema_path)
    problems = explain_errors(config, schema)
    if not problems:
        fill_defaults(config, schema)
        problems = explain_errors(config, schema) + check_references(config)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return config


def pipeline_config(*extra: Path | str, overrides: Mapping[str, Any] | None = None,
                    ) -> dict[str, Any]:
    """The config the Snakefile runs with: the strategy catalogue, the embedded default,
    then ``extra`` files (e.g. config/smoke.yaml), as ``snakemake --configfile`` merges them."""
    return load_config(*BASE_CONFIGS, *extra, overrides=overrides)


def pool_config_files(config_dir: Path | str = REPO_ROOT / "config") -> dict[str, list[str]]:
    """Pool name -> the config files in ``config_dir`` whose ``pools`` define it (sorted,
    as ``config/<file>``): which config to run for a pool another config's figures read
    (the cross-pool Figure 8). Files that are not a mapping with a ``pools`` list are skipped,
    those with no line starting a ``pools`` key unparsed (config/paper_numbers.yaml, 150 kB,
    took a second of each dry run).
    """
    found: dict[str, list[str]] = {}
    for path in sorted(Path(config_dir).glob("*.yaml")):
        try:
            text = path.read_text(encoding="utf-8")
            if not _POOLS_KEY.search(text):
                continue
            data = yaml.load(text, Loader=SafeLoader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        pools = data.get("pools") if isinstance(data, dict) else None
        for pool in pools if isinstance(pools, list) else []:
            if isinstance(pool, dict) and isinstance(pool.get("name"), str):
                found.setdefault(pool["name"], []).append(f"config/{path.name}")
    return found


def read_config_file(path: Path | str) -> dict[str, Any]:
    """One config file as a mapping, or a :class:`ConfigError` naming the file and line.

    Snakemake parses ``--configfile`` itself, before the workflow's checks run, and reports a
    file that is not UTF-8, not YAML or not a mapping with its own traceback; ``make run`` and
    ``make smoke`` (and ``python -m capmix.config check FILE``) read the files here first.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"config file {path}: cannot be read ({error.strerror or error})") \
            from error
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(f"config file {path}, line {line}: not UTF-8 text (byte "
                          f"{raw[error.start]:#04x})") from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"config file {path}{where}: not valid YAML ({problem})") from error
    if data is None:
        raise ConfigError(f"config file {path}: is empty (a config is a mapping of keys)")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level is a {type(data).__name__}, not "
                          f"a mapping of config keys")
    return data


def load_config(*paths: Path | str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load and merge config files the way Snakemake does (later files update earlier ones)."""
    merged: dict[str, Any] = {}
    for path in paths:
        update_nested(merged, read_config_file(path))
    if overrides:
        update_nested(merged, copy.deepcopy(dict(overrides)))
    return validate_config(merged)


def update_nested(target: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict update; lists and scalars are replaced, as in Snakemake."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            update_nested(target[key], value)
        else:
            target[key] = value
    return target


def pool_by_name(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    for pool in config["pools"]:
        if pool["name"] == name:
            return pool
    known = [pool["name"] for pool in config["pools"]]
    raise ConfigError(f"no pool named '{name}' in config (have: {known})")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m capmix.config check [FILE ...]``: the config the workflow would run with
    (the shipped base plus FILEs, as ``--configfile``), checked; problems name file/line/key."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m capmix.config")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check config files (as snakemake --configfile)")
    check.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    try:
        pipeline_config(*args.files)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    print(f"config OK: {', '.join(str(f) for f in args.files) or 'the embedded default'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
