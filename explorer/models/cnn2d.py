"""``cnn2d_w<width>``: the small 2-D CNN for 28x28-sized images (MNIST, Fashion-MNIST, KMNIST), where a
capacity-gap curve on real images trains in minutes on a CPU.

Two blocks of 3x3 Conv2d (no bias) + BatchNorm + ReLU + 2x2 max pooling, with ``width`` and
``2 * width`` channels, then flatten and one linear layer: the "2 conv layers" nets of the Fashion-MNIST
benchmark table (Xiao et al. 2017, github.com/zalandoresearch/fashion-mnist: 0.876-0.932), with batch
norm so that every width trains at one learning rate. Any (C, H, W) input with H, W >= 4 works.

Feature roles: "blocks" = each block's pooled output; "preact" = each block's conv + BN output (before the
ReLU); "penultimate" = the flattened last block, what the linear layer reads. Built only from layers that
fuse (explorer/training/fused.py), so its seeds train as one grouped model.
"""

from __future__ import annotations

import re

from torch import nn

from explorer.errors import bad_value
from explorer.models.base import AddChannel, KdxModel, TrunkHead, conv3x3, image_channels, init_weights
from explorer.models.features import register_roles
from explorer.models.registry import NUM, Factory, register_family


class CNN2d(KdxModel):
    """Two (conv3x3 + BN + ReLU + maxpool 2) blocks of `width` and 2 * `width` channels, flatten, linear."""

    def __init__(self, width: int, num_classes: int, in_channels: int, height: int, width_px: int):
        super().__init__()
        if min(height, width_px) < 4:
            raise bad_value("input_shape", (in_channels, height, width_px), "cnn2d needs images of at least 4x4")
        channels = [width, 2 * width]
        cin, convs = in_channels, []
        for c in channels:
            convs.append(nn.Sequential(conv3x3(cin, c), nn.BatchNorm2d(c)))
            cin = c
        self.convs = nn.ModuleList(convs)
        self.acts = nn.ModuleList(nn.ReLU() for _ in channels)
        self.pools = nn.ModuleList(nn.MaxPool2d(2) for _ in channels)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(channels[-1] * (height // 4) * (width_px // 4), num_classes)
        self.feature_channels = channels
        init_weights(self)

    def _forward(self, x):
        if x.dim() == 3:
            x = x.unsqueeze(1)
        for conv, act, pool in zip(self.convs, self.acts, self.pools):
            x = pool(act(conv(x)))
        return self.fc(self.flatten(x))

    def trunk_head(self) -> TrunkHead:
        """Trunk = the first block; head = the second block + the linear layer."""
        trunk = nn.Sequential(AddChannel(3), self.convs[0], self.acts[0], self.pools[0])
        head = nn.Sequential(self.convs[1], self.acts[1], self.pools[1], self.flatten, self.fc)
        return TrunkHead(trunk, head, self.feature_channels[0])


register_roles(CNN2d, {"blocks": ["pools.0", "pools.1"], "penultimate": ["flatten"], "preact": ["convs.0", "convs.1"]})


@register_family(rf"cnn2d_w{NUM}", input_family="image", allowed="cnn2d_w<width>",
                 examples=[f"cnn2d_w{2 ** i}" for i in range(1, 7)])
def _cnn2d(m: re.Match) -> Factory:
    width = int(m.group(1))

    def factory(num_classes, input_shape):
        channels = image_channels(m.string, input_shape)
        height, width_px = input_shape[-2:]
        return CNN2d(width, num_classes, channels, height, width_px)
    return factory
