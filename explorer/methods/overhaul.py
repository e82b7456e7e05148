"""Activation-boundary methods from seed 001 (sections 3.0.1-3.0.2, table 3): AB and OH.

Both read the pre-ReLU outputs of blocks 1, 2, 3 (the "preact" role of each family: for a CIFAR ResNet
the last block's residual branch after its second BN, for a WRN the BN before each stage's ReLU, for
cnn1d the conv output, for an MLP the hidden Linear output), map each student feature to the teacher's
channels with a 1x1 conv + BN connector owned by the method (Linear + BN on flat features), and weigh
blocks 1, 2, 3 by 1/4, 1/2, 1 as both authors' codes do. Sums run over the elements, divided by the batch.

* **ab** (Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries", AAAI 2019, eq. 5
  with margin mu = 1): for connector output r(s) and teacher pre-ReLU t,
      ab = 3/1000 * sum_n w_n * sum ((r+mu)^2 [r > -mu, t <= 0] + (r-mu)^2 [r <= mu, t > 0]) / B
  (the scale 3/1000 and the weights are the authors' code's). Two stages, as seed 001 describes: stage 1
  trains the student and connectors on ab alone (`init_epochs`, constant `init_lr` = 0.1 as in the
  authors' code); stage 2 is Hinton KD with seed 001's setting (alpha = 0.5, T = 5, section 5.2).
  init_epochs = 120 is seed 001's 60:40 split of its 200 epochs (the init stage runs before the
  student's recipe: give the student 80 epochs to match the seed's split exactly).
* **oh** (Heo et al., "A Comprehensive Overhaul of Feature Distillation", ICCV 2019, eq. 2-5): the
  teacher's feature is clipped below at a per-channel margin m = E[t | t < 0] (teacher transform
  max(t, m)); the partial L2 distance skips positions where the student is already below a negative
  target:
      oh = oh_weight * sum_n w_n * sum ((r-m)^2 [r > m, t <= m] + (r-t)^2 [r > t, m < t <= 0]
                                         + (r-t)^2 [t > 0]) / B,    loss = CE + oh
  One stage, no KD term (seed 001 section 5.3.1: OH lacks it; table 3: 87.09%). OH computes m in closed
  form from the teacher's BN parameters (a Gaussian's mean below zero); kdx estimates the same
  expectation from the teacher's features in each batch (per channel; 0 where a channel has no negative
  value), so it needs no BN before every feature (cnn1d has none). oh_weight = 1/1000 as in OH's CIFAR code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from explorer.methods.base import HParam, LossInputs, Method, register
from explorer.methods.feature_ops import check_same_spatial, connector, match_spatial, pick
from explorer.methods.fitnet import TwoStage
from explorer.methods.losses import cross_entropy

BLOCKS = (1, 2, 3)
WEIGHTS = (0.25, 0.5, 1.0)


class Connectors(nn.Module):
    def __init__(self, student_shapes, teacher_shapes):
        super().__init__()
        self.maps = nn.ModuleList(connector(s, t) for s, t in zip(student_shapes, teacher_shapes))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return [m(f.float()) for m, f in zip(self.maps, feats)]


def build_connectors(method: Method, student_shapes, teacher_shapes) -> Connectors:
    s, t = pick(student_shapes, BLOCKS, method.name), pick(teacher_shapes, BLOCKS, method.name)
    for a, b in zip(s, t):
        check_same_spatial(method.name, a, b)
    return Connectors(s, t)


def pairs(method: Method, inputs: LossInputs) -> list[tuple[Tensor, Tensor]]:
    """(connector output, teacher pre-ReLU feature) for blocks 1, 2, 3, spatial sizes matched."""
    s = inputs.modules(pick(inputs.student_features, BLOCKS, method.name))
    t = [f.float() for f in pick(inputs.teacher_features, BLOCKS, method.name)]
    return [match_spatial(a, b) for a, b in zip(s, t)]


def ab_sum(r: Tensor, t: Tensor, mu: float = 1.0) -> Tensor:
    """AB's alternative L2 loss summed over every element."""
    neg, pos = (t <= 0).float(), (t > 0).float()
    return ((r + mu).pow(2) * ((r > -mu).float() * neg) + (r - mu).pow(2) * ((r <= mu).float() * pos)).sum()


