"""The teacher signal of a trainer, chosen once at setup: no teacher, one teacher (or ensemble) for every
member, or one per fused member; each gives a batch's teacher outputs through `outputs(xb, idx)`.

`check_teachers` refuses, before any compute, a teacher the method cannot take.

A `TeacherUnit` is one teacher (or an ensemble's list) made ready for training: frozen, in eval mode, its
validation predictions (for `kd_agreement`) and, where the method needs only logits, its logits on the
training set's fixed views (explorer/teachers/views.py). A solo trainer, and fused members of one config, have one.

Fused members may distil from different teachers (explorer/training/fused.py): several configs of one student
recipe whose teacher checkpoints differ, such as the cells of a confirmation, train as one model.
`MemberTeachers` then holds one unit per distinct teacher and gives each member its own teacher's logits
on its own rows: a table lookup per unit on the views every member drew (the views of a sample are the
same for every teacher), or, on the live path, one teacher forward per unit over its members' rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from explorer.errors import KdxError, bad_value
from explorer.methods import Method, check_method_params
from explorer.models.features import FeatureTap, feature_paths
from explorer.teachers.views import TeacherViews, module_of, teacher_views
from explorer.training.evaluation import TeacherEnsemble, autocast, evaluate


def check_teachers(cfg, method: Method, teachers: list[nn.Module]) -> None:
    """Refuse (one sentence, before any compute) a teacher `method` cannot take for the TrainConfig
    `cfg`: none where it needs one, an ensemble where it takes one, or an architecture whose features
    it cannot read."""
    check_method_params(cfg.method, cfg.method_params, cfg.epochs,
                        archs=[cfg.arch] + [t.arch for t in map(module_of, teachers) if hasattr(t, "arch")])
    if method.needs_teacher and not teachers:
        raise bad_value("teacher", None, f"method {cfg.method!r} needs a teacher")
    if method.needs_teacher and len(teachers) > 1 and "ensemble" not in method.teacher_kinds:
        raise bad_value("teacher", f"an ensemble of {len(teachers)}",
                        f"method {cfg.method!r} takes one teacher (mkd or kd take ensembles)")
    if method.needs_teacher and len(teachers) > 1:
        problem = method.teacher_problem("ensemble", members=len(teachers))
        if problem:
            raise KdxError(f"teacher: {problem}.")


@dataclass
class TeacherUnit:
    modules: list[nn.Module]  # one teacher, or an ensemble's members
    teacher: nn.Module  # the module, or their TeacherEnsemble (accuracy, agreement)
    val_acc: float
    val_preds: Tensor
    views: TeacherViews | None  # the logits on fixed views; None: the teacher runs on every batch
    test_preds: Tensor | None = None  # computed once, when the metrics need them (omitted classes)


def teacher_unit(teachers: list, splits, views: int | None, device) -> TeacherUnit:
    """`teachers` (one, or an ensemble's: modules or `StoredTeacher`s) frozen on `device`, evaluated on the validation split, and
    with their logits on `views` fixed views (the recipe's V; None where the method reads features,
    whose teacher must run on every batch)."""
    modules = [module_of(t) for t in teachers]
    for t in modules:
        t.to(device).eval()
        for p in t.parameters():
            p.requires_grad_(False)
    teacher = modules[0] if len(modules) == 1 else TeacherEnsemble(modules)
    val_acc, _, val_preds = evaluate(teacher, splits.val_x, splits.val_y)
    table = None if views is None else teacher_views(teachers, splits, views)
    return TeacherUnit(modules, teacher, val_acc, val_preds, table)


def test_preds(unit: TeacherUnit, splits) -> Tensor:
    """The unit's test predictions (the frozen teacher's: computed once per trainer)."""
    if unit.test_preds is None:
        unit.test_preds = evaluate(unit.teacher, splits.test_x, splits.test_y)[2]
    return unit.test_preds


class MemberTeachers:
    """Fused members' own teachers: `units` (distinct teachers) and `unit_of[s]`, member s's unit."""

    def __init__(self, units: list[TeacherUnit], unit_of: list[int], device):
        self.units, self.unit_of = units, unit_of
        self.rows = [torch.tensor([s for s, u in enumerate(unit_of) if u == k], device=device)
                     for k in range(len(units))]

    def logits(self, xb: Tensor, idx: Tensor) -> Tensor | list[Tensor]:
        """(S, B, classes) logits, member s's from its own teacher on its own rows (`xb`: (S, B, ...)
        images, `idx`: (S, B) sample indices; a list, one per ensemble member, for ensembles)."""
        parts = []
        # the views `draw` drew for every member: one draw, on the first unit's table (every unit's views
        # of a sample are the same)
        v = self.units[0].views.drawn(idx) if self.units[0].views is not None else None
        for unit, rows in zip(self.units, self.rows):
            if unit.views is not None:
                parts.append(unit.views.logits_at(idx[rows], None if v is None else v[rows]))
            else:
                flat = xb[rows].flatten(0, 1)
                parts.append([t(flat).float().view(len(rows), xb.shape[1], -1) for t in unit.modules])
        out = []
        for k, first in enumerate(parts[0]):
            full = first.new_empty(len(self.unit_of), *first.shape[1:])
            for rows, part in zip(self.rows, parts):
                full[rows] = part[k]
            out.append(full)
        return out[0] if len(out) == 1 else out


# ---------------------------------------------------------------- the teacher signal the loop reads
def teacher_lists(teacher, member_teachers: list | None, members: int) -> tuple[list[list], list[int]]:
    """(the distinct teachers, each as a list: an ensemble's members, [] for none; each member's index
    into them), from a trainer's `teacher` (one for all members) or `member_teachers` (one per member)."""
    if member_teachers is not None and (teacher is not None or len(member_teachers) != members):
        raise bad_value("member_teachers", f"{len(member_teachers)} teachers",
                        f"allowed: one per member ({members}), and no `teacher` beside them")
    listed = [list(t) if isinstance(t, (list, tuple)) else [] if t is None else [t]
              for t in (member_teachers if member_teachers is not None else [teacher])]
    index: dict[tuple, int] = {}
    unit_of = [index.setdefault(tuple(map(id, t)), len(index)) for t in listed]
    distinct = [listed[unit_of.index(k)] for k in range(len(index))]
    if len({len(t) for t in distinct}) > 1:
        raise bad_value("member_teachers", "ensembles of different sizes", "allowed: the same size for every member")
    return distinct, unit_of


