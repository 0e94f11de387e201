"""Reading the configuration: YAML files merged in order, `a.b=value` overrides, strict validation
with one-line errors, and the plain forms logged with a run.

    cfg = load_config(["params.yaml"], ["split.seed=3", "datasets.0.crop=Pepper"])
    flatten(to_dict(cfg))      # {"split.seed": 3, "datasets.0.crop": "Pepper", ...}: MLflow params

An unknown key, a wrong type or an out-of-range value raises `ConfigError` with one line naming
the key and what is allowed, before any work starts.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import ValidationError

from finalbn.config.schema import Config, ConfigError


def load_config(paths: Sequence[str | Path], overrides: Sequence[str] = ()) -> Config:
    """Merge the YAML files in order, apply `a.b=value` overrides, validate strictly.

    Text keys (folder names, crops, paths: `str` in the schema) keep the text as written: YAML
    1.1 would read `majority: [no]` as [False] and `crop: 0` as 0; here they stay "no" and "0".
    An override of a text key takes its value verbatim (`--set datasets.0.root=/d/a b #1`),
    except `null` or `~` for a key that may be unset."""
    raw: dict[str, Any] = {}
    for p in paths:
        typed, text = _read_yaml(Path(p))
        raw = _merge(raw, _as_written(typed, text, Config))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. split.seed=3)")
        key = key.strip()
        _assign(raw, key, parse_override(_type_at(key.split(".")), value))
    return validate(raw)


def parse_override(tp: Any, text: str) -> Any:
    """An override's value for a key of schema type `tp` (None: unknown key): a text key takes
    `text` verbatim, a list of texts reads as a YAML list of strings (or, where YAML cannot, as
    `[a, b]` split on commas, each item as written: `[*/0]`), anything else as YAML."""
    if _is_text(tp):
        return None if text.strip() in ("null", "~") and _optional(tp) else text
    if _is_text(_item_type(tp)):
        try:
            value = yaml.load(text, Loader=yaml.BaseLoader)  # every scalar a string
        except yaml.YAMLError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        inner = text.strip()
        if inner.startswith("[") and inner.endswith("]"):
            # what YAML cannot read as a list of texts ([*/0], [[2020] ok]): the items as written
            return [v.strip() for v in inner[1:-1].split(",")] if inner[1:-1].strip() else []
        if value is None or isinstance(value, (list, dict)):
            raise ConfigError(f"value {text!r} is not a list (e.g. [a, b])")
        return value
    return parse_value(text)


def _as_written(typed: Any, text: Any, tp: Any) -> Any:
    """`typed` (yaml.safe_load) with each text key's value taken from `text` (the same file read
    with every scalar a string) where YAML made it a bool or a number."""
    if _is_text(tp):
        return text if isinstance(typed, (bool, int, float)) and isinstance(text, str) else typed
    item = _item_type(tp)
    if item is not None and isinstance(typed, list) and isinstance(text, list) and len(typed) == len(text):
        return [_as_written(t, w, item) for t, w in zip(typed, text)]
    cls = _unwrap(tp)
    if dataclasses.is_dataclass(cls) and isinstance(typed, dict) and isinstance(text, dict):
        hints = typing.get_type_hints(cls, include_extras=True)
        return {k: _as_written(v, text.get(k), hints[k]) if k in hints else v for k, v in typed.items()}
    return typed


def _is_text(tp: Any) -> bool:
    return tp is not None and _unwrap(_unwrap(tp)) is str


def _optional(tp: Any) -> bool:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)


def _item_type(tp: Any) -> Any:
    """The element type of a tuple[X, ...] / list[X] key, else None."""
    tp = _unwrap(tp) if tp is not None else None
    if typing.get_origin(tp) in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return args[0] if len(set(map(str, args))) == 1 else None
    return None


def _type_at(parts: Sequence[str | int]) -> Any:
    """The schema type of the key `parts` from Config (a list index as an int or digits: an
    override's `datasets.0.crop`, a pydantic error's location), or None if there is none."""
    tp: Any = Config
    for part in parts:
        cls = _unwrap(tp)
        if dataclasses.is_dataclass(cls):
            hints = typing.get_type_hints(cls, include_extras=True)
            if part not in hints:
                return None
            tp = hints[part]
        elif _item_type(tp) is not None and str(part).isdigit():
            tp = _item_type(tp)
        else:
            return None
    return tp


def validate(raw: dict[str, Any]) -> Config:
    try:
        return Config(**raw) if isinstance(raw, dict) else Config(raw)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    except TypeError as exc:  # e.g. a section that is not a mapping
        raise ConfigError(f"params: {exc}") from None


def to_dict(cfg: Any) -> Any:
    """Plain dict/list form of a config (for config.yaml artifacts and flattened params)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (tuple, list)):
        return [to_dict(v) for v in cfg]
    return cfg


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}, 'l': [x, y]} -> {'a.b': 1, 'l.0': x, 'l.1': y}."""
    out: dict[str, Any] = {}
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else None
    if items is None:
        return {prefix: d}
    for k, v in items:
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict)):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def parse_value(text: str) -> Any:
    """YAML scalar/list parsing for overrides; `3e-4` (a string to YAML 1.1) becomes a float."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
        return float(value)
    return value


