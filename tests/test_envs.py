"""The per-rule conda envs must pin what the tests run with.

Conda channels are unreachable here, so envs/*.yaml cannot be solved in CI;
instead every pip pin in them must equal requirements/lock.txt, and the lock
must equal what is installed in the environment running the tests.
"""

import re
from importlib import metadata

import pytest
import yaml

from tests.conftest import REPO

ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))
#: Pins that may differ from the lock, per env file, and why (none today: the evaluation
#: sets are read with huggingface_hub and pyarrow, no `datasets` with its own fsspec pin).
LOCK_EXCEPTIONS: dict[str, set[str]] = {}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def test_there_are_env_files():
    assert ENV_FILES


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_agree_with_lock(env_file):
    env = yaml.safe_load(env_file.read_text())
    pins = lock_pins()
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    for requirement in pip:
        name, _, version = requirement.partition("==")
        assert version, f"{env_file.name}: '{requirement}' is not pinned exactly"
        if canonical(name) in LOCK_EXCEPTIONS.get(env_file.name, ()):
            assert canonical(name) not in pins or pins[canonical(name)] != version, (
                f"{env_file.name}: {name} is listed as an exception but agrees with the lock")
            continue
        assert pins.get(canonical(name)) == version, (
            f"{env_file.name}: {name}=={version} but requirements/lock.txt has "
            f"{pins.get(canonical(name))}")


def test_lock_matches_the_tested_environment():
    mismatched = {}
    for name, version in lock_pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            mismatched[name] = (version, installed)
    assert not mismatched, f"lock vs installed: {mismatched}"


def test_pyproject_pins_agree_with_lock():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = lock_pins()
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        name, _, version = requirement.partition("==")
        assert pins.get(canonical(name)) == version, requirement


def test_every_rule_names_an_env_file():
    """Each rule (except the aggregating `all`) runs in one of envs/*.yaml."""
    rules = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0].strip()
            found = re.search(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", block, flags=re.M)
            rules[name] = found and (smk.parent / found.group(1)).resolve()
    assert {"train", "subset", "caption", "fetch"} <= set(rules)
    missing = sorted(name for name, env in rules.items() if env is None)
    assert not missing, f"rules without a conda env: {missing}"
    for name, env in rules.items():
        assert env.parent == REPO / "envs" and env.is_file(), (name, env)
