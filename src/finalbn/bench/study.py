"""`finalbn bench`: what the study costs on this machine, measured in one run, printed as ratios.

    finalbn bench                          # CPU: throughput, each lever before/after, grid shared vs not
    finalbn bench --device cuda            # + lite0 / resnet34 / vgg19_bn at 224 px, the paper's projection
    finalbn bench --cells [--device cuda]  # instead: real cells of each kind, the studies projected (`bench_cells`)

Sections (all written to `results/bench.json`):
  throughput  img/s per arch and image size, fp32 and bf16: evaluation, head-only training on
              cached features, UF-on training (body BN affine only), full fine-tuning.
  levers      each speed change of the grid measured against what it replaced, in this run:
              channels_last, process/thread layout, per-step host syncs, the selected-epoch copy,
              large inference-mode evaluation batches, the decode cache, batched augmentation.
  grid        the default grid's UF-off cells with shared features vs `--no-share`, through the
              real grid code and a temporary MLflow store (reduced: replicate 0, the stated configs).
  projection  (with --device cuda) the paper's full study: 64 configs x 10 replicates x 3 crops per
              arch, from the measured rates.
A benchmark prints what it measured; it asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import multiprocessing as mp
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from finalbn import tracking
from finalbn.bench import cells
from finalbn.config import AugmentConfig, Config, ablation_from_id
from finalbn.data import tensors
from finalbn.data.augment import BatchAugment
from finalbn.data.tensors import EVAL_BATCH
from finalbn.infra import io
from finalbn.infra.errors import UsageError
from finalbn.models import HeadOnFeatures, HeadSpec, create_head, create_model, get_spec
from finalbn.stages.grid import run_shard
from finalbn.stages.tracker import MemoryTracker
from finalbn.train import features
from finalbn.train.engine import resolve_device

PAPER = {"configs": 64, "replicates": 10, "crops": 3, "train": 1010, "val": 157, "test": 300, "epochs": 10}


# ---------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(step: Callable[[], Any], batch: int, device: torch.device, seconds: float = 1.5, warmup: int = 2) -> float:
    """Images per second of `step` (one batch), timed for about `seconds` after `warmup` steps."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0, n = time.perf_counter(), 0
    while True:
        step()
        n += 1
        if n >= 3 or time.perf_counter() - t0 >= seconds:
            _sync(device)
            if time.perf_counter() - t0 >= seconds or n >= 200:
                break
    return n * batch / (time.perf_counter() - t0)


def _weights(arch: str) -> str:
    return "imagenet" if arch == "efficientnet_lite0" else "none"  # the rate does not depend on them


