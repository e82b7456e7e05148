"""Consistent knowledge mining (seed 002 section 5.1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from explorer.methods.base import ALPHA, HParam, LossInputs, Method, register
from explorer.methods.losses import cross_entropy, smoothed_targets, soft_kl


@dataclass(frozen=True)
class ConsistentKnowledgeMining(Method):
    """Consistent knowledge mining (CKM; seed 002 section 5.1). Hinton KD with separate teacher and
    student temperatures, except on samples where the teacher is correct (argmax = label) but its
    tempered confidence in the label is below the student's: there the teacher's soft target is
    replaced by a label-smoothed target with `confidence` (0.99) on the label and the rest spread
    evenly over the other classes (seed 002 eq. 3). The student's confidence is detached (it only
    selects samples). Defaults: the seed's second stage (section 5.2): teacher T 0.7, student T 1;
    alpha 0.9 (Hinton's lambda, seed 002 section 3). Loss: (1-alpha)*CE + alpha*T_s^2*KL(target || p_s^T_s)."""

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        logits = inputs.student_logits.float()
        y = inputs.targets
        ce = cross_entropy(logits, y)
        T_s, T_t = hp["temperature"], hp["teacher_temperature"]
        p_t = F.softmax(inputs.teacher_logits.float() / T_t, dim=1)
        p_s = F.softmax(logits.detach() / T_s, dim=1)
        conf_t = p_t.gather(1, y.view(-1, 1)).squeeze(1)
        conf_s = p_s.gather(1, y.view(-1, 1)).squeeze(1)
        mined = (p_t.argmax(1) == y) & (conf_t < conf_s)
        ls = smoothed_targets(y, logits.shape[1], hp["confidence"])
        target = torch.where(mined.view(-1, 1), ls, p_t)
        alpha = hp["alpha"]
        return {"ce": (1.0 - alpha) * ce, "kd": alpha * soft_kl(logits, target, T_s)}


register(ConsistentKnowledgeMining(
    name="ckm",
    description="consistent knowledge mining: where the teacher is right but less confident than the student, "
                "distil a 0.99 label-smoothed target instead",
    source="seed 002 section 5.1; temperatures from section 5.2 second stage (teacher 0.7, student 1)",
    needs_teacher=True, teacher_kinds=("plain", "distilled"),
    hparams=(HParam("temperature", 1.0, low=0.0, low_open=True, help="the student's temperature T > 0"),
             HParam("teacher_temperature", 0.7, low=0.0, low_open=True, help="the teacher's temperature > 0"),
             ALPHA,
             HParam("confidence", 0.99, low=0.0, high=1.0, low_open=True,
                    help="label-smoothing confidence of the replacement target, in (0, 1]")),
))
