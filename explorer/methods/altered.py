"""What knowledge is transferred (seed 002 section 4, figs. 5-6): Hinton KD from a weak teacher t- whose
soft labels are altered on one subset of the training samples, either towards a strong teacher t+
(the replacement schemes of section 4.1) or by hand (the manipulations of section 4.2).

The teacher is a pair, written like any ensemble in kdx: 't-+t+' (the weak teacher first, e.g.
`resnet14+resnet26`); the loss receives [t- logits, t+ logits] in that order. Anything but exactly
two teachers is refused.

Notation (seed 002 section 3): for a sample labelled k, p_i = softmax(z / T)_i is a network's
probability of class i at temperature T (p- for t-, p+ for t+, p^s for the student), and
r_i = p_i / (1 - p_k) (i != k; r_k = 0) its distribution over the other classes. The KD target q
starts as p- and is altered on the chosen subset only:

  scheme (method name)  target on an altered sample                                     seed 002
  alter_full            q = p+                                                          sec. 4.1
  alter_partial         q_k = p-_k,  q_i = p+_i (1 - p-_k) / (1 - p+_k) = r+_i (1 - p-_k)  eq. 1
  alter_confidence      q_k = p+_k,  q_i = p-_i (1 - p+_k) / (1 - p-_k) = r-_i (1 - p+_k)  eq. 2
  alter_ls              q_k = t,     q_i = (1 - t) / (N - 1)                             eq. 3 (t = `confidence`)
  alter_tamp            q_k = c = min(p-_k + delta, 1),  q_i = r-_i (1 - c)              eq. 4 (delta = `amp_delta`)
  alter_samp            q_k = c = min(p^s_k + delta, 1), q_i = r^s_i (1 - c)             eq. 5

The subset (hyperparameter `subset`, an integer code, `SUBSETS`; section 4.1 and fig. 4):

  0 none                      no sample: the target is t-'s own soft label (KD from t- alone: acc-)
  1 correct                   t- is right: p-_k > p-_i for every i != k
  2 regularization            the student is more confident than t- on the label: p^s_k > p-_k
  3 regularization & correct  both
  4 not correct               t- is wrong (argmax is not the label)
  5 all                       every sample (alter_full with subset 5 is KD from t+ alone: acc+)

Loss (the project's KD convention; seed 002 section 3 with lambda = alpha):
(1 - alpha) * CE(s, y) + alpha * T^2 * KL(q || p^s), batchmean. Defaults T = 1, alpha = 1: section 4
studies the distillation scheme of MEAL V2, which "sets lambda = 1 and discards the cross-entropy loss"
(section 3) and distils at T = 1 (MEAL V2's own paper; seed 002 gives no T for figs. 5-6). MEAL V2's
discriminator and its pre-trained student initialisation are not reproduced.

Choices where the seed is ambiguous or wrong:
- Regularization sample. Section 4.1's formula is garbled by extraction ("y^t_k > y^t_k") and the
  introduction says the opposite of fig. 4's caption. We follow fig. 4 ("the student generates higher
  confidence than the teacher"), section 4.2's closing paragraph (after label smoothing "the
  regularization samples are not regularized anymore, y^s_k < t"), section 5.1's CKM and WSL [53],
  which seed 002 says it follows: the student's probability of the label exceeds t-'s, both at T.
  The teacher of the subsets is t-, the teacher being altered. The student's output only selects
  samples (and is student amplification's source): it is detached.
- Eq. 4 and 5 as printed, max{p_k + delta, 1} is always >= 1 and the factor (1 - p_k)/(1 - p_k - delta)
  makes the target sum to more than 1. We read max as min and invert the factor: the other classes keep
  their relative sizes and share 1 - c, as eqs. 1-2 do, so the target is a distribution.
- Eqs. 3-5 carry no temperature: they act on the tempered distributions that are distilled (as eqs.
  1-2 and the section 5.1 label smoothing do in kdx's ckm), with the student at the same T.
- The seed gives neither t nor delta for figs. 5-6: t = 0.99 (the value section 5.1 adopts after these
  experiments), delta = 0.1 (ours). Subset 0 and alter_full with subset 5 are exactly kdx's kd (at the
  same T and alpha) from t- alone and from t+ alone: the references of the normalisation run in the same
  search, on the same teacher entry.
- r is computed from the logits (a softmax over the other classes), not as p_i / (1 - p_k), which stays
  exact when p_k rounds to 1 in float32.

Search axes. A method hyperparameter is a number (`HParam`), so the two categorical axes take the two
forms a spec already has: the scheme is the method (`distill.method: {grid: [alter_full, alter_ls]}`,
readable in every run name and MLflow row, and each scheme declares only its own hyperparameters:
`confidence` for alter_ls, `amp_delta` for the amplifications), and the subset is one integer code
(`distill.subset: {grid: [1, 2, 3, 4]}`) shared by all six, whose names `kdx methods` and the
analysis's tables print. A grid over both gives figs. 5-6's scheme x subset plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from explorer.errors import KdxError
from explorer.methods.base import HParam, LossInputs, Method, register
from explorer.methods.losses import cross_entropy, smoothed_targets, soft_kl

SUBSETS = {0: "none", 1: "correct", 2: "regularization", 3: "regularization & correct", 4: "not correct", 5: "all"}
NONE_SUBSET, ALL_SUBSET = 0, 5
# method name -> scheme (fig. 3 / eqs. 1-5)
SCHEMES = {"alter_full": "full", "alter_partial": "partial", "alter_confidence": "confidence",
           "alter_ls": "label smoothing", "alter_tamp": "teacher amplification", "alter_samp": "student amplification"}

TEMPERATURE = HParam("temperature", 1.0, low=0.0, low_open=True, help="softmax temperature T > 0")
ALPHA = HParam("alpha", 1.0, low=0.0, high=1.0, help="weight of the KD term, in [0, 1]")
SUBSET = HParam("subset", 3, low=0, high=5, integer=True,
                help="seed 002 sample subset altered: 0 none (KD from t-), 1 correct, 2 regularization, "
                     "3 regularization & correct, 4 not correct, 5 all")
CONFIDENCE = HParam("confidence", 0.99, low=0.0, high=1.0, low_open=True,
                    help="label-smoothing confidence of the replacement target, in (0, 1]")
AMP_DELTA = HParam("amp_delta", 0.1, low=0.0, high=1.0, low_open=True,
                   help="seed 002 eqs. 4-5: confidence added to the label's probability, in (0, 1]")


def soft(logits: Tensor, targets: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """(p, p_k, r): softmax(z/T), its value at each sample's label, and the distribution over the other
    classes r_i = p_i / (1 - p_k) (0 at the label), from the logits (a softmax with the label masked)."""
    z = logits.float() / temperature
    label = F.one_hot(targets, z.shape[1]).bool()
    p = F.softmax(z, dim=1)
    r = F.softmax(z.masked_fill(label, float("-inf")), dim=1)
    return p, p.gather(1, targets.view(-1, 1)).squeeze(1), r


def _with_label(r: Tensor, targets: Tensor, c: Tensor) -> Tensor:
    """c on the label and r * (1 - c) elsewhere (r is 0 at the label)."""
    return (r * (1.0 - c).unsqueeze(1)).scatter(1, targets.view(-1, 1), c.unsqueeze(1))


def altered_target(scheme: str, weak: Tensor, strong: Tensor, student: Tensor, targets: Tensor,
                   hp: dict) -> Tensor:
    """The altered soft label of every sample (before the subset is applied), see the module docstring."""
    T = hp["temperature"]
    p_w, k_w, r_w = soft(weak, targets, T)
    if scheme == "full":
        return soft(strong, targets, T)[0]
    if scheme == "partial":
        return _with_label(soft(strong, targets, T)[2], targets, k_w)
    if scheme == "confidence":
        return _with_label(r_w, targets, soft(strong, targets, T)[1])
    if scheme == "label smoothing":
        return smoothed_targets(targets, weak.shape[1], hp["confidence"])
    if scheme == "teacher amplification":
        return _with_label(r_w, targets, (k_w + hp["amp_delta"]).clamp(max=1.0))
    if scheme == "student amplification":
        _, k_s, r_s = soft(student.detach(), targets, T)
        return _with_label(r_s, targets, (k_s + hp["amp_delta"]).clamp(max=1.0))
    raise ValueError(f"unknown scheme {scheme!r}")


def subset_mask(subset: int, weak: Tensor, student: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """Which samples are altered (bool, one per sample), see `SUBSETS`."""
    n = len(targets)
    if subset == NONE_SUBSET:
        return torch.zeros(n, dtype=torch.bool, device=targets.device)
    if subset == ALL_SUBSET:
        return torch.ones(n, dtype=torch.bool, device=targets.device)
    z = weak.float()
    label = F.one_hot(targets, z.shape[1]).bool()
    correct = z.gather(1, targets.view(-1, 1)).squeeze(1) > z.masked_fill(label, float("-inf")).amax(1)
    regular = soft(student.detach(), targets, temperature)[1] > soft(weak, targets, temperature)[1]
    return {1: correct, 2: regular, 3: regular & correct, 4: ~correct}[subset]


@dataclass(frozen=True)
class AlteredKD(Method):
    """KD from a weak teacher whose soft labels are altered on one subset (seed 002 section 4; see the
    module docstring for every formula and the choices made where the seed is ambiguous)."""

    scheme: str = "full"

    def teacher_problem(self, kind: str | None, same_arch: bool = True, members: int | None = None) -> str | None:
        if kind is None:
            return super().teacher_problem(kind, same_arch)
        if kind != "ensemble" or (members is not None and members != 2):
            what = f"{members} teachers" if members is not None and kind == "ensemble" else f"a {kind} teacher"
            return (f"method {self.name!r} takes exactly two teachers, the weak then the strong ('t-+t+', e.g. "
                    f"'resnet14+resnet26'), not {what}")
        return None

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        teachers = inputs.teacher_logits
        if not isinstance(teachers, (list, tuple)) or len(teachers) != 2:
            n = len(teachers) if isinstance(teachers, (list, tuple)) else 1
            raise KdxError(f"teacher: got {n} teacher{'s' if n != 1 else ''}; method {self.name!r} takes exactly "
                           "two, the weak then the strong ('t-+t+', e.g. 'resnet14+resnet26').")
        weak, strong = teachers
        logits, y, T = inputs.student_logits.float(), inputs.targets, hp["temperature"]
        mask = subset_mask(hp["subset"], weak, logits, y, T)
        # no branch on the mask's values: fused members' losses are vmapped (explorer/training/fused.py)
        target = torch.where(mask.view(-1, 1), altered_target(self.scheme, weak, strong, logits, y, hp),
                             soft(weak, y, T)[0])
        alpha = hp["alpha"]
        ce = cross_entropy(logits, y)
        return {"ce": (1.0 - alpha) * ce, "kd": alpha * soft_kl(logits, target, T)}


_DOC = "KD from t- of a 't-+t+' pair, its soft labels altered on one sample subset (`subset`) by "
_WHAT = {
    "alter_full": ("full replacement: t+'s soft label", "seed 002 section 4.1, fig. 5", ()),
    "alter_partial": ("partial replacement: t-'s confidence on the label, t+'s distribution over the others",
                      "seed 002 section 4.1 eq. 1, fig. 5", ()),
    "alter_confidence": ("confidence replacement: t+'s confidence on the label, t-'s distribution over the others",
                         "seed 002 section 4.1 eq. 2, fig. 5", ()),
    "alter_ls": ("label smoothing: `confidence` on the label, the rest spread evenly",
                 "seed 002 section 4.2 eq. 3, fig. 6; confidence 0.99 from section 5.1", (CONFIDENCE,)),
    "alter_tamp": ("teacher amplification: t-'s confidence on the label raised by `amp_delta`",
                   "seed 002 section 4.2 eq. 4 (max read as min, factor inverted), fig. 6; amp_delta 0.1 is ours",
                   (AMP_DELTA,)),
    "alter_samp": ("student amplification: the student's own confidence on the label raised by `amp_delta`",
                   "seed 002 section 4.2 eq. 5 (max read as min, factor inverted), fig. 6; amp_delta 0.1 is ours",
                   (AMP_DELTA,)),
}

for _name, (_what, _source, _extra) in _WHAT.items():
    register(AlteredKD(
        name=_name, scheme=SCHEMES[_name], description=_DOC + _what,
        source=_source + "; T 1, alpha 1: MEAL V2's scheme, which section 4 studies (section 3: lambda = 1)",
        needs_teacher=True, teacher_kinds=("ensemble",), hparams=(TEMPERATURE, ALPHA, SUBSET, *_extra),
    ))
