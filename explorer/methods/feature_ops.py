"""Small tensor helpers the feature-based methods share (at, sp, rkd, fitnet, fsp, sfd, ab, oh).

Block numbering: seed 000 table I names "block 1, 2, 3" of a ResNet/WRN (the outputs of its three
stages). The "blocks" role of every family lists its block outputs shallow to deep (a CIFAR ResNet
or WRN: stem, stage 1, stage 2, stage 3; cnn1d: its three conv blocks; an MLP: its hidden layers), so
block n of the seed is entry `len - 3 + n - 1`: counted from the deep end, the last three entries.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from explorer.errors import KdxError


def block_indices(count: int, numbers: tuple[int, ...], method: str) -> list[int]:
    """Positions, in a "blocks" list of `count` features, of the seed's blocks `numbers` (1..3)."""
    need = 4 - min(numbers)
    if count < need:
        raise KdxError(f"method {method!r} reads block(s) {', '.join(map(str, numbers))} (seed 000 table I) "
                       f"but the model has {count} block output(s); use a model with at least {need}.")
    return [count - 3 + n - 1 for n in numbers]


def pick(features: list, numbers: tuple[int, ...], method: str) -> list:
    """The entries of `features` (tensors or shapes) for the seed's blocks `numbers`."""
    return [features[i] for i in block_indices(len(features), numbers, method)]


def match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(a, b) with the larger spatial/temporal size average-pooled down to the smaller (as RepDistiller's
    AT and FSP do when the student's and teacher's maps differ in size); unchanged when equal."""
    if a.shape[2:] == b.shape[2:]:
        return a, b
    pool = F.adaptive_avg_pool1d if a.dim() == 3 else F.adaptive_avg_pool2d
    size = tuple(min(x, y) for x, y in zip(a.shape[2:], b.shape[2:]))
    return (pool(a, size) if a.shape[2:] != size else a), (pool(b, size) if b.shape[2:] != size else b)


def connector(shape_in: tuple, shape_out: tuple, kernel: int = 1, bn: bool = True) -> nn.Module:
    """A learned map from student features of per-sample shape `shape_in` to the teacher's channel count
    (`shape_out[0]`): Linear for flat features, Conv1d/Conv2d (`kernel`, same padding) + BN for maps.
    Spatial sizes must already agree (every kdx family halves them at the same stages)."""
    cin, cout = shape_in[0], shape_out[0]
    if len(shape_in) == 1:
        layers = [nn.Linear(cin, cout)] + ([nn.BatchNorm1d(cout)] if bn else [])
    else:
        conv = nn.Conv1d if len(shape_in) == 2 else nn.Conv2d
        norm = nn.BatchNorm1d if len(shape_in) == 2 else nn.BatchNorm2d
        layers = [conv(cin, cout, kernel, padding=kernel // 2, bias=not bn)] + ([norm(cout)] if bn else [])
    return nn.Sequential(*layers)


def check_same_spatial(method: str, s_shape: tuple, t_shape: tuple) -> None:
    """KdxError when a student and a teacher feature differ in rank (e.g. a map against a flat vector)."""
    if len(s_shape) != len(t_shape):
        raise KdxError(f"method {method!r} compares student features of shape {s_shape} with teacher features "
                       f"of shape {t_shape}; use a student and a teacher of the same kind (both CNNs or both MLPs).")
