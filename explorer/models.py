"""Model families for kdx, resolved by name pattern.

Families (names are exact, lower case, no leading zeros):

* ``resnet8/14/20/26/32/44/56/110``: CIFAR ResNets (depth 6n+2, BasicBlock, widths 16/32/64).
* ``resnet8x4``, ``resnet32x4``: the same with a 32-channel stem and widths 64/128/256
  (the "x4" models of the CRD / RepDistiller benchmark).
* ``wrn_<depth>_<k>``: pre-activation Wide ResNets, depth = 6n+4 (n >= 1), widths 16k/32k/64k.
* ``cnn1d_w<width>``: the small MNIST-1D CNN (three strided Conv1d + ReLU, then a linear head).
* ``mlp_<width>x<depth>``: ``depth`` hidden Linear+ReLU layers of ``width`` units.

Every model's ``forward(x, features=False)`` returns logits, or ``(logits, feats)`` with
``features=True``. ``feats`` is a list of intermediate block outputs:

* ResNet / WRN: [stem output, stage-1 output, stage-2 output, stage-3 output], all before the
  global pool. For WRNs these are the raw stage outputs (pre-activation, i.e. before the final
  BN-ReLU), as in Zagoruyko & Komodakis' attention-transfer code.
* CNN1d: the output of each conv block (after its ReLU).
* MLP: the output of each hidden layer (after its ReLU).

Each model carries ``arch`` (its name), ``num_classes``, ``input_shape`` and
``feature_channels`` (channel / unit count of each entry of ``feats``).

``split_trunk_head(model)`` cuts any of these into shared low-level layers and per-branch
high-level layers; ``MultiBranch`` builds ONE's multi-branch student from it.
"""

from __future__ import annotations

import math
import re
from typing import Callable, NamedTuple

import torch
from torch import nn
import torch.nn.functional as F

from explorer.errors import KdxError, bad_value

ALLOWED_ARCHS = (
    "allowed: resnet8/14/20/26/32/44/56/110, resnet8x4, resnet32x4, "
    "wrn_<depth>_<k> with depth = 6n+4, cnn1d_w<width>, mlp_<width>x<depth>"
)

_RESNET_DEPTHS = (8, 14, 20, 26, 32, 44, 56, 110)


# --------------------------------------------------------------------------- helpers


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) for convs, BN weight 1 / bias 0; PyTorch defaults otherwise."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _image_channels(name: str, input_shape: tuple[int, ...]) -> int:
    """Channel count of a (C, H, W) input; (H, W) means one channel."""
    if len(input_shape) == 3:
        return input_shape[0]
    if len(input_shape) == 2:
        return 1
    raise bad_value("input_shape", tuple(input_shape), f"{name} needs (channels, height, width)")


class _KdxModel(nn.Module):
    """Common attributes; subclasses implement ``_forward`` returning (logits, feats)."""

    arch: str

    def forward(self, x: torch.Tensor, features: bool = False):
        logits, feats = self._forward(x)
        if features:
            return logits, feats
        return logits

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError


