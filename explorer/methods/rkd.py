"""Relational KD (RKD; Park et al., "Relational Knowledge Distillation", CVPR 2019): rkd_d, rkd_a, rkd_da.

On the embeddings t_i (teacher) and s_i (student) of a batch:

* distance-wise (paper eq. 4-5): psi_D(i, j) = ||e_i - e_j||_2 / mu, mu = the mean distance over the
  pairs i != j of the batch; L_D = mean over all (i, j) of Huber(psi_D^s(i, j), psi_D^t(i, j));
* angle-wise (paper eq. 6-7): psi_A(i, j, k) = <(e_i - e_j)/||e_i - e_j||, (e_k - e_j)/||e_k - e_j||>;
  L_A = mean over all (i, j, k) of Huber(psi_A^s, psi_A^t);

with Huber = smooth L1 (delta 1). loss = CE(s, y) + lambda_d * L_D + lambda_a * L_A: rkd_d has the
distance term only, rkd_a the angle term only, rkd_da both (seed 000 table III's RKD-D, RKD-A, RKD-DA;
table I: lambda_D = 25, lambda_A = 50, as in the paper). No KD term (table I lists none).

Which features: seed 000 table I says "block 3". The RKD paper (and RepDistiller, and the authors' code)
apply RKD to the final embedding; kdx uses the "penultimate" role, the pooled, flattened features the
classifier reads: for a CIFAR ResNet that is block 3's output average-pooled (for a WRN, after its final
BN-ReLU), so it is seed 000's block 3 without its spatial axes. It works on every family (an MLP's last
hidden layer) and needs no connector (distances and angles compare within each network).
The means run over all b^2 (b^3) index tuples, the diagonal (zero in both networks) included, as in the
authors' code (the paper writes sums; the mean keeps lambda independent of the batch size).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from explorer.methods.base import HParam, LossInputs, Method, register
from explorer.methods.losses import cross_entropy


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """(b, b) Euclidean distances, exactly 0 on the diagonal."""
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp_min(eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=d.dtype))


def distance_term(es: Tensor, et: Tensor) -> Tensor:
    es, et = es.float().flatten(1), et.float().flatten(1)
    with torch.no_grad():
        dt = pairwise_distances(et)
        dt = dt / dt[dt > 0].mean()
    ds = pairwise_distances(es)
    ds = ds / ds[ds > 0].mean()
    return F.smooth_l1_loss(ds, dt)


def angles(e: Tensor) -> Tensor:
    """(b^3,) cosines of the angle at j between i and k: <u_ji, u_jk>, u_ji = normalise(e_i - e_j)."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # diff[j, i] = e_i - e_j, normalised
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def angle_term(es: Tensor, et: Tensor) -> Tensor:
    es, et = es.float().flatten(1), et.float().flatten(1)
    with torch.no_grad():
        at = angles(et)
    return F.smooth_l1_loss(angles(es), at)


LAMBDA_D = HParam("lambda_d", 25.0, low=0.0, help="weight of RKD's distance-wise loss")
LAMBDA_A = HParam("lambda_a", 50.0, low=0.0, help="weight of RKD's angle-wise loss")


@dataclass(frozen=True)
class RelationalKD(Method):
    __doc__ = __doc__

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        terms = {"ce": cross_entropy(inputs.student_logits.float(), inputs.targets)}
        es, et = inputs.student_features[-1], inputs.teacher_features[-1]
        if "lambda_d" in hp:
            terms["rkd_d"] = hp["lambda_d"] * distance_term(es, et)
        if "lambda_a" in hp:
            terms["rkd_a"] = hp["lambda_a"] * angle_term(es, et)
        return terms


SOURCE = "Park et al. CVPR 2019 eq. 4-7 (penultimate embedding); seed 000 table I (lambda_D=25, lambda_A=50)"
for _name, _what, _hps in (("rkd_d", "distance-wise", (LAMBDA_D,)), ("rkd_a", "angle-wise", (LAMBDA_A,)),
                           ("rkd_da", "distance- and angle-wise", (LAMBDA_D, LAMBDA_A))):
    register(RelationalKD(
        name=_name, description=f"relational KD, {_what}: CE + Huber loss between the student's and teacher's "
                                f"relations of the penultimate embeddings",
        source=SOURCE, needs_teacher=True, teacher_kinds=("plain", "distilled"), feature_role="penultimate",
        hparams=_hps,
    ))
