"""One training cell = (dataset, replicate, configuration of the six toggles): data -> model -> fit -> test.

    result = run_cell(cfg, "synthetic-apple", splits_dir=Path("data/splits"), replicate=0)
    result.test_last["f1_1"], result.test_last["auroc"]

A replicate is one split draw (`<splits_dir>/<dataset>/<replicate>/manifest.csv`) and trains with
seed `train.seed + replicate`. The primary numbers are the last epoch's (`test_last`); those at
the epoch selected on validation AUROC are `test_sel`. Configuration ids and names (`config_id`,
`config_name`) follow the paper; see `finalbn.config`. Knows nothing of MLflow or Optuna:
callbacks reach `engine.fit`.

Two paths, the same numbers (to float rounding): with UF off and `train.share_features` on, the
head trains on the frozen body's features shared with every cell that sees the same images in
the same batches (`finalbn.train.features`); otherwise (UF on, or --no-share) the whole network runs
every step. Order, augmentation, MixUp, head init and dropout draw from their
own seeded streams (`finalbn.config.seeds`), so neither path nor the order of cells changes a draw.
`run_cell` is `prepare_cell` (data, seed, plan, settings), `cell_inputs` (the network and its
data), `engine.fit` and `finish_cell` (evaluation, the CellResult); `finalbn.train.stacked` runs
the same parts around one training loop for several head-only cells.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight

from finalbn.config import Config, DatasetConfig, cell_seed, config_id, config_name, final_layer
from finalbn.data.splits import split_dir
from finalbn.data.tensors import EvalBatches, SplitTensors, TrainPlan, load_splits
from finalbn.models import FinalBNNet, HeadOnFeatures, HeadSpec, WeightsError, create_head, create_model, get_spec
from finalbn.stats import metrics
from finalbn.train import anomaly, features, posthoc, trained
from finalbn.train.engine import Callback, FitResult, FitSettings, balanced_loss, fit, predict, resolve_device
from finalbn_field import decision


def weights_path(cfg: Config) -> str:
    """`model.weights`, with `synthetic` resolved to the pretrain stage's file."""
    if cfg.model.weights != "synthetic":
        return cfg.model.weights
    path = Path(cfg.pretrain.out_dir) / f"{cfg.model.arch}.pt"
    if not path.is_file():
        raise WeightsError(
            f"model.weights=synthetic but {path} does not exist: run `finalbn pretrain` "
            f"(or `dvc repro pretrain`) first, or set model.weights=imagenet|none|<file.pt>"
        )
    return str(path)


def preflight(cfg: Config, dataset: str, splits_dir: Path, replicates: int = 1) -> None:
    """Fail before any run starts: the splits exist and `model.weights` resolves to something."""
    for r in range(replicates):
        manifest = split_dir(splits_dir, cfg.dataset(dataset).name, r) / "manifest.csv"
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{manifest} does not exist: run `finalbn prepare` (or `dvc repro`) first"
                f"{' with grid.replicates covering ' + str(r) if r else ''}"
            )
    try:
        get_spec(cfg.model.arch)
    except ValueError as exc:
        raise WeightsError(str(exc)) from None
    w = weights_path(cfg)
    if w not in ("imagenet", "none") and not Path(w).is_file():
        raise WeightsError(f"weights file {w} does not exist (model.weights: imagenet | none | synthetic | <file.pt>)")


def build_model(cfg: Config, num_classes: int = 2, seed: int | None = None) -> FinalBNNet:
    """The cell's network; with `seed`, a random body (`model.weights: none`) and the head draw
    from that seed's streams, as the shared path's do."""
    m, ab = cfg.model, cfg.ablation
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.default_generator.manual_seed(seed)
        return create_model(
            m.arch,
            weights=weights_path(cfg),
            head=HeadSpec.of(m, final_layer(m, ab)),
            num_classes=num_classes,
            unfreeze_bn=ab.uf,
            frozen_bn=m.frozen_bn,
            head_seed=seed,
        )


def build_head(cfg: Config, nf: int, num_classes: int = 2, seed: int | None = None) -> HeadOnFeatures:
    """The head of `build_model` alone, fed pooled body features (the shared path)."""
    m, ab = cfg.model, cfg.ablation
    final = final_layer(m, ab)
    return HeadOnFeatures(create_head(nf, num_classes, HeadSpec.of(m, final), seed=seed), final)