# --------------------------------------------------------------------------- CIFAR ResNet


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut (1x1 conv + BN when shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
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


class CifarResNet(_KdxModel):
    """ResNet of depth 6n+2: stem conv3x3, three stages of n BasicBlocks (strides 1, 2, 2)."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3,
                 stem: int = 16, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise bad_value("depth", depth, "ResNet depth must be 6n+2 with n >= 1")
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(in_channels, stem)
        self.bn1 = nn.BatchNorm2d(stem)
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
        self.fc = nn.Linear(widths[2], num_classes)
        self.feature_channels = [stem, *widths]
        _init_weights(self)

    def _forward(self, x):
        if x.dim() == 3:
            x = x.unsqueeze(1)
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(f0)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        logits = self.fc(torch.flatten(self.pool(f3), 1))
        return logits, [f0, f1, f2, f3]


# --------------------------------------------------------------------------- Wide ResNet


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, 1x1 conv shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
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


class WideResNet(_KdxModel):
    """WRN-depth-k: stem conv3x3 -> 16, stages 16k/32k/64k of n = (depth-4)/6 blocks each."""

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3,
                 drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise bad_value("depth", depth, "WRN depth must be 6n+4 with n >= 1")
        if widen < 1:
            raise bad_value("widen factor", widen, "must be >= 1")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = _conv3x3(in_channels, 16)
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
        self.fc = nn.Linear(widths[2], num_classes)
        self.feature_channels = [16, *widths]
        _init_weights(self)

    def _forward(self, x):
        if x.dim() == 3:
            x = x.unsqueeze(1)
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        out = F.relu(self.bn(f3))
        logits = self.fc(torch.flatten(self.pool(out), 1))
        return logits, [f0, f1, f2, f3]


# --------------------------------------------------------------------------- 1-D CNN


def _conv1d_out_len(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


class CNN1d(_KdxModel):
    """MNIST-1D small CNN with width W: three strided Conv1d+ReLU blocks, flatten, linear."""

    # (kernel, stride, padding) of the three conv blocks
    _CONVS = ((5, 2, 1), (3, 2, 1), (3, 2, 1))

    def __init__(self, width: int, num_classes: int, in_channels: int, length: int):
        super().__init__()
        convs = []
        cin, seq_len = in_channels, length
        for kernel, stride, padding in self._CONVS:
            convs.append(nn.Conv1d(cin, width, kernel, stride=stride, padding=padding))
            cin = width
            seq_len = _conv1d_out_len(seq_len, kernel, stride, padding)
            if seq_len < 1:
                raise bad_value("input_shape", (in_channels, length),
                                "cnn1d needs a sequence length of at least 4 (8 or more advised)")
        self.convs = nn.ModuleList(convs)
        self.out_len = seq_len
        self.fc = nn.Linear(width * seq_len, num_classes)
        self.feature_channels = [width] * len(convs)
        _init_weights(self)

    def _forward(self, x):
        if x.dim() == 2:
            x = x.unsqueeze(1)
        feats = []
        for conv in self.convs:
            x = F.relu(conv(x))
            feats.append(x)
        return self.fc(torch.flatten(x, 1)), feats


# --------------------------------------------------------------------------- MLP


class MLP(_KdxModel):
    """Flatten, ``depth`` x (Linear(width) + ReLU), Linear(num_classes)."""

    def __init__(self, width: int, depth: int, num_classes: int, in_features: int):
        super().__init__()
        layers = []
        fan_in = in_features
        for _ in range(depth):
            layers.append(nn.Linear(fan_in, width))
            fan_in = width
        self.hidden = nn.ModuleList(layers)
        self.fc = nn.Linear(fan_in, num_classes)
        self.feature_channels = [width] * depth

    def _forward(self, x):
        x = torch.flatten(x, 1)
        feats = []
        for layer in self.hidden:
            x = F.relu(layer(x))
            feats.append(x)
        return self.fc(x), feats


# --------------------------------------------------------------------------- multi-branch (ONE)


class _AddChannel(nn.Module):
    """Give an input without a channel axis one channel (as each family's forward does)."""

    def __init__(self, dims_without_channel: int):
        super().__init__()
        self.dims = dims_without_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) if x.dim() == self.dims else x


class TrunkHead(NamedTuple):
    """A model cut in two: ``head(trunk(x)) == model(x)``; ``channels`` is the channel (or unit)
    count of the trunk's output."""

    trunk: nn.Module
    head: nn.Module
    channels: int


def split_trunk_head(model: nn.Module) -> TrunkHead:
    """Cut a kdx model into shared low-level layers (trunk) and high-level layers (head), sharing its
    modules (no copy), for multi-branch students (ONE, Lan et al. 2018):

    * ResNet / WRN: trunk = stem + stages 1-2; head = stage 3 (+ WRN's final BN-ReLU) + pool + fc;
    * cnn1d: trunk = the first conv block; head = the other two + the linear layer;
    * mlp: trunk = the first hidden layer; head = the remaining hidden layers + the output layer.
    """
    if isinstance(model, CifarResNet):
        trunk = nn.Sequential(_AddChannel(3), model.conv1, model.bn1, nn.ReLU(), model.layer1, model.layer2)
        head = nn.Sequential(model.layer3, model.pool, nn.Flatten(1), model.fc)
        return TrunkHead(trunk, head, model.feature_channels[2])
    if isinstance(model, WideResNet):
        trunk = nn.Sequential(_AddChannel(3), model.conv1, model.block1, model.block2)
        head = nn.Sequential(model.block3, model.bn, nn.ReLU(), model.pool, nn.Flatten(1), model.fc)
        return TrunkHead(trunk, head, model.feature_channels[2])
    if isinstance(model, CNN1d):
        trunk = nn.Sequential(_AddChannel(2), model.convs[0], nn.ReLU())
        rest = [m for conv in model.convs[1:] for m in (conv, nn.ReLU())]
        head = nn.Sequential(*rest, nn.Flatten(1), model.fc)
        return TrunkHead(trunk, head, model.feature_channels[0])
    if isinstance(model, MLP):
        trunk = nn.Sequential(nn.Flatten(1), model.hidden[0], nn.ReLU())
        rest = [m for layer in model.hidden[1:] for m in (layer, nn.ReLU())]
        head = nn.Sequential(*rest, model.fc)
        return TrunkHead(trunk, head, model.feature_channels[0])
    raise bad_value("model", type(model).__name__, "allowed: a kdx ResNet, WRN, cnn1d or mlp model")


class MultiBranch(nn.Module):
    """A multi-branch network (ONE, Lan et al. 2018): one shared trunk, ``branches`` copies of the
    high-level layers each with its own classifier (independently initialised), and a gate on the
    shared features (global average pool, linear, softmax over branches) that weighs the branches'
    logits into the gated ensemble ``z_ens = sum_i g_i * z_i``.

    Train mode: ``forward`` returns a (branches + 1, B, C) tensor: the branch logits z_0..z_{m-1},
    then z_ens. Eval mode: branch 0's logits only (the deployed single-branch student; see `one` in
    explorer/methods.py for why branch 0 and not the ensemble). `forward_all` gives everything.

    The gate is Lan et al.'s pooled FC + softmax without their BatchNorm-ReLU (a batch of one, as a
    last partial batch can be, would break BatchNorm in training mode).
    """

    def __init__(self, arch: str, num_classes: int, input_shape: tuple[int, ...], branches: int = 3):
        super().__init__()
        if isinstance(branches, bool) or not isinstance(branches, int) or branches < 1:
            raise bad_value("branches", branches, "allowed: a whole number >= 1")
        parts = [split_trunk_head(build_model(arch, num_classes, input_shape)) for _ in range(branches)]
        self.trunk = parts[0].trunk
        self.heads = nn.ModuleList(p.head for p in parts)
        self.gate = nn.Linear(parts[0].channels, branches)
        self.arch = arch
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.branches = branches

    def _gate(self, shared: torch.Tensor) -> torch.Tensor:
        pooled = shared.flatten(2).mean(2) if shared.dim() > 2 else shared
        return F.softmax(self.gate(pooled), dim=1)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(branch logits (m, B, C), gate weights (B, m), gated ensemble logits (B, C))."""
        shared = self.trunk(x)
        z = torch.stack([h(shared) for h in self.heads])
        g = self._gate(shared).to(z.dtype)
        ens = torch.einsum("bm,mbc->bc", g, z)
        return z, g, ens

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        if features:
            raise bad_value("features", True, "a multi-branch student exposes no block features")
        if not self.training:
            return self.heads[0](self.trunk(x))
        z, _, ens = self.forward_all(x)
        return torch.cat([z, ens.unsqueeze(0)])


# --------------------------------------------------------------------------- registry
#
# Each entry maps a full-match regex to a parser. The parser receives the match, validates the
# captured numbers (raising KdxError for bad ones) and returns a factory
# ``(num_classes, input_shape) -> nn.Module``. Parsing is separate from building so that
# `is_known_model` never has to allocate a model.

Factory = Callable[[int, tuple], nn.Module]
_NUM = r"([1-9][0-9]*)"  # positive integer, no leading zeros (one canonical spelling per model)


def _unknown(name) -> KdxError:
    return bad_value("architecture", name, ALLOWED_ARCHS)


def _parse_resnet(m: re.Match) -> Factory:
    depth = int(m.group(1))
    if depth not in _RESNET_DEPTHS:
        raise _unknown(m.string)

    def factory(num_classes, input_shape):
        return CifarResNet(depth, num_classes, _image_channels(m.string, input_shape))
    return factory


def _parse_resnet_x4(m: re.Match) -> Factory:
    depth = int(m.group(1))
    if depth not in (8, 32):
        raise _unknown(m.string)

    def factory(num_classes, input_shape):
        return CifarResNet(depth, num_classes, _image_channels(m.string, input_shape),
                           stem=32, widths=(64, 128, 256))
    return factory


def _parse_wrn(m: re.Match) -> Factory:
    depth, widen = int(m.group(1)), int(m.group(2))
    if (depth - 4) % 6 != 0 or depth < 10:
        raise _unknown(m.string)

    def factory(num_classes, input_shape):
        return WideResNet(depth, widen, num_classes, _image_channels(m.string, input_shape))
    return factory


def _parse_cnn1d(m: re.Match) -> Factory:
    width = int(m.group(1))

    def factory(num_classes, input_shape):
        if len(input_shape) == 2:
            channels, length = input_shape
        elif len(input_shape) == 1:
            channels, length = 1, input_shape[0]
        else:
            raise bad_value("input_shape", tuple(input_shape),
                            f"{m.string} needs (channels, length)")
        return CNN1d(width, num_classes, channels, length)
    return factory


def _parse_mlp(m: re.Match) -> Factory:
    width, depth = int(m.group(1)), int(m.group(2))

    def factory(num_classes, input_shape):
        return MLP(width, depth, num_classes, math.prod(input_shape))
    return factory


_REGISTRY: dict[re.Pattern, Callable[[re.Match], Factory]] = {
    re.compile(rf"resnet{_NUM}"): _parse_resnet,
    re.compile(rf"resnet{_NUM}x4"): _parse_resnet_x4,
    re.compile(rf"wrn_{_NUM}_{_NUM}"): _parse_wrn,
    re.compile(rf"cnn1d_w{_NUM}"): _parse_cnn1d,
    re.compile(rf"mlp_{_NUM}x{_NUM}"): _parse_mlp,
}

# Input family each model expects, by the same patterns (for `default_input_family`).
_FAMILY: dict[Callable[[re.Match], Factory], str] = {
    _parse_resnet: "image",
    _parse_resnet_x4: "image",
    _parse_wrn: "image",
    _parse_cnn1d: "sequence",
    _parse_mlp: "any",
}


def _resolve(name) -> tuple[Callable[[re.Match], Factory], Factory]:
    if not isinstance(name, str):
        raise _unknown(name)
    for pattern, parser in _REGISTRY.items():
        m = pattern.fullmatch(name)
        if m is not None:
            return parser, parser(m)
    raise _unknown(name)


def _check_input_shape(input_shape) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise bad_value("input_shape", input_shape, "a tuple of positive integers") from None
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                            for d in shape):
        raise bad_value("input_shape", input_shape, "a tuple of positive integers")
    return shape


# --------------------------------------------------------------------------- public API


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Build the model called `name` for `num_classes` outputs and per-sample `input_shape`.

    Raises KdxError for an unknown name, a WRN depth not of the form 6n+4, a non-positive
    class count or an input shape the family cannot take.
    """
    _, factory = _resolve(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise bad_value("num_classes", num_classes, "a positive integer")
    shape = _check_input_shape(input_shape)
    model = factory(num_classes, shape)
    model.arch = name
    model.num_classes = num_classes
    model.input_shape = shape
    return model


def is_known_model(name: str) -> bool:
    """True when `name` is a valid architecture name (no model is built)."""
    try:
        _resolve(name)
    except KdxError:
        return False
    return True


def list_models() -> list[str]:
    """A representative list of concrete model names (the registry accepts many more)."""
    names = [f"resnet{d}" for d in _RESNET_DEPTHS]
    names += ["resnet8x4", "resnet32x4"]
    names += [f"wrn_16_{k}" for k in (1, 2, 4, 8)]
    names += [f"wrn_28_{k}" for k in (1, 2, 4)]
    names += [f"wrn_40_{k}" for k in (1, 2, 4)]
    names += [f"cnn1d_w{2 ** i}" for i in range(1, 8)]
    names += ["mlp_400x1", "mlp_800x2", "mlp_1200x2"]
    return names


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or frozen; BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def default_input_family(name: str) -> str:
    """'image' (C, H, W) for ResNets/WRNs, 'sequence' (C, L) for cnn1d, 'any' for MLPs."""
    parser, _ = _resolve(name)
    return _FAMILY[parser]