def _read_yaml(path: Path) -> tuple[dict[str, Any], Any]:
    """The file as YAML reads it, and as written (yaml.BaseLoader: every scalar a string)."""
    if not path.is_file():
        raise ConfigError(f"params file {path} does not exist")
    try:
        source = path.read_text()
        data = yaml.safe_load(source)
        text = yaml.load(source, Loader=yaml.BaseLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"params file {path}{where} is not valid YAML") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"params file {path} must be a mapping of sections")
    return _datasets_listed(data, path), _datasets_listed(text, path)


def _datasets_listed(raw: Any, path: Path) -> Any:
    """`datasets` keyed by name (params.yaml's form: DVC names the per-dataset stages by key,
    `prepare@synthetic-apple`) as the list the schema holds, each entry's `name` its key; a list
    is kept as it is (overrides index it either way: `datasets.0.root`). Raises ConfigError when
    an entry's `name` differs from its key, or an entry is not a mapping."""
    sets = raw.get("datasets") if isinstance(raw, dict) else None
    if not isinstance(sets, dict):
        return raw
    listed = []
    for key, entry in sets.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"params file {path}: datasets.{key} must be a mapping (source, root, ...)")
        if str(entry.get("name", key)) != str(key):
            raise ConfigError(
                f"params file {path}: datasets.{key} has name {entry['name']!r}; "
                "a dataset keyed by name needs no `name` (or the same one)"
            )
        listed.append({"name": key, **{k: v for k, v in entry.items() if k != "name"}})
    return {**raw, "datasets": listed}


def _merge(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        out = copy.deepcopy(base)
        for k, v in top.items():
            out[k] = _merge(out.get(k), v) if k in out else copy.deepcopy(v)
        return out
    return copy.deepcopy(top)


def _assign(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            # an entry by its place, or by its name (`datasets.isic.intensity`: params.yaml keys datasets by name)
            named = [j for j, e in enumerate(node) if isinstance(e, dict) and str(e.get("name")) == part]
            if named and not part.isdigit():
                part = str(named[0])
            if not part.isdigit() or int(part) >= len(node):
                names = [str(e["name"]) for e in node if isinstance(e, dict) and "name" in e]
                raise ConfigError(
                    f"unknown key '{where}': '{'.'.join(parts[:i])}' has {len(node)} entries (0..{len(node) - 1}"
                    + (f"; or by name: {', '.join(names)})" if names else ")")
                )
            idx = int(part)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value  # an unknown leaf is caught by validation with the allowed keys
            else:
                if part not in node:
                    allowed = _allowed_at(parts[:i])
                    raise ConfigError(
                        f"unknown key '{where}'" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
                    )
                node = node[part]
        else:
            raise ConfigError(f"unknown key '{where}': '{'.'.join(parts[:i])}' is a value, not a section")


def _allowed_at(loc: Sequence[Any]) -> list[str]:
    """Field names of the dataclass reached by following `loc` from Config (`_type_at`), or []."""
    tp = _unwrap(_type_at(loc))
    return [f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else []


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else tp
    return tp


def _field_loc(loc: Sequence[Any]) -> list[Any]:
    """The config path part of a pydantic error location (drops union-branch tags like literal['all'])."""
    out = []
    for p in loc:
        if isinstance(p, str) and ("[" in p or p in ("int", "str", "float", "bool") or p.startswith("function")):
            break
        out.append(p)
    return [p for p in out if p != "__root__"]


def _one_line(exc: ValidationError) -> str:
    errors = exc.errors()
    err = errors[0]
    loc = _field_loc(err["loc"])
    key = ".".join(str(p) for p in loc)
    kind = err["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        allowed = _allowed_at(loc[:-1])
        return f"unknown key '{key}'" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if kind in ("missing", "missing_argument"):
        return f"missing key '{key}' (every key must be set in params.yaml)"
    # A union reports one error per branch: say every way the value could have been right.
    same = [e for e in errors if _field_loc(e["loc"]) == loc]
    msgs = list(dict.fromkeys(e["msg"].replace("Value error, ", "") for e in same))
    msg = " or ".join(msgs)
    shown = err.get("input")
    got = "" if isinstance(shown, (dict, tuple)) or kind == "value_error" else f" (got {shown!r})"
    return f"bad value for '{key}': {msg}{got}" if key else f"bad config: {msg}"