def _model(arch: str, mode: str, device: torch.device, channels_last: bool = True):
    model = create_model(arch, weights=_weights(arch), head=HeadSpec(final="bn"), unfreeze_bn=mode in ("uf_on", "full"))
    if mode == "full":
        model.body.requires_grad_(True)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _images(batch: int, size: int, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    x = torch.randn(batch, 3, size, size, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _train_step(model, x, y, bf16: bool, sync_each: bool = False, fused: bool | None = True):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=fused)

    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sync_each:
            loss.item()

    return step


def _eval_step(model, x, bf16: bool, inference: bool = True):
    def step():
        ctx = torch.inference_mode() if inference else torch.no_grad()
        with ctx, torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            model(x)

    return step


def throughput(arch: str, size: int, device: torch.device, batch: int = 64, seconds: float = 1.5) -> list[dict]:
    """img/s of the four kinds of pass, fp32 and bf16."""
    rows = []
    y = torch.randint(0, 2, (batch,), device=device)
    x = _images(batch, size, device)
    for dtype in ("fp32", "bf16"):
        bf16 = dtype == "bf16"
        row: dict[str, Any] = {"arch": arch, "size": size, "dtype": dtype, "batch": batch}
        model = _model(arch, "uf_off", device).eval()
        row["eval"] = rate(_eval_step(model, x, bf16), batch, device, seconds)
        head = HeadOnFeatures(create_head(model.nf, 2, seed=0)).to(device).train()
        feats = torch.randn(batch, 2 * model.nf, device=device)
        row["head_on_features"] = rate(_train_step(head, feats, y, bf16), batch, device, seconds)
        for mode in ("uf_on", "full"):
            m = _model(arch, mode, device).train()
            row[mode] = rate(_train_step(m, x, y, bf16), batch, device, seconds)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- levers


def _layout_worker(args: tuple) -> float:
    arch, size, threads, seconds, batch = args
    torch.set_num_threads(threads)
    dev = torch.device("cpu")
    model = _model(arch, "uf_on", dev).train()
    x, y = _images(batch, size, dev), torch.randint(0, 2, (batch,))
    return rate(_train_step(model, x, y, False), batch, dev, seconds)


class _Levers(list):
    """Rows (lever, before, after, unit, speedup) of each change against what it replaced."""

    def add(self, lever: str, before: float, after: float, unit: str, higher_is_better: bool = True) -> None:
        ratio = after / before if higher_is_better else before / after
        self.append({"lever": lever, "before": before, "after": after, "unit": unit, "speedup": ratio})


def levers(
    arch: str,
    size: int,
    device: torch.device,
    manifest: Path | None,
    seconds: float = 1.5,
    batch: int = 64,
    augment: AugmentConfig | None = None,
) -> list[dict]:
    """Each change against what it replaced, measured here: (lever, before, after, unit, ratio)."""
    out = _Levers()
    y = torch.randint(0, 2, (batch,), device=device)
    m = _training_levers(out, arch, size, device, y, seconds)
    _copy_levers(out, arch, size, device, m, seconds)
    if device.type == "cpu" and (os.cpu_count() or 1) >= 2:
        one = _layout_worker((arch, size, 2, seconds, batch))
        with mp.get_context("spawn").Pool(2) as pool:
            two = sum(pool.map(_layout_worker, [(arch, size, 1, seconds, batch)] * 2))
        out.add("2 processes x 1 thread (was 1 process x 2 threads), UF-on training", one, two, "img/s total")
    if manifest is not None and manifest.is_file():
        out.add(
            "decode cache: read the split's tensors (was: decode its images)",
            *_decode_vs_cache(manifest, size),
            "s per split",
            higher_is_better=False,
        )
    out.add(
        "DA: one batched pass, per-image draws (was torchvision per image)",
        *_augment_rates(
            augment or AugmentConfig(flip_vertical=True, rotate=10.0, zoom=1.1, lighting=0.2),
            size,
            device,
            batch,
            seconds,
        ),
        "img/s",
    )
    return list(out)


def _augment_rates(
    aug: AugmentConfig, size: int, device: torch.device, batch: int, seconds: float
) -> tuple[float, float]:
    """Augmented images/s: torchvision's transforms image by image, and `augment.BatchAugment`
    (the same draws and pixels) on the whole batch."""
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    per_image, batched = tensors.augment_transform(aug), BatchAugment(aug)
    return (
        rate(lambda: torch.stack([per_image(img) for img in x]), batch, device, seconds),
        rate(lambda: batched(x), batch, device, seconds),
    )


def _training_levers(out: _Levers, arch: str, size: int, device: torch.device, y: torch.Tensor, seconds: float):
    rates, batch = {}, len(y)
    for cl in (False, True):
        m = _model(arch, "uf_on", device, channels_last=cl).train()
        x = _images(batch, size, device, channels_last=cl)
        rates[("uf_on", cl)] = rate(_train_step(m, x, y, False), batch, device, seconds)
        rates[("eval", cl)] = rate(_eval_step(m.eval(), x, False), batch, device, seconds)
    out.add("channels_last, UF-on training", rates[("uf_on", False)], rates[("uf_on", True)], "img/s")
    out.add("channels_last, evaluation", rates[("eval", False)], rates[("eval", True)], "img/s")

    m = _model(arch, "uf_on", device).train()
    x = _images(batch, size, device)
    out.add(
        "no per-step .item() (UF-on training)",
        rate(_train_step(m, x, y, False, sync_each=True), batch, device, seconds),
        rate(_train_step(m, x, y, False), batch, device, seconds),
        "img/s",
    )

    head = HeadOnFeatures(create_head(m.nf, 2, seed=0)).to(device).train()
    feats = torch.randn(batch, 2 * m.nf, device=device)
    out.add(
        "fused AdamW (head on features)",
        rate(_train_step(head, feats, y, False, fused=None), batch, device, seconds),
        rate(_train_step(head, feats, y, False), batch, device, seconds),
        "img/s",
    )
    return m


def _copy_levers(out: _Levers, arch: str, size: int, device: torch.device, m, seconds: float) -> None:
    eb = EVAL_BATCH.get(device.type, 64)
    xs = _images(max(eb, 128), size, device)
    m.eval()
    out.add(
        f"evaluation: inference mode, batch {eb} (was no_grad, batch 128)",
        rate(_eval_step(m, xs[:128], False, inference=False), 128, device, seconds),
        rate(_eval_step(m, xs[:eb], False), eb, device, seconds),
        "img/s",
    )

    frozen = _model(arch, "uf_off", device)
    keep = set(frozen.mutable_state_keys())
    n = 20
    t0 = time.perf_counter()
    for _ in range(n):
        copy.deepcopy(frozen.state_dict())
    full = (time.perf_counter() - t0) / n * 1000
    t0 = time.perf_counter()
    for _ in range(n):
        {k: v.detach().clone() for k, v in frozen.state_dict().items() if k in keep}
    part = (time.perf_counter() - t0) / n * 1000
    out.add(
        "selected-epoch copy: head state only (was the whole model), UF off",
        full,
        part,
        "ms per copy",
        higher_is_better=False,
    )


def _decode_vs_cache(manifest: Path, size: int) -> tuple[float, float]:
    """Seconds to decode one split's images, and to read them from the decode cache."""
    t0 = time.perf_counter()
    decoded = tensors._decode_manifest(str(manifest), size, False, *tensors.decode_settings(manifest))
    decode_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.pt"
        tensors._write_cache(path, decoded)
        t0 = time.perf_counter()
        tensors._read_cache(path, size)
        read_s = time.perf_counter() - t0
    return decode_s, read_s


# ---------------------------------------------------------------- the grid, shared vs not


def grid_comparison(
    cfg: Config, splits: Path, configs: list[int], unshared_configs: list[int], log: Callable[[str], None]
) -> dict:
    """Wall time of UF-off cells through the real grid code (runs kept in memory, `MemoryTracker`:
    the store's cost is `finalbn bench --cells`' `tracking` kind), with shared features and without, on replicate 0; unshared on a subset of the same configs (a head-side
    switch does not change an unshared cell's cost)."""
    out: dict[str, Any] = {
        "replicate": 0,
        "configs_shared": configs,
        "configs_unshared": unshared_configs,
        "epochs": cfg.train.epochs,
    }
    for share, ids in ((True, configs), (False, unshared_configs)):
        c = dataclasses.replace(
            cfg,
            train=dataclasses.replace(cfg.train, share_features=share),
            grid=dataclasses.replace(
                cfg.grid, configs=tuple(ids), replicates=1, headline=dataclasses.replace(cfg.grid.headline, configs=())
            ),
        )
        features.CACHE.clear()
        t0 = time.perf_counter()
        stats = run_shard(c, splits, log=log, tracker=MemoryTracker())
        wall = time.perf_counter() - t0
        label = "shared" if share else "unshared"
        out[label] = {
            "cells": stats["ran"],
            "wall_s": wall,
            "per_cell_s": wall / max(stats["ran"], 1),
            "uf_off_cell_s": stats["seconds"]["uf_off"] / max(stats["cells"]["uf_off"], 1),
        }
        if share:  # cells whose features another cell had computed: head training alone
            warm = [c["seconds"] for c in stats["log"] if c["body_images"] == 0]
            out[label]["warm_cell_s"] = sum(warm) / len(warm) if warm else None
    out["shared_over_unshared"] = out["shared"]["per_cell_s"] / out["unshared"]["per_cell_s"]
    return out


def default_grid_configs() -> tuple[list[int], list[int]]:
    """UF off: the 8 head-side configs (BN x WL x WD) with DA and MX off, and the 8 with DA on —
    the two kinds of share group (features once per split; once per epoch). Unshared: two of each."""
    fixed = [c for c in range(64) if not (ab := ablation_from_id(c)).uf and not ab.da and not ab.mx]
    augmented = [c for c in range(64) if not (ab := ablation_from_id(c)).uf and ab.da and not ab.mx]
    return fixed + augmented, fixed[:2] + augmented[:2]


def grid_configs(chosen: list[int] | None) -> tuple[list[int], list[int]]:
    """(shared, unshared) configs of the grid comparison: `--grid-configs` shared, its first two
    unshared; default_grid_configs() without it. Raises UsageError for an id outside 0..63 or a
    UF-on config (an unfrozen body has no features to share)."""
    if not chosen:
        return default_grid_configs()
    bad = [c for c in chosen if not 0 <= c < 64 or ablation_from_id(c).uf]
    if bad:
        raise UsageError(f"--grid-configs takes UF-off configs in 0..63 (got {bad})")
    return list(chosen), list(chosen[:2])


# ---------------------------------------------------------------- the paper's study, projected


def project_paper(row: dict, head_rate: float, frozen_train_rate: float | None = None) -> dict:
    """Hours of the paper's study for one arch from measured rates (img/s): UF-on cells train the
    body's BN; UF-off cells share the frozen body (frozen-eval) or, with the paper profile's
    fastai semantics (frozen BN in train mode), run it every epoch."""
    p = PAPER
    e, n, nv, nt = p["epochs"], p["train"], p["val"], p["test"]
    groups = p["replicates"] * p["crops"]  # one split per (replicate, crop)
    evals = (e * nv + 2 * nt) / row["eval"]  # validation every epoch, test at the last and selected epochs
    uf_on = 32 * groups * (e * n / row["uf_on"] + evals)
    head = e * n / head_rate + (e * nv + 2 * nt) / (head_rate * 4)
    # share groups per split: (DA, MX) = off/off once per split; the three others once per epoch
    shared = groups * ((n + nv + nt) / row["eval"] + 3 * (e * n + nv + nt) / row["eval"] + 32 * head)
    fwd = frozen_train_rate or row["eval"]
    unshared = 32 * groups * (e * n / fwd + evals)
    cells = p["configs"] * groups
    return {
        "cells": cells,
        "uf_on_h": uf_on / 3600,
        "uf_off_shared_h": shared / 3600,
        "uf_off_unshared_h": unshared / 3600,
        "total_shared_h": (uf_on + shared) / 3600,
        "total_paper_profile_h": (uf_on + unshared) / 3600,
    }


# ---------------------------------------------------------------- the command


def run(
    cfg: Config,
    splits: Path,
    device: torch.device,
    archs: list[str],
    sizes: list[int],
    with_grid: bool,
    seconds: float,
    log: Callable[[str], None] = print,
    configs: list[int] | None = None,
    batch: int = 64,
) -> dict:
    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "throughput": [],
        "levers": [],
        "grid": None,
        "projection": None,
    }
    for arch in archs:
        for size in sizes:
            for row in throughput(arch, size, device, batch=batch, seconds=seconds):
                result["throughput"].append(row)
                log(
                    f"  {arch:18s} {size:4d} px {row['dtype']}: eval {row['eval']:8.0f}  head on features "
                    f"{row['head_on_features']:8.0f}  UF-on train {row['uf_on']:7.0f}  full fine-tune {row['full']:7.0f} img/s"
                )
    ds = cfg.datasets[0]
    manifest = splits / ds.name / "0" / "manifest.csv"
    result["levers"] = levers(
        archs[0], sizes[0], device, manifest if manifest.is_file() else None, seconds, batch, cfg.train.augment
    )
    for lv in result["levers"]:
        log(f"  lever: {lv['lever']}: {lv['before']:.3g} -> {lv['after']:.3g} {lv['unit']} ({lv['speedup']:.2f}x)")
    if with_grid:
        if not manifest.is_file():
            log(f"  grid: skipped ({manifest} does not exist: run `finalbn prepare` or `dvc repro prepare` first)")
        else:
            shared, unshared = grid_configs(configs)
            g = grid_comparison(cfg, splits, shared, unshared, log=lambda m: None)
            result["grid"] = g
            log(
                f"  grid (UF off, replicate 0, {len(shared)} configs shared / {len(unshared)} unshared, "
                f"{g['epochs']} epochs): {g['shared']['per_cell_s']:.1f} s per cell shared vs "
                f"{g['unshared']['per_cell_s']:.1f} s unshared = {g['shared_over_unshared']:.3f} of the time"
            )
            if g["shared"].get("warm_cell_s"):
                log(
                    f"  grid: a shared cell whose features were already computed (head training, untracked, "
                    f"the floor sharing cannot remove): {g['shared']['warm_cell_s']:.1f} s"
                )
    if device.type == "cuda":
        result["projection"] = {}
        for row in result["throughput"]:
            if row["dtype"] == "bf16" and row["size"] == 224:
                p = project_paper(row, row["head_on_features"])
                result["projection"][row["arch"]] = p
                log(
                    f"  paper study, {row['arch']} (bf16): {p['cells']} cells, {p['total_shared_h']:.2f} h "
                    f"with shared features (UF on {p['uf_on_h']:.2f} h), {p['total_paper_profile_h']:.2f} h "
                    f"with the paper profile's frozen BN in train mode (not shareable)"
                )
    return result


