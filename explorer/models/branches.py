"""Multi-branch students (ONE, Lan et al. 2018), built from any family that can be cut in two.

`split_trunk_head(model)` asks the model's family for its cut (each family's ``trunk_head``, defined
next to the family: ResNet / WRN cut after stage 2, cnn1d after the first conv block, mlp after the
first hidden layer), so this module lists no families.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from explorer.errors import bad_value
from explorer.models.base import KdxModel, TrunkHead
from explorer.models.registry import build_model


def split_trunk_head(model: nn.Module) -> TrunkHead:
    """Cut a kdx model into shared low-level layers (trunk) and high-level layers (head), sharing its
    modules (no copy), so that ``head(trunk(x)) == model(x)``."""
    if not isinstance(model, KdxModel):
        raise bad_value("model", type(model).__name__, "allowed: a kdx ResNet, WRN, cnn1d or mlp model")
    return model.trunk_head()


class MultiBranch(nn.Module):
    """A multi-branch network (ONE, Lan et al. 2018): one shared trunk, ``branches`` copies of the
    high-level layers each with its own classifier (independently initialised), and a gate on the
    shared features (global average pool, linear, softmax over branches) that weighs the branches'
    logits into the gated ensemble ``z_ens = sum_i g_i * z_i``.

    Train mode: ``forward`` returns a (branches + 1, B, C) tensor: the branch logits z_0..z_{m-1},
    then z_ens. Eval mode: branch 0's logits only (the deployed single-branch student; see `one` in
    explorer/methods/online.py for why branch 0 and not the ensemble). `forward_all` gives everything.

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
