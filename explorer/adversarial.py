"""Adversarial training (seed 003 section 4.4): the hook the training loop calls on each batch.

`make_adversary(cfg, splits)` returns None (plain training) or a callable
`adversary(model, x, y, generator) -> x'`: the batch the student trains on. The teacher's outputs are
always taken on the clean batch (seed 003 eqs. 6-7).
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

Adversary = Callable[[nn.Module, Tensor, Tensor, object], Tensor]


def make_adversary(cfg, splits) -> Adversary | None:
    return None