def shares_body(cfg: Config) -> bool:
    """Whether the cell's body is frozen (UF off) and sharing is on: then its features are a
    function of the plan's images alone (body in eval mode) or of its batch sequence (fastai's
    frozen BN in train mode), the same for every head-side configuration, and are computed once."""
    return cfg.train.share_features and not cfg.ablation.uf


def class_weights(labels: np.ndarray) -> tuple[float, ...]:
    """WL: scikit-learn's 'balanced' weights n / (k * count_c) from the training counts."""
    classes = np.unique(labels)
    return tuple(float(w) for w in compute_class_weight("balanced", classes=classes, y=labels))


def class_balanced_weights(labels: np.ndarray, beta: float) -> tuple[float, ...]:
    """Cui et al. (2019): weights (1 - beta) / (1 - beta^n_c) from each class's effective number
    of samples, scaled to sum to the number of classes."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    w = (1.0 - beta) / (1.0 - np.power(beta, counts.astype(np.float64)))
    return tuple(float(x) for x in w * len(w) / w.sum())


def fit_settings(
    cfg: Config, train_labels: np.ndarray, device: str = "cpu", progress: bool = False, seed: int | None = None
) -> FitSettings:
    """What the head-side toggles mean for the loop: WL -> class weights, WD -> decay. (DA and MX
    change the inputs: `train_plan`.)"""
    tc, ab = cfg.train, cfg.ablation
    weights = class_weights(train_labels) if ab.wl else None
    if tc.loss == "class_balanced":  # its own weights replace WL's
        weights = class_balanced_weights(train_labels, tc.cb_beta)
    if tc.loss == "ldam_drw":  # its deferred re-weighting brings its own (engine.loss_inputs)
        weights = None
    return FitSettings(
        epochs=tc.epochs,
        lr=tc.lr,
        weight_decay=tc.weight_decay if ab.wd else 0.0,
        class_weights=weights,
        loss=tc.loss,
        focal_gamma=tc.focal_gamma,
        label_smoothing=tc.label_smoothing,
        device=device,
        progress=progress,
        body_lr_ratio=tc.body_lr_ratio,
        wd_on_bn=tc.wd_on_bn,
        train_counts=train_counts(train_labels),
        prior_metrics=prior_rule_valid(cfg),
        seed=seed,
        ldam_scale=tc.ldam_scale,
        ldam_max_margin=tc.ldam_max_margin,
        drw_start=tc.drw_start,
    )


def train_plan(cfg: Config, train: SplitTensors, seed: int, device: str = "cpu") -> TrainPlan:
    """What the body sees in training: DA -> augmentation, MX -> MixUp, from the seed's streams."""
    tc, ab = cfg.train, cfg.ablation
    spec = get_spec(cfg.model.arch)
    return TrainPlan(
        train,
        tc.batch_size,
        seed,
        augment=tc.augment if ab.da else None,
        mixup_alpha=tc.mixup_alpha if ab.mx else None,
        sampler=tc.sampler,
        num_classes=2,
        mean=spec.mean,
        std=spec.std,
        device=device,
    )


def train_counts(labels: np.ndarray) -> tuple[int, int]:
    """(n_majority, n_minority) of the training split: the prior that prior correction removes."""
    c = np.bincount(np.asarray(labels, dtype=np.int64), minlength=2)
    return int(c[0]), int(c[1])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@dataclass
