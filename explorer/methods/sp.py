"""Similarity-preserving KD (SP; Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019).

For a batch of b samples, Q is a layer's activation reshaped to (b, features); G = Q Q^T, row-wise
L2-normalised (paper eq. 2-3). The loss (paper eq. 4-5) is

    loss = CE(s, y) + gamma / b^2 * ||G_t - G_s||_F^2

on the output of block 3 (seed 000 table I: "SP, standard, block 3, gamma = 3000"; the paper's CIFAR
value is also 3000). Seed 000 and the paper agree; kdx follows both. No KD term (table I lists none).
G is b x b whatever the widths, so the student and teacher need no connector, and SP runs on every
family (on an MLP, block 3 is the last hidden layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from explorer.methods.base import HParam, LossInputs, Method, register
from explorer.methods.feature_ops import pick
from explorer.methods.losses import cross_entropy

BLOCKS = (3,)


def similarity(f: Tensor) -> Tensor:
    """The row-normalised b x b similarity matrix of a batch of features."""
    q = f.float().flatten(1)
    return F.normalize(q @ q.t(), dim=1)


def sp_term(fs: Tensor, ft: Tensor) -> Tensor:
    """||G_t - G_s||_F^2 / b^2."""
    b = fs.shape[0]
    return (similarity(ft) - similarity(fs)).pow(2).sum() / (b * b)


@dataclass(frozen=True)
class SimilarityPreserving(Method):
    __doc__ = __doc__

    def build_modules(self, student_shapes, teacher_shapes, hp):
        pick(student_shapes, BLOCKS, self.name)
        pick(teacher_shapes, BLOCKS, self.name)
        return None

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        ce = cross_entropy(inputs.student_logits.float(), inputs.targets)
        (fs,), (ft,) = pick(inputs.student_features, BLOCKS, self.name), pick(inputs.teacher_features, BLOCKS, self.name)
        return {"ce": ce, "sp": hp["gamma"] * sp_term(fs, ft)}


register(SimilarityPreserving(
    name="sp",
    description="similarity-preserving KD: CE + gamma/b^2 * ||G_t - G_s||_F^2 of row-normalised batch "
                "similarity matrices, block 3",
    source="Tung & Mori ICCV 2019 eq. 4-5; seed 000 table I (block 3, gamma=3000)",
    needs_teacher=True, teacher_kinds=("plain", "distilled"), feature_role="blocks",
    hparams=(HParam("gamma", 3000.0, low=0.0, help="weight of the similarity-preserving loss"),),
))
