"""The plugin API of distillation methods: hyperparameter declarations, loss inputs, the base class
and the registry.

A method is one small object registered where its class is defined (one module per method or
family in this package; every module here is imported by `explorer.methods`, so a new method is one
new file). It declares its hyperparameters once (`HParam`: name, default from the paper, allowed
range, source); the spec's `distill` keys, `kdx train` flags, MLflow params, confirm and analysis
config keys and `kdx methods` all derive from those declarations.

The training loop never branches on a method's name. It asks the method whether it needs a
teacher at this epoch, hands it a `LossInputs`, and sums the dict of loss terms it returns
(logging each term as `train_<name>`).

A method may own trainable modules (regressors, connectors): `build_modules` is called once with the
student's and the teacher's feature shapes (the features come from forward hooks at the module
paths of `feature_role`, see explorer/models/features.py); the optimiser includes those modules, they are
saved with the trainer state, and they are not part of the evaluated student.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from explorer.errors import KdxError, bad_value
from explorer.models import build_model, default_input_family


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
        if not math.isfinite(float(value)):
            raise bad_value(self.name, value, "allowed: a finite number")
        if self.integer and float(value) != int(value):
            raise bad_value(self.name, value, "allowed: a whole number")
        lo_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        hi_ok = self.high is None or value <= self.high
        if not (lo_ok and hi_ok):
            raise bad_value(self.name, value, f"allowed: {self.range_text()}")
        return int(value) if self.integer else float(value)

    def range_text(self) -> str:
        lo = "" if self.low is None else f"{self.low} {'<' if self.low_open else '<='} "
        hi = "" if self.high is None else f" <= {self.high}"
        return f"{lo}{self.name}{hi}"


# Hyperparameters several methods share (each method lists the ones it takes).
TEMPERATURE = HParam("temperature", 4.0, low=0.0, low_open=True, help="softmax temperature T > 0")
ALPHA = HParam("alpha", 0.9, low=0.0, high=1.0, help="weight of the KD term, in [0, 1]")
KD_STOP_EPOCH = HParam(
    "kd_stop_epoch", None, low=1, integer=True, optional=True,
    help="epoch (1-based) from which the KD term is switched off; none = never (seed 004 section 5.3)",
)
TEACHER_TEMPERATURE = HParam("teacher_temperature", None, low=0.0, low_open=True, optional=True,
                             help="the teacher's own temperature; none = T (seed 002 section 5.2)")


@dataclass
class LossInputs:
    """What a method may look at for one batch. Features are only filled when the method asks."""

    student_logits: Tensor  # for methods with their own student module: its training-mode output
    targets: Tensor
    epoch: int  # 1-based
    teacher_logits: Tensor | list[Tensor] | None = None  # a list when the teacher is an ensemble (mkd)
    student_features: list[Tensor] | None = None
    teacher_features: list[Tensor] | None = None
    modules: nn.Module | None = None  # what `build_modules` returned
    # For methods that need more than one forward per batch (uda's second view, bss's attack):
    x: Tensor | None = None  # the batch the student saw (after the dataset's own augmentation)
    run_student: Callable[[Tensor], Tensor] | None = None  # the student's train-mode forward -> logits
    # the teacher's eval-mode forward -> float32 logits; differentiable with respect to its input
    # (the teacher's weights stay frozen); wrap it in torch.no_grad() when no input gradient is needed
    run_teacher: Callable[[Tensor], Tensor] | None = None
    generator: torch.Generator | None = None  # the run's generator (on the batch's device)
    epochs: int | None = None  # epochs of the main stage (for schedules over training, bss)


# Which teachers a method accepts: "plain" (trained with CE), "distilled" (itself distilled: a chain
# such as TAKD's assistant, or a born-again generation), "ensemble" (several teachers, a list of logits).
TEACHER_KINDS = ("plain", "distilled", "ensemble")


@dataclass(frozen=True)
class Method:
    """Base class: a name, its hyperparameters, and the loss terms it produces."""

    name: str
    description: str
    source: str
    hparams: tuple[HParam, ...] = ()
    needs_teacher: bool = False
    teacher_kinds: tuple[str, ...] = ()  # a subset of TEACHER_KINDS
    same_arch_teacher: bool = False  # the teacher must be the student's own architecture (tf_kd_self)
    # Intermediate features the method reads, by role ("blocks", "penultimate"; explorer/models/features.py):
    # None = logits only. The same role is tapped on the student and on the teacher.
    feature_role: str | None = None
    # True when the method reads per-position feature maps (attention maps, flow matrices): refused on
    # architectures whose features have no spatial/temporal axis (MLPs), see `arch_problem`.
    spatial_features: bool = False
    # True when the loss runs the student or the teacher again (a second view, an attack): such a method
    # cannot train fused members (explorer/training/fused.py), whose loss sees one member's logits at a time.
    extra_forwards: bool = False

    @property
    def needs_features(self) -> bool:
        return self.feature_role is not None

    def arch_problem(self, arch: str) -> str | None:
        """Why this method cannot run on (student or teacher) architecture `arch`, or None. Checked by
        `check_method_params(..., archs=...)` and by the trainer's setup, before any compute."""
        if self.spatial_features and default_input_family(arch) == "any":
            return (f"method {self.name!r} compares per-position feature maps, which architecture {arch!r} "
                    f"(an MLP, flat features) does not have; use a CNN (cnn1d_w*, resnet*, wrn_*)")
        return None

    # ---- two-stage methods (fitnet, fsp): an init stage run by the trainer before the main stage.
    def init_epochs(self, hp: dict) -> int:
        """Epochs of the init stage (0 = a one-stage method); from the `init_epochs` hyperparameter."""
        return int(hp.get("init_epochs") or 0)

    def init_recipe(self, hp: dict) -> tuple[float, tuple[int, ...], float]:
        """(lr, milestones within the init stage, LR factor) of the init stage's own SGD optimiser
        (momentum and weight decay are the student recipe's)."""
        raise NotImplementedError

    def init_losses(self, inputs: LossInputs, hp: dict) -> dict[str, Tensor]:
        """The loss terms of the init stage (the main stage uses `losses`)."""
        raise NotImplementedError

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

    def build_modules(self, student_shapes: list[tuple], teacher_shapes: list[tuple] | None,
                      hp: dict) -> nn.Module | None:
        """Trainable modules the method owns (regressors, connectors), sized from the per-sample
        feature shapes of the student's and the teacher's `feature_role` layers. Default: none."""
        return None

    def teacher_problem(self, kind: str | None, same_arch: bool = True, members: int | None = None) -> str | None:
        """Why a teacher of this kind ("plain", "distilled", "ensemble", None = no teacher) does not
        fit the method, or None when it does; `members`: the number of teachers (None: not known)."""
        if not self.needs_teacher:
            return None if kind is None else f"method {self.name!r} takes no teacher"
        if kind is None:
            return f"method {self.name!r} needs a teacher"
        if kind not in self.teacher_kinds:
            return f"method {self.name!r} takes {' or '.join(self.teacher_kinds)} teachers, not {kind}"
        if self.same_arch_teacher and not same_arch:
            return f"method {self.name!r} needs a teacher of the student's own architecture"
        return None


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the registry (called where the method's class is defined)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise bad_value("method", name, f"allowed: {', '.join(sorted(METHODS))}") from None


def hparam_names() -> tuple[str, ...]:
    """Every hyperparameter name any registered method declares, in registration order: the spec's
    `distill` keys, the `kdx train` flags and the MLflow params of a trial."""
    names: dict[str, None] = {}
    for m in METHODS.values():
        names.update(dict.fromkeys(h.name for h in m.hparams))
    return tuple(names)


def hparam_declarations(name: str) -> list[tuple[Method, HParam]]:
    """(method, declaration) of every method that declares hyperparameter `name`."""
    return [(m, h) for m in METHODS.values() for h in m.hparams if h.name == name]


def check_method_params(name: str, params: dict | None, epochs: int, archs: tuple[str, ...] | list[str] = ()
                        ) -> dict:
    """Resolve a method's hyperparameters, including checks that depend on the run (epochs, and the
    student's and teachers' architectures `archs` when given)."""
    method = get_method(name)
    hp = method.resolve(params)
    for arch in archs:
        problem = method.arch_problem(arch)
        if problem:
            raise KdxError(f"{problem}.")
    stop = hp.get("kd_stop_epoch")
    if stop is not None and stop > epochs:
        raise KdxError(f"kd_stop_epoch: got {stop}; allowed: 1 <= kd_stop_epoch <= epochs ({epochs}).")
    return hp
