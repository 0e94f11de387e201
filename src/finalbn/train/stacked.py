"""Head-only cells of one family trained as one stack: each cell's one-at-a-time numbers, fewer steps.

    results = run_stacked([cfg31, cfg15, cfg30, cfg14], "synthetic-apple", Path("data/splits"), replicate=0)
    stack_groups([(cfg, "synthetic-apple", 0) for cfg in cfgs], limit=4)   # [[0, 1, 2, 3], [4, 5]]

With UF off a cell trains only a small head on its family's shared frozen-body features
(`finalbn.train.features`): every cell of a family and replicate sees the same batches in the same
order and draws the same dropout masks (one seed, `finalbn.config.seeds`). What differs between
them is the head's final layer (BN: another architecture, so a stack holds one final layer), WL
(class weights), WD (decoupled weight decay), and the imbalance baselines' loss and temperature
calibration. K such cells train here in one loop: per batch one dropout draw, each cell's own loss
(`engine.loss_value`, its class weights and loss), their sum's one backward (a cell's gradient is
its own loss's: the other terms do not reach its parameters), one fused AdamW step and one
OneCycleLR step (`engine.adamw_one_cycle`; `engine.param_groups`' rules). Two modes:

  exact  (the default) the cells' own heads, one after another in one autograd graph, their
         nn.Dropout layers sharing the first cell's noise (`_SharedDropout`); the optimiser holds
         every cell's parameter groups with its own weight decay. Each op runs on a cell's own
         tensors as it does alone: the numbers are the one-at-a-time cell's, bit for bit on the CPU.
  vmap   one batched computation: the K heads' parameters and buffers stacked along dim 0
         (`torch.func.stack_module_state`), one forward of all K per batch (`torch.func.vmap` over
         `functional_call`, dropout randomness="same": one draw, the masks an unstacked head draws),
         BN running statistics updated in the stacked buffers; one fused AdamW with weight decay 0
         over the stacked tensors, each cell's decoupled decay (Loshchilov & Hutter 2019; torch's
         AdamW: p <- p (1 - lr wd) before the Adam update) applied first as the factor 1 - lr wd_k
         on slice k. Batched kernels round otherwise than one head's (a bmm for an addmm, the
         batched BN backward): equal to the one-at-a-time cell to float rounding after a step, but
         over 10 epochs the training amplifies it, as a change of thread count does (both measured
         at ~3e-4 in a test probability): meant for a GPU, where launches dominate.

After each epoch every cell's head (vmap: its slice, copied into its own head) is validated,
selected and reported by an `engine.EpochLedger` exactly as `engine.fit` does (history row, final
BN statistics, selected-epoch state, callbacks); after training each cell is evaluated and reported
as `cell.run_cell` does (`cell.finish_cell`). A cell's `train_seconds` is its share (1/K) of the
stacked loop's time. A cell whose loss turns non-finite stops at that epoch (its callbacks are not
called again) while the others train on: `train_stacked` returns its TrainingDiverged, `run_stacked`
raises the first once all have trained. Measured by benchmarks/bench_stacked.py.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from finalbn.config import Config, DatasetConfig, cell_seed, config_name, final_layer, flatten, to_dict
from finalbn.train.cell import CellResult, cell_inputs, finish_cell, prepare_cell, share_key, shares_body
from finalbn.train.engine import (
    Callback,
    EpochLedger,
    FitResult,
    FitSettings,
    TrainingDiverged,
    TrainSource,
    adamw_one_cycle,
    autocast,
    check_finite,
    count_batches,
    epoch_source,
    loss_inputs,
    loss_value,
    param_groups,
    seed_dropout,
    to_device,
)

# Flattened config keys that may differ between the cells of one stack: the head-side switches
# (BN only through the final layer it chooses, which must agree) and the baselines' loss and calibration.
PER_CELL = frozenset(
    {
        "ablation.bn",
        "ablation.wl",
        "ablation.wd",
        "train.weight_decay",
        "train.loss",
        "train.focal_gamma",
        "train.cb_beta",
        "train.calibration",
    }
)
MODES = ("exact", "vmap")  # how a stack trains (module docstring)


def stack_key(cfg: Config, dataset: str | DatasetConfig, replicate: int = 0) -> tuple | None:
    """What the cells of one stack share: dataset, replicate, seed, the head's final layer and every
    config value outside `PER_CELL`. None for a cell that cannot stack (`cell.shares_body` false:
    UF on, or `train.share_features` off)."""
    if not shares_body(cfg):
        return None
    flat = flatten(to_dict(cfg))
    common = tuple(sorted((k, repr(v)) for k, v in flat.items() if k not in PER_CELL))
    ds = dataset if isinstance(dataset, str) else repr(to_dict(dataset))
    return (ds, replicate, cell_seed(cfg, replicate), final_layer(cfg.model, cfg.ablation), common)


def why_not_stacked(cfgs: Sequence[Config], dataset: str | DatasetConfig, replicate: int = 0) -> str | None:
    """Why `cfgs` cannot train as one stack (one line), or None when they can."""
    if not cfgs:
        return "no cell to stack"
    for i, c in enumerate(cfgs):
        if stack_key(c, dataset, replicate) is None:
            why = "UF on: its body trains" if c.ablation.uf else "train.share_features is off"
            return f"cell {i} ({config_name(c.ablation)}) is not head-only ({why})"
    ref, first = stack_key(cfgs[0], dataset, replicate), flatten(to_dict(cfgs[0]))
    for i, c in enumerate(cfgs[1:], start=1):
        if stack_key(c, dataset, replicate) == ref:
            continue
        a, b = final_layer(cfgs[0].model, cfgs[0].ablation), final_layer(c.model, c.ablation)
        if a != b:
            return f"cells 0 and {i} have different head architectures (final layer {a} vs {b})"
        other = flatten(to_dict(c))
        diff = sorted(k for k in first.keys() | other.keys() if k not in PER_CELL and first.get(k) != other.get(k))
        if not diff:
            return f"cells 0 and {i} are not of one family"
        return f"cells 0 and {i} are not of one family ({diff[0]}: {first.get(diff[0])!r} vs {other.get(diff[0])!r})"
    return None


def stack_groups(cells: Sequence[tuple[Config, str, int]], limit: int | None = None) -> list[list[int]]:
    """The indices of `cells` ((config, dataset, replicate) each) by stack: cells with one
    `stack_key`, in the order they first appear, at most `limit` to a stack (None: no limit); a
    cell that cannot stack is a group of its own. Every index appears once."""
    if limit is not None and limit < 1:
        raise ValueError(f"a stack holds at least one cell (limit {limit})")
    groups: dict[Any, list[list[int]]] = {}
    for i, (cfg, dataset, replicate) in enumerate(cells):
        key = stack_key(cfg, dataset, replicate)
        chunks = groups.setdefault(key if key is not None else ("alone", i), [[]])
        if limit is not None and len(chunks[-1]) >= limit:
            chunks.append([])
        chunks[-1].append(i)
    return sorted((g for chunks in groups.values() for g in chunks), key=lambda g: g[0])


def run_stacked(
    cfgs: Sequence[Config],
    dataset: str | DatasetConfig,
    splits_dir: Path,
    replicate: int = 0,
    callbacks: Sequence[Sequence[Callback]] | None = None,
    *,
    mode: str = "exact",
) -> list[CellResult]:
    """`cell.run_cell` of each of `cfgs` on one replicate, trained as one stack (module docstring);
    the results in the order of `cfgs`. Raises ValueError (one line, why) when the cells cannot
    stack (UF on, sharing off, different families or head architectures: `why_not_stacked`), and
    the first cell's TrainingDiverged (after every cell has trained) when a loss turned non-finite."""
    outcomes = train_stacked(cfgs, dataset, splits_dir, replicate, callbacks, mode=mode)
    for o in outcomes:
        if isinstance(o, TrainingDiverged):
            raise o
    return [o for o in outcomes if isinstance(o, CellResult)]


