"""Distillation methods: small registered objects that turn model outputs into named loss terms.

The training loop never branches on a method's name. It asks the method whether it needs a
teacher at this epoch, hands it a `LossInputs`, and sums the dict of loss terms it returns
(logging each term as `train_<name>`).

KD convention (fixed for all of kdx, see ../shared/DESIGN.md and seed 001 eq. 1):

    loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(p_teacher^T || p_student^T)

with the KL averaged over the batch (`reduction="batchmean"`): an elementwise mean would
silently divide the KD term by the number of classes (seed 001, note on the KL reduction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import KdxError, bad_value
from .models import MultiBranch, build_model


@dataclass(frozen=True)
class HParam:
    """One hyperparameter of a method: its default (from the seed paper) and its valid range."""

    name: str
    default: float | int | None
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True when `low` itself is not allowed (T > 0)
    integer: bool = False
    optional: bool = False  # None allowed (e.g. kd_stop_epoch: never stop)
    help: str = ""

    def check(self, value):
        """Return the value if allowed, else raise the one-sentence error."""
        if value is None:
            if self.optional:
                return None
            raise bad_value(self.name, value, "a value is required")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad_value(self.name, value, "allowed: a number")
        if self.integer and float(value) != int(value):
            raise bad_value(self.name, value, "allowed: a whole number")
        if not math.isfinite(float(value)):
            raise bad_value(self.name, value, "allowed: a finite number")
        lo_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        hi_ok = self.high is None or value <= self.high
        if not (lo_ok and hi_ok):
            raise bad_value(self.name, value, f"allowed: {self.range_text()}")
        return int(value) if self.integer else float(value)

    def range_text(self) -> str:
        lo = "" if self.low is None else f"{self.low} {'<' if self.low_open else '<='} "
        hi = "" if self.high is None else f" <= {self.high}"
        return f"{lo}{self.name}{hi}"


@dataclass
class LossInputs:
    """What a method may look at for one batch. Features are only filled when the method asks."""

    student_logits: Tensor  # for methods with their own student module: its training-mode output
    targets: Tensor
    epoch: int  # 1-based
    teacher_logits: Tensor | list[Tensor] | None = None  # a list when the teacher is an ensemble (mkd)
    student_features: list[Tensor] | None = None
    teacher_features: list[Tensor] | None = None


@dataclass(frozen=True)
class Method:
    """Base class: a name, its hyperparameters, and the loss terms it produces."""

    name: str
    description: str
    source: str
    hparams: tuple[HParam, ...] = ()
    needs_teacher: bool = False
    needs_features: bool = False
    # Which teachers the method accepts (checked by the spec, the plan and `kdx train`), a subset of
    # TEACHER_KINDS: "plain" (trained with CE), "distilled" (itself distilled: a chain such as TAKD's
    # assistant, or a born-again generation), "ensemble" (several teachers, a list of logits).
    teacher_kinds: tuple[str, ...] = ()
    same_arch_teacher: bool = False  # the teacher must be the student's own architecture (tf_kd_self)

    def resolve(self, params: dict | None) -> dict:
        """Defaults filled in, every value checked, unknown names refused."""
        params = dict(params or {})
        known = {h.name: h for h in self.hparams}
        unknown = sorted(set(params) - set(known))
        if unknown:
            allowed = ", ".join(known) or "none"
            raise bad_value(f"{self.name} hyperparameter", unknown[0], f"method {self.name!r} takes: {allowed}")
        return {name: h.check(params.get(name, h.default)) for name, h in known.items()}

    def uses_teacher(self, epoch: int, hp: dict) -> bool:
        """Whether the teacher's outputs are needed at this (1-based) epoch."""
        return self.needs_teacher

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        raise NotImplementedError

    def build_student(self, arch: str, num_classes: int, input_shape: tuple, hp: dict) -> nn.Module:
        """The module the loop trains. Its eval-mode `forward(x)` returns the logits that are evaluated;
        its train-mode output is what `losses` receives as `student_logits`. Default: the plain model."""
        return build_model(arch, num_classes, input_shape)

    def teacher_problem(self, kind: str | None, same_arch: bool = True) -> str | None:
        """Why a teacher of this kind ("plain", "distilled", "ensemble", None = no teacher) does not
        fit the method, or None when it does."""
        if not self.needs_teacher:
            return None if kind is None else f"method {self.name!r} takes no teacher"
        if kind is None:
            return f"method {self.name!r} needs a teacher"
        if kind not in self.teacher_kinds:
            return f"method {self.name!r} takes {' or '.join(self.teacher_kinds)} teachers, not {kind}"
        if self.same_arch_teacher and not same_arch:
            return f"method {self.name!r} needs a teacher of the student's own architecture"
        return None


