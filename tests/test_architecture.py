"""The package's seams: no import circles, no reach-ins to private names, a light config layer.

Imports are read from the source (``ast``), function-level ones included: a circle through a
function-level import is still a circle a reader has to untangle.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "src" / "capmix"
#: Modules the config checker and the Snakefile import: they must stay cheap to import and
#: must not pull a stage (torch, open_clip, PIL, pandas, pyarrow, webdataset) in.
LIGHT_MODULES = ("config", "strategies", "suites", "toyspec", "captionsets", "scales", "chunks",
                 "sourcespec", "toykinds", "fetch_reasons", "cost", "textfilter", "assetspec",
                 "weights", "papernumbers", "analysisplan", "figurespec", "lineage", "cli",
                 "imagenet_classes")
HEAVY_PACKAGES = ("torch", "open_clip", "PIL", "pandas", "pyarrow", "webdataset", "transformers")


#: Light modules that need not even numpy (the strategies as data, the toy vocabulary, the
#: paper's numbers; the job records every script imports and the provenance CLI).
STDLIB_ONLY_MODULES = ("strategies", "toyspec", "papernumbers", "figurespec", "lineage", "cli",
                       "imagenet_classes")


def stage_packages_loaded(code: str, packages: tuple[str, ...] = HEAVY_PACKAGES) -> list[str]:
    """Which of ``packages`` a fresh interpreter has imported after running ``code``."""
    probe = (f"import sys; {code}; "
             f"print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
             f"{packages!r})))")
    return subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                          text=True, cwd=REPO).stdout.split()


def capmix_imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every ``capmix`` import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "capmix":
            if node.module == "capmix":  # from capmix import module
                for alias in node.names:
                    found.append((f"capmix.{alias.name}", [], node.lineno))
            else:
                found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names
                      if a.name.split(".")[0] == "capmix"]
    return found


def module_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem == "__init__":
            continue
        graph[path.stem] = {module.split(".")[1] for module, _, _ in capmix_imports(path)
                            if "." in module and module.split(".")[1] != path.stem}
    return graph


def test_no_import_circles():
    graph = module_graph()
    circles = []

    def visit(module: str, trail: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in trail:
                circle = trail[trail.index(target):] + [target]
                if min(circle[:-1]) == circle[0]:  # each circle once
                    circles.append(" -> ".join(circle))
            elif target in graph:
                visit(target, trail + [target])

    for module in graph:
        visit(module, [module])
    assert circles == []


@pytest.mark.parametrize("where", ["src", "tests", "bench", "workflow"])
def test_no_private_names_imported_across_modules(where):
    """``from capmix.x import _name`` and ``module._name`` reach-ins (tests included)."""
    offenders = []
    for path in sorted((REPO / where).rglob("*.py")):
        for module, names, line in capmix_imports(path):
            offenders += [f"{path.relative_to(REPO)}:{line} {module}.{n}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
        aliases = {}
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update({(a.asname or a.name): a.name for a in node.names
                                if a.name.startswith("capmix.")})
            elif isinstance(node, ast.ImportFrom) and node.module == "capmix":
                aliases.update({(a.asname or a.name): f"capmix.{a.name}" for a in node.names})
        own = f"capmix.{path.stem}" if path.is_relative_to(PACKAGE) else None
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and aliases[node.value.id] != own
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} "
                                 f"{aliases[node.value.id]}.{node.attr}")
    assert offenders == []


@pytest.mark.parametrize("module", [m for m in LIGHT_MODULES if (PACKAGE / f"{m}.py").exists()])
def test_config_layer_modules_import_no_stage(module):
    """What ``import capmix.<module>`` loads, measured in a fresh interpreter."""
    assert stage_packages_loaded(f"import capmix.{module}") == []


@pytest.mark.parametrize("module", STDLIB_ONLY_MODULES)
def test_stdlib_only_modules_load_not_even_numpy(module):
    assert stage_packages_loaded(f"import capmix.{module}", (*HEAVY_PACKAGES, "numpy")) == []


def test_config_checks_import_no_stage():
    """Validating the shipped config (what the Snakefile does at start-up) loads no stage."""
    code = "from capmix.config import pipeline_config; pipeline_config()"
    assert stage_packages_loaded(code) == []


def test_the_snakefile_imports_no_stage():
    """Every capmix module workflow/rules/*.smk imports, loaded together: no stage comes in
    (a dry run, a lint or a SLURM submission does not pay for torch or pyarrow)."""
    modules = sorted({line.split()[1] for smk in (REPO / "workflow" / "rules").glob("*.smk")
                      for line in smk.read_text().splitlines()
                      if line.startswith("from capmix.")})
    assert modules
    assert stage_packages_loaded(f"import {', '.join(modules)}") == []