def main(cfg: Config, args: argparse.Namespace) -> int:
    """`finalbn bench`: checks the arguments before any measurement, then results/bench.json."""
    # every cell pays for its body: features another process kept on disk would make a first cell warm
    os.environ["FINALBN_FEATURE_CACHE"] = "off"
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:  # --device cuda on a machine without one
        raise UsageError(str(exc).replace("train.device=cuda", "--device cuda")) from None
    if args.seconds <= 0:
        raise UsageError(f"--seconds must be > 0 (got {args.seconds})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # an unwritable output fails before any work
    cuda = device.type == "cuda"
    archs = args.archs or (
        ["efficientnet_lite0", "resnet34", "vgg19_bn"]
        if cuda
        else [cfg.model.arch]
        if args.cells
        else ["efficientnet_lite0", "resnet18"]
    )
    sizes = args.sizes or ([224] if cuda else [cfg.datasets[0].image_size])
    args.archs = archs
    if any(s < 32 for s in sizes):
        raise UsageError(f"--sizes must be >= 32 (got {sizes})")
    for a in archs:
        try:
            get_spec(a)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    grid_configs(args.grid_configs)
    if args.batch < 2:
        raise UsageError(f"--batch must be >= 2 (training batch norm needs two images; got {args.batch})")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if args.cells:
        return _cells(cfg, args, device, out)
    print(
        f"bench on {device} ({os.cpu_count()} CPUs): {', '.join(archs)} at {', '.join(map(str, sizes))} px", flush=True
    )
    result = run(
        cfg,
        Path(args.splits),
        device,
        archs,
        sizes,
        with_grid=not args.no_grid,
        seconds=args.seconds,
        log=lambda m: print(m, flush=True),
        configs=args.grid_configs,
        batch=args.batch,
    )
    io.write_json(out, result)
    print(f"bench -> {out}")
    return 0


def _cells(cfg: Config, args: argparse.Namespace, device: torch.device, out: Path) -> int:
    """`finalbn bench --cells` (`bench_cells`): one size, the archs asked for; results/bench.json."""
    tracking.detach_project_run()  # its `tracking` kind makes MLflow runs: never the project run's (mlflow run)
    splits = Path(args.splits)
    manifest = splits / cfg.datasets[0].name / "0" / "manifest.csv"
    if not manifest.is_file():
        raise UsageError(
            f"--cells trains real cells on replicate 0: {manifest} does not exist (run `finalbn prepare` "
            "or `dvc repro prepare` first)"
        )
    size = args.sizes[0] if args.sizes else (224 if device.type == "cuda" else cfg.datasets[0].image_size)
    print(
        f"bench --cells on {device} ({os.cpu_count()} CPUs): {', '.join(args.archs)} at {size} px, "
        f"{cfg.train.epochs} epochs",
        flush=True,
    )
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "cells": cells.run(cfg, splits, device, args.archs, size, log=lambda m: print(m, flush=True)),
    }
    io.write_json(out, result)
    print(f"bench -> {out}")
    return 0