class CellResult:
    """What one cell computed: metrics (last epoch = primary, selected epoch, validation), per-image
    test predictions, reliability bins, the trained network and how it ran."""

    dataset: str
    replicate: int
    manifest_sha256: str
    config_id: int
    config_name: str
    fit: FitResult
    test_last: dict[str, float]  # primary: the last epoch (the paper's protocol)
    test_sel: dict[str, float]  # the epoch selected on validation AUROC
    val_last: dict[str, float]
    predictions: list[dict[str, Any]]  # per test image: path, source class, label, P(minority) last / selected
    val_predictions: list[dict[str, Any]]  # per validation image: path, label, P(minority) at the last epoch
    reliability_last: dict[str, list]
    reliability_sel: dict[str, list]
    confusion_last: list[list[int]]
    class_weights: tuple[float, ...] | None
    bn_policy: str
    device: str
    model: torch.nn.Module  # the whole network at the last epoch (shared path: the shared body + this head)
    labels: np.ndarray  # (N_test,) 0/1
    probs_last: np.ndarray  # (N_test, 2) softmax at the last epoch (temperature-scaled when calibrated)
    probs_sel: np.ndarray  # (N_test, 2) at the selected epoch
    train_size: int
    train_counts: tuple[int, int]  # (n_majority, n_minority) of the training split
    seed: int
    features: str  # "shared" (head on the frozen body's shared features) or "unshared"
    temperature: float | None = None  # fitted on validation (train.calibration: temperature)
    body_images: int | None = None  # images this cell passed through the body itself (0: another cell had)
    posthoc: dict[str, float] = dataclasses.field(default_factory=dict)  # train.posthoc's fitted values

    def metrics(self) -> dict[str, float]:
        """The cell's numbers by the names its run records and every stage reads: `test_*` (last
        epoch, primary), `test_sel_*` (the epoch selected on validation), `val_last_*`, `val_sel_*`,
        `temperature` (if calibrated), `selected_epoch`, `train_seconds`, `train_images_per_second`.
        Named here, with the code that computes them, so that a cell's key (`keys`) covers them."""
        sel = self.fit.history[self.fit.selected_epoch - 1]
        return {
            **{f"test_{k}": v for k, v in self.test_last.items()},
            **{f"test_sel_{k}": v for k, v in self.test_sel.items()},
            **{f"val_last_{k}": v for k, v in self.val_last.items()},
            **{f"val_sel_{k[4:]}": v for k, v in sel.items() if k.startswith("val_")},
            **({"temperature": self.temperature} if self.temperature is not None else {}),
            **{f"posthoc_{k}": v for k, v in self.posthoc.items()},
            "selected_epoch": self.fit.selected_epoch,
            "train_seconds": self.fit.train_seconds,
            "train_images_per_second": self.fit.train_images / max(self.fit.train_seconds, 1e-9),
        }


def per_source_recall(labels: np.ndarray, preds: np.ndarray, sources: Sequence[str]) -> dict[str, float]:
    """Recall of each minority source class (disease kind) of the test split."""
    out = {}
    src = np.asarray(sources)
    for s in sorted(set(src[labels == 1].tolist())):
        mask = (labels == 1) & (src == s)
        out[s] = float((preds[mask] == 1).mean())
    return out


@dataclass
class CellInputs:
    """How a cell's network meets its data: the network to train, its training source, and the
    validation and test batches at a given epoch (the shared path's depend on the epoch)."""

    model: torch.nn.Module
    train: Any
    val_of: Callable[[int], Any]
    test_of: Callable[[int], Any]
    shared: features.SharedFeatures | None = None
    body_key: features.BodyKey | None = None
    images_before: int = 0
    train_eval: Callable[[], Any] | None = None  # the training split in order, eval mode (post-hoc fits)


def share_key(setup: CellSetup) -> tuple[tuple, features.BodyKey]:
    """(share key, body key) of a UF-off cell: its features are those of every cell with the same
    share key — the same manifest, image size, body, seed, batch size, augmentation, MixUp and sampler
    (`features.CACHE`); the body key fixes the frozen body as a function."""
    cfg, plan, device = setup.cfg, setup.plan, setup.device
    w = weights_path(cfg)
    # bf16 on CUDA, as the engine's autocast runs the whole network there
    body_key = features.BodyKey(
        cfg.model.arch,
        w,
        setup.seed if w == "none" else None,
        str(device),
        bf16=device.type == "cuda",
        bn_train=cfg.model.frozen_bn == "train",
    )
    key = (
        str((setup.where / "manifest.csv").resolve()),
        setup.manifest_hash,
        setup.ds.image_size,
        body_key,
        setup.seed,
        cfg.train.batch_size,
        plan.augment,
        plan.mixup_alpha,
        plan.sampler,  # the batches the shared features are served in
    )
    return key, body_key