TEACHER_KINDS = ("plain", "distilled", "ensemble")


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
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def soft_kl(student_logits: Tensor, target: Tensor, temperature: float, reduction: str = "batchmean") -> Tensor:
    """T^2 * KL(target || softmax(s/T)) for given target probabilities (zeros allowed);
    `reduction="none"` gives one value per sample."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_s, target.float(), reduction="none").sum(1) * temperature**2
    return kl.mean() if reduction == "batchmean" else kl


def smoothed_targets(targets: Tensor, num_classes: int, confidence: float) -> Tensor:
    """`confidence` on the labelled class, (1 - confidence)/(K - 1) on each other class (seed 002 eq. 3)."""
    other = (1.0 - confidence) / (num_classes - 1)
    q = torch.full((len(targets), num_classes), other, device=targets.device)
    return q.scatter_(1, targets.view(-1, 1), confidence)


@dataclass(frozen=True)
class CrossEntropy(Method):
    """Plain training on the (possibly noisy) labels: the CE-only baseline, and how teachers train."""

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        return {"ce": F.cross_entropy(inputs.student_logits.float(), inputs.targets)}


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
        ce = F.cross_entropy(inputs.student_logits.float(), inputs.targets)
        if not self.uses_teacher(inputs.epoch, hp):
            return {"ce": ce}
        alpha = hp["alpha"]
        kd = kd_kl(inputs.student_logits, inputs.teacher_logits, hp["temperature"], hp.get("teacher_temperature"))
        return {"ce": (1.0 - alpha) * ce, "kd": alpha * kd}


@dataclass(frozen=True)
class LabelSmoothing(Method):
    """Label smoothing with factor epsilon: CE against the target 1 - epsilon on the labelled class and
    epsilon / (K - 1) on each other class (seed 002 section 4.2 eq. 3 with t = 1 - epsilon; seed 003
    section 4.2 on KD as learned label smoothing). No teacher. Note: Szegedy et al.'s variant spreads
    epsilon over all K classes; seed 002's form, followed here, spreads it over the K - 1 others."""

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        logits = inputs.student_logits.float()
        q = smoothed_targets(inputs.targets, logits.shape[1], 1.0 - hp["epsilon"])
        return {"ce": -(q * F.log_softmax(logits, dim=1)).sum(1).mean()}


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
        ce = F.cross_entropy(logits, inputs.targets)
        p_d = smoothed_targets(inputs.targets, logits.shape[1], hp["delta"])
        p_dt = p_d.pow(1.0 / hp["temperature"])
        p_dt = p_dt / p_dt.sum(1, keepdim=True)
        alpha = hp["alpha"]
        return {"ce": (1.0 - alpha) * ce, "kd": alpha * soft_kl(logits, p_dt, hp["temperature"])}


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
        ce = F.cross_entropy(logits, y)
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
        ce = F.cross_entropy(logits, y)
        with torch.no_grad():
            ce_s = F.cross_entropy(logits.detach(), y, reduction="none")
            ce_t = F.cross_entropy(t_logits, y, reduction="none")
            w = 1.0 - torch.exp(-ce_s / ce_t.clamp_min(1e-7))
        T = hp["temperature"]
        kl = soft_kl(logits, F.softmax(t_logits / T, dim=1), T, reduction="none")
        alpha = hp["alpha"]
        return {"ce": (1.0 - alpha) * ce, "kd": alpha * (w * kl).mean()}


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
        ce = sum(F.cross_entropy(stacked[i], inputs.targets) for i in range(k))
        kd = sum(kd_kl(stacked[i], stacked[j].detach(), T) for i in range(k) for j in range(k) if j != i) / (k - 1)
        return {"ce": ce, "kd": kd}


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
        ce = sum(F.cross_entropy(z, y) for z in branches) + F.cross_entropy(ens, y)
        target = ens.detach()
        kd = sum(kd_kl(z, target, T) for z in branches)
        return {"ce": ce, "kd": kd}


_KD_STOP = HParam(
    "kd_stop_epoch", None, low=1, integer=True, optional=True,
    help="epoch (1-based) from which the KD term is switched off; none = never (seed 004 section 5.3)",
)
_T = HParam("temperature", 4.0, low=0.0, low_open=True, help="softmax temperature T > 0")
_ALPHA = HParam("alpha", 0.9, low=0.0, high=1.0, help="weight of the KD term, in [0, 1]")
_T_TEACHER = HParam("teacher_temperature", None, low=0.0, low_open=True, optional=True,
                    help="the teacher's own temperature; none = T (seed 002 section 5.2)")
_KD_HPARAMS = (_T, _ALPHA, _KD_STOP, _T_TEACHER)

METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


