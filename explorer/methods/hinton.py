"""Cross-entropy (the baseline, and how teachers train) and Hinton KD with the names that differ
only in which teachers they accept: kd, tf_kd_self (seed 003), mkd (seed 001), takd (seed 001/004)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from explorer.methods.base import (ALPHA, KD_STOP_EPOCH, TEACHER_KINDS, TEACHER_TEMPERATURE, TEMPERATURE, LossInputs,
                                   Method, register)
from explorer.methods.losses import cross_entropy, kd_kl

KD_HPARAMS = (TEMPERATURE, ALPHA, KD_STOP_EPOCH, TEACHER_TEMPERATURE)


@dataclass(frozen=True)
class CrossEntropy(Method):
    """Plain training on the (possibly noisy) labels: the CE-only baseline, and how teachers train."""

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        return {"ce": cross_entropy(inputs.student_logits.float(), inputs.targets)}


register(CrossEntropy(
    name="ce",
    description="cross-entropy on the labels only (no teacher): the baseline student, and teachers",
    source="standard supervised training",
))


@dataclass(frozen=True)
class HintonKD(Method):
    """Hinton KD with weight alpha and temperature T; optional early-stopped KD (seed 004 section 5.3).

    From epoch `kd_stop_epoch` on (1-based, inclusive) the KD term is off and the student trains on
    CE alone with full weight, as in seed 004's early-stopped KD; the teacher is then not run at all.
    `teacher_temperature` (default: none = T) softens the teacher with its own temperature (seed 002
    section 5.2: teacher 0.7, student 1 in the second stage); the factor stays T^2 (the student's T).
    With an ensemble of teachers the KD term is the mean over the teachers (seed 001 section 4.0.2).
    The same loss serves `takd` (the teacher is an assistant, itself distilled), `mkd` (an ensemble)
    and `tf_kd_self` (the teacher is the student's own architecture trained with CE): those names
    differ only in which teachers they accept.
    """

    def uses_teacher(self, epoch: int, hp: dict) -> bool:
        stop = hp.get("kd_stop_epoch")
        return stop is None or epoch < stop

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        ce = cross_entropy(inputs.student_logits.float(), inputs.targets)
        if not self.uses_teacher(inputs.epoch, hp):
            return {"ce": ce}
        alpha = hp["alpha"]
        kd = kd_kl(inputs.student_logits, inputs.teacher_logits, hp["temperature"], hp.get("teacher_temperature"))
        return {"ce": (1.0 - alpha) * ce, "kd": alpha * kd}


register(HintonKD(
    name="kd",
    description="Hinton KD: (1-alpha)*CE + alpha*T^2*KL(teacher^T_t || student^T), batchmean; "
                "an ensemble teacher averages the KD term",
    source="seed 001 eq. 1; defaults from seed 000 table I (alpha=0.9, T=4); separate teacher "
           "temperature: seed 002 section 5.2",
    needs_teacher=True, teacher_kinds=TEACHER_KINDS, hparams=KD_HPARAMS,
))


register(HintonKD(
    name="tf_kd_self",
    description="teacher-free self-training KD: KD from the student's own architecture trained first with CE",
    source="seed 003 section 4.3.1 eq. 3 (Yuan et al. Tf-KD-self); the seed gives no alpha or T: kd's defaults",
    needs_teacher=True, teacher_kinds=("plain",), same_arch_teacher=True, hparams=KD_HPARAMS,
))


register(HintonKD(
    name="mkd",
    description="ensemble of teachers: the KD term averaged over several teachers of the zoo",
    source="seed 001 section 4.0.2 (table 3: alpha=0.5, T=5); kd's defaults",
    needs_teacher=True, teacher_kinds=("ensemble",), hparams=KD_HPARAMS,
))


register(HintonKD(
    name="takd",
    description="teacher-assistant KD: KD from an assistant that was itself distilled from a larger teacher",
    source="seed 001 section 3.2; seed 004 table 6; kd's defaults",
    needs_teacher=True, teacher_kinds=("distilled",), hparams=KD_HPARAMS,
))