def train_stacked(
    cfgs: Sequence[Config],
    dataset: str | DatasetConfig,
    splits_dir: Path,
    replicate: int = 0,
    callbacks: Sequence[Sequence[Callback]] | None = None,
    *,
    mode: str = "exact",
) -> list[CellResult | TrainingDiverged]:
    """`run_stacked`, with each cell's outcome: its CellResult, or the TrainingDiverged that ended it.
    `callbacks[k]` are cell k's epoch callbacks. Raises ValueError as `run_stacked` does."""
    _check_mode(mode)
    why = why_not_stacked(cfgs, dataset, replicate)
    if why:
        raise ValueError(f"these cells cannot train stacked: {why}")
    cbs = [tuple(c) for c in callbacks] if callbacks is not None else [() for _ in cfgs]
    if len(cbs) != len(cfgs):
        raise ValueError(f"{len(cbs)} callback lists for {len(cfgs)} cells")
    setups = [prepare_cell(c, dataset, splits_dir, replicate=replicate) for c in cfgs]
    if len({share_key(s)[0] for s in setups}) != 1:  # implied by one stack key; checked where it matters
        raise ValueError("these cells cannot train stacked: their shared features differ")
    inputs = [cell_inputs(s) for s in setups]
    models = [i.model for i in inputs]
    fitted = fit_stacked(models, inputs[0].train, inputs[0].val_of, [s.settings for s in setups], cbs, mode)
    out: list[CellResult | TrainingDiverged] = []
    shared = inputs[0].shared
    for setup, inp, f in zip(setups, inputs, fitted):
        if isinstance(f, TrainingDiverged):
            out.append(f)
            continue
        if shared is not None and any(isinstance(o, CellResult) for o in out):
            inp.images_before = shared.body_images  # the body ran for the cell reported before it
        out.append(finish_cell(setup, inp, f))
    return out


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)} (got {mode!r})")