def _shared_inputs(setup: CellSetup) -> CellInputs:
    """UF off: a head on the frozen body's features, computed once for every cell that shares them."""
    key, body_key = share_key(setup)
    source = features.source_of(setup.where / "manifest.csv", setup.ds.image_size)
    shared = features.CACHE.get(key, setup.plan, setup.tensors, body_key, source)
    images_before = shared.body_images
    head = build_head(setup.cfg, shared.body.nf, seed=setup.seed)
    return CellInputs(
        head, shared.train, shared.val_at, shared.test_at, shared, body_key, images_before, shared.train_eval
    )


def _whole_inputs(setup: CellSetup) -> CellInputs:
    """UF on (or --no-share): the whole network runs every step."""
    spec = get_spec(setup.cfg.model.arch)
    model = build_model(setup.cfg, seed=setup.seed)
    device, tensors = str(setup.device), setup.tensors
    val_b = EvalBatches(tensors["val"], spec.mean, spec.std, device=device)
    test_b = EvalBatches(tensors["test"], spec.mean, spec.std, device=device)
    train_b = EvalBatches(tensors["train"], spec.mean, spec.std, device=device)
    return CellInputs(
        model, setup.plan.inputs, (lambda epoch: val_b), (lambda epoch: test_b), train_eval=lambda: train_b
    )


def cell_inputs(setup: CellSetup) -> CellInputs:
    """The network a cell trains and its data: a head on shared features (`shares_body`), else
    the whole network on images."""
    return _shared_inputs(setup) if shares_body(setup.cfg) else _whole_inputs(setup)


@dataclass
class _Evaluation:
    labels: np.ndarray
    probs_last: np.ndarray
    probs_sel: np.ndarray
    val_labels: np.ndarray
    val_last: np.ndarray
    temperature: float | None
    posthoc: dict[str, float] = dataclasses.field(default_factory=dict)


def _evaluate(setup: CellSetup, inputs: CellInputs, fitted: FitResult) -> _Evaluation:
    """Test and validation predictions at the last and the selected epoch (temperature-scaled when
    `train.calibration` says so, through `train.posthoc`'s method when set, each fitted at its
    epoch); the model is left at its last epoch, as trained."""
    model, tc, device = inputs.model, setup.cfg.train, setup.device
    last, sel = tc.epochs, fitted.selected_epoch
    labels, probs_last = predict(model, inputs.test_of(last), device)
    val_labels, val_last = predict(model, inputs.val_of(last), device)
    last_state = {k: v.clone() for k, v in model.state_dict().items() if k in fitted.selected_state}
    model.load_state_dict(fitted.selected_state, strict=False)
    # the selected epoch is the last: the same state on the same batches (the same numbers, a pass less)
    same = sel == last and all(torch.equal(last_state[k], v) for k, v in fitted.selected_state.items())
    probs_sel = probs_last.copy() if same else predict(model, inputs.test_of(sel), device)[1]
    fitted_values: dict[str, float] = {}
    if tc.posthoc != "none":
        probs_sel = probs_last.copy() if same else posthoc.cell_outputs(setup, model, inputs, sel)[0]
        model.load_state_dict(last_state, strict=False)
        probs_last, val_last, fitted_values = posthoc.cell_outputs(setup, model, inputs, last)
        probs_sel = probs_last.copy() if same else probs_sel
        model.load_state_dict(fitted.selected_state, strict=False)
    temperature = None
    if tc.calibration == "temperature":  # fitted on validation at each evaluated epoch; argmax unchanged
        _, val_sel = predict(model, inputs.val_of(sel), device)
        t_sel = metrics.fit_temperature(val_labels, val_sel)
        probs_sel = metrics.apply_temperature(probs_sel, t_sel)
        temperature = metrics.fit_temperature(val_labels, val_last)
        probs_last = metrics.apply_temperature(probs_last, temperature)
        val_last = metrics.apply_temperature(val_last, temperature)
    model.load_state_dict(last_state, strict=False)
    return _Evaluation(labels, probs_last, probs_sel, val_labels, val_last, temperature, fitted_values)


def _whole_network(cfg: Config, model: torch.nn.Module, inputs: CellInputs) -> torch.nn.Module:
    """The network for logging or export: on the shared path, a copy of the shared body + this head."""
    if inputs.shared is None:
        return model
    assert inputs.body_key is not None  # _shared_inputs sets it with `shared`
    policy = "frozen-train (fastai)" if inputs.body_key.bn_train else "frozen-eval"
    return FinalBNNet(
        copy.deepcopy(inputs.shared.body.body),
        model.head,
        bn_policy=policy,
        arch=cfg.model.arch,
        nf=inputs.shared.body.nf,
        final=model.final,
        weights=weights_path(cfg),
    )


