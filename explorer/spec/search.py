"""The search spec: one YAML file says everything about a search (see searches/*.yaml).

Searchable values (each fixed, `{choice: [...]}`, `{uniform: [lo, hi]}`, `{loguniform: [lo, hi]}`
or `{grid: [...]}`; explorer/spec/axes.py): every `distill` key (the method and every hyperparameter a
registered method declares), every field of the `student` section but `epochs` (ASHA's clock):
`student.arch`, `student.lr`, `student.weight_decay`, ..., and every field of `teachers.recipe` as a
choice or grid (each teacher is built before the search). Lists are axes too: `teachers.archs` (the
size axis), `teachers.stop_epochs` (the early-stopping axis) and `seeds`; with more than one entry
each is a choice (optuna, random) or a grid axis (grid). A searched student or teacher value is
checked by the same field validator as a fixed one: every listed value and both ends of a range.

`load_spec` and `parse_spec` turn every problem into one sentence naming the field, the value and
what is allowed (a `KdxError`), before anything starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, create_model, field_validator

from explorer.config import Recipe, TrainConfig
from explorer.data.condition import TEACHER_CONDITIONS, DataSpec
from explorer.data.registry import check_data_present
from explorer.data.section import DatasetSection
from explorer.errors import KdxError, pydantic_sentence
from explorer.fields import Seed, Strict
from explorer.methods import Method, get_method, hparam_names
from explorer.models import is_known_model
from explorer.spec.axes import Axis, as_axis, check_points, param_name, section_axes, set_path
from explorer.spec.checks import (check_axis_forms, check_cell_budget, check_fused_search, check_methods,
                                  check_methods_fit_teachers)
from explorer.spec.file import read_spec_file
from explorer.spec.sections import ConfirmSection, EvaluateSection, ResourcesSection, SearchSection
from explorer.teachers.entries import parse_teacher, teacher_chains
from explorer.training.stages import trial_epochs

# The distill keys: the method and every hyperparameter any registered method declares.
AXES = ("method", *hparam_names())


class StudentSection(Recipe):
    arch: str

    @field_validator("arch")
    @classmethod
    def _arch(cls, v):
        if not is_known_model(v):
            raise ValueError("allowed: an architecture from `kdx models` (resnet20, wrn_16_2, cnn1d_w4, mlp_400x1, ...)")
        return v


class TeachersSection(Strict):
    archs: list[str] = Field(min_length=1)  # teacher entries, see explorer/teachers/entries.py
    early_stop_schedule: bool = False  # True: each stop epoch n is its own n-epoch run (seed 004 section 5.5)
    seed: Seed = 0
    recipe: Recipe = Recipe()
    # default: the recipe's final epoch only (after `recipe` and `early_stop_schedule`: it is checked against them)
    stop_epochs: list[int] | None = None
    # How the links of a chain ('a<b', 'a^g') are distilled: a method and its hyperparameters.
    distill: dict = {"method": "kd"}
    generations: int = Field(0, ge=0, le=20)  # adds 'a^1' .. 'a^g' for every plain architecture entry
    # the teachers' data: the student's condition and all (same), or the clean split (explorer/data/condition.py)
    data_condition: Literal[tuple(TEACHER_CONDITIONS)] = "same"  # type: ignore[valid-type]

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
        if m.init_epochs(hp):  # a chain's checkpoints are kept on the teacher recipe's own epoch clock
            raise KdxError(f"teachers.distill.method: got {name!r} with init_epochs {m.init_epochs(hp)}; allowed: "
                           "a one-stage method (kd, ckm, wsl), or init_epochs: 0.")
        return name, {k: v for k, v in hp.items()}

    @field_validator("stop_epochs")
    @classmethod
    def _stops(cls, stops, info: ValidationInfo):
        if stops is None:
            return stops
        if not stops:
            raise ValueError("allowed: a non-empty list of epochs")
        if len(set(stops)) != len(stops):
            raise ValueError("allowed: distinct epochs")
        epochs = info.data["recipe"].epochs if "recipe" in info.data else math.inf
        limit = math.inf if info.data.get("early_stop_schedule") else epochs
        bad = [s for s in stops if not 1 <= s <= limit]
        if bad:
            raise ValueError(f"stop epoch {bad[0]} is outside the teacher's epochs; allowed: 1..{epochs}")
        return stops

    def stops(self) -> list[int]:
        return list(self.stop_epochs or [self.recipe.epochs])


def _as_axis(v):
    try:
        return as_axis(v)
    except ValidationError as e:
        raise ValueError(e.errors()[0]["msg"].removeprefix("Value error, ")) from None


class _DistillBase(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def axes(self) -> dict[str, Axis]:
        return {name: getattr(self, name) for name in AXES}


# One field per distill key, derived from the method registry; null (the default) means the method's
# own default (see `kdx methods`).
DistillSection = create_model(
    "DistillSection", __base__=_DistillBase,
    __validators__={"_as_axis": field_validator(*AXES, mode="after")(classmethod(lambda cls, v: _as_axis(v)))},
    **{name: (Any, "kd" if name == "method" else None) for name in AXES},
)


class SearchSpec(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    dataset: DatasetSection = DatasetSection()
    student: StudentSection
    teachers: TeachersSection
    distill: DistillSection = DistillSection()
    seeds: list[Seed] = Field([0], min_length=1)
    baseline: bool = True
    search: SearchSection = SearchSection()
    resources: ResourcesSection = ResourcesSection()
    confirm: ConfirmSection = ConfirmSection()
    evaluate: EvaluateSection = EvaluateSection()

    # student and teacher-recipe fields given as axes ({"student.lr": Axis}); the sections hold
    # their first value
    _axes: dict = PrivateAttr(default_factory=dict)
    _source: dict = PrivateAttr(default_factory=dict)  # the mapping the spec was parsed from

    # ----------------------------------------------------------- cross-field checks
    def value_axes(self) -> dict[str, Axis]:
        """Every value that may be searched, by spec path (fixed ones included)."""
        return {f"distill.{k}": a for k, a in self.distill.axes().items()} | self._axes

    def _section_axes(self, section: str) -> dict[str, Axis]:
        """The searched fields of one section, by param name."""
        return {param_name(p): a for p, a in self._axes.items() if p.startswith(section + ".")}

    def check(self) -> "SearchSpec":
        """Checks that need several sections; raises KdxError."""
        data = self.dataset.data_spec()
        if data.val_fraction == 0:  # a search rule, on top of the field's own check
            raise KdxError("dataset.val_fraction: got 0; allowed: a number in (0, 1) for a search, which chooses "
                           "configs on the validation split, never on test.")
        check_data_present(data)  # data read from disk: here (the driver), or to be downloaded here
        check_axis_forms(self.value_axes(), self.search.algorithm)
        axes = self.distill.axes()
        methods = check_methods(axes)
        self.teachers.distill_method()
        check_methods_fit_teachers(self, axes["method"].values())
        for v in axes["kd_stop_epoch"].values():
            if v is not None and v > self.student.epochs:
                raise KdxError(f"distill.kd_stop_epoch: got {v}; allowed: 1..student.epochs ({self.student.epochs}) or null.")
        if self.search.asha and self.search.asha.grace_period > self.student.epochs:
            raise KdxError(f"search.asha.grace_period: got {self.search.asha.grace_period}; "
                           f"allowed: 1..student.epochs ({self.student.epochs}).")
        if len(set(self.seeds)) != len(self.seeds):
            raise KdxError(f"seeds: got {self.seeds}; allowed: distinct seeds.")
        check_points(self.search.points_to_evaluate, self.searched_axes(), self.search.algorithm)
        check_cell_budget(self)
        check_fused_search(self, methods)
        self.confirm.check(self.seeds, self.searched_axes())
        return self

    def search_cells(self) -> list[dict]:
        """With `search.trials_per_cell`: every combination of the searched cell params' values (e.g.
        teacher x teacher_stop_epoch), each a dict; [] without it."""
        if self.search.trials_per_cell is None:
            return []
        axes = self.searched_axes()
        names = [c for c in self.cell_params() if c in axes]
        return [dict(zip(names, combo)) for combo in itertools.product(*(axes[c].values() for c in names))]

    def trial_epochs(self) -> int:
        """The most epochs a trial reports: the student's, plus the longest init stage of a two-stage
        method in the space (FitNet, FSP, AB run it on the same clock; ASHA's max_t)."""
        axes = self.distill.axes()
        longest = self.student.epochs
        for method in axes["method"].values():
            m = get_method(method)
            if "init_epochs" in {h.name for h in m.hparams}:
                longest = max([longest, *(trial_epochs(m, m.resolve({"init_epochs": v} if v is not None else {}),
                                                       self.student.epochs) for v in axes["init_epochs"].values())])
        return longest

    def cell_params(self) -> list[str]:
        """The params that key a confirmation cell: `confirm.cells`, plus the student architecture when
        it is searched (every student gets its own cells)."""
        student = ["student"] if "student" in self.searched_axes() else []
        return student + [c for c in self.confirm.cells if c != "student"]

    # ----------------------------------------------------------- planning helpers
    def data_spec(self) -> DataSpec:
        """The student's data, naming the teachers' (`teachers.data_condition`, DataSpec.teacher_condition)."""
        return dataclasses.replace(self.dataset.data_spec(), teacher_condition=self.teachers.data_condition)

    def student_archs(self) -> list[str]:
        """Every student architecture the space can ask for."""
        axis = self._axes.get("student.arch")
        return axis.values() if axis else [self.student.arch]

    def student_config(self, values: dict, seed: int, method: str, method_params: dict) -> TrainConfig:
        """The student's run for one trial: the `student` section with the trial's searched student
        values (param names `student`, `student.lr`, ...) laid over it."""
        fields = self.student.model_dump()
        for name in self._section_axes("student"):
            if name in values:
                fields["arch" if name == "student" else name.removeprefix("student.")] = values[name]
        arch = fields.pop("arch")
        return Recipe(**fields).train_config(arch, seed, method, method_params)

    def teacher_variants(self) -> list[dict]:
        """Every combination of the searched teacher-recipe values, by param name ([{}] when none)."""
        axes = self._section_axes("teachers.recipe")
        return [dict(zip(axes, vs)) for vs in itertools.product(*(a.values() for a in axes.values()))]

    def teacher_recipe(self, values: dict) -> Recipe:
        """The teachers' recipe with a trial's searched teacher-recipe values laid over it."""
        fields = {name.removeprefix("teachers.recipe."): values[name]
                  for name in self._section_axes("teachers.recipe") if name in values}
        return self.teachers.recipe.model_copy(update=fields)

    def teacher_configs(self) -> list[tuple[str, int, TrainConfig]]:
        """(entry, stop epoch, the TrainConfig of the teacher used there) for every teacher entry, stop
        epoch and teacher-recipe variant (the heads of `teacher_chains`; one per ensemble member)."""
        t = self.teachers
        return [(entry, stop, links[-1].recipe.train) for variant in self.teacher_variants()
                for entry in t.archs for stop in t.stops()
                for links in teacher_chains(entry, self.data_spec(), self.teacher_recipe(variant), t.seed, stop,
                                            t.distill_method(), t.early_stop_schedule)]

    def _lists(self) -> dict[str, list]:
        return {"teacher": self.teachers.entries(), "teacher_stop_epoch": self.teachers.stops(), "seed": self.seeds}

    def searched_axes(self) -> dict[str, Axis]:
        """Every axis that varies, by param name: distill and student values that are not fixed, plus
        teacher/stop/seed lists with several entries."""
        kind = "grid" if self.search.algorithm == "grid" else "choice"
        out = {param_name(p): a for p, a in self.value_axes().items() if a.kind != "fixed"}
        out |= {k: Axis(**{kind: v}) for k, v in self._lists().items()
                if len(v) > 1 and not (k == "seed" and self.search.fuse_seeds)}  # fused: every trial has every seed
        return out

    def fixed_values(self) -> dict:
        """The distill values and list entries that do not vary across trials, by param name."""
        searched = self.searched_axes()
        fixed = {k: a.fixed for k, a in self.distill.axes().items() if k not in searched}
        fixed |= {k: v[0] for k, v in self._lists().items() if k not in searched}
        return fixed

    def baseline_points(self) -> list[dict]:
        """The CE baselines: one per seed (one for all seeds, fused, with `search.fuse_seeds`) and per
        value of every discrete searched student field (each student architecture of a choice); a
        student field searched over a range takes its middle (`Axis.representative`), and `kdx
        confirm` re-runs the baseline at the winner's values."""
        student = self._section_axes("student")
        discrete = {k: a.values() for k, a in student.items() if a.kind in ("choice", "grid")}
        middle = {k: a.representative() for k, a in student.items() if k not in discrete}
        combos = [dict(zip(discrete, vs)) for vs in itertools.product(*discrete.values())]
        if self.search.fuse_seeds:  # one trial trains every seed (`search.fuse_seeds`)
            return [{"seed": self.seeds[0], "members": list(self.seeds)} | middle | c for c in combos]
        return [{"seed": s} | middle | c for c in combos for s in self.seeds]

    def replace(self, path: str, value) -> "SearchSpec":
        """A copy with one dotted spec path set (`student.epochs` for `kdx search --epochs`)."""
        return parse_spec(set_path(self._source, path, value))


def _build(data: dict) -> SearchSpec:
    try:
        return SearchSpec(**data)
    except ValidationError as e:
        raise KdxError(pydantic_sentence(e)) from None


def parse_spec(data: Any, source: str = "spec") -> SearchSpec:
    if not isinstance(data, dict):
        raise KdxError(f"{source}: got {type(data).__name__}; allowed: a YAML mapping with name, student, teachers, ...")
    axes = section_axes(data, "student", forbid=("epochs",), discrete=("arch", "schedule", "nesterov")) | \
        section_axes(data, "teachers.recipe", why=" (every teacher is built before the search starts)")
    searched = {p: a for p, a in axes.items() if a.kind != "fixed"}

    def build(values: dict) -> SearchSpec:
        spec = _build(values)
        spec._axes, spec._source = searched, data
        return spec.check()

    base = data
    for path, axis in axes.items():
        base = set_path(base, path, axis.values()[0])
    for path, axis in axes.items():  # each searched value through the field's own validator
        for v in axis.values()[1:]:
            build(set_path(base, path, v))
    return build(base)


def load_spec(path: str | Path) -> tuple[SearchSpec, str]:
    """Read, parse and check a spec file; returns (spec, the file's text) for attaching to MLflow."""
    data, text = read_spec_file(path)
    return parse_spec(data, str(path)), text
