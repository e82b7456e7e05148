"""The search spec: one YAML file says everything about a search (see searches/*.yaml).

Searchable axes (each a fixed value, `{choice: [...]}`, `{uniform: [lo, hi]}`,
`{loguniform: [lo, hi]}` or `{grid: [...]}`): `distill.method`, `distill.temperature`,
`distill.alpha`, `distill.kd_stop_epoch`. Lists are axes too: `teachers.archs` (the size axis),
`teachers.stop_epochs` (the early-stopping axis) and `seeds`; with more than one entry each is a
choice (optuna, random) or a grid axis (grid).

`load_spec` and `validate_spec` turn every problem into one sentence naming the field, the value
and what is allowed (a `KdxError`), before anything starts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .data import DataCondition, DataSpec, dataset_names
from .errors import KdxError
from .methods import METHODS, Method, get_method
from .models import is_known_model
from .tracking import METHOD_PARAMS
from .train import SCHEDULES, TrainConfig

AXES = ("method", *METHOD_PARAMS)

TEACHER_SYNTAX = ("allowed: an architecture from `kdx models`, 'a<b' (a distilled from b; chains like 'a<b<c'), "
                  "'a^g' (born-again generation g of a), 'a:sN' (teacher seed N), or such members joined by '+' "
                  "(an ensemble)")


def parse_teacher(text: str, seed: int, field: str = "teachers.archs") -> list[list[tuple[str, int]]]:
    """Parse one teacher entry into its members; each member is a chain of (arch, seed) links, the
    teacher that is used first, its own teacher next, down to the CE-trained root.

    'a' -> [[(a, seed)]]; 'a<b' -> [[(a, seed), (b, seed)]]; 'a^2' -> [[(a, seed+2), (a, seed+1),
    (a, seed)]] (generation k has seed + k, so generations start from different weights, as
    born-again networks do); 'a:s3' -> seed 3; 'x+y' -> two members (an ensemble)."""
    if not isinstance(text, str) or not text.strip():
        raise KdxError(f"{field}: got {text!r}; {TEACHER_SYNTAX}.")
    members = []
    for member in text.replace(" ", "").split("+"):
        chain: list[tuple[str, int]] = []
        for link in member.split("<"):
            gens, arch, link_seed = 0, link, seed
            if "^" in arch:
                arch, _, g = arch.partition("^")
                if not g.isdigit():
                    raise KdxError(f"{field}: got {text!r}; the generation after '^' must be a whole number; {TEACHER_SYNTAX}.")
                gens = int(g)
            if ":" in arch:
                arch, _, sd = arch.partition(":")
                if not (sd.startswith("s") and sd[1:].isdigit()):
                    raise KdxError(f"{field}: got {text!r}; a seed is written ':s<N>', e.g. 'cnn1d_w16:s1'; {TEACHER_SYNTAX}.")
                link_seed = int(sd[1:])
            if not is_known_model(arch):
                raise KdxError(f"{field}: got {text!r}; {arch!r} is not an architecture; {TEACHER_SYNTAX}.")
            chain += [(arch, link_seed + k) for k in range(gens, -1, -1)]
        members.append(chain)
    return members


def teacher_kind(members: list[list[tuple[str, int]]]) -> str:
    """'ensemble' (several members), 'distilled' (a chain) or 'plain'."""
    if len(members) > 1:
        return "ensemble"
    return "distilled" if len(members[0]) > 1 else "plain"



class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Axis(Strict):
    """One searchable value: exactly one of fixed / choice / uniform / loguniform / grid."""

    fixed: Any = None
    choice: list | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    grid: list | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in ("choice", "uniform", "loguniform", "grid") if getattr(self, k) is not None]
        if len(kinds) > 1:
            raise ValueError(f"give one of choice, uniform, loguniform, grid, not {' and '.join(kinds)}")
        for k in ("choice", "grid"):
            if getattr(self, k) == []:
                raise ValueError(f"{k} is empty; allowed: a non-empty list")
        for k in ("uniform", "loguniform"):
            r = getattr(self, k)
            if r is not None and not r[0] < r[1]:
                raise ValueError(f"{k} range {list(r)} is empty; allowed: [low, high] with low < high")
            if k == "loguniform" and r is not None and r[0] <= 0:
                raise ValueError(f"loguniform range {list(r)} must be positive")
        return self

    @property
    def kind(self) -> str:
        for k in ("choice", "uniform", "loguniform", "grid"):
            if getattr(self, k) is not None:
                return k
        return "fixed"

    def values(self) -> list:
        """The discrete values this axis can take (the range ends for ranges)."""
        if self.kind == "fixed":
            return [self.fixed]
        v = getattr(self, self.kind)
        return list(v)


def _axis(value) -> Axis:
    if isinstance(value, Axis):
        return value
    if isinstance(value, dict):
        return Axis(**value)
    return Axis(fixed=value)


class DatasetSection(Strict):
    name: str = "mnist1d"
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = 0
    label_noise: float = Field(0.0, ge=0, lt=1)
    imbalance_gamma: float | None = Field(None, gt=0)
    imbalance_max: int | None = Field(None, ge=1)
    imbalance_min: int | None = Field(None, ge=1)
    omit_classes: list[int] = []

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        if v not in dataset_names():
            raise ValueError(f"allowed: {', '.join(dataset_names())}")
        return v

    def data_spec(self) -> DataSpec:
        return DataSpec(
            dataset=self.name, data_dir=self.data_dir, download=self.download,
            val_fraction=self.val_fraction, split_seed=self.split_seed,
            condition=DataCondition(
                label_noise=self.label_noise, imbalance_gamma=self.imbalance_gamma,
                imbalance_max=self.imbalance_max, imbalance_min=self.imbalance_min,
                omit_classes=tuple(self.omit_classes)),
        )


class Recipe(Strict):
    """Optimiser and schedule of one training run (student or teacher)."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: str = "cosine"
    milestones: list[int] = []
    lr_gamma: float = Field(0.2, gt=0)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v):
        if v not in SCHEDULES:
            raise ValueError(f"allowed: {', '.join(SCHEDULES)}")
        return v

    @model_validator(mode="after")
    def _milestones(self):
        bad = [m for m in self.milestones if not 1 <= m <= self.epochs]
        if bad:
            raise ValueError(f"milestone {bad[0]} is outside 1..epochs ({self.epochs})")
        return self

    def train_config(self, arch: str, seed: int, method: str = "ce", method_params: dict | None = None,
                     **overrides) -> TrainConfig:
        fields = self.model_dump() | overrides
        fields["milestones"] = tuple(fields["milestones"])
        return TrainConfig(arch=arch, seed=seed, method=method, method_params=method_params or {}, **fields)


