"""Teacher-free soft targets: label smoothing (ls; seed 002/003) and the virtual teacher of Tf-KD-reg
(seed 003 eq. 4)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from explorer.methods.base import ALPHA, HParam, LossInputs, Method, register
from explorer.methods.losses import cross_entropy, log_softmax, smoothed_targets, soft_kl


@dataclass(frozen=True)
class LabelSmoothing(Method):
    """Label smoothing with factor epsilon: CE against the target 1 - epsilon on the labelled class and
    epsilon / (K - 1) on each other class (seed 002 section 4.2 eq. 3 with t = 1 - epsilon; seed 003
    section 4.2 on KD as learned label smoothing). No teacher. Note: Szegedy et al.'s variant spreads
    epsilon over all K classes; seed 002's form, followed here, spreads it over the K - 1 others."""

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        logits = inputs.student_logits.float()
        q = smoothed_targets(inputs.targets, logits.shape[1], 1.0 - hp["epsilon"])
        return {"ce": -(q * log_softmax(logits, dim=1)).sum(1).mean()}


register(LabelSmoothing(
    name="ls",
    description="label smoothing: CE against 1-epsilon on the label, epsilon/(K-1) on each other class; no teacher",
    source="seed 002 section 4.2 eq. 3; seed 003 section 4.2 (KD as learned label smoothing); default epsilon=0.1",
    hparams=(HParam("epsilon", 0.1, low=0.0, high=1.0, help="smoothing factor epsilon in [0, 1]"),),
))


@dataclass(frozen=True)
class VirtualTeacherKD(Method):
    """Teacher-free KD with a manually designed virtual teacher (Tf-KD-reg; seed 003 eq. 4):

        loss = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(p_d^T || p_s^T)

    where the virtual teacher p_d puts `delta` on the labelled class and (1 - delta)/(K - 1) on each
    other class, and p_d^T = p_d^(1/T) renormalised (the virtual teacher's logits are log p_d, softened
    by T like any teacher's). At T = 1 the target is p_d itself. The T^2 factor is the project's
    convention (seed 003 eq. 4 writes no factor; at the default T = 1 they agree)."""

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        logits = inputs.student_logits.float()
        ce = cross_entropy(logits, inputs.targets)
        p_d = smoothed_targets(inputs.targets, logits.shape[1], hp["delta"])
        p_dt = p_d.pow(1.0 / hp["temperature"])
        p_dt = p_dt / p_dt.sum(1, keepdim=True)
        alpha = hp["alpha"]
        return {"ce": (1.0 - alpha) * ce, "kd": alpha * soft_kl(logits, p_dt, hp["temperature"])}


register(VirtualTeacherKD(
    name="tf_kd_reg",
    description="teacher-free KD: KD from a virtual teacher (delta on the label, (1-delta)/(K-1) elsewhere)",
    source="seed 003 section 4.3.2 eq. 4 (Yuan et al. Tf-KD-reg); delta=0.9 (the seed keeps delta in "
           "[0.9, 1]); the seed gives no alpha or T: alpha=0.9 (project default), T=1 (the virtual teacher as designed)",
    hparams=(HParam("temperature", 1.0, low=0.0, low_open=True, help="softmax temperature T > 0"), ALPHA,
             HParam("delta", 0.9, low=0.0, high=1.0, low_open=True,
                    help="the virtual teacher's probability on the true class, in (0, 1] (seed: [0.9, 1])")),
))
