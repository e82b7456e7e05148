"""On-device batched augmentation: random crop of a reflect-padded image, then a random flip.

Why a module of its own: augmentation runs in the training loop's hot path, on whatever device
the dataset lives on, as one gather per batch (no DataLoader, no per-sample Python). It knows
nothing about datasets; a dataset only names which augmentation it wants (`AUGMENTATIONS`).
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from explorer.errors import bad_value

__all__ = ["AUGMENTATIONS", "CROP_PADDING", "DISTINCT_VIEWS", "augment_batch", "crop_flip"]

# The augmentations a dataset may ask for (DatasetInfo.augment); the training loop applies
# `augment_batch` to every batch of a dataset that asks for "crop_flip".
AUGMENTATIONS = ("none", "crop_flip")
# The training loop's crop padding, and how many distinct crop+flip images it gives per sample:
# (2p+1)^2 offsets x 2 flips (the most fixed views per sample `explorer.teachers.views` can define).
CROP_PADDING = 4
DISTINCT_VIEWS = (2 * CROP_PADDING + 1) ** 2 * 2


def _reflect(i: Tensor, n: int) -> Tensor:
    """Map positions in [-(n-1), 2(n-1)] to [0, n) by reflection without repeating the edge."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def _check(x: Tensor, padding: int) -> None:
    if x.dim() != 4:
        raise bad_value("x", tuple(x.shape), "allowed: a batch of images of shape (N, C, H, W)")
    n, _, h, w = x.shape
    valid_padding = isinstance(padding, numbers.Integral) and not isinstance(padding, bool) and padding >= 0
    if not valid_padding or (n and padding >= min(h, w)):
        raise bad_value("padding", padding, f"allowed: an integer in [0, {min(h, w)}) for {h}x{w} images")


def crop_flip(x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, padding: int = CROP_PADDING) -> Tensor:
    """The crop at offset (dy_n, dx_n) in 0..2*padding of each REFLECT-padded image, flipped where
    `flip` is true: the one gather that both live augmentation (`augment_batch`) and the fixed views
    (`explorer.teachers.views`) use. The output pixel (h, w) of sample n reads x at the reflected position of
    (dy_n - p + h, dx_n - p + w'), where w' = W - 1 - w when the sample is flipped; no padded copy.
    `dy`, `dx` (integer) and `flip` (bool) have one entry per sample, on x.device."""
    _check(x, padding)
    n, c, h, w = x.shape
    if n == 0:
        return x.clone()
    dev = x.device
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = _reflect(dy[:, None] - padding + ar_h, h)                                # (N, H)
    cols = _reflect(dx[:, None] - padding + torch.where(flip[:, None], w - 1 - ar_w, ar_w), w)  # (N, W)
    n_idx = torch.arange(n, device=dev)[:, None, None, None]
    c_idx = torch.arange(c, device=dev)[None, :, None, None]
    return x[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]


def augment_batch(x: Tensor, generator: torch.Generator | None, padding: int = CROP_PADDING) -> Tensor:
    """Random crop of the `padding`-pixel REFLECT-padded image, then a random horizontal flip.

    `x` is (N, C, H, W) on any device; offsets (0..2*padding each way) and flips are drawn per
    sample from `generator`, which must live on x.device, then `crop_flip` gathers the crops.
    Same shape and dtype; `x` is not modified.
    """
    _check(x, padding)
    n = x.shape[0]
    if n == 0:
        return x.clone()
    dev = x.device
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    flip = torch.randint(0, 2, (n,), generator=generator, device=dev).bool()
    return crop_flip(x, dy, dx, flip, padding)
