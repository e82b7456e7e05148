"""What every kdx model family shares: the base class, weight init and small layer helpers.

A family subclasses `KdxModel`, implements `_forward(x) -> logits`, declares its feature roles
next to the class (`explorer.models.features.register_roles`) and registers its names in the registry
(`explorer.models.registry.register_family`). `model(x, features=True)` then needs nothing more
from the family: the "blocks" role is read by forward hooks (explorer/models/features.py), so the list of
block outputs is defined once, in the family's roles.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from explorer.errors import bad_value
from explorer.models.features import FeatureTap, feature_paths


class TrunkHead(NamedTuple):
    """A model cut in two: ``head(trunk(x)) == model(x)``; ``channels`` is the channel (or unit)
    count of the trunk's output."""

    trunk: nn.Module
    head: nn.Module
    channels: int


class KdxModel(nn.Module):
    """Common attributes and the ``features=True`` path; subclasses implement ``_forward`` (logits)
    and ``trunk_head`` (the cut used by multi-branch students, see explorer/models/branches.py).

    Each model carries ``arch`` (its name), ``num_classes``, ``input_shape`` (set by `build_model`)
    and ``feature_channels`` (channel / unit count of each "blocks" feature).
    """

    arch: str

    def forward(self, x: torch.Tensor, features: bool = False):
        """Logits, or ``(logits, feats)`` with ``features=True``: feats are the "blocks" role."""
        if not features:
            return self._forward(x)
        with FeatureTap(self, feature_paths(self, "blocks")) as tap:
            logits = self._forward(x)
        return logits, tap.features

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def trunk_head(self) -> TrunkHead:
        raise bad_value("model", type(self).__name__, "this family cannot be split into trunk and head")


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) for convs, BN weight 1 / bias 0; PyTorch defaults otherwise."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def image_channels(name: str, input_shape: tuple[int, ...]) -> int:
    """Channel count of a (C, H, W) input; (H, W) means one channel."""
    if len(input_shape) == 3:
        return input_shape[0]
    if len(input_shape) == 2:
        return 1
    raise bad_value("input_shape", tuple(input_shape), f"{name} needs (channels, height, width)")


class AddChannel(nn.Module):
    """Give an input without a channel axis one channel (as each family's forward does)."""

    def __init__(self, dims_without_channel: int):
        super().__init__()
        self.dims = dims_without_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) if x.dim() == self.dims else x
