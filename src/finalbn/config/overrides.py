"""A config derived from another in-process, as `load_config` would derive it from the files.

    lcfg = with_overrides(cfg, ["train.batch_size=16", "grid.configs=[31,63]"])

A module of its own, outside `finalbn.config`'s face: the training code never imports it, so it
is not in a cell's key (`finalbn.train.keys`) and its edits retrain nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from finalbn.config.load import _assign, _type_at, parse_override, to_dict, validate
from finalbn.config.schema import Config, ConfigError


def with_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """`cfg` with `a.b=value` overrides applied as `load_config` applies them (the same parsing,
    the same strict validation): how a stage derives another config in-process (the sensitivity
    stage's levels). Raises ConfigError, one line, for an unknown key or a bad value."""
    raw = to_dict(cfg)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. split.seed=3)")
        key = key.strip()
        _assign(raw, key, parse_override(_type_at(key.split(".")), value))
    return validate(raw)