def common_settings(settings: Sequence[FitSettings]) -> FitSettings:
    """The settings the stack's cells share (the first cell's, with the per-cell ones neutral);
    ValueError naming a field they differ in beyond their losses and weight decay."""
    # each cell's loss, its decay and which validation metrics it logs are its own
    neutral = [
        dataclasses.replace(s, weight_decay=0.0, class_weights=None, loss="ce", focal_gamma=0.0, prior_metrics=True)
        for s in settings
    ]
    for s in neutral[1:]:
        if s != neutral[0]:
            field = next(f.name for f in dataclasses.fields(s) if getattr(s, f.name) != getattr(neutral[0], f.name))
            raise ValueError(f"these cells cannot train stacked: their fit settings differ in {field}")
    return neutral[0]


def fit_stacked(
    models: Sequence[nn.Module],
    train: TrainSource,
    val: TrainSource,
    settings: Sequence[FitSettings],
    callbacks: Sequence[Sequence[Callback]],
    mode: str = "exact",
) -> list[FitResult | TrainingDiverged]:
    """`engine.fit` of K models of one architecture on the same batches, as one stack (`mode`:
    "exact" or "vmap", module docstring); each model is left at its last epoch. Returns each
    model's FitResult, or the TrainingDiverged that stopped it. Raises ValueError for an unknown
    mode or settings that differ beyond the per-cell fields (weight decay, class weights, loss)."""
    _check_mode(mode)
    common = common_settings(settings)
    device = torch.device(common.device)
    for m in models:
        m.to(device)
    batches_of, val_of = epoch_source(train), epoch_source(val)
    steps_per_epoch = count_batches(batches_of)
    stack = (_Exact if mode == "exact" else _Vmapped)(models, settings, common, steps_per_epoch)
    ledgers = [EpochLedger(m, s, cb) for m, s, cb in zip(models, settings, callbacks)]
    failed: list[TrainingDiverged | None] = [None] * len(models)
    t0 = time.perf_counter()
    with stack.training():
        for epoch in range(1, common.epochs + 1):
            seed_dropout(common, epoch)
            losses = [(s, *loss_inputs(s, device, epoch)) for s in settings]  # LDAM-DRW re-weights by epoch
            step_losses, sizes = _train_epoch(stack, batches_of(epoch), losses, common)
            stack.unstack()
            for k, ledger in enumerate(ledgers):
                if failed[k] is None:
                    failed[k] = _end_epoch(ledger, epoch, step_losses[:, k].contiguous(), sizes, stack, val_of)
    share = (time.perf_counter() - t0) / len(models)
    return [f if f is not None else ledger.result(share) for f, ledger in zip(failed, ledgers)]


