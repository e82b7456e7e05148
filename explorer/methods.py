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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import KdxError, bad_value


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

    student_logits: Tensor
    targets: Tensor
    epoch: int  # 1-based
    teacher_logits: Tensor | None = None
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


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch (Hinton et al.; seed 001 eq. 1)."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


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
    """

    def uses_teacher(self, epoch: int, hp: dict) -> bool:
        stop = hp.get("kd_stop_epoch")
        return stop is None or epoch < stop

    def losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        ce = F.cross_entropy(inputs.student_logits.float(), inputs.targets)
        if not self.uses_teacher(inputs.epoch, hp):
            return {"ce": ce}
        alpha = hp["alpha"]
        kd = kd_kl(inputs.student_logits, inputs.teacher_logits, hp["temperature"])
        return {"ce": (1.0 - alpha) * ce, "kd": alpha * kd}


_KD_STOP = HParam(
    "kd_stop_epoch", None, low=1, integer=True, optional=True,
    help="epoch (1-based) from which the KD term is switched off; none = never (seed 004 section 5.3)",
)

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
    description="Hinton KD: (1-alpha)*CE + alpha*T^2*KL(teacher^T || student^T), batchmean",
    source="seed 001 eq. 1; defaults from seed 000 table I (alpha=0.9, T=4)",
    needs_teacher=True,
    hparams=(
        HParam("temperature", 4.0, low=0.0, low_open=True, help="softmax temperature T > 0"),
        HParam("alpha", 0.9, low=0.0, high=1.0, help="weight of the KD term, in [0, 1]"),
        _KD_STOP,
    ),
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