class StudentSection(Recipe):
    arch: str

    @field_validator("arch")
    @classmethod
    def _arch(cls, v):
        if not is_known_model(v):
            raise ValueError("allowed: an architecture from `kdx models` (resnet20, wrn_16_2, cnn1d_w4, mlp_400x1, ...)")
        return v


class TeachersSection(Strict):
    archs: list[str] = Field(min_length=1)  # teacher entries, see TEACHER_SYNTAX
    stop_epochs: list[int] | None = None  # default: the recipe's final epoch only
    early_stop_schedule: bool = False  # True: each stop epoch n is its own n-epoch run (seed 004 section 5.5)
    seed: int = 0
    recipe: Recipe = Recipe()
    # How the links of a chain ('a<b', 'a^g') are distilled: a method and its hyperparameters.
    distill: dict = {"method": "kd"}
    generations: int = Field(0, ge=0, le=20)  # adds 'a^1' .. 'a^g' for every plain architecture entry

    @field_validator("archs")
    @classmethod
    def _archs(cls, v):
        for a in v:
            try:
                parse_teacher(a, 0)
            except KdxError as e:
                raise ValueError(str(e).split("; ", 1)[1].rstrip(".")) from None
        if len(set(v)) != len(v):
            raise ValueError("contains duplicates")
        return v

    def entries(self) -> list[str]:
        """The teacher axis: `archs` plus the born-again generations asked for."""
        out = list(self.archs)
        for a in self.archs:
            if is_known_model(a):
                out += [f"{a}^{g}" for g in range(1, self.generations + 1) if f"{a}^{g}" not in out]
        return out

    def distill_method(self) -> tuple[str, dict]:
        """(method, resolved hyperparameters) for distilled links; KdxError naming teachers.distill."""
        d = dict(self.distill)
        name = d.pop("method", "kd")
        try:
            m = get_method(name)
            hp = m.resolve(d)
        except KdxError as e:
            raise KdxError(f"teachers.distill.{e}") from None
        if not m.needs_teacher or not ({"plain", "distilled"} & set(m.teacher_kinds)) \
                or type(m).build_student is not Method.build_student:
            raise KdxError(f"teachers.distill.method: got {name!r}; allowed: a method that distils one plain model "
                           "from one teacher (kd, ckm, wsl).")
        return name, {k: v for k, v in hp.items()}

    @model_validator(mode="after")
    def _stops(self):
        stops = self.stop_epochs
        if stops is None:
            return self
        if not stops:
            raise ValueError("stop_epochs is empty; allowed: a non-empty list of epochs")
        if len(set(stops)) != len(stops):
            raise ValueError("stop_epochs contains duplicates")
        limit = math.inf if self.early_stop_schedule else self.recipe.epochs
        bad = [s for s in stops if not 1 <= s <= limit]
        if bad:
            raise ValueError(f"stop epoch {bad[0]} is beyond the teacher's epochs; allowed: 1..{self.recipe.epochs}")
        return self

    def stops(self) -> list[int]:
        return list(self.stop_epochs or [self.recipe.epochs])


