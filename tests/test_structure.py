"""The package's shape, checked from the source (nothing is imported or run): the rules of
docs/architecture.md that a program can check.

- the import contracts (pyproject.toml [tool.importlinter], run by `make lint`): the layers are
  folders and point down; stages never import each other; only `tracking/` imports MLflow and it
  imports no training code; only the search stage imports Optuna. `make lint` shows them holding;
  a test here shows them breaking on a copy with an upward import and an MLflow import;
- imports sit at the top of every file: no finalbn module is imported inside a function, and a
  third-party import inside a function says why on its line or the line above; in the tests, any
  import inside a function says why on its line (`# here: ...`);
- no module over 300 statements, no function over 50 (sizes in statements: ruff format lays out the lines);
- every dvc.yaml stage's code deps are exactly its stage module's import closure, and the report's
  outputs are the ones its code declares.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finalbn import cli
from finalbn.infra import imports
from finalbn.train import keys

SRC = imports.ROOT
REPO = SRC.parent.parent
# Sizes in statements (what a reader holds), not lines (what ruff format lays out): a module at most
# 300, a function at most 50 (pylint's too-many-statements default). Nested statements count.
MAX_MODULE_STATEMENTS, MAX_FUNCTION_STATEMENTS = 300, 50
FILES = sorted(SRC.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _stage_modules() -> dict[str, str]:
    """dvc.yaml stage -> the module its `finalbn <command>` runs (through cli.COMMANDS)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        cmd = (stage.get("do") or stage)["cmd"].split()
        assert cmd[0] == "finalbn", f"stage {name}: {cmd}"
        out[name] = _stage_of(cli.COMMANDS[cmd[1]])
    return out


def _stage_of(module: str) -> str:
    """The stage a module belongs to: `finalbn.stages.report.make` -> `finalbn.stages.report`."""
    return ".".join(module.split(".")[:3])


def test_every_stage_module_is_one_hop_from_dvc_yaml():
    for stage, module in _stage_modules().items():
        assert module.startswith("finalbn.stages."), f"dvc.yaml stage {stage} runs {module}, not a stage module"


def test_dvc_deps_are_each_stage_import_closure():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, module in _stage_modules().items():
        deps = (stages[name].get("do") or stages[name]).get("deps", [])
        code = sorted(d for d in deps if d.startswith(("src/", "deploy/field/")))
        want = sorted(_rel(p) for p in imports.closure(module))
        missing, extra = sorted(set(want) - set(code)), sorted(set(code) - set(want))
        assert not missing and not extra, (
            f"dvc.yaml stage {name}: deps should be the closure of {module}; missing {missing}, not imported {extra}"
        )