def negative_mean(t: Tensor) -> Tensor:
    """Per-channel E[t | t < 0] over the batch and positions, shaped to broadcast against t (0 if none)."""
    flat = t.transpose(0, 1).reshape(t.shape[1], -1)  # (C, everything else): a contiguous reduction
    neg = flat < 0
    m = flat.where(neg, 0.0).sum(1) / neg.sum(1).clamp_min(1)
    return m.view(1, -1, *([1] * (t.dim() - 2)))


def oh_sum(r: Tensor, t: Tensor, m: Tensor) -> Tensor:
    """OH's partial L2 between r and the margin-clipped teacher feature, summed over every element."""
    below, between, pos = (t <= m), (t > m) & (t <= 0), (t > 0)
    return ((r - m).pow(2) * ((r > m) & below).float() + (r - t).pow(2) * ((r > t) & between).float()
            + (r - t).pow(2) * pos.float()).sum()


@dataclass(frozen=True)
class ActivationBoundaries(TwoStage):
    __doc__ = __doc__

    def init_recipe(self, hp):
        return hp["init_lr"], (), 1.0

    def build_modules(self, student_shapes, teacher_shapes, hp):
        return build_connectors(self, student_shapes, teacher_shapes)

    def init_losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        b = len(inputs.targets)
        total = sum(w * ab_sum(r, t) for w, (r, t) in zip(WEIGHTS, pairs(self, inputs)))
        return {"ab": hp["ab_weight"] * total / b}


@dataclass(frozen=True)
class Overhaul(Method):
    __doc__ = __doc__

    def build_modules(self, student_shapes, teacher_shapes, hp):
        return build_connectors(self, student_shapes, teacher_shapes)

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        ce = cross_entropy(inputs.student_logits.float(), inputs.targets)
        b = len(inputs.targets)
        total = 0.0
        for w, (r, t) in zip(WEIGHTS, pairs(self, inputs)):
            with torch.no_grad():
                m = negative_mean(t)
            total = total + w * oh_sum(r, t, m)
        return {"ce": ce, "oh": hp["oh_weight"] * total / b}


COMMON = dict(needs_teacher=True, teacher_kinds=("plain", "distilled"), feature_role="preact")
register(ActivationBoundaries(
    name="ab",
    description="activation boundaries: stage 1 = AB hinge-like loss on pre-ReLU blocks 1-3 through connectors, "
                "stage 2 = Hinton KD",
    source="Heo et al. AAAI 2019 (margin 1, the authors' code's weights); seed 001 section 3.0.1 (two phases, "
           "60:40); stage 2 = seed 001's KD setting (alpha=0.5, T=5, section 5.2)",
    hparams=(HParam("temperature", 5.0, low=0.0, low_open=True, help="softmax temperature T > 0"),
             HParam("alpha", 0.5, low=0.0, high=1.0, help="weight of the KD term, in [0, 1]"),
             HParam("init_epochs", 120, low=0, integer=True,
                    help="epochs of the init stage before stage 2 (ab: 60% of seed 001's 200); 0 = none"),
             HParam("init_lr", 0.1, low=0.0, low_open=True, help="learning rate of the init stage"),
             HParam("ab_weight", 0.003, low=0.0, help="weight of AB's loss (the authors' code: 3/1000)")),
    **COMMON,
))
register(Overhaul(
    name="oh",
    description="overhaul distillation: CE + partial L2 between connected pre-ReLU student features and "
                "margin-clipped teacher features, blocks 1-3",
    source="Heo et al. ICCV 2019 eq. 2-5 (margin estimated per batch); seed 001 section 3.0.2 (table 3, no KD term)",
    hparams=(HParam("oh_weight", 0.001, low=0.0, help="weight of OH's loss (its CIFAR code: 1/1000)"),),
    **COMMON,
))