def _end_epoch(
    ledger: EpochLedger,
    epoch: int,
    losses: torch.Tensor,
    sizes: list[int],
    stack: _Exact | _Vmapped,
    val_of: Callable[[int], Any],
) -> TrainingDiverged | None:
    """The ledger's epoch, or the TrainingDiverged of a non-finite loss (then nothing is recorded)."""
    try:
        check_finite(losses, epoch)
    except TrainingDiverged as exc:
        return exc
    ledger.end_epoch(epoch, losses, sizes, max(stack.sched.get_last_lr()), val_of(epoch))
    return None


def _train_epoch(stack: _Exact | _Vmapped, batches, losses: list[tuple], c: FitSettings):
    """One epoch of steps of every cell: each cell's loss (`engine.loss_value`, its own class
    weights and loss), their sum's one backward, one optimiser step. Returns the (steps, K) losses
    on the CPU and the batch sizes."""
    out, sizes = [], []
    for m in stack.models:
        m.train()
    for x, target in batches:
        if len(target) < 2:
            continue  # BatchNorm cannot train on one sample (as `engine._train_epoch`)
        x = to_device(x, stack.device, c.channels_last)
        target = target.to(stack.device, non_blocking=True)
        with autocast(stack.device, c.bf16):
            logits = stack.logits(x)
        per_cell = torch.stack([loss_value(z.float(), target, *loss) for z, loss in zip(logits, losses)])
        stack.opt.zero_grad(set_to_none=True)
        per_cell.sum().backward()  # each cell's gradient is its own loss's
        stack.step()
        out.append(per_cell.detach())
        sizes.append(len(target))
    return (torch.stack(out).float().cpu() if out else torch.zeros(0, len(losses))), sizes


class _SharedDropout(nn.Module):
    """nn.Dropout whose noise the first cell of a step draws and the others reuse: the first
    draws as an unstacked cell does (torch's CPU dropout: bernoulli(1 - p) noise / (1 - p), times
    the input; on a GPU the fused kernel's draw), so every cell gets the masks it would have
    drawn alone. Eval mode, or p = 0: the input as it is."""

    def __init__(self, p: float, noise: dict[int, torch.Tensor], index: int) -> None:
        super().__init__()
        self.p, self.noise, self.index = p, noise, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = self.noise.get(self.index)
        if n is None:
            if x.device.type == "cpu":  # at::native::dropout's CPU form
                n = torch.empty_like(x).bernoulli_(1 - self.p).div_(1 - self.p)
            else:  # elsewhere F.dropout runs the fused kernel: its draw, mask x 1 / (1 - p) in float
                n = torch.native_dropout(torch.ones_like(x, dtype=torch.float32), self.p, True)[0]
            self.noise[self.index] = n
        return x * n if x.dtype == n.dtype else (x.float() * n).to(x.dtype)


