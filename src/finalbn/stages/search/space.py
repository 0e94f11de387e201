"""The search space: what `search.space` may hold, and a trial's configuration drawn from it.

    check(cfg)                       # ConfigError naming the key, before any trial
    tcfg = suggest(trial, cfg)       # params.yaml with the space's dimensions drawn

Each dimension is a [low, high] range, a list of choices, or null (off: params.yaml's value).
A space has no dead or overriding dimension: a dimension is drawn only when the configuration
drawn so far uses it (weight decay with WD on, MixUp's alpha with MX on, the final BN's knobs
with a final BN, the final Linear's bias without one, WL only under a loss without a prior correction
of its own (ce, focal: class_balanced's weights replace WL's, and logit_adjusted's prior shift with WL
corrects the prior twice, `PRIOR_LOSSES`), `check` refuses `bn` in `switches` beside `final` (one would override the
other), and temperature scaling only for an objective it can change (it moves no ranking and no
argmax). The order of the `suggest_*` calls is part of the study (a seeded sampler draws in call
order): keep it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna

from finalbn.config import Config, ConfigError, final_layer_for
from finalbn.models import get_spec

LOG_SCALE = ("lr", "weight_decay", "final_bn_momentum", "final_bn_eps")
CHOICES = ("switches", "hidden", "final", "final_bn_affine", "final_bias", "batch_size", "arch", "loss", "calibration")
CALIBRATED_OBJECTIVES = ("val_auroc+ece", "val_balanced_loss")  # what temperature scaling changes


def check(cfg: Config) -> None:
    """Refuse, before any trial, what cannot be searched: one line naming the key."""
    s = cfg.search
    for name, value in dataclasses.asdict(s.space).items():
        if value is not None:
            _check_dimension(f"search.space.{name}", name, value)
    for a in s.space.arch or ():
        try:
            get_spec(a)
        except ValueError as exc:
            raise ConfigError(f"search.space.arch: {exc}") from None
    if "bn" in (s.space.switches or ()) and s.space.final is not None:
        raise ConfigError(
            f"search.space.switches holds bn and search.space.final={list(s.space.final)}: one would "
            "override the other (the final layer is the BN switch): drop bn from the switches or set "
            "search.space.final=null"
        )
    if s.space.calibration is not None and s.objective not in CALIBRATED_OBJECTIVES:
        raise ConfigError(
            f"search.space.calibration cannot change search.objective={s.objective} (temperature "
            "scaling moves no ranking and no argmax): set search.space.calibration=null or "
            f"search.objective to one of {', '.join(CALIBRATED_OBJECTIVES)}"
        )
    have = cfg.grid.max_replicates  # the split draws `prepare` writes
    if cfg.selection.replicates > have:
        raise ConfigError(
            f"selection.replicates={cfg.selection.replicates} exceeds the {have} replicates prepare "
            "writes (grid.replicates / grid.headline.replicates)"
        )
    if multi_objective(cfg) and s.pruner != "none":
        # Optuna's Trial.report raises NotImplementedError for multi-objective studies
        raise ConfigError(
            f"search.pruner={s.pruner} cannot prune the two-objective study {s.objective!r}: "
            "set search.pruner=none or a single objective"
        )


def _check_dimension(key: str, name: str, value) -> None:
    if len(value) == 0:
        raise ConfigError(f"{key} is empty: give a [low, high] range, choices, or null to switch it off")
    if name in CHOICES:
        if name == "batch_size" and any(not isinstance(v, int) or isinstance(v, bool) or v < 2 for v in value):
            raise ConfigError(f"{key} must be integers >= 2 (got {list(value)})")
        if name == "hidden" and any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in value):
            raise ConfigError(f"{key} must be integers >= 1 (got {list(value)})")
        if name in ("final_bn_affine", "final_bias") and any(not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key} must be true/false choices (got {list(value)})")
        return
    low, high = value
    if not low < high:
        raise ConfigError(f"{key}: empty range [{low}, {high}] (need low < high)")
    if name in LOG_SCALE and low <= 0:
        raise ConfigError(f"{key}: a log-scale range needs low > 0 (got {low})")
    if name in ("dropout_0", "dropout_1") and not (0 <= low and high < 1):
        raise ConfigError(f"{key}: dropout must lie in [0, 1) (got [{low}, {high}])")
    if name == "label_smoothing" and not (0 <= low and high <= 1):
        raise ConfigError(f"{key}: label smoothing must lie in [0, 1] (got [{low}, {high}])")
    if name == "epochs" and low < 1:
        raise ConfigError(f"{key}: epochs must be >= 1 (got {low})")


def multi_objective(cfg: Config) -> bool:
    return "+" in cfg.search.objective


class _Draw:
    """A trial's draws, each skipped when its dimension is null."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def rng(self, name: str, value, log: bool = False, integer: bool = False):
        if value is None:
            return None
        if integer:
            return self.trial.suggest_int(name, int(value[0]), int(value[1]))
        return self.trial.suggest_float(name, float(value[0]), float(value[1]), log=log)

    def pick(self, name: str, choices):
        return None if choices is None else self.trial.suggest_categorical(name, list(choices))


