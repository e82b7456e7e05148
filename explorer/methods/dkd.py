"""Decoupled knowledge distillation (DKD; Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022).

The classical KD loss splits into a target-class part and a non-target-class part (paper eq. 1-7).
With p = softmax(z / T) over the K classes and t the label:

    b   = [p_t, 1 - p_t]                      binary target / non-target probabilities
    p^  = softmax over the K - 1 non-target logits (the label's logit removed)
    TCKD = KL(b_teacher || b_student)          target-class KD
    NCKD = KL(p^_teacher || p^_student)        non-target-class KD
    loss = CE(z_s, y) + w(epoch) * T^2 * (alpha * TCKD + beta * NCKD),  both KLs averaged over the batch

with the KD weight warmed up linearly, w(epoch) = min(epoch / warmup_epochs, 1) (1-based epochs), as
the paper's CIFAR recipe does over the first 20 epochs. Defaults are the paper's CIFAR-100 values
(section 4, implementation details): alpha = 1, beta = 8, T = 4, warm-up 20 epochs.

Conventions: here alpha weighs TCKD, as in the paper; the CE term keeps weight 1 (it is not kdx's
(1 - alpha) * CE, so DKD's alpha is not kd's alpha). The T^2 factor is not written in the paper's
equations but is in its public code (mdistiller), and kdx follows the code so DKD's scale matches
Hinton KD's. Takes one teacher (plain or distilled), not an ensemble.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from explorer.methods.base import TEMPERATURE, HParam, LossInputs, Method, register
from explorer.methods.losses import cross_entropy, log_softmax


def _binary_kl(p_teacher: Tensor, p_student: Tensor) -> Tensor:
    """KL([p_t, 1 - p_t] || [p_s, 1 - p_s]) per sample, for the label's probabilities."""
    eps = torch.finfo(p_student.dtype).tiny
    b_t = torch.stack([p_teacher, 1 - p_teacher], 1).clamp_min(eps)
    b_s = torch.stack([p_student, 1 - p_student], 1).clamp_min(eps)
    return (b_t * (b_t.log() - b_s.log())).sum(1)


def dkd_terms(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD), each T^2 * KL averaged over the batch."""
    T = temperature
    s, t = student_logits.float() / T, teacher_logits.float() / T
    label = F.one_hot(targets, s.shape[1]).bool()
    p_s = F.softmax(s, 1).gather(1, targets.view(-1, 1)).squeeze(1)
    p_t = F.softmax(t, 1).gather(1, targets.view(-1, 1)).squeeze(1)
    tckd = _binary_kl(p_t, p_s).mean() * T**2
    # the label's logit pushed to -inf: a softmax over the non-target classes only
    log_q_s = log_softmax(s.masked_fill(label, float("-inf")), 1).masked_fill(label, 0.0)
    log_q_t = log_softmax(t.masked_fill(label, float("-inf")), 1).masked_fill(label, 0.0)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(1).mean() * T**2
    return tckd, nckd


@dataclass(frozen=True)
class DecoupledKD(Method):
    __doc__ = __doc__

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        ce = cross_entropy(inputs.student_logits.float(), inputs.targets)
        tckd, nckd = dkd_terms(inputs.student_logits, inputs.teacher_logits, inputs.targets, hp["temperature"])
        w = min(inputs.epoch / hp["warmup_epochs"], 1.0) if hp["warmup_epochs"] > 0 else 1.0
        return {"ce": ce, "tckd": w * hp["alpha"] * tckd, "nckd": w * hp["beta"] * nckd}


register(DecoupledKD(
    name="dkd",
    description="decoupled KD: CE + warm-up * (alpha * target-class KD + beta * non-target-class KD)",
    source="Zhao et al. CVPR 2022, eq. 7 and section 4 (CIFAR: alpha=1, beta=8, T=4, 20 warm-up epochs); "
           "T^2 as in its public code",
    needs_teacher=True, teacher_kinds=("plain", "distilled"),
    hparams=(TEMPERATURE,
             HParam("alpha", 1.0, low=0.0, help="weight of target-class KD (TCKD), >= 0"),
             HParam("beta", 8.0, low=0.0, help="weight of non-target-class KD (NCKD), >= 0"),
             HParam("warmup_epochs", 20, low=0, integer=True,
                    help="epochs over which the KD weight rises linearly to 1; 0 = none")),
))
