"""Two-stage representation distillation from seed 000: FitNets (fitnet) and flow-of-solution-procedure
matrices (fsp). Stage 1 initialises the student on a feature loss alone; stage 2 is Hinton KD.

* **fitnet** (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015): stage 1 trains the
  student (up to the guided layer) and a regressor r so that r(student block 2) matches the teacher's
  block 2 (seed 000 table I: W = [0, 1, 0] over blocks 1, 2, 3, i.e. the hint on block 2 only):
  hint = mean over batch and elements of (r(u_s) - u_t)^2. The paper writes 1/2 ||.||^2 summed over
  elements; kdx takes the elementwise mean (RepDistiller's convention), so the hint's scale does not grow
  with the layer's size; stage 1 has no other term, so this only rescales its gradient.
  The regressor (owned by the method, dropped from the evaluated student) maps the student's block-2
  channels to the teacher's with a 1x1 conv + BN (Linear + BN on flat features) and no final ReLU.
  Seed 000, whose tables III-IV (CIFAR-10/100) kdx's fitnet numbers compare with, does not describe its
  regressor, so kdx takes the paper where it speaks: its section 2.2 sizes the conv regressor's kernel
  so that N_g - k + 1 = N_h, i.e. 1x1 where the maps have the same size, as in every kdx family
  (RepDistiller's and mdistiller's ConvReg use the same rule, models/util.py, _common.py). BN is not in the
  paper (maxout nets, 2015); both peers' ConvReg have it, and kdx keeps it. The ReLU: section 2.2 asks
  that r end in the hint layer's non-linearity. kdx's block 2 is post-ReLU for CIFAR ResNets, cnn1d and
  MLPs but the raw pre-activation stage output for WRNs (both families are in seed 000's tables), and
  `build_modules` sees shapes only, so kdx keeps one linear output for all: a ReLU would leave a WRN
  hint's negative entries unreachable (no gradient below zero), while a linear output can still
  approach a post-ReLU hint. The peers' ConvReg always end in a ReLU, on WRN hints too (RepDistiller's
  models/wrn.py returns the raw stage outputs), so they match the paper for ResNets only. Following the
  paper per teacher needs the hint's non-linearity passed to `build_modules`.
  Only stage 1's initialisation depends on this; stage 2 is Hinton KD.
* **fsp** (Yim et al., "A Gift from Knowledge Distillation", CVPR 2017): the FSP matrix between two
  feature maps F1 (C1 x positions) and F2 (C2 x positions) is G = F1 F2^T / positions (paper eq. 1);
  kdx takes the three matrices (input of block n, output of block n) for blocks n = 1, 2, 3 (the input of
  block 1 is the stem's output; the larger map is average-pooled to the smaller where sizes differ).
  Stage 1 loss: sum_n W_n * mean over the batch and the C1 x C2 matrix entries of (G_t,n - G_s,n)^2 with
  seed 000 table I's W = [1, 3, 1] (the paper uses equal weights). The paper's eq. 2 sums the entries
  (a squared Frobenius norm); kdx follows RepDistiller's public code, which averages them, because the
  sum diverged: with a resnet14 teacher trained for two epochs on kdx's 3x16x16 test images, the summed
  loss of a resnet8 student started at 8e5 and reached NaN within five batches at seed 000's init lr
  0.001 (the 16..64-channel matrices make the sum up to 4096 times the mean, which W does not absorb). Seed 000 pairs students and teachers of equal widths;
  where widths differ, kdx maps each student feature to the teacher's channels with a 1x1 conv + BN
  connector before the matrices (FSP needs C1 x C2 to agree; this is kdx's extension, not the paper's).

Both: stage 2 = Hinton KD with alpha = 0.9, T = 4 (table I) on the whole student with the student's recipe;
stage 1 = `init_epochs` = 100 epochs of SGD at `init_lr` = 0.001, x0.1 at 60% and 80% of them (epochs 60
and 80 of 100), momentum and weight decay from the student's recipe (seed 000 section III). The trainer
runs both stages on one epoch clock (explorer/training/loop.py): a trial has init_epochs + epochs epochs, each
epoch's `stage` metric says which; ASHA's clock, `epoch`, counts the init epochs (in which the
student's accuracy is near chance: give ASHA a grace period past init_epochs, or run without ASHA, as the
seed specs do). `init_epochs` = 0 gives the one-stage method (Hinton KD only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from explorer.errors import KdxError
from explorer.methods.base import ALPHA, TEMPERATURE, HParam, LossInputs, register
from explorer.methods.feature_ops import block_indices, check_same_spatial, connector, match_spatial, pick
from explorer.methods.hinton import HintonKD
from explorer.models import default_input_family

INIT_EPOCHS = HParam("init_epochs", 100, low=0, integer=True,
                     help="epochs of the init stage before stage 2 (fitnet/fsp: seed 000 section III); 0 = none")
INIT_LR = HParam("init_lr", 0.001, low=0.0, low_open=True, help="learning rate of the init stage (x0.1 at 60% and 80%)")
HINT_BLOCK = 2
FSP_BLOCKS = (1, 2, 3)
FSP_WEIGHTS = (1.0, 3.0, 1.0)


@dataclass(frozen=True)
class TwoStage(HintonKD):
    """Stage 2 is Hinton KD (`HintonKD.losses`); subclasses define the stage-1 loss and modules."""

    def init_recipe(self, hp):
        n = hp["init_epochs"]
        return hp["init_lr"], (round(0.6 * n), round(0.8 * n)), 0.1


@dataclass(frozen=True)
class FitNet(TwoStage):
    __doc__ = __doc__

    def build_modules(self, student_shapes, teacher_shapes, hp):
        (s,), (t,) = pick(student_shapes, (HINT_BLOCK,), self.name), pick(teacher_shapes, (HINT_BLOCK,), self.name)
        check_same_spatial(self.name, s, t)
        return connector(s, t)  # 1x1 conv + BN (Linear + BN on flat features): the docstring says why

    def init_losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        (fs,), (ft,) = (pick(inputs.student_features, (HINT_BLOCK,), self.name),
                        pick(inputs.teacher_features, (HINT_BLOCK,), self.name))
        reg, target = match_spatial(inputs.modules(fs.float()), ft.float())
        return {"hint": (reg - target).pow(2).mean()}


def fsp_matrix(f1: Tensor, f2: Tensor) -> Tensor:
    """(B, C1, *pos), (B, C2, *pos) -> (B, C1, C2): F1 F2^T / positions (the larger map pooled first)."""
    f1, f2 = match_spatial(f1.float(), f2.float())
    a, b = f1.flatten(2), f2.flatten(2)
    return a @ b.transpose(1, 2) / a.shape[2]


class Connectors(nn.Module):
    """One connector per FSP feature (identity where the widths already agree)."""

    def __init__(self, student_shapes, teacher_shapes):
        super().__init__()
        self.maps = nn.ModuleList(nn.Identity() if s[0] == t[0] else connector(s, t)
                                  for s, t in zip(student_shapes, teacher_shapes))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return [m(f) for m, f in zip(self.maps, feats)]


def fsp_features(feats: list, name: str) -> list:
    """The input and the outputs of blocks 1, 2, 3 (the entry before block 1 is the stem's output)."""
    idx = block_indices(len(feats), FSP_BLOCKS, name)
    if idx[0] == 0:
        raise KdxError(f"method {name!r} needs the input of block 1 (a stem output) as well as blocks 1, 2, 3; "
                       f"use a CIFAR ResNet or WRN.")
    return [feats[idx[0] - 1]] + [feats[i] for i in idx]


@dataclass(frozen=True)
class FSP(TwoStage):
    __doc__ = __doc__

    def arch_problem(self, arch: str) -> str | None:
        if default_input_family(arch) != "image":
            return (f"method {self.name!r} needs a stem output before block 1 (a CIFAR ResNet or WRN), which "
                    f"architecture {arch!r} does not have")
        return None

    def build_modules(self, student_shapes, teacher_shapes, hp):
        s, t = fsp_features(student_shapes, self.name), fsp_features(teacher_shapes, self.name)
        for a, b in zip(s, t):
            check_same_spatial(self.name, a, b)
        return Connectors(s, t)

    def init_losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        s = inputs.modules(fsp_features(inputs.student_features, self.name))
        t = fsp_features(inputs.teacher_features, self.name)
        with torch.no_grad():
            gt = [fsp_matrix(t[n], t[n + 1]) for n in range(3)]
        gs = [fsp_matrix(s[n].float(), s[n + 1].float()) for n in range(3)]
        fsp = sum(w * (a - b).pow(2).mean() for w, a, b in zip(FSP_WEIGHTS, gs, gt))
        return {"fsp": fsp}


COMMON = dict(needs_teacher=True, teacher_kinds=("plain", "distilled"), feature_role="blocks",
              hparams=(TEMPERATURE, ALPHA, INIT_EPOCHS, INIT_LR))
register(FitNet(
    name="fitnet",
    description="FitNets: stage 1 = hint on block 2 through a regressor (init_epochs at init_lr), "
                "stage 2 = Hinton KD",
    source="Romero et al. ICLR 2015; seed 000 table I (W=[0,1,0]; stage 2 alpha=0.9, T=4) and section III "
           "(stage 1: 100 epochs, lr 0.001, x0.1 at 60 and 80)",
    **COMMON,
))
register(FSP(
    name="fsp",
    description="FSP: stage 1 = flow matrices of blocks 1, 2, 3 (weights 1, 3, 1), stage 2 = Hinton KD",
    source="Yim et al. CVPR 2017 eq. 1-2; seed 000 table I (W=[1,3,1]; stage 2 alpha=0.9, T=4) and section III",
    **COMMON,
))
