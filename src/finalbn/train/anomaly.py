"""The anomaly baseline as a cell: PatchCore fitted on the training split's healthy images only.

    scored = fit_and_score(body, tensors, cfg.anomaly, spec, device, seed)   # test/val P(minority)

What many inspection practitioners reach for first: no labelled defect is needed to fit it (Roth et
al., "Towards total recall in industrial anomaly detection", CVPR 2022; `finalbn.models.patchcore`).
Its scores become P(minority) by Platt scaling on validation (class-balanced), so the argmax is a cut
validation chose and AUROC is the scores'. Where validation ranks the diseased images below the
healthy ones on average (an increasing Platt map does not exist), the map falls back to the logistic
of the score standardised on validation and centred midway between the two classes' mean scores:
still increasing (AUROC unchanged), its argmax a cut validation placed; `platt` says which ran.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import expit

from finalbn.config.schema import AnomalyConfig
from finalbn.data.tensors import EvalBatches, SplitTensors, Stats
from finalbn.models.patchcore import PatchCore, to_probability


@dataclass
class Scored:
    """A fitted PatchCore's outputs: test and validation labels and (N, 2) probabilities, the bank's
    size, the healthy training images it saw, the seconds fit and scoring took, whether Platt ran."""

    model: PatchCore
    labels: np.ndarray
    probs: np.ndarray
    val_labels: np.ndarray
    val_probs: np.ndarray
    bank: int
    healthy: int
    seconds: float
    platt: bool


def probabilities(val_labels: np.ndarray, val_scores: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, bool]:
    """(N, 2) P of `scores` from validation (`to_probability`), or the fallback of the module
    docstring; and whether Platt scaling ran. Raises ValueError when validation lacks a class."""
    try:
        return to_probability(val_labels, val_scores, scores), True
    except ValueError as exc:
        if "rank the minority below" not in str(exc):
            raise
    y, s = np.asarray(val_labels), np.asarray(val_scores, dtype=np.float64)
    mid = 0.5 * (s[y == 0].mean() + s[y == 1].mean())
    p1 = expit((np.asarray(scores, dtype=np.float64) - mid) / max(float(s.std()), 1e-12))
    return np.stack([1 - p1, p1], axis=1), False


def fit_and_score(
    body: torch.nn.Module,
    tensors: dict[str, SplitTensors],
    cfg: AnomalyConfig,
    mean: Stats,
    std: Stats,
    device: str,
    seed: int,
) -> Scored:
    """PatchCore on `body` fitted on the healthy images of `tensors["train"]`, scoring validation and test."""
    t0 = time.perf_counter()
    pc = PatchCore(body, dim=cfg.dim, coreset=cfg.coreset, max_bank=cfg.max_bank, seed=seed).to(device)
    pc.fit(EvalBatches(tensors["train"], mean, std, device=device))
    val_labels, val_scores = pc.score(EvalBatches(tensors["val"], mean, std, device=device))
    labels, scores = pc.score(EvalBatches(tensors["test"], mean, std, device=device))
    probs, platt = probabilities(val_labels, val_scores, scores)
    val_probs, _ = probabilities(val_labels, val_scores, val_scores)
    healthy = int((tensors["train"].labels == 0).sum())
    return Scored(
        pc, labels, probs, val_labels, val_probs, int(pc.bank.shape[0]), healthy, time.perf_counter() - t0, platt
    )
