"""DA's augmentation, drawn per image as torchvision draws it, applied to the whole batch at once.

    augment = BatchAugment(cfg.train.augment)
    x = augment(x)          # (B, 3, H, W) uint8 on any device -> the same, augmented

The transforms are those of `data.augment_transform` (fastai's get_transforms in torchvision v2):
horizontal and vertical flips, a rotation with zoom (nearest neighbour, black fill), brightness and
contrast in a random order. Each image's parameters come from the transforms' own draws, in the
per-image pipeline's order, from the global generator (`make_params` and the flips' coin), so the
draws and the pixels are those of `torch.stack([augment_transform(aug)(img) for img in x])` — a
test compares them image for image. What changes is the work: one flip, one `grid_sample` and one
blend per batch instead of ~20 small operations per image (on a GPU each is a kernel launch, which
made augmentation the slowest part of a DA cell: about 1,000 images/s on an H200; x1.5 on CPU).
The arithmetic follows torchvision 0.2x's tensor kernels (`affine_image`, `_apply_grid_transform`,
`adjust_brightness_image`, `adjust_contrast_image`, `_blend`) operation for operation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix

from finalbn.config import AugmentConfig


class BatchAugment:
    """`__call__(x)`: x (B, 3, H, W) uint8 -> (B, 3, H, W) uint8, drawn from the global generator.
    Raises ValueError for another dtype or channel count."""

    def __init__(self, aug: AugmentConfig) -> None:
        self.hflip = v2.RandomHorizontalFlip()
        self.vflip = v2.RandomVerticalFlip() if aug.flip_vertical else None
        self.affine = v2.RandomAffine(degrees=aug.rotate, scale=(1.0, aug.zoom))
        self.jitter = v2.ColorJitter(brightness=aug.lighting, contrast=aug.lighting)

    def _draw(self, x: torch.Tensor) -> dict[str, list]:
        """Each image's parameters, in the per-image pipeline's order of draws."""
        out: dict[str, list] = {"hflip": [], "vflip": [], "theta": [], "bright": [], "contrast": [], "bright_first": []}
        for img in x:
            out["hflip"].append(not bool(torch.rand(1) >= self.hflip.p))
            out["vflip"].append(self.vflip is not None and not bool(torch.rand(1) >= self.vflip.p))
            p = self.affine.make_params([img])
            out["theta"].append(
                _get_inverse_affine_matrix(
                    [0.0, 0.0], p["angle"], [float(t) for t in p["translate"]], p["scale"], list(p["shear"])
                )
            )
            q = self.jitter.make_params([img])
            order = [int(k) for k in q["fn_idx"]]
            out["bright"].append(q["brightness_factor"])
            out["contrast"].append(q["contrast_factor"])
            out["bright_first"].append(order.index(0) < order.index(1))
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"BatchAugment takes (B, 3, H, W) uint8 images (got {tuple(x.shape)} {x.dtype})")
        p = self._draw(x)
        dev, b = x.device, x.shape[0]

        def mask(key: str) -> torch.Tensor:
            return torch.tensor(p[key], dtype=torch.bool).view(b, 1, 1, 1).to(dev)

        x = torch.where(mask("hflip"), x.flip(-1), x)
        x = torch.where(mask("vflip"), x.flip(-2), x)
        x = _affine(x, torch.tensor(p["theta"], dtype=torch.float32).view(b, 2, 3).to(dev))
        if p["bright"][0] is None and p["contrast"][0] is None:
            return x
        factors = {
            k: torch.tensor(p[k], dtype=torch.float32).view(b, 1, 1, 1).to(dev)
            for k in ("bright", "contrast")
            if p[k][0] is not None
        }
        if "contrast" in factors:  # _blend's alpha, (1 - ratio) in double then float32, as torchvision's
            factors["alpha"] = (
                torch.tensor([1.0 - c for c in p["contrast"]], dtype=torch.float32).view(b, 1, 1, 1).to(dev)
            )

        def bright(y):
            return y.mul(factors["bright"]).clamp_(0, 255).to(torch.uint8) if "bright" in factors else y

        def contrast(y):
            if "contrast" not in factors:
                return y
            r, g, bl = y.unbind(dim=-3)
            gray = r.mul(0.2989).add_(g, alpha=0.587).add_(bl, alpha=0.114).unsqueeze(-3).floor_()
            mean = torch.mean(gray, dim=(-3, -2, -1), keepdim=True)
            return torch.addcmul(y.mul(factors["contrast"]), mean, factors["alpha"]).clamp_(0, 255).to(torch.uint8)

        return torch.where(mask("bright_first"), contrast(bright(x)), bright(contrast(x)))


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """torchvision's affine_image (nearest, fill 0) with one inverse matrix per image: `theta` (B, 2, 3)."""
    b, c, h, w = x.shape
    base = torch.empty(1, h, w, 3, dtype=torch.float32, device=x.device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=x.device))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=x.device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    scaled = theta.transpose(1, 2).div_(torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float32, device=x.device))
    grid = base.view(1, h * w, 3).expand(b, -1, -1).bmm(scaled).view(b, h, w, 2)
    img = torch.cat((x.to(torch.float32), torch.ones(b, 1, h, w, dtype=torch.float32, device=x.device)), dim=1)
    img = F.grid_sample(img, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    img, inside = torch.tensor_split(img, indices=(-1,), dim=-3)
    img = torch.where(inside.expand_as(img) < 0.5, torch.zeros((), dtype=img.dtype, device=x.device), img)
    return img.round_().to(torch.uint8)