def suggest(trial: optuna.Trial, cfg: Config) -> Config:
    """The trial's configuration: params.yaml with the space's dimensions drawn (each only where
    the configuration drawn before it uses it; see the module docstring)."""
    sp, model = cfg.search.space, cfg.model
    d = _Draw(trial)
    m: dict[str, Any] = {}
    t: dict[str, Any] = {}
    if (loss := d.pick("loss", sp.loss)) is not None:  # first: it decides whether WL is drawn
        t["loss"] = loss
    ab = _switches(trial, sp, cfg.ablation, t.get("loss", cfg.train.loss))
    if (lr := d.rng("lr", sp.lr, log=True)) is not None:
        t["lr"] = lr
    if ab.wd and (wd := d.rng("weight_decay", sp.weight_decay, log=True)) is not None:  # WD off: decay 0
        t["weight_decay"] = wd
    d0, d1 = d.rng("dropout_0", sp.dropout_0), d.rng("dropout_1", sp.dropout_1)
    if d0 is not None or d1 is not None:
        m["dropout"] = (model.dropout[0] if d0 is None else d0, model.dropout[1] if d1 is None else d1)
    if (h := d.pick("hidden", sp.hidden)) is not None:
        m["hidden"] = h
    if (final := d.pick("final", sp.final)) is not None:
        ab = dataclasses.replace(ab, bn=final != "none")
        if final != "none":
            m["final_variant"] = final
    _final_layer(d, sp, m, final_layer_for(m.get("final_variant", model.final_variant), ab.bn) == "bn")
    _training(d, sp, m, t, ab.mx)
    return dataclasses.replace(
        cfg, ablation=ab, model=dataclasses.replace(model, **m), train=dataclasses.replace(cfg.train, **t)
    )


# Losses that correct for the class prior themselves: WL is not drawn under them. class_balanced's
# weights replace WL's; logit_adjusted (Menon et al. 2021: an alternative to re-weighting) with WL's
# weights corrects twice: at 2c8d3f2 and ccd8b67 such trials were the search's worst (SELU: validation
# AUROC 0.46, ranking backwards) and its best by AUROC (BN: 0.856, whose argmax then flagged 100 % of
# healthy validation images).
PRIOR_LOSSES = ("class_balanced", "logit_adjusted", "ldam_drw")


def _switches(trial: optuna.Trial, sp, ab, loss: str):
    """The switches of the space drawn; WL off (not drawn) under a loss of `PRIOR_LOSSES`."""
    if not sp.switches:
        return ab
    drawn = {}
    for name in sp.switches:
        drawn[name] = (
            False if name == "wl" and loss in PRIOR_LOSSES else trial.suggest_categorical(name.upper(), [True, False])
        )
    return dataclasses.replace(ab, **drawn)


def _final_layer(d: _Draw, sp, m: dict, uses_bn: bool) -> None:
    if uses_bn:  # the final BN's own knobs mean something only when there is one
        if (v := d.rng("final_bn_momentum", sp.final_bn_momentum, log=True)) is not None:
            m["final_bn_momentum"] = v
        if (v := d.rng("final_bn_eps", sp.final_bn_eps, log=True)) is not None:
            m["final_bn_eps"] = v
        if (v := d.pick("final_bn_affine", sp.final_bn_affine)) is not None:
            m["final_bn_affine"] = v
    elif (v := d.pick("final_bias", sp.final_bias)) is not None:  # a BN right after the Linear cancels its bias
        m["final_bias"] = v


def _training(d: _Draw, sp, m: dict, t: dict, mixup: bool) -> None:
    if (v := d.rng("label_smoothing", sp.label_smoothing)) is not None:
        t["label_smoothing"] = v
    if mixup and (v := d.rng("mixup_alpha", sp.mixup_alpha)) is not None:
        t["mixup_alpha"] = v
    if (v := d.pick("batch_size", sp.batch_size)) is not None:
        t["batch_size"] = v
    if (v := d.rng("epochs", sp.epochs, integer=True)) is not None:
        t["epochs"] = v
    if (v := d.pick("arch", sp.arch)) is not None:
        m["arch"] = v
    if (v := d.pick("calibration", sp.calibration)) is not None:
        t["calibration"] = v


def steps_per_replicate(cfg: Config) -> int:
    """The pruner's steps per replicate: the most epochs a trial of the space trains (a trial on
    replicate r, epoch e reports at step r * this + e, so replicates start at the same step in
    every trial, whatever epochs it drew)."""
    return int(cfg.search.space.epochs[1]) if cfg.search.space.epochs else int(cfg.train.epochs)