class NoTeacher:
    """A trainer without a teacher (CE, label smoothing, teacher-free methods, teachers themselves)."""

    teacher = tap = views = None

    def outputs(self, xb: Tensor, idx: Tensor):
        return None, None

    def unit_of(self, member: int) -> TeacherUnit | None:
        return None


class OneTeacher:
    """One teacher (or ensemble) for every member: its logits on the views the batch source drew, or
    live on the batch (`lead` leading batch dims: 1 for one run, 2 for fused members), with its
    features where the method reads them (`tap`)."""

    def __init__(self, unit: TeacherUnit, tap, lead: int):
        self.unit, self.tap, self.lead = unit, tap, lead
        self.teacher, self.views = unit.teacher, unit.views

    @torch.inference_mode()
    def _outputs(self, xb: Tensor, idx: Tensor):
        if self.views is not None:  # the views the batch source drew (or the plain images)
            return self.views.logits(idx), None
        with autocast(xb.device):
            if self.tap is not None:
                return self.teacher(xb).float(), [f.float() for f in self.tap.features]
            flat = xb.flatten(0, self.lead - 1)  # fused members' (S, B, ...) batches as one
            outs = [t(flat).float().view(*xb.shape[: self.lead], -1) for t in self.unit.modules]
            return (outs if len(outs) > 1 else outs[0]), None

    def outputs(self, xb: Tensor, idx: Tensor):
        """(logits, features) of the teacher for a batch; for an ensemble, a list of logits. Features are
        cloned out of inference mode (an inference tensor cannot be saved for backward, e.g. an MSE target)."""
        logits, feats = self._outputs(xb, idx)
        return logits, None if feats is None else [f.clone() for f in feats]

    def unit_of(self, member: int) -> TeacherUnit:
        return self.unit


class PerMember:
    """Fused members with teachers of their own (`MemberTeachers`); the batch source draws views on the
    first unit's table, which every unit shares."""

    tap = None

    def __init__(self, member_teachers: MemberTeachers):
        self.member_teachers = member_teachers
        self.teacher, self.views = member_teachers.units[0].teacher, member_teachers.units[0].views

    @torch.inference_mode()
    def outputs(self, xb: Tensor, idx: Tensor):
        with autocast(xb.device):
            return self.member_teachers.logits(xb, idx), None

    def unit_of(self, member: int) -> TeacherUnit:
        return self.member_teachers.units[self.member_teachers.unit_of[member]]


def make_signal(method, cfg, splits, device, distinct: list[list], unit_of: list[int], lead: int):
    """The teacher signal a trainer reads, chosen once: none, one teacher for all, or one per member.
    Where the method needs only logits, the teacher runs once per training sample and view, not per
    batch (explorer/teachers/views.py); where it reads features, on every batch."""
    if not (distinct[0] and method.needs_teacher):
        return NoTeacher()
    views = None if method.needs_features else cfg.views
    first = teacher_unit(distinct[0], splits, views, device)
    tap = FeatureTap(first.teacher, feature_paths(first.teacher, method.feature_role)) if method.needs_features else None
    if len(distinct) == 1:
        return OneTeacher(first, tap, lead)
    units = [first] + [teacher_unit(t, splits, views, device) for t in distinct[1:]]
    return PerMember(MemberTeachers(units, unit_of, device))