class DistillSection(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # A value of null (the default) means the method's own default (see `kdx methods`).
    method: Any = "kd"
    temperature: Any = None
    alpha: Any = None
    kd_stop_epoch: Any = None
    teacher_temperature: Any = None
    epsilon: Any = None
    delta: Any = None
    confidence: Any = None
    cohort: Any = None
    branches: Any = None

    @field_validator(*AXES, mode="after")
    @classmethod
    def _as_axis(cls, v):
        try:
            return _axis(v)
        except ValidationError as e:
            raise ValueError(e.errors()[0]["msg"].removeprefix("Value error, ")) from None

    def axes(self) -> dict[str, Axis]:
        return {name: getattr(self, name) for name in AXES}


class AshaSection(Strict):
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3, gt=1)


class SearchSection(Strict):
    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    num_samples: int = Field(16, ge=1)
    max_concurrent: int = Field(2, ge=1)
    metric: Literal["val_acc", "val_loss"] = "val_acc"
    mode: Literal["max", "min"] = "max"
    seed: int = 0
    points_to_evaluate: list[dict] = []
    asha: AshaSection | None = AshaSection()


class Resources(Strict):
    cpus: float = Field(1, gt=0)
    gpus: float = Field(0, ge=0)


class ResourcesSection(Strict):
    trial: Resources = Resources()
    teacher: Resources = Resources()
    retries: int = Field(2, ge=0)


