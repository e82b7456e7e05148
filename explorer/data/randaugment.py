"""RandAugment on a batch, on the batch's device (Cubuk et al., "RandAugment", CVPR-W 2020).

Used by the `uda` method (seed 001 section 4.0.3: an unaugmented and a RandAugment view of each
sample in the same mini batch). Each sample gets `n` operations drawn uniformly from `OPS`, each
at the global `magnitude` on torchvision's scale (0..30, `NUM_BINS` = 31 bins; default 9, as
torchvision's `RandAugment`), with a random sign for the signed operations. The magnitudes per
operation follow torchvision's RandAugment table (shear 0..0.3, translate 0..150/331 of the size,
rotate 0..30 degrees, enhance factors 1 +- 0..0.9, posterize 8..4 bits, solarize threshold 1..0).

Batched, not per sample: for each operation slot, every operation runs once on the subset of the
batch that drew it (one tensor op per operation, none per sample). kdx's images are normalised, so
each channel is mapped affinely onto [0, 1] with the batch's own per-channel minimum and maximum,
augmented there, and mapped back: pixel-value operations (solarize, posterize, equalize) act on
that range, which for a normalised CIFAR batch is the original 0..255 range up to rounding. The
fill value of the geometric operations is 0 in that range (black), as torchvision's default, and
they turn about the image centre. Each operation equals torchvision's functional of the same name on
[0, 1] images (tests/test_bss_uda.py checks it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

NUM_BINS = 31  # torchvision's RandAugment magnitude scale: magnitude 0..30


def _blend(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    """b + factor * (a - b), per sample (PIL's ImageEnhance: factor 1 = a, 0 = b)."""
    return (b + factor.view(-1, 1, 1, 1) * (a - b)).clamp(0, 1)


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True).expand_as(x)
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand_as(x)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    """Apply per-sample 2x3 affine matrices (normalised coordinates), nearest pixel, fill 0."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _eye(m: Tensor) -> Tensor:
    return torch.eye(2, 3, device=m.device, dtype=m.dtype).repeat(len(m), 1, 1)


def _shear(axis: int):
    def op(x, m):
        theta = _eye(m)
        theta[:, axis, 1 - axis] = m
        return _affine(x, theta)
    return op


def _translate(axis: int):
    def op(x, m):  # m: fraction of the image size (> 0: content moves right/down, as torchvision)
        theta = _eye(m)
        theta[:, axis, 2] = -2 * m  # affine_grid maps output to input; its coordinates span 2 per size
        return _affine(x, theta)
    return op


def _rotate(x: Tensor, m: Tensor) -> Tensor:
    a = m * math.pi / 180
    theta = torch.stack([torch.stack([a.cos(), -a.sin(), torch.zeros_like(a)], 1),
                         torch.stack([a.sin(), a.cos(), torch.zeros_like(a)], 1)], 1)
    return _affine(x, theta)


def _sharpness(x: Tensor, m: Tensor) -> Tensor:
    c = x.shape[1]
    k = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    k[1, 1] = 5
    smooth = F.conv2d(x, (k / 13).expand(c, 1, 3, 3), padding=1, groups=c)
    smooth[..., 0, :], smooth[..., -1, :] = x[..., 0, :], x[..., -1, :]  # PIL keeps the border
    smooth[..., :, 0], smooth[..., :, -1] = x[..., :, 0], x[..., :, -1]
    return _blend(x, smooth, 1 + m)


def _posterize(x: Tensor, m: Tensor) -> Tensor:
    keep = 2 ** (8 - m.view(-1, 1, 1, 1))  # m = bits removed
    q = (x * 255).round()
    return (torch.div(q, 256 / keep, rounding_mode="floor") * (256 / keep)) / 255


def _autocontrast(x: Tensor, m: Tensor) -> Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-12), x)


def _equalize(x: Tensor, m: Tensor) -> Tensor:
    """PIL's (and torchvision's) histogram equalisation per image and channel, on 256 levels."""
    b, c, h, w = x.shape
    q = (x * 255).round().long().clamp(0, 255).view(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device, dtype=torch.float64).scatter_add_(
        1, q, torch.ones_like(q, dtype=torch.float64))
    top = 255 - (hist.flip(1) > 0).double().argmax(1, keepdim=True)  # the brightest level present
    step = torch.div(h * w - hist.gather(1, top), 255, rounding_mode="floor")
    cdf = torch.cat([torch.zeros_like(hist[:, :1]), hist.cumsum(1)[:, :-1]], 1)  # pixels below each level
    lut = torch.div(cdf + torch.div(step, 2, rounding_mode="floor"), step.clamp_min(1), rounding_mode="floor")
    out = torch.where(step > 0, lut.clamp(0, 255).gather(1, q), q.double())
    return (out / 255).to(x.dtype).view(b, c, h, w)


# name: (operation(x in [0, 1], per-sample magnitude), magnitude at bin 30, signed)
OPS = {
    "identity": (lambda x, m: x, 0.0, False),
    "shear_x": (_shear(0), 0.3, True),
    "shear_y": (_shear(1), 0.3, True),
    "translate_x": (_translate(0), 150 / 331, True),
    "translate_y": (_translate(1), 150 / 331, True),
    "rotate": (_rotate, 30.0, True),
    "brightness": (lambda x, m: _blend(x, torch.zeros_like(x), 1 + m), 0.9, True),
    "color": (lambda x, m: _blend(x, _gray(x), 1 + m), 0.9, True),
    "contrast": (lambda x, m: _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), 1 + m), 0.9, True),
    "sharpness": (_sharpness, 0.9, True),
    "posterize": (_posterize, 4.0, False),  # bits removed: 8 - bits kept, rounded as torchvision
    "solarize": (lambda x, m: torch.where(x >= 1 - m.view(-1, 1, 1, 1), 1 - x, x), 1.0, False),
    "autocontrast": (_autocontrast, 0.0, False),
    "equalize": (_equalize, 0.0, False),
}


def op_magnitude(name: str, magnitude: float) -> float:
    """An operation's magnitude at `magnitude` on the 0..30 scale (posterize: whole bits)."""
    value = OPS[name][1] * magnitude / (NUM_BINS - 1)
    return float(round(value)) if name == "posterize" else value


def rand_augment(x: Tensor, generator: torch.Generator | None, n: int = 2, magnitude: float = 9.0) -> Tensor:
    """A RandAugment view of a batch of normalised images (N, C, H, W); `x` is not modified.
    Operation choices and signs are drawn from `generator` (on x.device), so a seeded run repeats."""
    if x.dim() != 4:
        raise ValueError(f"rand_augment needs images (N, C, H, W), got shape {tuple(x.shape)}")
    lo = x.amin(dim=(0, 2, 3), keepdim=True)
    scale = (x.amax(dim=(0, 2, 3), keepdim=True) - lo).clamp_min(1e-12)
    y = ((x - lo) / scale).float()
    names = list(OPS)
    for _ in range(n):
        choice = torch.randint(0, len(names), (len(x),), generator=generator, device=x.device)
        sign = torch.randint(0, 2, (len(x),), generator=generator, device=x.device) * 2 - 1
        out = y.clone()
        for k, name in enumerate(names):
            pick = (choice == k).nonzero().squeeze(1)
            if len(pick) == 0:
                continue
            op, _, signed = OPS[name]
            m = torch.full((len(pick),), op_magnitude(name, magnitude), device=x.device)
            out[pick] = op(y[pick], m * sign[pick] if signed else m)
        y = out
    return (y * scale + lo).to(x.dtype)
