"""Loss formulas several methods share (the KD convention is fixed for all of kdx; docs/DESIGN.md):

    loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(p_teacher^T || p_student^T)

with the KL averaged over the batch (`reduction="batchmean"`): an elementwise mean would silently
divide the KD term by the number of classes (seed 001, note on the KL reduction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# On CPU, torch's log-softmax over a last dimension shorter than 16 (10 classes) takes a scalar path,
# 5-8x slower than its kernel over an outer dimension (`benchmarks/softmax_speed.py`); with the batch
# rows of 8 fused members it was a quarter of a fused 1-D CNN step. Fewer classes than this go through
# the outer-dimension kernel, which gives the same values.
FEW_CLASSES = 16


def log_softmax(x: Tensor, dim: int = 1) -> Tensor:
    """`F.log_softmax(x, dim)`, with the classes moved to the front first where that is faster (CPU, few
    classes, `FEW_CLASSES`)."""
    if x.device.type == "cpu" and x.shape[dim] < FEW_CLASSES:
        return F.log_softmax(x.movedim(dim, 0), 0).movedim(0, dim)
    return F.log_softmax(x, dim)


def cross_entropy(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """`F.cross_entropy(logits, targets)` (class indices, no weights or smoothing) via `log_softmax`."""
    return F.nll_loss(log_softmax(logits, 1), targets, reduction=reduction)


def kd_kl(student_logits: Tensor, teacher_logits: Tensor | list[Tensor], temperature: float,
          teacher_temperature: float | None = None) -> Tensor:
    """T^2 * KL(softmax(t/T_t) || softmax(s/T)), averaged over the batch (Hinton et al.; seed 001 eq. 1).

    `teacher_temperature` (T_t) defaults to T; a separate teacher temperature follows seed 002
    section 5.2 and the factor stays the student's T^2. A list of teacher logits (an ensemble) gives
    the mean of the per-teacher KD terms (MKD, seed 001 section 4.0.2)."""
    if isinstance(teacher_logits, (list, tuple)):
        return torch.stack([kd_kl(student_logits, t, temperature, teacher_temperature) for t in teacher_logits]).mean()
    t_t = temperature if teacher_temperature is None else teacher_temperature
    log_p_s = log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = log_softmax(teacher_logits.float() / t_t, dim=1)
    # KL written out (F.kl_div with log_target computes the same terms; it has no vmap rule, and fused
    # members' losses are vmapped, explorer/training/fused.py)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean() * temperature**2


def soft_kl(student_logits: Tensor, target: Tensor, temperature: float, reduction: str = "batchmean") -> Tensor:
    """T^2 * KL(target || softmax(s/T)) for given target probabilities (zeros allowed);
    `reduction="none"` gives one value per sample."""
    log_p_s = log_softmax(student_logits.float() / temperature, dim=1)
    target = target.float()
    kl = (torch.xlogy(target, target) - target * log_p_s).sum(1) * temperature**2  # F.kl_div's terms, vmappable
    return kl.mean() if reduction == "batchmean" else kl


def smoothed_targets(targets: Tensor, num_classes: int, confidence: float) -> Tensor:
    """`confidence` on the labelled class, (1 - confidence)/(K - 1) on each other class (seed 002 eq. 3)."""
    other = (1.0 - confidence) / (num_classes - 1)
    # a product, not a fill and a scatter: fused members may each have their own confidence (a vmapped
    # tensor, explorer/training/fused.py)
    hot = (targets.view(-1, 1) == torch.arange(num_classes, device=targets.device)).float()
    return hot * confidence + (1.0 - hot) * other
