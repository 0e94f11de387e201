"""The package's own import graph, read from the source: which finalbn files a module needs.

    closure("finalbn.stages.grid")     # every src/finalbn/*.py it imports, directly or not (and the
                                       # field package's modules it imports: deploy/field/finalbn_field)
    code_digest("finalbn.train.cell")        # sha256 over that closure's sources: part of every cell key

One list, derived from the code, serves three readers: a cell's key (a change to any module that
computes a cell re-runs it), each dvc.yaml stage's code deps (tests/test_structure.py checks them
against this closure), and the structural rules of the package. Importing a submodule runs its
packages' `__init__` too, so those count.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
from pathlib import Path
from typing import cast

PACKAGE, FIELD = "finalbn", "finalbn_field"
ROOT = Path(__file__).resolve().parents[1]  # src/finalbn (this file is src/finalbn/infra/imports.py)


def _field_root() -> Path | None:
    """Where the field package's sources are (deploy/field/finalbn_field in an editable install):
    its decoder and decision rules are finalbn's too, so they count in closures and cell keys."""
    spec = importlib.util.find_spec(FIELD)
    return Path(spec.origin).resolve().parent if spec is not None and spec.origin else None


FIELD_ROOT = _field_root()


def _roots() -> dict[str, Path]:
    """Each package read here -> its source folder (read at call time: tests point ROOT at a copy)."""
    return {PACKAGE: ROOT, **({FIELD: FIELD_ROOT} if FIELD_ROOT is not None else {})}


def module_file(name: str) -> Path | None:
    """src/finalbn/a/b.py or src/finalbn/a/b/__init__.py for `finalbn.a.b` (finalbn_field's
    likewise); None if neither exists or the package is neither."""
    top, *parts = name.split(".")
    root = _roots().get(top)
    if root is None:
        return None
    base = root.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str:
    path = Path(path).resolve()
    for top, root in _roots().items():
        if path.is_relative_to(root):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            return ".".join([top, *parts])
    raise ValueError(f"{path} is in neither {PACKAGE} nor {FIELD}")


def label(path: Path) -> str:
    """A source file as `finalbn/a/b.py` or `finalbn_field/c.py` (what a code digest hashes)."""
    path = Path(path).resolve()
    top = module_name(path).split(".")[0]
    return f"{top}/{path.relative_to(_roots()[top]).as_posix()}"


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def direct_imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """finalbn (and finalbn_field) modules named by the import statements of one file (`from finalbn.x import y` counts
    `finalbn.x.y` when y is a module, else `finalbn.x`); relative imports resolved."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    here = module_name(path)
    is_pkg = Path(path).name == "__init__.py"
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in _roots()}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, here, is_pkg)
            if base is None or base.split(".")[0] not in _roots():
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if module_file(sub) is not None else base)
    return {m for m in found if module_file(m) is not None}


def _absolute(node: ast.ImportFrom, here: str, is_pkg: bool) -> str | None:
    if not node.level:
        return node.module
    parts = here.split(".") if is_pkg else here.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


@functools.cache
def closure(name: str) -> tuple[Path, ...]:
    """Every finalbn (and finalbn_field) source file that importing module `name` executes, sorted."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        mod = todo.pop()
        for m in [mod, *_parents(mod)]:
            if m in seen or module_file(m) is None:
                continue
            seen.add(m)
            todo.extend(direct_imports(cast(Path, module_file(m))))  # a Path: checked just above
    return tuple(sorted(cast(Path, module_file(m)) for m in seen))  # each has a file: only those are seen


@functools.cache
def code_digest(name: str) -> str:
    """sha256 (16 hex digits) over the paths (`label`) and the code of `closure(name)`: each
    module's syntax tree without its docstrings (`code_text`), so a comment, a docstring or a
    re-wrapped line changes no digest; any change to what runs does."""
    h = hashlib.sha256()
    for path in closure(name):
        h.update(label(path).encode())
        h.update(hashlib.sha256(code_text(path.read_text(encoding="utf-8")).encode()).digest())
    return h.hexdigest()[:16]


def code_text(source: str) -> str:
    """What a module runs, as text: `ast.dump` of its syntax tree (no comments, no layout) with the
    docstrings of the module, its classes and functions removed. Annotations stay: pydantic and
    dataclasses read them at run time."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)
