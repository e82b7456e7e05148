"""Loss formulas several methods share (the KD convention is fixed for all of kdx; ../shared/DESIGN.md):

    loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(p_teacher^T || p_student^T)

with the KL averaged over the batch (`reduction="batchmean"`): an elementwise mean would silently
divide the KD term by the number of classes (seed 001, note on the KL reduction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def kd_kl(student_logits: Tensor, teacher_logits: Tensor | list[Tensor], temperature: float,
          teacher_temperature: float | None = None) -> Tensor:
    """T^2 * KL(softmax(t/T_t) || softmax(s/T)), averaged over the batch (Hinton et al.; seed 001 eq. 1).

    `teacher_temperature` (T_t) defaults to T; a separate teacher temperature follows seed 002
    section 5.2 and the factor stays the student's T^2. A list of teacher logits (an ensemble) gives
    the mean of the per-teacher KD terms (MKD, seed 001 section 4.0.2)."""
    if isinstance(teacher_logits, (list, tuple)):
        return torch.stack([kd_kl(student_logits, t, temperature, teacher_temperature) for t in teacher_logits]).mean()
    t_t = temperature if teacher_temperature is None else teacher_temperature
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t_t, dim=1)
    # KL written out (F.kl_div with log_target computes the same terms; it has no vmap rule, and fused
    # members' losses are vmapped, explorer/fused.py)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean() * temperature**2


def soft_kl(student_logits: Tensor, target: Tensor, temperature: float, reduction: str = "batchmean") -> Tensor:
    """T^2 * KL(target || softmax(s/T)) for given target probabilities (zeros allowed);
    `reduction="none"` gives one value per sample."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    target = target.float()
    kl = (torch.xlogy(target, target) - target * log_p_s).sum(1) * temperature**2  # F.kl_div's terms, vmappable
    return kl.mean() if reduction == "batchmean" else kl


def smoothed_targets(targets: Tensor, num_classes: int, confidence: float) -> Tensor:
    """`confidence` on the labelled class, (1 - confidence)/(K - 1) on each other class (seed 002 eq. 3)."""
    other = (1.0 - confidence) / (num_classes - 1)
    q = torch.full((len(targets), num_classes), other, device=targets.device)
    return q.scatter(1, targets.view(-1, 1), confidence)  # out of place: per-member losses are vmapped
