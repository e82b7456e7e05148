"""On-device batched augmentation: random crop of a reflect-padded image, then a random flip.

Why a module of its own: augmentation runs in the training loop's hot path, on whatever device
the dataset lives on, as one gather per batch (no DataLoader, no per-sample Python). It knows
nothing about datasets; a dataset only names which augmentation it wants (`AUGMENTATIONS`).
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from .errors import bad_value

__all__ = ["AUGMENTATIONS", "augment_batch"]

# The augmentations a dataset may ask for (DatasetInfo.augment); the training loop applies
# `augment_batch` to every batch of a dataset that asks for "crop_flip".
AUGMENTATIONS = ("none", "crop_flip")


def _reflect(i: Tensor, n: int) -> Tensor:
    """Map positions in [-(n-1), 2(n-1)] to [0, n) by reflection without repeating the edge."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def augment_batch(x: Tensor, generator: torch.Generator | None, padding: int = 4) -> Tensor:
    """Random crop of the `padding`-pixel REFLECT-padded image, then a random horizontal flip.

    `x` is (N, C, H, W) on any device; offsets (0..2*padding each way) and flips are drawn per
    sample from `generator`, which must live on x.device. One gather, no padded copy: the output
    pixel (h, w) of sample n reads x at the reflected position of (dy_n - p + h, dx_n - p + w'),
    where w' = W - 1 - w when the sample is flipped. Same shape and dtype; `x` is not modified.
    """
    if x.dim() != 4:
        raise bad_value("x", tuple(x.shape), "allowed: a batch of images of shape (N, C, H, W)")
    n, c, h, w = x.shape
    valid_padding = isinstance(padding, numbers.Integral) and not isinstance(padding, bool) and padding >= 0
    if not valid_padding or (n and padding >= min(h, w)):
        raise bad_value("padding", padding, f"allowed: an integer in [0, {min(h, w)}) for {h}x{w} images")
    if n == 0:
        return x.clone()
    dev = x.device
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    flip = torch.randint(0, 2, (n,), generator=generator, device=dev).bool()
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = _reflect(dy[:, None] - padding + ar_h, h)                                # (N, H)
    cols = _reflect(dx[:, None] - padding + torch.where(flip[:, None], w - 1 - ar_w, ar_w), w)  # (N, W)
    n_idx = torch.arange(n, device=dev)[:, None, None, None]
    c_idx = torch.arange(c, device=dev)[None, :, None, None]
    return x[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]
