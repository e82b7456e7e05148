"""Searchable values: the forms a spec value may take, and the one name each searched value goes by.

A value in the spec's `distill` section or a field of its `student` section is fixed, or
`{choice: [...]}`, `{uniform: [lo, hi]}`, `{loguniform: [lo, hi]}` or `{grid: [...]}`. Lists with
several entries (`teachers.archs`, `teachers.stop_epochs`, `seeds`) are axes too.

Every searched value has one *param name*, used as the searcher's config key, in
`points_to_evaluate`, as the MLflow param and as the analysis column: `param_name` below is the only
mapping from spec paths to those names.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError, model_validator

from explorer.errors import KdxError
from explorer.fields import Strict

AXIS_KINDS = ("choice", "uniform", "loguniform", "grid")

# Spec lists whose entries are searched one per trial, and the name of one entry.
LIST_PARAMS = {"teachers.archs": "teacher", "teachers.stop_epochs": "teacher_stop_epoch", "seeds": "seed"}
# Student fields that keep the short names kdx has always logged.
_SHORT = {"student.arch": "student", "student.epochs": "epochs"}


def param_name(path: str) -> str:
    """The name a spec value goes by everywhere: `distill.alpha` -> `alpha` (method hyperparameters
    are declared by bare name), `student.arch` -> `student`, `teachers.archs` -> `teacher`,
    `student.lr` -> `student.lr`, `teachers.recipe.lr` -> `teachers.recipe.lr`."""
    if path in LIST_PARAMS:
        return LIST_PARAMS[path]
    if path in _SHORT:
        return _SHORT[path]
    return path.removeprefix("distill.")


class Axis(Strict):
    """One searchable value: exactly one of fixed / choice / uniform / loguniform / grid."""

    fixed: Any = None
    choice: list | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    grid: list | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in AXIS_KINDS if getattr(self, k) is not None]
        if len(kinds) > 1:
            raise ValueError(f"give one of choice, uniform, loguniform, grid, not {' and '.join(kinds)}")
        for k in ("choice", "grid"):
            values = getattr(self, k)
            if values == []:
                raise ValueError(f"{k} is empty; allowed: a non-empty list")
            if values and len({repr(v) for v in values}) != len(values):
                raise ValueError(f"{k} {values} repeats a value; allowed: distinct values")
        for k in ("uniform", "loguniform"):
            r = getattr(self, k)
            if r is not None and not r[0] < r[1]:
                raise ValueError(f"{k} range {list(r)} is empty; allowed: [low, high] with low < high")
            if k == "loguniform" and r is not None and r[0] <= 0:
                raise ValueError(f"loguniform range {list(r)} must be positive")
        return self

    @property
    def kind(self) -> str:
        for k in AXIS_KINDS:
            if getattr(self, k) is not None:
                return k
        return "fixed"

    def values(self) -> list:
        """The discrete values this axis can take (the range ends for ranges)."""
        if self.kind == "fixed":
            return [self.fixed]
        return list(getattr(self, self.kind))

    def representative(self):
        """One value standing for the axis where a single one is needed (a CE baseline's learning
        rate when the search varies it): the first of a list, the middle of a range (geometric for
        loguniform)."""
        if self.kind in ("uniform", "loguniform"):
            lo, hi = getattr(self, self.kind)
            return math.sqrt(lo * hi) if self.kind == "loguniform" else (lo + hi) / 2
        return self.values()[0]


def is_axis_form(value) -> bool:
    """Whether a spec value is written as an axis mapping ({choice: ...}, {fixed: ...}, ...)."""
    return isinstance(value, dict) and len(value) >= 1 and set(value) <= {"fixed", *AXIS_KINDS}


def as_axis(value) -> Axis:
    if isinstance(value, Axis):
        return value
    if isinstance(value, (list, tuple)):
        raise ValueError("allowed: a single value, or {choice: [...]} or {grid: [...]} to search several")
    if is_axis_form(value):
        return Axis(**value)
    return Axis(fixed=value)


def set_path(data: dict, path: str, value) -> dict:
    """A copy of the nested mapping `data` with the dotted `path` ("student.lr") set to `value`."""
    head, _, rest = path.partition(".")
    out = dict(data)
    out[head] = set_path(dict(data.get(head) or {}), rest, value) if rest else value
    return out


def section_axes(data: dict, section: str, forbid: tuple[str, ...] = (), discrete: tuple[str, ...] | None = None,
                 why: str = "") -> dict[str, Axis]:
    """The fields of the (dotted) `section` of `data` written as axes, by spec path; KdxError for a
    malformed axis, for a searched field in `forbid` (the student's epochs: ASHA's clock), or for a
    range on a field that takes only listed values (`discrete`; None: every field; `why` says why)."""
    fields = data
    for key in section.split("."):
        fields = fields.get(key) if isinstance(fields, dict) else None
    axes = {}
    for key, value in (fields.items() if isinstance(fields, dict) else []):
        if not is_axis_form(value):
            continue
        where = f"{section}.{key}"
        try:
            axes[where] = axis = as_axis(value)
        except ValidationError as e:
            raise KdxError(f"{where}: {e.errors()[0]['msg'].removeprefix('Value error, ')}.") from None
        if key in forbid and axis.kind != "fixed":
            raise KdxError(f"{where}: got a {axis.kind}; allowed: a fixed value (ASHA counts epochs; "
                           "`kdx search --epochs` changes them).")
        if axis.kind in ("uniform", "loguniform") and (discrete is None or key in discrete):
            raise KdxError(f"{where}: got a {axis.kind} range; allowed: a fixed value, a choice or a grid{why}.")
    return axes


def check_points(points: list[dict], axes: dict[str, Axis], algorithm: str) -> None:
    """`search.points_to_evaluate`: each point names searched values only (all of them for Optuna,
    which takes no partial points), each inside its axis; KdxError naming the point and the value."""
    for i, point in enumerate(points):
        where = f"search.points_to_evaluate[{i}]"
        unknown = sorted(set(point) - set(axes))
        if unknown:
            raise KdxError(f"{where}.{unknown[0]}: not a searched value; allowed: {', '.join(axes) or 'none'}.")
        missing = [k for k in axes if k not in point]
        if missing and algorithm == "optuna":
            raise KdxError(f"{where}: {missing[0]!r} is missing; allowed: a value for every searched name "
                           f"({', '.join(axes)}).")
        for k, v in point.items():
            a = axes[k]
            if a.kind in ("uniform", "loguniform"):
                lo, hi = getattr(a, a.kind)
                inside = isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi
                allowed = f"a number in [{lo}, {hi}]"
            else:
                inside, allowed = v in a.values(), f"one of {a.values()}"
            if not inside:
                raise KdxError(f"{where}.{k}: got {v!r}; allowed: {allowed}.")