class SearchSpec(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    dataset: DatasetSection = DatasetSection()
    student: StudentSection
    teachers: TeachersSection
    distill: DistillSection = DistillSection()
    seeds: list[int] = Field([0], min_length=1)
    baseline: bool = True
    search: SearchSection = SearchSection()
    resources: ResourcesSection = ResourcesSection()

    # ----------------------------------------------------------- cross-field checks
    def check(self) -> "SearchSpec":
        """Checks that need several sections; raises KdxError."""
        try:
            self.dataset.data_spec().condition.validate(_num_classes(self.dataset.name))
        except KdxError as e:
            raise KdxError(f"dataset.{e}") from None
        axes = self.distill.axes()
        algo = self.search.algorithm
        for name, axis in axes.items():
            where = f"distill.{name}"
            if axis.kind in ("uniform", "loguniform") and name == "method":
                raise KdxError(f"{where}: got {axis.kind}; allowed: a fixed method, a choice or a grid of methods.")
            if axis.kind in ("uniform", "loguniform") and algo == "grid":
                raise KdxError(f"{where}: got a {axis.kind} range with search.algorithm grid; "
                               "allowed: a fixed value or a grid.")
            if axis.kind == "grid" and algo == "optuna":
                raise KdxError(f"{where}: got a grid with search.algorithm optuna; allowed: a fixed value, "
                               "a choice or a range (or set search.algorithm to grid or random).")
            if axis.kind == "choice" and algo == "grid":
                raise KdxError(f"{where}: got a choice with search.algorithm grid; allowed: a fixed value or a grid.")
        for method in axes["method"].values():
            if method not in METHODS:
                raise KdxError(f"distill.method: got {method!r}; allowed: {', '.join(sorted(METHODS))}.")
        # every hyperparameter value (range ends included) must be valid for every method asked for
        for method in axes["method"].values():
            m = get_method(method)
            for hp in m.hparams:
                axis = axes.get(hp.name)
                for v in (axis.values() if axis else []):
                    if v is None:
                        continue  # the method's default
                    try:
                        m.resolve({hp.name: v})
                    except KdxError as e:
                        raise KdxError(f"distill.{e}") from None
        self.teachers.distill_method()
        entries = self.teachers.entries()
        for method in axes["method"].values():
            m = get_method(method)
            if not m.needs_teacher:
                continue
            for entry in entries:
                members = parse_teacher(entry, self.teachers.seed)
                same = all(arch == self.student.arch for arch, _ in members[0][:1])
                problem = m.teacher_problem(teacher_kind(members), same_arch=same)
                if problem:
                    raise KdxError(f"distill.method: got {method!r} with teacher {entry!r}; {problem} "
                                   "(give such methods their own spec, or teachers that fit every method).")
        for v in axes["kd_stop_epoch"].values():
            if v is not None and v > self.student.epochs:
                raise KdxError(f"distill.kd_stop_epoch: got {v}; allowed: 1..student.epochs ({self.student.epochs}) or null.")
        if self.search.asha and self.search.asha.grace_period > self.student.epochs:
            raise KdxError(f"search.asha.grace_period: got {self.search.asha.grace_period}; "
                           f"allowed: 1..student.epochs ({self.student.epochs}).")
        if len(set(self.seeds)) != len(self.seeds):
            raise KdxError(f"seeds: got {self.seeds}; allowed: distinct seeds.")
        return self

    # ----------------------------------------------------------- planning helpers
    def data_spec(self) -> DataSpec:
        return self.dataset.data_spec()

    def teacher_configs(self) -> list[tuple[str, int, TrainConfig]]:
        """(arch, stop epoch, teacher TrainConfig) for every teacher the space can ask for."""
        t = self.teachers
        out = []
        for arch in t.archs:
            for stop in t.stops():
                if t.early_stop_schedule:
                    cfg = t.recipe.train_config(arch, t.seed, epochs=stop, schedule="early_stop", milestones=())
                else:
                    cfg = t.recipe.train_config(arch, t.seed)
                out.append((arch, stop, cfg))
        return out

    def teacher_links(self, entry: str, stop: int) -> list[list[tuple[str, TrainConfig]]]:
        """The members of teacher entry `entry` used at `stop`: each a chain of (arch, TrainConfig)
        from the CE-trained root to the teacher used (the head). The head follows the stop-epoch
        recipe (an early-stop schedule when asked); links below the head are full recipe runs used
        at their final epoch, distilled with `teachers.distill`."""
        t = self.teachers
        method, params = t.distill_method()
        out = []
        for chain in parse_teacher(entry, t.seed):
            links = []
            for depth, (arch, seed) in enumerate(reversed(chain)):
                head = depth == len(chain) - 1
                kw = {"method": method, "method_params": params} if depth > 0 else {}
                if head and t.early_stop_schedule:
                    cfg = t.recipe.train_config(arch, seed, epochs=stop, schedule="early_stop", milestones=(), **kw)
                else:
                    cfg = t.recipe.train_config(arch, seed, **kw)
                links.append((arch, cfg))
            out.append(links)
        return out

    def searched_axes(self) -> dict[str, Axis]:
        """Every axis that varies: distill axes that are not fixed, plus teacher/stop/seed lists."""
        lists = {"teacher": self.teachers.entries(), "teacher_stop_epoch": self.teachers.stops(), "seed": self.seeds}
        kind = "grid" if self.search.algorithm == "grid" else "choice"
        out = {k: a for k, a in self.distill.axes().items() if a.kind != "fixed"}
        out |= {k: Axis(**{kind: v}) for k, v in lists.items() if len(v) > 1}
        return out

    def fixed_values(self) -> dict:
        """The values that do not vary across trials."""
        searched = self.searched_axes()
        fixed = {k: a.fixed for k, a in self.distill.axes().items() if k not in searched}
        lists = {"teacher": self.teachers.entries(), "teacher_stop_epoch": self.teachers.stops(), "seed": self.seeds}
        fixed |= {k: v[0] for k, v in lists.items() if k not in searched}
        return fixed


def _num_classes(dataset: str) -> int:
    from .data import DATASETS

    return DATASETS[dataset].num_classes


def _sentence(err: ValidationError) -> str:
    """The first pydantic problem as one sentence: field, value, what is allowed."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
    value = e.get("input")
    if e["type"] == "extra_forbidden":
        return f"{loc}: unknown key; check the spelling against searches/quickstart.yaml."
    if e["type"] == "missing":
        return f"{loc}: missing; this field is required."
    msg = e["msg"].removeprefix("Value error, ")
    if not msg.startswith("allowed") and e["type"] not in ("value_error",):
        msg = f"allowed: {msg[0].lower()}{msg[1:]}"
    shown = repr(value) if not isinstance(value, dict) else "a mapping"
    return f"{loc}: got {shown}; {msg.rstrip('.')}."


def parse_dataset(fields: dict) -> DataSpec:
    """A `dataset:` section (or the same-named CLI flags) -> DataSpec, with the spec's checks and errors."""
    try:
        section = DatasetSection(**fields)
        spec = section.data_spec()
        spec.condition.validate(_num_classes(section.name))
    except ValidationError as e:
        raise KdxError(f"dataset.{_sentence(e)}") from None
    except KdxError as e:
        raise KdxError(f"dataset.{e}") from None
    return spec


def parse_spec(data: Any, source: str = "spec") -> SearchSpec:
    if not isinstance(data, dict):
        raise KdxError(f"{source}: got {type(data).__name__}; allowed: a YAML mapping with name, student, teachers, ...")
    try:
        spec = SearchSpec(**data)
    except ValidationError as e:
        raise KdxError(_sentence(e)) from None
    return spec.check()


def load_spec(path: str | Path) -> tuple[SearchSpec, str]:
    """Read, parse and check a spec file; returns (spec, the file's text) for attaching to MLflow."""
    path = Path(path)
    if not path.is_file():
        raise KdxError(f"SPEC: got {str(path)!r}; no such file (specs live in searches/, e.g. searches/quickstart.yaml).")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise KdxError(f"SPEC: {str(path)!r} is not valid YAML{where}; fix the syntax.") from None
    return parse_spec(data, str(path)), text
