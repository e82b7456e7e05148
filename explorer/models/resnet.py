"""CIFAR ResNets (He et al. 2016, the 6n+2 family) and the "x4" variants of the CRD benchmark.

* ``resnet8/14/20/26/32/44/56/110``: stem conv3x3 -> 16, three stages of n BasicBlocks with
  widths 16/32/64 (strides 1, 2, 2), global average pool, linear.
* ``resnet8x4``, ``resnet32x4``: a 32-channel stem and widths 64/128/256 (Tian et al.'s
  RepDistiller models).

Feature roles: "blocks" = [stem output (after its ReLU), stage-1, stage-2, stage-3 outputs], all
before the global pool; "penultimate" = the pooled, flattened features the classifier reads;
"preact" = per stage, the last block's residual branch after its second BN, before the shortcut is
added and the ReLU (the block's pre-ReLU sum is a functional call, not a module output).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from explorer.errors import bad_value
from explorer.models.base import AddChannel, KdxModel, TrunkHead, conv3x3, image_channels, init_weights
from explorer.models.features import register_roles
from explorer.models.registry import NUM, Factory, register_family, unknown_arch

RESNET_DEPTHS = (8, 14, 20, 26, 32, 44, 56, 110)
RESNET_X4_DEPTHS = (8, 32)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut (1x1 conv + BN when shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(KdxModel):
    """ResNet of depth 6n+2: stem conv3x3, three stages of n BasicBlocks (strides 1, 2, 2).

    ``stem_relu`` and ``flatten`` are parameter-free modules (not functional calls) so that the
    stem output and the classifier's input have module paths that feature hooks can reach.
    """

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3,
                 stem: int = 16, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise bad_value("depth", depth, "ResNet depth must be 6n+2 with n >= 1")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(in_channels, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        self.stem_relu = nn.ReLU()
        stages = []
        cin = stem
        for width, stride in zip(widths, (1, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(cin, width, stride if i == 0 else 1))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(widths[2], num_classes)
        self.feature_channels = [stem, *widths]
        init_weights(self)

    def _forward(self, x):
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = self.stem_relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))

    def trunk_head(self) -> TrunkHead:
        """Trunk = stem + stages 1-2; head = stage 3 + pool + fc."""
        trunk = nn.Sequential(AddChannel(3), self.conv1, self.bn1, self.stem_relu, self.layer1, self.layer2)
        head = nn.Sequential(self.layer3, self.pool, self.flatten, self.fc)
        return TrunkHead(trunk, head, self.feature_channels[2])


register_roles(CifarResNet, {"blocks": ["stem_relu", "layer1", "layer2", "layer3"], "penultimate": ["flatten"],
                             "preact": lambda m: [f"layer{i}.{len(m.layer1) - 1}.bn2" for i in (1, 2, 3)]})


@register_family(rf"resnet{NUM}", input_family="image", allowed="resnet8/14/20/26/32/44/56/110",
                 examples=[f"resnet{d}" for d in RESNET_DEPTHS])
def _resnet(m: re.Match) -> Factory:
    depth = int(m.group(1))
    if depth not in RESNET_DEPTHS:
        raise unknown_arch(m.string)

    def factory(num_classes, input_shape):
        return CifarResNet(depth, num_classes, image_channels(m.string, input_shape))
    return factory


@register_family(rf"resnet{NUM}x4", input_family="image", allowed="resnet8x4, resnet32x4",
                 examples=[f"resnet{d}x4" for d in RESNET_X4_DEPTHS])
def _resnet_x4(m: re.Match) -> Factory:
    depth = int(m.group(1))
    if depth not in RESNET_X4_DEPTHS:
        raise unknown_arch(m.string)

    def factory(num_classes, input_shape):
        return CifarResNet(depth, num_classes, image_channels(m.string, input_shape),
                           stem=32, widths=(64, 128, 256))
    return factory
