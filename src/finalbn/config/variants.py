"""A params file's variant as DVC experiment arguments: `dvc exp run -S ...` for a profile.

    set_args(yaml.safe_load(open("profiles/paper.yaml")))
    # ["-S", "~datasets", "-S", '+datasets={apple: {source: "plantvillage", ...}}', "-S", 'model.arch="resnet34"', ...]

`finalbn variant profiles/paper.yaml` prints them, and `make exp PROFILE=profiles/paper.yaml` runs
`dvc exp run -n paper` with them: DVC writes the profile's values into params.yaml inside the
experiment (its `-S` overrides, in Hydra's grammar: `dvc.utils.hydra.apply_overrides`), runs the
pipeline, and the experiment's params and metrics sit in `dvc exp show` beside the workspace's.
The result is the configuration `load_config(["params.yaml", profile])` gives (tests/test_variants.py):
a mapping in the profile is merged into params.yaml's key by key (as `load_config` merges files),
a list or a value replaces it, and `datasets` (a list in a profile, keyed by name in params.yaml)
replaces params.yaml's datasets whole (`~datasets`, then `+datasets={...}`).
"""

from __future__ import annotations

import argparse
import math
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from finalbn.config.load import load_config
from finalbn.config.schema import Config, ConfigError


def hydra_value(v: Any) -> str:
    """`v` in Hydra's override grammar: strings quoted (a path, a comma, a space survive), numbers,
    true/false/null, lists `[...]` and mappings `{k: v}`. Raises ConfigError on a value YAML
    params cannot hold (a NaN, an object)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ConfigError(f"a profile's value {v!r} is not finite")
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(hydra_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_key(k)}: {hydra_value(x)}" for k, x in v.items()) + "}"
    raise ConfigError(f"a profile's value {v!r} is not YAML params (text, number, list or mapping)")


def _key(k: Any) -> str:
    text = str(k)
    if not text.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"a profile's key {text!r} cannot be set by `dvc exp run -S` (letters, digits, _ and -)")
    return text


def _datasets(value: Any) -> dict[str, Any]:
    """A profile's `datasets` (a list of entries with `name`, or params.yaml's mapping) keyed by name."""
    if isinstance(value, Mapping):
        return {str(k): dict(v) for k, v in value.items()}
    if not isinstance(value, list) or not all(isinstance(e, Mapping) and e.get("name") for e in value):
        raise ConfigError("a profile's `datasets` must be a list of entries each with a `name`, or a mapping")
    return {str(e["name"]): {k: v for k, v in e.items() if k != "name"} for e in value}


def _leaves(d: Mapping[str, Any], base: Any, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{_key(k)}"
        here = base.get(k) if isinstance(base, Mapping) else None
        if isinstance(v, Mapping) and isinstance(here, Mapping):
            out += _leaves(v, here, f"{key}.")
        else:
            out.append(f"{'' if isinstance(base, Mapping) and k in base else '+'}{key}={hydra_value(v)}")
    return out


def set_args(profile: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
    """The `dvc exp run` arguments (`-S`, override, ...) that turn params.yaml's content `base`
    into `base` with `profile` laid over it (module docstring). Raises ConfigError when the profile
    is not a mapping or holds a key or value `-S` cannot set."""
    if not isinstance(profile, Mapping):
        raise ConfigError("a profile must be a mapping of params.yaml's sections")
    overrides = []
    rest = {k: v for k, v in profile.items() if k != "datasets"}
    if "datasets" in profile:
        overrides += ["~datasets", f"+datasets={hydra_value(_datasets(profile['datasets']))}"]
    overrides += _leaves(rest, base)
    return [arg for o in overrides for arg in ("-S", o)]


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"profile {path} does not exist") from None
    except yaml.YAMLError:
        raise ConfigError(f"profile {path} is not valid YAML") from None


def main(cfg: Config, args: argparse.Namespace) -> int:
    """`finalbn variant PROFILE`: the `dvc exp run` arguments of PROFILE over params.yaml, one
    shell-quoted line (`make exp PROFILE=...` runs them). The profile is checked by loading it over
    params.yaml first: a key or value the schema refuses is ConfigError, before DVC sees it."""
    base_path = Path((args.params or ["params.yaml"])[0])
    profile = Path(args.profile)
    load_config([base_path, profile])
    print(shlex.join(["-n", profile.stem, *set_args(_read(profile), _read(base_path))]))
    return 0
