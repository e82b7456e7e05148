"""Attention transfer (AT; Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

The activation-based spatial attention map of a feature map A (C channels at each position) is
Q = vec(mean_c A_c^2) (paper eq. 1 with p = 2; the mean over channels as in the authors' code), and
the loss (paper eq. 2) is

    loss = CE(s, y) + beta/2 * sum_j mean_{b, positions} (Q_s,j/||Q_s,j||_2 - Q_t,j/||Q_t,j||_2)^2

over the attention maps j of blocks 1, 2, 3 (seed 000 table I: "AT, standard, blocks 1,2,3, beta = 1000").
Seed 000 gives only beta = 1000 and follows the AT authors' recipe (section III), so kdx follows the AT
paper and its code for the scale: beta/2 times the mean over the batch and the map positions of the
squared difference of the normalised maps (RepDistiller drops the 1/2; the seed does not say).
No KD term: seed 000's AT is CE plus the attention loss (its table I lists no alpha or T for AT).
Where the student's and teacher's maps differ in size, the larger is average-pooled to the smaller.
On cnn1d the maps are 1-D (one value per sequence position); MLPs have no positions and are refused.
The mean over positions makes beta's effect grow as maps shrink: cnn1d's maps on MNIST-1D have 19/10/5
positions (CIFAR's 1024/256/64), and there beta = 1000 lets the attention term dominate (CE blew up in a
one-epoch trial); the CPU spec (tests/specs/seed000_methods_small.yaml) uses beta = 10.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from explorer.methods.base import HParam, LossInputs, Method, register
from explorer.methods.feature_ops import match_spatial, pick
from explorer.methods.losses import cross_entropy

BLOCKS = (1, 2, 3)


def attention_map(f: Tensor) -> Tensor:
    """(B, C, *positions) -> (B, positions): the L2-normalised mean over channels of f^2."""
    return F.normalize(f.float().pow(2).mean(1).flatten(1), dim=1)


def at_term(fs: Tensor, ft: Tensor) -> Tensor:
    """mean over batch and positions of (Q_s/||Q_s|| - Q_t/||Q_t||)^2 for one pair of maps."""
    fs, ft = match_spatial(fs, ft)
    return (attention_map(fs) - attention_map(ft)).pow(2).mean()


@dataclass(frozen=True)
class AttentionTransfer(Method):
    __doc__ = __doc__

    def build_modules(self, student_shapes, teacher_shapes, hp):
        pick(student_shapes, BLOCKS, self.name)  # a clear error for a model with too few blocks
        pick(teacher_shapes, BLOCKS, self.name)
        return None

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        ce = cross_entropy(inputs.student_logits.float(), inputs.targets)
        pairs = zip(pick(inputs.student_features, BLOCKS, self.name), pick(inputs.teacher_features, BLOCKS, self.name))
        at = sum(at_term(fs, ft) for fs, ft in pairs)
        return {"ce": ce, "at": hp["beta"] / 2 * at}


register(AttentionTransfer(
    name="at",
    description="attention transfer: CE + beta/2 * squared distance of normalised spatial attention maps, "
                "blocks 1, 2, 3",
    source="Zagoruyko & Komodakis ICLR 2017 eq. 2 (p = 2); seed 000 table I (blocks 1,2,3, beta=1000)",
    needs_teacher=True, teacher_kinds=("plain", "distilled"), feature_role="blocks", spatial_features=True,
    hparams=(HParam("beta", 1000.0, low=0.0, help="weight of a feature loss (at: attention, beta/2 factor; "
                                                  "dkd: non-target KD)"),),
))
