"""Benchmark data of a chosen shape, from a dataset that needs no download.

`splits_of("fake", side=32, samples=50_000)` is a CIFAR-10-shaped training set: the `fake` dataset's
3x16x16 images resized to 32x32 and its 1,000 training samples tiled to 50,000. It is for timing only
(this machine has no CIFAR-10 offline; what the models learn from it is not a result).
"""

from __future__ import annotations

from dataclasses import replace

import torch.nn.functional as F

from explorer.data.condition import DataSpec
from explorer.data.splits import Splits, load_splits

CIFAR10_TRAIN = 50_000


def splits_of(dataset: str = "fake", side: int | None = None, samples: int | None = None, device="cpu") -> Splits:
    """`dataset`'s splits on `device`, images resized to side x side (None: as loaded) and the training
    split tiled (or cut) to `samples` rows (None: as loaded)."""
    s = load_splits(DataSpec(dataset))
    if side is not None and side != s.input_shape[-1]:
        up = {k: F.interpolate(getattr(s, k), size=(side, side), mode="bilinear", align_corners=False)
              for k in ("train_x", "val_x", "test_x")}
        s = replace(s, input_shape=(s.input_shape[0], side, side), **up)
    if samples is not None:
        reps = -(-samples // len(s.train_y))
        tiled = {k: getattr(s, k).repeat(reps, *[1] * (getattr(s, k).dim() - 1))[:samples]
                 for k in ("train_x", "train_y", "train_clean_y")}
        s = replace(s, **tiled)
    return s.to(device)
