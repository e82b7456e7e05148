"""Online distillation without a pretrained teacher: deep mutual learning (dml) and the on-the-fly
native ensemble (one); seed 000 table I."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from explorer.methods.base import TEMPERATURE, HParam, LossInputs, Method, register
from explorer.methods.losses import cross_entropy, kd_kl
from explorer.models import MultiBranch, build_model


class Cohort(nn.Module):
    """DML's cohort: k students of one architecture. Train mode: logits stacked as (k, B, C);
    eval mode: member 0's logits (the student that is evaluated and reported)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return torch.stack([m(x) for m in self.members])
        return self.members[0](x)


@dataclass(frozen=True)
class MutualLearning(Method):
    """Deep mutual learning (DML; Zhang et al. 2018; seed 000 table I: cohort 2, T = 4). No pretrained
    teacher: a cohort of `cohort` students of the student's architecture (different initialisations)
    trains together, each distilling from the others:

        loss = sum_i [ CE(s_i, y) + T^2 * mean_{j != i} KL(p_j^T || p_i^T) ]

    with the peers' probabilities detached (each member's gradient is its own DML loss). All members
    step together with one optimiser (Zhang et al. alternate the updates; simultaneous steps are the
    common variant). Member 0 is evaluated and reported (seed 000 reports the cohort member with the
    best test accuracy; kdx never selects on test, so it fixes member 0 in advance)."""

    def build_student(self, arch, num_classes, input_shape, hp):
        return Cohort([build_model(arch, num_classes, input_shape) for _ in range(hp["cohort"])])

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        stacked = inputs.student_logits.float()  # (k, B, C)
        k, T = stacked.shape[0], hp["temperature"]
        ce = sum(cross_entropy(stacked[i], inputs.targets) for i in range(k))
        kd = sum(kd_kl(stacked[i], stacked[j].detach(), T) for i in range(k) for j in range(k) if j != i) / (k - 1)
        return {"ce": ce, "kd": kd}


register(MutualLearning(
    name="dml",
    description="deep mutual learning: a cohort of students trained together, each distilling from the others",
    source="Zhang et al. 2018; seed 000 table I (cohort 2, T=4)",
    hparams=(TEMPERATURE, HParam("cohort", 2, low=2, high=8, integer=True, help="number of students in the cohort, 2..8")),
))


@dataclass(frozen=True)
class OnTheFlyNativeEnsemble(Method):
    """On-the-fly native ensemble (ONE; Lan et al. 2018; seed 000 table I: T = 3, three branches).
    No pretrained teacher: the student is a multi-branch network (explorer.models.MultiBranch: the
    student's low-level layers shared, `branches` copies of its high-level layers, each with its own
    classifier, and a gate giving softmax weights g over the branches). The gated ensemble
    z_ens = sum_i g_i * z_i teaches every branch:

        loss = sum_i CE(z_i, y) + CE(z_ens, y) + T^2 * sum_i KL(softmax(z_ens/T) || softmax(z_i/T))

    with the KL averaged over the batch and the ensemble's probabilities detached in the KL terms
    (the ensemble and the gate learn from CE(z_ens, y) only). Logged terms: "ce" (the m + 1 CE terms)
    and "kd" (the KL terms).

    Evaluated logits: branch 0, fixed in advance. Seed 000 reports, per seed, the classification
    branch with the best *test* accuracy; kdx never selects on test, so it evaluates one branch
    chosen before training. A single branch (not the gated ensemble) because it is the student that
    is deployed and compared: it has the student architecture's own size (capacity ratios stay
    right) and the paper's numbers are single-branch numbers. `MultiBranch.forward_all` gives the
    ensemble's logits for whoever wants to look at them."""

    def build_student(self, arch, num_classes, input_shape, hp):
        return MultiBranch(arch, num_classes, input_shape, hp["branches"])

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        stacked = inputs.student_logits.float()  # (m + 1, B, C): branches, then the gated ensemble
        branches, ens = stacked[:-1], stacked[-1]
        y, T = inputs.targets, hp["temperature"]
        ce = sum(cross_entropy(z, y) for z in branches) + cross_entropy(ens, y)
        target = ens.detach()
        kd = sum(kd_kl(z, target, T) for z in branches)
        return {"ce": ce, "kd": kd}


register(OnTheFlyNativeEnsemble(
    name="one",
    description="on-the-fly native ensemble: a multi-branch student whose gated branch ensemble teaches each "
                "branch; branch 0 is evaluated",
    source="Lan et al. 2018; seed 000 table I (T=3, three branches)",
    hparams=(HParam("temperature", 3.0, low=0.0, low_open=True, help="softmax temperature T > 0"),
             HParam("branches", 3, low=2, high=8, integer=True, help="number of branches, 2..8")),
))
