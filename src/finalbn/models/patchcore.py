"""PatchCore: anomaly detection from a frozen ImageNet body and a memory bank of healthy patches.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022, kept small. A
baseline that never trains a head: it stores locally aware patch features of the healthy (class 0)
training images, subsampled by a greedy k-center coreset, and scores an image by how far its most
unusual patch lies from the bank. Used as::

    body = create_model("efficientnet_lite0", weights="imagenet").body
    model = PatchCore(body, dim=256, coreset=0.1, max_bank=20_000, seed=0).fit(train_batches)
    labels, scores = model.score(test_batches)                 # (N,), (N,): higher = more anomalous
    probs = to_probability(val_labels, val_scores, scores)     # (N, 2): argmax = a validation-chosen cut

    find_stages      the body's last modules at stride 8 and 16 (ResNet layer2/layer3), found by probing
    StageTaps        their feature maps, the body in eval mode under torch.inference_mode
    patch_features   3x3 local averaging, upsample, concatenate, channel pooling: (B, P, D)
    greedy_coreset   the paper's Algorithm 1 on a seeded random projection
    nearest_distances  distance of each patch to its nearest bank patch, in bounded chunks
    PatchCore        fit (bank from class 0 only) and score (image score = max patch score)
    to_probability   class-balanced Platt scaling of scores fitted on validation
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

DEFAULT_STRIDES = (8, 16)  # ResNet layer2 / layer3, the paper's mid-level hierarchies
MAX_ELEMENTS = 2**24  # one cdist block at most: 2**24 float32 distances = 64 MiB


def _modules_stride(body: nn.Module, probe_size: int, in_chans: int) -> dict[str, tuple[float, float, int]]:
    """name -> (input stride, output stride, completion order) for every non-root module that
    maps a 4-D tensor to a 4-D tensor in one probe forward pass (its first call counts)."""
    seen: dict[str, tuple[float, float, int]] = {}
    handles = []

    def hook(name: str):
        def record(_module: nn.Module, inputs: tuple, output: object) -> None:
            x = inputs[0] if inputs else None
            if name in seen or not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
                return
            if x.ndim == 4 and output.ndim == 4:
                seen[name] = (probe_size / x.shape[-2], probe_size / output.shape[-2], len(seen))

        return record

    for name, module in body.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    device = next((p.device for p in body.parameters()), torch.device("cpu"))
    was_training = body.training
    try:
        body.eval()
        with torch.inference_mode():
            body(torch.zeros(1, in_chans, probe_size, probe_size, device=device))
    finally:
        for h in handles:
            h.remove()
        body.train(was_training)
    return seen


def _chain(module: nn.Module, prefix: str, seen: dict, strides: Sequence[int]) -> list[str]:
    """The modules that run one after the other, in order: a Sequential child inside which a wanted
    stride is reached (not at its output) is opened up, e.g. timm's `blocks` -> its 7 stages."""
    out: list[str] = []
    children = [(prefix + n, c) for n, c in module.named_children() if prefix + n in seen]
    for name, child in sorted(children, key=lambda nc: seen[nc[0]][2]):
        s_in, s_out, _ = seen[name]
        if isinstance(child, nn.Sequential) and any(s_in < s < s_out for s in strides):
            out += _chain(child, name + ".", seen, strides)
        else:
            out.append(name)
    return out


def find_stages(
    body: nn.Module, strides: Sequence[int] = DEFAULT_STRIDES, *, probe_size: int = 64, in_chans: int = 3
) -> tuple[str, ...]:
    """The names (as in `body.named_modules()`) of the body's last modules whose output is at each
    stride, found by one forward pass of a (1, in_chans, probe_size, probe_size) probe with hooks.

    The body's children are taken in execution order and a Sequential child is opened when a wanted
    stride is reached inside it. efficientnet_lite0's body gives ("2.2", "2.4") (timm blocks 2 and 4,
    40 and 112 channels); a torchvision ResNet body gives ("5", "6") (layer2, layer3).
    Raises ValueError when `strides` is not increasing positive integers or the body has no such stage.
    """
    if not strides or any(s < 1 for s in strides) or list(strides) != sorted(set(strides)):
        raise ValueError(f"strides must be increasing positive integers (got {tuple(strides)})")
    if probe_size % max(strides):
        raise ValueError(f"probe_size {probe_size} must be a multiple of the largest stride {max(strides)}")
    seen = _modules_stride(body, probe_size, in_chans)
    chain = _chain(body, "", seen, strides)
    names = []
    for s in strides:
        hits = [n for n in chain if seen[n][1] == s]
        if not hits:
            have = sorted({int(seen[n][1]) if seen[n][1].is_integer() else seen[n][1] for n in chain})
            raise ValueError(f"the body has no stage with output at stride {s} (its stages' strides: {have})")
        names.append(hits[-1])
    return tuple(names)


