"""The package's own import graph, read from the source: which finalbn files a module needs.

    closure("finalbn.stages.grid")     # every src/finalbn/*.py it imports, directly or not
    code_digest("finalbn.cell")        # sha256 over that closure's sources: part of every cell key

One list, derived from the code, serves three readers: a cell's key (a change to any module that
computes a cell re-runs it), each dvc.yaml stage's code deps (tests/test_structure.py checks them
against this closure), and the structural rules of the package. Importing a submodule runs its
packages' `__init__` too, so those count.
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "finalbn"
ROOT = Path(__file__).resolve().parent  # src/finalbn


def module_file(name: str) -> Path | None:
    """src/finalbn/a/b.py or src/finalbn/a/b/__init__.py for `finalbn.a.b`; None if neither exists."""
    parts = name.split(".")[1:]
    base = ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str:
    rel = Path(path).resolve().relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PACKAGE, *parts])


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def direct_imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """finalbn modules named by the import statements of one file (`from finalbn.x import y` counts
    `finalbn.x.y` when y is a module, else `finalbn.x`); relative imports resolved."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    here = module_name(path)
    is_pkg = Path(path).name == "__init__.py"
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, here, is_pkg)
            if base is None or base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if module_file(sub) is not None else base)
    return {m for m in found if module_file(m) is not None}


def _absolute(node: ast.ImportFrom, here: str, is_pkg: bool) -> str | None:
    if not node.level:
        return node.module
    parts = here.split(".") if is_pkg else here.split(".")[:-1]
    parts = parts[:len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


@functools.lru_cache(maxsize=None)
def closure(name: str) -> tuple[Path, ...]:
    """Every finalbn source file that importing module `name` executes, sorted."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        mod = todo.pop()
        for m in [mod, *_parents(mod)]:
            if m in seen or module_file(m) is None:
                continue
            seen.add(m)
            todo.extend(direct_imports(module_file(m)))
    return tuple(sorted(module_file(m) for m in seen))


@functools.lru_cache(maxsize=None)
def code_digest(name: str) -> str:
    """sha256 (16 hex digits) over the paths and sources of `closure(name)`."""
    h = hashlib.sha256()
    for path in closure(name):
        h.update(path.relative_to(ROOT).as_posix().encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]