@dataclass
class CellSetup:
    """A cell before training: its config, dataset, split folder and replicate, the split's
    tensors and manifest hash, its seed, training plan and fit settings, the device."""

    cfg: Config
    ds: DatasetConfig
    where: Path
    replicate: int
    tensors: dict[str, SplitTensors]
    manifest_hash: str
    seed: int
    plan: TrainPlan
    settings: FitSettings
    train_labels: np.ndarray
    device: torch.device


def prepare_cell(
    cfg: Config, dataset: str | DatasetConfig, splits_dir: Path, progress: bool = False, replicate: int = 0
) -> CellSetup:
    """Everything a cell needs before its network is built (`run_cell`'s first half). Raises
    FileNotFoundError for a missing split."""
    ds = cfg.dataset(dataset) if isinstance(dataset, str) else dataset
    where = split_dir(splits_dir, ds.name, replicate)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    tensors = load_splits(where / "manifest.csv", ds.image_size)
    manifest_hash = json.loads((where / "split.json").read_text())["manifest_sha256"]
    seed = cell_seed(cfg, replicate)
    seed_everything(seed)
    plan = train_plan(cfg, tensors["train"], seed, str(device))
    train_labels = tensors["train"].labels.numpy()
    settings = fit_settings(cfg, train_labels, str(device), progress, seed=seed)
    return CellSetup(cfg, ds, where, replicate, tensors, manifest_hash, seed, plan, settings, train_labels, device)


def finish_cell(setup: CellSetup, inputs: CellInputs, fitted: FitResult) -> CellResult:
    """A trained cell evaluated on test (last and selected epoch) and validation: its CellResult."""
    ev = _evaluate(setup, inputs, fitted)
    model = _whole_network(setup.cfg, inputs.model, inputs)
    return _result(setup, fitted, ev, model, inputs)


def run_cell(
    cfg: Config,
    dataset: str | DatasetConfig,
    splits_dir: Path,
    callbacks: Sequence[Callback] = (),
    progress: bool = False,
    replicate: int = 0,
) -> CellResult:
    """Train one cell on `<splits_dir>/<dataset>/<replicate>/manifest.csv`; evaluate it on test.
    Raises FileNotFoundError for a missing split, engine.TrainingDiverged when the loss turns NaN."""
    setup = prepare_cell(cfg, dataset, splits_dir, progress, replicate)
    if cfg.train.detector == "patchcore":
        return anomaly_cell(setup)
    inputs = cell_inputs(setup)
    identity = trained.training_identity(setup, share_key(setup)[0]) if inputs.shared is not None else None
    fitted = trained.HEADS.fit_or_reuse(
        identity,
        inputs.model,
        callbacks,
        lambda: fit(inputs.model, inputs.train, inputs.val_of, setup.settings, callbacks),
        reuse=trained.after_training(cfg),
    )
    return finish_cell(setup, inputs, fitted)


def anomaly_cell(setup: CellSetup) -> CellResult:
    """`train.detector: patchcore`: the healthy-only anomaly baseline (`finalbn.train.anomaly`) on the
    cell's frozen body, as a CellResult (one "epoch": its validation row; `posthoc_bank` its memory
    bank's patches, `posthoc_platt` 1 where Platt scaling mapped its scores)."""
    cfg = setup.cfg
    spec = get_spec(cfg.model.arch)
    body = build_model(cfg, seed=setup.seed).body
    s = anomaly.fit_and_score(body, setup.tensors, cfg.anomaly, spec.mean, spec.std, str(setup.device), setup.seed)
    row = {
        "val_auroc": metrics.auroc(s.val_labels, s.val_probs),
        "val_ap": metrics.average_precision(s.val_labels, s.val_probs),
        "val_minority_f1": metrics.minority_f1(s.val_labels, s.val_probs.argmax(1)),
        "val_balanced_loss": balanced_loss(s.val_labels, s.val_probs),
    }
    fitted = FitResult([row], 1, {}, s.seconds, s.healthy)
    values = {"bank": float(s.bank), "platt": float(s.platt)}
    ev = _Evaluation(s.labels, s.probs, s.probs.copy(), s.val_labels, s.val_probs, None, values)
    setattr(s.model, "bn_policy", "frozen-eval")  # noqa: B010  (what a cell's record names: the body's BN mode)
    return _result(setup, fitted, ev, s.model, CellInputs(s.model, None, lambda e: None, lambda e: None))