class _Reached(Exception):
    """Raised by the last hook so the deeper stages never run (patchcore-inspection's
    `LastLayerToExtractReachedException` does the same)."""


class StageTaps(nn.Module):
    """The feature maps of `body` at `strides` (see `find_stages`).

    forward: (B, C, H, W) -> one (B, C_i, H / s_i, W / s_i) map per stride (sizes rounded up by the
    body's padding), computed with the body in eval mode under torch.inference_mode; the body's mode is
    restored and its hooks removed afterwards, so a body shared with a trained network is left as it was.
    """

    def __init__(
        self, body: nn.Module, strides: Sequence[int] = DEFAULT_STRIDES, *, probe_size: int = 64, in_chans: int = 3
    ) -> None:
        super().__init__()
        self.body = body
        self.strides = tuple(strides)
        self.names = find_stages(body, strides, probe_size=probe_size, in_chans=in_chans)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        modules = dict(self.body.named_modules())
        maps: dict[str, torch.Tensor] = {}

        def hook(name: str):
            def keep(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
                maps.setdefault(name, output)
                if len(maps) == len(self.names):
                    raise _Reached

            return keep

        handles = [modules[n].register_forward_hook(hook(n)) for n in self.names]
        was_training = self.body.training
        try:
            self.body.eval()
            with torch.inference_mode():
                self.body(x)
        except _Reached:
            pass
        finally:
            for h in handles:
                h.remove()
            self.body.train(was_training)
        return [maps[n] for n in self.names]


def patch_features(maps: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    """Locally aware patch features (Roth et al. 2022, Sec. 3.1), (B, P, D) with P = h * w of the
    first (shallowest) map and D = min(dim, total channels).

    Each (B, C_i, h_i, w_i) map is averaged over its 3x3 neighbourhood (stride 1, padding 1; the
    padding is not counted, so border patches are not pulled towards 0), the deeper ones are
    upsampled bilinearly to (h, w), all are concatenated along channels, and the channel axis is
    reduced to `dim` by adaptive average pooling as the paper does (never widened: with fewer
    channels than `dim` they are kept as they are). Raises ValueError for no maps or dim < 1.
    """
    if not maps or dim < 1:
        raise ValueError(f"need at least one feature map and dim >= 1 (got {len(maps)} maps, dim {dim})")
    size = maps[0].shape[-2:]
    pooled = [F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False) for m in maps]
    grids = [pooled[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pooled[1:]]
    feats = torch.cat(grids, dim=1)  # (B, C, h, w)
    b, c = feats.shape[:2]
    flat = feats.permute(0, 2, 3, 1).reshape(b, -1, c)  # (B, P, C), patches in row-major order
    return F.adaptive_avg_pool1d(flat, dim) if c > dim else flat  # pools the last axis: (B, P, D)


def greedy_coreset(features: torch.Tensor, n: int, *, proj_dim: int = 128, seed: int = 0) -> torch.Tensor:
    """Indices (n,) int64 of a greedy k-center coreset of `features` (M, D): Roth et al. 2022,
    Algorithm 1 (Sener & Savarese 2018's k-center greedy).

    Distances are Euclidean on a seeded Gaussian random projection to `proj_dim` dimensions
    (Johnson-Lindenstrauss; none when D <= proj_dim). The first centre is a seeded random patch (the
    paper leaves it open; patchcore-inspection starts from random points too); each next one is the
    patch farthest from the chosen ones, first index on ties, so the same seed gives the same indices.
    Written by hand: scikit-learn and torch have no k-center greedy. Cost n * M * proj_dim
    multiply-adds; memory M * (proj_dim + 1) * 4 bytes on the features' device.
    Raises ValueError unless 1 <= n <= M.
    """
    m, d = features.shape
    if not 1 <= n <= m:
        raise ValueError(f"coreset size must be in [1, {m}] for {m} patches (got {n})")
    device = features.device
    gen = torch.Generator(device=device).manual_seed(seed)
    z = features.float()
    if d > proj_dim:
        z = z @ (torch.randn(d, proj_dim, generator=gen, device=device) / math.sqrt(proj_dim))  # (M, proj_dim)
    chosen = torch.empty(n, dtype=torch.long, device=device)
    chosen[0] = torch.randint(m, (1,), generator=gen, device=device)
    gap = torch.cdist(z, z[chosen[:1]]).squeeze(1)  # (M,) distance to the nearest chosen centre
    gap[chosen[0]] = -1.0  # never chosen twice, even among duplicate patches
    for i in range(1, n):
        chosen[i] = torch.argmax(gap)
        gap = torch.minimum(gap, torch.cdist(z, z[chosen[i : i + 1]]).squeeze(1))
        gap[chosen[i]] = -1.0
    return chosen


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, *, max_elements: int = MAX_ELEMENTS) -> torch.Tensor:
    """(M,) Euclidean distance of each of `queries` (M, D) to its nearest row of `bank` (K, D).

    The nearest row is found with torch.cdist on chunks of queries holding at most `max_elements`
    distances (memory max_elements * 4 bytes); the distance to it is then recomputed directly, so a
    query equal to a bank row scores exactly 0 (cdist's matrix-product form loses that to rounding).
    Raises ValueError on an empty bank or mismatched widths.
    """
    if bank.ndim != 2 or bank.shape[0] == 0 or queries.shape[-1] != bank.shape[1]:
        raise ValueError(
            f"need a non-empty (K, D) bank matching queries (M, D) (got {tuple(bank.shape)}, {tuple(queries.shape)})"
        )
    out = []
    for q in queries.split(max(1, max_elements // bank.shape[0])):
        nearest = torch.cdist(q, bank).argmin(dim=1)  # (chunk,)
        out.append(torch.linalg.vector_norm(q - bank[nearest], dim=1))
    return torch.cat(out) if out else queries.new_zeros(0)


def _device_of(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _check_batch(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    if x.ndim != 4 or (y is not None and y.shape != (x.shape[0],)):
        got = tuple(x.shape) if y is None else (tuple(x.shape), tuple(y.shape))
        raise ValueError(f"batches must be images (B, C, H, W) with labels (B,) (got {got})")


class PatchCore(nn.Module):
    """PatchCore (Roth et al., CVPR 2022) on a frozen `body`: a bank of healthy patch features and
    nearest-neighbour scoring.

    dim: patch feature width D (channel pooling; min(dim, channels of the two stages)).
    coreset: the fraction of healthy training patches the greedy coreset keeps, in (0, 1]
      (floor, at least 1; 1.0 keeps every patch); max_bank: a hard cap on the bank's patches.
    proj_dim / seed: the coreset's random projection and first centre (`greedy_coreset`).
    strides / probe_size / in_chans: which stages feed the patches (`find_stages`).
    max_elements: the largest cdist block while scoring (`nearest_distances`).

    Memory budget: the bank (buffer `bank`, (n_bank, D) float32, saved with the state_dict) is
    n_bank * D * 4 bytes, at most max_bank * D * 4 = 20_000 * 256 * 4 = 20_480_000 bytes with the
    defaults. `fit` also holds every healthy training patch, n_images * P * D * 4 bytes (1000 images
    at 48 px, P = 6 * 6: 36_864_000 bytes) plus its projection (P * n_images * (proj_dim + 1) * 4);
    `score` holds one cdist block, max_elements * 4 = 64 MiB at most.

    Image score = the largest patch score (the distance of a patch to its nearest bank patch). The
    paper's reweighting by the bank patch's neighbourhood (its Eq. 7) is left out, as in the
    authors' patchcore-inspection code, so a score is a plain distance in feature space.
    Raises ValueError for a bad setting (at construction), a body without the stages, no healthy
    training image, or scoring before fitting.
    """

    def __init__(
        self,
        body: nn.Module,
        *,
        dim: int = 256,
        coreset: float = 0.1,
        max_bank: int = 20_000,
        proj_dim: int = 128,
        seed: int = 0,
        strides: Sequence[int] = DEFAULT_STRIDES,
        probe_size: int = 64,
        in_chans: int = 3,
        max_elements: int = MAX_ELEMENTS,
    ) -> None:
        super().__init__()
        if dim < 1 or max_bank < 1 or proj_dim < 1 or max_elements < 1 or not 0.0 < coreset <= 1.0:
            raise ValueError(
                f"need dim, max_bank, proj_dim, max_elements >= 1 and coreset in (0, 1] (got {dim}, "
                f"{max_bank}, {proj_dim}, {max_elements}, {coreset})"
            )
        self.taps = StageTaps(body, strides, probe_size=probe_size, in_chans=in_chans)
        self.dim, self.coreset, self.max_bank = dim, coreset, max_bank
        self.proj_dim, self.seed, self.max_elements = proj_dim, seed, max_elements
        self.bank: torch.Tensor
        self.register_buffer("bank", torch.empty(0, 0))  # (n_bank, D) once fitted

    @property
    def body(self) -> nn.Module:
        return self.taps.body

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images -> (B, P, D) patch features (`patch_features`)."""
        _check_batch(x)
        with torch.inference_mode():
            return patch_features(self.taps(x.to(_device_of(self.body))), self.dim)

    def fit(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> PatchCore:
        """Build the bank from the class-0 images of `batches` ((B, C, H, W) images, (B,) labels);
        the other images are ignored. The same batches and seed give the same bank. Returns self.
        Raises ValueError when no image has label 0."""
        healthy = []
        for x, y in batches:
            _check_batch(x, y)
            keep = torch.as_tensor(y).cpu() == 0
            if keep.any():
                healthy.append(self.patches(x[keep]).flatten(0, 1))  # (B0 * P, D)
        if not healthy:
            raise ValueError("PatchCore.fit got no healthy (label 0) image: the memory bank would be empty")
        with torch.inference_mode():
            feats = torch.cat(healthy)  # (M, D)
            n = min(self.max_bank, max(1, math.floor(self.coreset * feats.shape[0])))
            if n < feats.shape[0]:
                feats = feats[greedy_coreset(feats, n, proj_dim=self.proj_dim, seed=self.seed)]
        self.bank = feats.clone()  # cloned outside inference mode: an ordinary tensor load_state_dict can fill
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B,) image scores: each image's largest patch-to-bank distance."""
        if self.bank.numel() == 0:
            raise ValueError("PatchCore is not fitted: call fit(batches) before scoring")
        feats = self.patches(x)  # (B, P, D)
        with torch.inference_mode():
            dist = nearest_distances(feats.flatten(0, 1), self.bank, max_elements=self.max_elements)
            return dist.view(feats.shape[:2]).amax(dim=1)

    def score(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
        """(labels (N,) int64, scores (N,) float64) over all images of `batches`, in order; higher =
        more anomalous. Raises ValueError before `fit` or on no images."""
        labels, scores = [], []
        for x, y in batches:
            _check_batch(x, y)
            scores.append(self(x).double().cpu().numpy())
            labels.append(torch.as_tensor(y).cpu().numpy().astype(np.int64))
        if not scores:
            raise ValueError("PatchCore.score got no images")
        return np.concatenate(labels), np.concatenate(scores)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "bank"
        if key in state_dict:  # the bank's size is known only once fitted: take the saved one's shape
            self.bank = torch.empty_like(state_dict[key], device=self.bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def to_probability(val_labels: np.ndarray, val_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(N, 2) [P(class 0), P(class 1)] of `scores` (N,) by Platt scaling (Platt 1999) fitted on
    validation (labels (V,) in {0, 1}, scores (V,)): a logistic regression on the standardised score
    with class-balanced weights (scikit-learn `LogisticRegression(class_weight="balanced")`), so the
    argmax is the cut where the balanced fit crosses 1/2 and, the map being increasing, AUROC is
    unchanged (up to ties where P(class 1) rounds to 1 in float64, a logit above ~37).
    Raises ValueError when validation lacks a class, the lengths differ, or the fitted map would
    decrease (validation ranks the minority below the majority).
    """
    y, s = np.asarray(val_labels).ravel(), np.asarray(val_scores, dtype=np.float64).ravel()
    if y.shape != s.shape or not set(np.unique(y)) <= {0, 1}:
        raise ValueError(f"validation labels must be 0/1 with one score each (got {y.shape}, {s.shape})")
    if len(np.unique(y)) < 2:
        raise ValueError(f"validation has only class {np.unique(y).tolist()}: Platt scaling needs both 0 and 1")
    platt = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced")).fit(s[:, None], y)
    if platt[-1].coef_[0, 0] <= 0:
        raise ValueError("validation scores rank the minority below the majority: no increasing Platt map")
    return platt.predict_proba(np.asarray(scores, dtype=np.float64).reshape(-1, 1))