register(CrossEntropy(
    name="ce",
    description="cross-entropy on the labels only (no teacher): the baseline student, and teachers",
    source="standard supervised training",
))
register(HintonKD(
    name="kd",
    description="Hinton KD: (1-alpha)*CE + alpha*T^2*KL(teacher^T_t || student^T), batchmean; "
                "an ensemble teacher averages the KD term",
    source="seed 001 eq. 1; defaults from seed 000 table I (alpha=0.9, T=4); separate teacher "
           "temperature: seed 002 section 5.2",
    needs_teacher=True, teacher_kinds=TEACHER_KINDS, hparams=_KD_HPARAMS,
))
register(LabelSmoothing(
    name="ls",
    description="label smoothing: CE against 1-epsilon on the label, epsilon/(K-1) on each other class; no teacher",
    source="seed 002 section 4.2 eq. 3; seed 003 section 4.2 (KD as learned label smoothing); default epsilon=0.1",
    hparams=(HParam("epsilon", 0.1, low=0.0, high=1.0, help="smoothing factor epsilon in [0, 1]"),),
))
register(VirtualTeacherKD(
    name="tf_kd_reg",
    description="teacher-free KD: KD from a virtual teacher (delta on the label, (1-delta)/(K-1) elsewhere)",
    source="seed 003 section 4.3.2 eq. 4 (Yuan et al. Tf-KD-reg); delta=0.9 (the seed keeps delta in "
           "[0.9, 1]); the seed gives no alpha or T: alpha=0.9 (project default), T=1 (the virtual teacher as designed)",
    hparams=(HParam("temperature", 1.0, low=0.0, low_open=True, help="softmax temperature T > 0"), _ALPHA,
             HParam("delta", 0.9, low=0.0, high=1.0, low_open=True,
                    help="the virtual teacher's probability on the true class, in (0, 1] (seed: [0.9, 1])")),
))
register(HintonKD(
    name="tf_kd_self",
    description="teacher-free self-training KD: KD from the student's own architecture trained first with CE",
    source="seed 003 section 4.3.1 eq. 3 (Yuan et al. Tf-KD-self); the seed gives no alpha or T: kd's defaults",
    needs_teacher=True, teacher_kinds=("plain",), same_arch_teacher=True, hparams=_KD_HPARAMS,
))
register(ConsistentKnowledgeMining(
    name="ckm",
    description="consistent knowledge mining: where the teacher is right but less confident than the student, "
                "distil a 0.99 label-smoothed target instead",
    source="seed 002 section 5.1; temperatures from section 5.2 second stage (teacher 0.7, student 1)",
    needs_teacher=True, teacher_kinds=("plain", "distilled"),
    hparams=(HParam("temperature", 1.0, low=0.0, low_open=True, help="the student's temperature T > 0"),
             HParam("teacher_temperature", 0.7, low=0.0, low_open=True, help="the teacher's temperature > 0"),
             _ALPHA,
             HParam("confidence", 0.99, low=0.0, high=1.0, low_open=True,
                    help="label-smoothing confidence of the replacement target, in (0, 1]")),
))
register(WeightedSoftLabels(
    name="wsl",
    description="weighted soft labels: per-sample KD weight 1-exp(-CE_student/CE_teacher) on the true class",
    source="Zhou et al. 2021, cited in seed 002 section 5.2 (first stage, T=2)",
    needs_teacher=True, teacher_kinds=("plain", "distilled"),
    hparams=(HParam("temperature", 2.0, low=0.0, low_open=True, help="softmax temperature T > 0"), _ALPHA),
))
register(HintonKD(
    name="mkd",
    description="ensemble of teachers: the KD term averaged over several teachers of the zoo",
    source="seed 001 section 4.0.2 (table 3: alpha=0.5, T=5); kd's defaults",
    needs_teacher=True, teacher_kinds=("ensemble",), hparams=_KD_HPARAMS,
))
register(HintonKD(
    name="takd",
    description="teacher-assistant KD: KD from an assistant that was itself distilled from a larger teacher",
    source="seed 001 section 3.2; seed 004 table 6; kd's defaults",
    needs_teacher=True, teacher_kinds=("distilled",), hparams=_KD_HPARAMS,
))
register(MutualLearning(
    name="dml",
    description="deep mutual learning: a cohort of students trained together, each distilling from the others",
    source="Zhang et al. 2018; seed 000 table I (cohort 2, T=4)",
    hparams=(_T, HParam("cohort", 2, low=2, high=8, integer=True, help="number of students in the cohort, 2..8")),
))


register(OnTheFlyNativeEnsemble(
    name="one",
    description="on-the-fly native ensemble: a multi-branch student whose gated branch ensemble teaches each "
                "branch; branch 0 is evaluated",
    source="Lan et al. 2018; seed 000 table I (T=3, three branches)",
    hparams=(HParam("temperature", 3.0, low=0.0, low_open=True, help="softmax temperature T > 0"),
             HParam("branches", 3, low=2, high=8, integer=True, help="number of branches, 2..8")),
))


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise bad_value("method", name, f"allowed: {', '.join(sorted(METHODS))}") from None


def check_method_params(name: str, params: dict | None, epochs: int) -> dict:
    """Resolve a method's hyperparameters, including checks that depend on the run (epochs)."""
    method = get_method(name)
    hp = method.resolve(params)
    stop = hp.get("kd_stop_epoch")
    if stop is not None and stop > epochs:
        raise KdxError(f"kd_stop_epoch: got {stop}; allowed: 1 <= kd_stop_epoch <= epochs ({epochs}).")
    return hp
