"""Pre-activation Wide ResNets (Zagoruyko & Komodakis 2016): ``wrn_<depth>_<k>``.

depth = 6n+4 (n >= 1): stem conv3x3 -> 16, three stages of n pre-activation blocks with widths
16k/32k/64k (strides 1, 2, 2), a final BN-ReLU, global average pool, linear.

Feature roles: "blocks" = [stem output, stage-1, stage-2, stage-3 outputs], the raw stage outputs
(pre-activation, i.e. before the final BN-ReLU), as in the authors' attention-transfer code;
"penultimate" = the pooled, flattened features the classifier reads; "preact" = each stage's output
after the BN that precedes its ReLU (the next stage's first bn1; the final bn), as in the overhaul-
distillation code.
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


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, 1x1 conv shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.drop_rate = drop_rate
        self.equal_in_out = cin == cout and stride == 1
        self.shortcut = (
            None if self.equal_in_out
            else nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv1(act)
        out = F.relu(self.bn2(out))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # As in the reference WRN code, a projection shortcut sees the pre-activated input.
        residual = x if self.shortcut is None else self.shortcut(act)
        return out + residual


class WideResNet(KdxModel):
    """WRN-depth-k: stem conv3x3 -> 16, stages 16k/32k/64k of n = (depth-4)/6 blocks each.

    ``flatten`` is a module (not a functional call) so the classifier's input has a path that
    feature hooks can reach.
    """

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3,
                 drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise bad_value("depth", depth, "WRN depth must be 6n+4 with n >= 1")
        if widen < 1:
            raise bad_value("widen factor", widen, "must be >= 1")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = conv3x3(in_channels, 16)
        stages = []
        cin = 16
        for width, stride in zip(widths, (1, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(PreActBlock(cin, width, stride if i == 0 else 1, drop_rate))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(widths[2])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(widths[2], num_classes)
        self.feature_channels = [16, *widths]
        init_weights(self)

    def _forward(self, x):
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.flatten(self.pool(F.relu(self.bn(x)))))

    def trunk_head(self) -> TrunkHead:
        """Trunk = stem + stages 1-2; head = stage 3 + the final BN-ReLU + pool + fc."""
        trunk = nn.Sequential(AddChannel(3), self.conv1, self.block1, self.block2)
        head = nn.Sequential(self.block3, self.bn, nn.ReLU(), self.pool, self.flatten, self.fc)
        return TrunkHead(trunk, head, self.feature_channels[2])


register_roles(WideResNet, {"blocks": ["conv1", "block1", "block2", "block3"], "penultimate": ["flatten"],
                            "preact": ["block2.0.bn1", "block3.0.bn1", "bn"]})


@register_family(rf"wrn_{NUM}_{NUM}", input_family="image", allowed="wrn_<depth>_<k> with depth = 6n+4",
                 examples=[f"wrn_{d}_{k}" for d, ks in ((16, (1, 2, 4, 8)), (28, (1, 2, 4)), (40, (1, 2, 4)))
                           for k in ks])
def _wrn(m: re.Match) -> Factory:
    depth, widen = int(m.group(1)), int(m.group(2))
    if (depth - 4) % 6 != 0 or depth < 10:
        raise unknown_arch(m.string)

    def factory(num_classes, input_shape):
        return WideResNet(depth, widen, num_classes, image_channels(m.string, input_shape))
    return factory
