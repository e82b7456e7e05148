"""UDA-style distillation (seed 001 section 4.0.3, "UDA-Cifar"; table 3 reports 90.52 on CIFAR-10,
table 4 91.22 over three 350-epoch runs): the Hinton KD loss on each sample's view as the dataset
gives it (the seed's "unaugmented" image: kdx keeps the dataset's own crop and flip there) and on a
RandAugment view of the same sample in the same mini batch, summed:

    loss = KD(x) + KD(RA(x)),   KD = (1 - alpha) * CE + alpha * T^2 * KL(p_t^T || p_s^T)

The seed gives no RandAugment setting; kdx uses RandAugment's common N = 2 operations at magnitude
9 (torchvision's default), both searchable (`ra_ops`, `ra_magnitude`; explorer/data/randaugment.py), and
kd's alpha and T. The teacher runs on the RandAugment view every batch (it cannot be cached: the
view is new each time). Images only: RandAugment's operations are 2-D.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from explorer.data.randaugment import NUM_BINS, OPS, rand_augment
from explorer.methods.base import HParam, LossInputs, register
from explorer.methods.hinton import KD_HPARAMS, HintonKD
from explorer.models import default_input_family


@dataclass(frozen=True)
class UDADistillation(HintonKD):
    __doc__ = __doc__

    def arch_problem(self, arch: str) -> str | None:
        if default_input_family(arch) != "image":
            return (f"method {self.name!r} applies RandAugment, which needs images, and architecture {arch!r} "
                    f"does not read images; use resnet* or wrn_*")
        return None

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        clean = super().losses(inputs, hp)
        x_ra = rand_augment(inputs.x, inputs.generator, hp["ra_ops"], hp["ra_magnitude"])
        t_ra = None
        if inputs.teacher_logits is not None and self.uses_teacher(inputs.epoch, hp):
            with torch.no_grad():
                t_ra = inputs.run_teacher(x_ra)
        aug = super().losses(LossInputs(inputs.run_student(x_ra), inputs.targets, inputs.epoch, t_ra), hp)
        return {**clean, **{f"{k}_ra": v for k, v in aug.items()}}


register(UDADistillation(
    name="uda",
    description="Hinton KD on the batch and on a RandAugment view of it, summed",
    source="seed 001 section 4.0.3 (UDA-Cifar loss); RandAugment: Cubuk et al. 2020, N=2, M=9 "
           "(torchvision's default; the seed gives none)",
    needs_teacher=True, teacher_kinds=("plain", "distilled"), extra_forwards=True,
    hparams=KD_HPARAMS + (
        HParam("ra_ops", 2, low=1, high=len(OPS), integer=True, help="uda: RandAugment operations per sample (N)"),
        HParam("ra_magnitude", 9.0, low=0.0, high=NUM_BINS - 1, help="uda: RandAugment magnitude M on 0..30"),
    ),
))