def prior_rule_valid(cfg: Config) -> bool:
    """Whether the training-count prior correction is valid for the cell's model
    (`decision.prior_rule_applies`): only then are the `*_pc` metrics computed (never for PatchCore,
    whose scores carry no training prior)."""
    if cfg.train.detector == "patchcore":
        return False
    return decision.prior_rule_applies(final_layer(cfg.model, cfg.ablation), cfg.ablation.wl, cfg.train.loss)[0]


def validation_threshold_f1(val_labels: np.ndarray, val_p1: np.ndarray, labels: np.ndarray, p1: np.ndarray) -> float:
    """Test minority F1 at the cut chosen on this cell's validation predictions for the test
    set's own prevalence (`decision.at_prevalence`); NaN when a split lacks a class."""
    prevalence = float(np.mean(labels))
    if not 0 < prevalence < 1 or len(np.unique(val_labels)) < 2:
        return float("nan")
    cut = decision.at_prevalence(decision.operating_curve(val_labels, val_p1), prevalence)["threshold"]
    flagged = p1 >= cut
    tp = float(np.sum(flagged & (labels == 1)))
    return 2 * tp / (float(np.sum(flagged)) + float(np.sum(labels == 1)))


def _result(
    setup: CellSetup, fitted: FitResult, ev: _Evaluation, model: torch.nn.Module, inputs: CellInputs
) -> CellResult:
    cfg, tensors, train_labels, settings = setup.cfg, setup.tensors, setup.train_labels, setup.settings
    counts = train_counts(train_labels)
    test, val = tensors["test"], tensors["val"]
    pc_counts = counts if prior_rule_valid(cfg) else None
    labels, probs_last, probs_sel = ev.labels, ev.probs_last, ev.probs_sel
    sources = test.sources or ("",) * len(labels)
    preds = [
        {"path": p, "source_class": s, "label": int(y), "p1_last": float(a[1]), "p1_sel": float(b[1])}
        for p, s, y, a, b in zip(test.paths, sources, labels, probs_last, probs_sel)
    ]
    val_preds = [
        {"path": p, "label": int(y), "p1_last": float(a[1])} for p, y, a in zip(val.paths, ev.val_labels, ev.val_last)
    ]
    test_last = metrics.classification_report(labels, probs_last, train_counts=pc_counts)
    test_last["f1_1_vt"] = validation_threshold_f1(ev.val_labels, ev.val_last[:, 1], labels, probs_last[:, 1])
    test_last.update({f"recall_1__{k}": v for k, v in per_source_recall(labels, probs_last.argmax(1), sources).items()})
    val_last = metrics.classification_report(ev.val_labels, ev.val_last, train_counts=pc_counts)
    val_last["balanced_loss"] = balanced_loss(ev.val_labels, ev.val_last)
    shared = inputs.shared
    return CellResult(
        dataset=setup.ds.name,
        replicate=setup.replicate,
        manifest_sha256=setup.manifest_hash,
        config_id=config_id(cfg.ablation),
        config_name=config_name(cfg.ablation),
        fit=fitted,
        test_last=test_last,
        test_sel=metrics.classification_report(labels, probs_sel, train_counts=pc_counts),
        val_last=val_last,
        predictions=preds,
        val_predictions=val_preds,
        reliability_last=metrics.reliability_bins(labels, probs_last),
        reliability_sel=metrics.reliability_bins(labels, probs_sel),
        confusion_last=metrics.confusion(labels, probs_last.argmax(1)).tolist(),
        class_weights=settings.class_weights,
        bn_policy=model.bn_policy,
        device=str(setup.device),
        model=model,
        labels=labels,
        probs_last=probs_last,
        probs_sel=probs_sel,
        train_size=len(train_labels),
        train_counts=counts,
        seed=setup.seed,
        features="shared" if shared is not None else "unshared",
        temperature=ev.temperature,
        posthoc=ev.posthoc,
        body_images=(shared.body_images - inputs.images_before) if shared is not None else None,
    )
