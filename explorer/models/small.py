"""The small families for MNIST-1D-sized data, where a capacity-gap curve trains in minutes on a CPU.

* ``cnn1d_w<width>``: the MNIST-1D CNN (three strided Conv1d + ReLU blocks, flatten, linear).
* ``cnn1dbn_w<width>``: the same with batch norm after each conv (Conv1d without bias + BN + ReLU).
* ``mlp_<width>x<depth>``: flatten, ``depth`` hidden Linear+ReLU layers of ``width`` units, linear.

Feature roles: "blocks" = the output of each conv block / hidden layer (after its ReLU); "preact" =
the same before the ReLU (the conv or conv+BN output; the hidden Linear output);
"penultimate" = what the final linear layer reads (the flattened last conv block; the last hidden
layer's output). The ReLUs and the flatten are modules so that feature hooks can reach them.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from explorer.errors import bad_value
from explorer.models.base import AddChannel, KdxModel, TrunkHead, init_weights
from explorer.models.features import register_roles
from explorer.models.registry import NUM, Factory, register_family


def _conv1d_out_len(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


class CNN1d(KdxModel):
    """MNIST-1D small CNN with width W: three strided Conv1d+ReLU blocks, flatten, linear."""

    # (kernel, stride, padding) of the three conv blocks
    _CONVS = ((5, 2, 1), (3, 2, 1), (3, 2, 1))

    def __init__(self, width: int, num_classes: int, in_channels: int, length: int, batch_norm: bool = False):
        super().__init__()
        convs = []
        cin, seq_len = in_channels, length
        for kernel, stride, padding in self._CONVS:
            conv = nn.Conv1d(cin, width, kernel, stride=stride, padding=padding, bias=not batch_norm)
            convs.append(nn.Sequential(conv, nn.BatchNorm1d(width)) if batch_norm else conv)
            cin = width
            seq_len = _conv1d_out_len(seq_len, kernel, stride, padding)
            if seq_len < 1:
                raise bad_value("input_shape", (in_channels, length),
                                "cnn1d needs a sequence length of at least 4 (8 or more advised)")
        self.convs = nn.ModuleList(convs)
        self.acts = nn.ModuleList(nn.ReLU() for _ in convs)
        self.out_len = seq_len
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(width * seq_len, num_classes)
        self.feature_channels = [width] * len(convs)
        init_weights(self)

    def _forward(self, x):
        if x.dim() == 2:
            x = x.unsqueeze(1)
        for conv, act in zip(self.convs, self.acts):
            x = act(conv(x))
        return self.fc(self.flatten(x))

    def trunk_head(self) -> TrunkHead:
        """Trunk = the first conv block; head = the other two + the linear layer."""
        trunk = nn.Sequential(AddChannel(2), self.convs[0], self.acts[0])
        rest = [m for conv, act in zip(self.convs[1:], self.acts[1:]) for m in (conv, act)]
        head = nn.Sequential(*rest, self.flatten, self.fc)
        return TrunkHead(trunk, head, self.feature_channels[0])


register_roles(CNN1d, {"blocks": [f"acts.{i}" for i in range(len(CNN1d._CONVS))], "penultimate": ["flatten"],
                        "preact": [f"convs.{i}" for i in range(len(CNN1d._CONVS))]})


class MLP(KdxModel):
    """Flatten, ``depth`` x (Linear(width) + ReLU), Linear(num_classes)."""

    def __init__(self, width: int, depth: int, num_classes: int, in_features: int):
        super().__init__()
        layers = []
        fan_in = in_features
        for _ in range(depth):
            layers.append(nn.Linear(fan_in, width))
            fan_in = width
        self.hidden = nn.ModuleList(layers)
        self.acts = nn.ModuleList(nn.ReLU() for _ in layers)
        self.fc = nn.Linear(fan_in, num_classes)
        self.feature_channels = [width] * depth

    def _forward(self, x):
        x = torch.flatten(x, 1)
        for layer, act in zip(self.hidden, self.acts):
            x = act(layer(x))
        return self.fc(x)

    def trunk_head(self) -> TrunkHead:
        """Trunk = the first hidden layer; head = the remaining hidden layers + the output layer."""
        trunk = nn.Sequential(nn.Flatten(1), self.hidden[0], self.acts[0])
        rest = [m for layer, act in zip(self.hidden[1:], self.acts[1:]) for m in (layer, act)]
        head = nn.Sequential(*rest, self.fc)
        return TrunkHead(trunk, head, self.feature_channels[0])


# The paths depend on the depth, so the roles are functions of the model.
register_roles(MLP, {"blocks": lambda m: [f"acts.{i}" for i in range(len(m.acts))],
                     "penultimate": lambda m: [f"acts.{len(m.acts) - 1}"],
                     "preact": lambda m: [f"hidden.{i}" for i in range(len(m.hidden))]})


@register_family(rf"cnn1d_w{NUM}", input_family="sequence", allowed="cnn1d_w<width>",
                 examples=[f"cnn1d_w{2 ** i}" for i in range(1, 8)])
def _cnn1d(m: re.Match) -> Factory:
    return _cnn1d_factory(m, batch_norm=False)


@register_family(rf"cnn1dbn_w{NUM}", input_family="sequence", allowed="cnn1dbn_w<width>",
                 examples=[f"cnn1dbn_w{2 ** i}" for i in range(1, 8)])
def _cnn1dbn(m: re.Match) -> Factory:
    return _cnn1d_factory(m, batch_norm=True)


def _cnn1d_factory(m: re.Match, batch_norm: bool) -> Factory:
    width = int(m.group(1))

    def factory(num_classes, input_shape):
        if len(input_shape) == 2:
            channels, length = input_shape
        elif len(input_shape) == 1:
            channels, length = 1, input_shape[0]
        else:
            raise bad_value("input_shape", tuple(input_shape),
                            f"{m.string} needs (channels, length)")
        return CNN1d(width, num_classes, channels, length, batch_norm)
    return factory


@register_family(rf"mlp_{NUM}x{NUM}", input_family="any", allowed="mlp_<width>x<depth>",
                 examples=["mlp_400x1", "mlp_800x2", "mlp_1200x2"])
def _mlp(m: re.Match) -> Factory:
    width, depth = int(m.group(1)), int(m.group(2))

    def factory(num_classes, input_shape):
        return MLP(width, depth, num_classes, math.prod(input_shape))
    return factory