class _Exact:
    """mode "exact": the cells' own heads, one after another in one autograd graph, their dropout
    noise drawn once (`_SharedDropout`), one backward, one fused AdamW over every cell's
    `param_groups` (its own weight decay) under one OneCycleLR. Every op runs on a cell's own
    tensors as it does alone, so the numbers are the one-at-a-time cell's, bit for bit on the CPU."""

    def __init__(self, models: Sequence[nn.Module], settings: Sequence[FitSettings], common: FitSettings, steps: int):
        self.models, self.device = models, torch.device(common.device)
        self.noise: dict[int, torch.Tensor] = {}
        groups = [
            g for m, s in zip(models, settings) for g in param_groups(m, s.weight_decay, s.body_lr_ratio, s.wd_on_bn)
        ]
        self.opt, self.sched = adamw_one_cycle(groups, common, steps)

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Each model's nn.Dropout layers replaced by `_SharedDropout` (the j-th of every model
        shares noise j) for the block; the models put back as they were."""
        swapped = []
        for m in self.models:
            drops = [(parent, name, c) for parent in m.modules() for name, c in parent.named_children()]
            drops = [d for d in drops if isinstance(d[2], nn.Dropout)]
            if any(type(d[2]) is not nn.Dropout for d in drops):
                raise ValueError("mode exact shares nn.Dropout noise only (another dropout kind is in the model)")
            for j, (parent, name, child) in enumerate(drops):
                setattr(parent, name, _SharedDropout(child.p, self.noise, j))
                swapped.append((parent, name, child))
        try:
            yield
        finally:
            for parent, name, child in swapped:
                setattr(parent, name, child)

    def logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.noise.clear()
        return [m(x) for m in self.models]

    def step(self) -> None:
        self.opt.step()
        self.sched.step()

    def unstack(self) -> None:
        """Nothing to copy: the models are the cells' own."""


def _call(base: nn.Module, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
    return functional_call(base, (params, buffers), (x,))


class _Vmapped:
    """mode "vmap": the K models' parameters and buffers stacked along dim 0
    (`stack_module_state`), one vmapped forward of all K, one fused AdamW (weight decay 0) over the
    stacked tensors of one model's `param_groups`, each cell's decoupled decay applied to its slice
    before the step (`_decay`)."""

    def __init__(self, models: Sequence[nn.Module], settings: Sequence[FitSettings], common: FitSettings, steps: int):
        self.models, self.common = models, common
        self.device = torch.device(common.device)
        self.params, self.buffers = stack_module_state(list(models))
        base = copy.deepcopy(models[0]).to("meta")
        base.train()
        self.forward = vmap(partial(_call, base), in_dims=(0, 0, None), randomness="same")
        groups, self.decaying = self._groups(models[0])
        self.opt, self.sched = adamw_one_cycle(groups, common, steps)
        self.decays = [s.weight_decay for s in settings]

    def _groups(self, template: nn.Module) -> tuple[list[dict[str, Any]], list[int]]:
        """`engine.param_groups` of one model, its parameters replaced by the stacked ones, every
        group's weight decay 0 (applied per cell by `_decay`); the indices of the groups that decay."""
        names = {id(p): n for n, p in template.named_parameters()}
        groups, decaying = [], []
        for i, g in enumerate(param_groups(template, 1.0, self.common.body_lr_ratio, self.common.wd_on_bn)):
            groups.append({**g, "params": [self.params[names[id(p)]] for p in g["params"]], "weight_decay": 0.0})
            if g["weight_decay"]:
                decaying.append(i)
        return groups, decaying

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        yield

    def logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.forward(self.params, self.buffers, x).unbind(0))

    def step(self) -> None:
        self._decay()
        self.opt.step()
        self.sched.step()

    @torch.no_grad()
    def _decay(self) -> None:
        """AdamW's decoupled decay per cell: slice k of each decaying parameter times 1 - lr wd_k."""
        if not any(self.decays):
            return
        for i in self.decaying:
            g = self.opt.param_groups[i]
            for p in g["params"]:
                factor = torch.tensor([1 - g["lr"] * wd for wd in self.decays], dtype=p.dtype, device=p.device)
                p.mul_(factor.view(-1, *([1] * (p.dim() - 1))))

    @torch.no_grad()
    def unstack(self) -> None:
        """Copy each cell's slice into its own model (which the ledgers validate and snapshot)."""
        for k, m in enumerate(self.models):
            for name, t in itertools.chain(m.named_parameters(), m.named_buffers()):
                t.copy_((self.params[name] if name in self.params else self.buffers[name])[k])