def _function_imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    yield sub


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_imports_at_the_top(path):
    text = path.read_text()
    lines = text.splitlines()
    for node in _function_imports(ast.parse(text)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        where = f"{_rel(path)}:{node.lineno}"
        assert not getattr(node, "level", 0) and not any(n.split(".")[0] == "finalbn" for n in names), (
            f"{where}: a finalbn module imported inside a function"
        )
        said = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
        assert said, f"{where}: a lazy import says why (a comment on its line or the line above)"


TESTS = sorted(Path(__file__).resolve().parent.glob("*.py"))


@pytest.mark.parametrize("path", TESTS, ids=lambda p: p.name)
def test_test_imports_sit_at_the_top(path):
    """A test file imports at its top; one that must import inside a function (an optional
    package, code run in a child, a module put on sys.path by the test) says why on the line."""
    lines = path.read_text().splitlines()
    late = [
        f"{path.name}:{n.lineno}"
        for n in _function_imports(ast.parse("\n".join(lines)))
        if "# here:" not in lines[n.lineno - 1]
    ]
    assert not late, f"imports inside a function without a `# here: <why>`: {late}"


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_sizes(path):
    tree = ast.parse(path.read_text())
    assert statements(tree) <= MAX_MODULE_STATEMENTS, f"{_rel(path)}: over {MAX_MODULE_STATEMENTS} statements"
    long = [
        f"{n.name} ({statements(n) - 1} statements)"
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and statements(n) - 1 > MAX_FUNCTION_STATEMENTS
    ]
    assert not long, f"{_rel(path)}: functions over {MAX_FUNCTION_STATEMENTS} statements: {long}"


def statements(node: ast.AST) -> int:
    """The statements in `node`, nested ones included (a function's own `def` is one of them)."""
    return sum(1 for n in ast.walk(node) if isinstance(n, ast.stmt))


def test_sizes_count_statements_not_lines():
    wrapped = "def f(a,\n      b):\n    return g(a,\n             b)\n"
    assert statements(ast.parse(wrapped)) == statements(ast.parse("def f(a, b):\n    return g(a, b)\n")) == 2
    big = "def f():\n" + "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_STATEMENTS + 1))
    assert statements(ast.parse(big).body[0]) - 1 > MAX_FUNCTION_STATEMENTS


def test_the_cell_key_covers_the_code_that_computes_a_cell():
    covered = {_rel(p) for p in imports.closure(keys.CELL_MODULE)}
    for must in (
        "train/cell.py",
        "train/engine.py",
        "train/features.py",
        "data/tensors.py",
        "stats/metrics.py",
        "models/head.py",
        "config/schema.py",
    ):
        assert f"src/finalbn/{must}" in covered
    # not the layer that records a cell, nor the figures drawn of it: editing them retrains nothing
    assert not [p for p in covered if "/tracking/" in p or "/plots/" in p or p.endswith("/cellrun.py")]
    assert not [p for p in covered if "/stages/" in p]
    assert keys.code_version() == imports.code_digest(keys.CELL_MODULE)


def test_closure_follows_from_imports_and_packages(tmp_path):
    """`from finalbn.x import y` with y a module counts y; a submodule brings its packages' __init__."""
    deps = imports.direct_imports(SRC / "stages" / "grid" / "shard.py")
    assert {"finalbn.stages.grid.plan", "finalbn.stages.cellrun", "finalbn.stages.tracker"} <= deps
    files = {_rel(p) for p in imports.closure("finalbn.stages.grid.shard")}
    assert "src/finalbn/stages/grid/__init__.py" in files and "src/finalbn/stages/__init__.py" in files


def test_the_report_outputs_are_declared_once_and_dvc_yaml_agrees():
    """`stages/report/build.FILES` is the report's list of outputs (read from the source); dvc.yaml's
    report stage names each of them (as an out, a metric, or inside an out folder), and nothing else."""
    tree = ast.parse((SRC / "stages" / "report" / "build.py").read_text())
    (node,) = [
        n.value
        for n in tree.body
        if isinstance(n, ast.Assign) and [getattr(t, "id", None) for t in n.targets] == ["FILES"]
    ]
    REPORT_FILES = ast.literal_eval(node)
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["report"]
    declared = [p.removeprefix("report/") for p in [*stage["outs"], *stage.get("metrics", [])]]
    assert len(declared) == len(set(declared)) and len(REPORT_FILES) == len(set(REPORT_FILES))
    folders = [d for d in declared if "." not in d.rsplit("/", 1)[-1]]
    missing = [f for f in REPORT_FILES if f not in declared and not any(f.startswith(d + "/") for d in folders)]
    assert not missing, f"written by the report, not in dvc.yaml's report stage: {missing}"
    extra = [d for d in declared if d not in REPORT_FILES and not any(f.startswith(d + "/") for f in REPORT_FILES)]
    assert not extra, f"in dvc.yaml's report stage, not written by the report: {extra}"


def _contracts(src: Path) -> str:
    """`lint-imports` (pyproject.toml's contracts) on the package under `src`: its report."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout + out.stderr


def test_the_import_contracts_break_on_an_upward_or_an_mlflow_import(tmp_path):
    """`make lint` shows them holding on the source; here, on a copy with two violations, they break."""
    shutil.copytree(SRC, tmp_path / "finalbn", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "finalbn" / "data" / "splits.py", "a") as fh:
        fh.write("\nfrom finalbn.train import engine  # upward\n")
    with open(tmp_path / "finalbn" / "stats" / "metrics.py", "a") as fh:
        fh.write("\nimport mlflow  # outside tracking/\n")
    report = _contracts(tmp_path)
    assert "Contracts: 3 kept, 2 broken." in report, report
    assert (
        "finalbn.data.splits -> finalbn.train.engine" in report
        and "finalbn.stats is not allowed to import mlflow" in report
    )
