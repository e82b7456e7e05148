"""Weighted soft labels (Zhou et al. 2021; seed 002 section 5.2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from explorer.methods.base import ALPHA, HParam, LossInputs, Method, register
from explorer.methods.losses import cross_entropy, soft_kl


@dataclass(frozen=True)
class WeightedSoftLabels(Method):
    """Weighted soft labels (WSL; Zhou et al. 2021, the first stage of seed 002 section 5.2):
    per-sample KD weights w_i = 1 - exp(-CE_s,i / CE_t,i), with CE_s,i and CE_t,i the student's and the
    teacher's cross-entropy on the true class (at T = 1, both detached: the weights carry no
    gradient). A sample the teacher fits worse than the student gets a small weight. Loss, in the
    project's convention: (1 - alpha) * CE + alpha * T^2 * mean_i(w_i * KL_i(p_t^T || p_s^T)).
    Default T = 2 (seed 002 section 5.2, first stage); alpha 0.9. Zhou et al. balance the two terms
    with their own weight; here alpha does that, as for every method."""

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        logits = inputs.student_logits.float()
        y = inputs.targets
        t_logits = inputs.teacher_logits.float()
        ce = cross_entropy(logits, y)
        with torch.no_grad():
            ce_s = cross_entropy(logits.detach(), y, reduction="none")
            ce_t = cross_entropy(t_logits, y, reduction="none")
            w = 1.0 - torch.exp(-ce_s / ce_t.clamp_min(1e-7))
        T = hp["temperature"]
        kl = soft_kl(logits, F.softmax(t_logits / T, dim=1), T, reduction="none")
        alpha = hp["alpha"]
        return {"ce": (1.0 - alpha) * ce, "kd": alpha * (w * kl).mean()}


register(WeightedSoftLabels(
    name="wsl",
    description="weighted soft labels: per-sample KD weight 1-exp(-CE_student/CE_teacher) on the true class",
    source="Zhou et al. 2021, cited in seed 002 section 5.2 (first stage, T=2)",
    needs_teacher=True, teacher_kinds=("plain", "distilled"),
    hparams=(HParam("temperature", 2.0, low=0.0, low_open=True, help="softmax temperature T > 0"), ALPHA),
))
