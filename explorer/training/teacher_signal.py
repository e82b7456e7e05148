"""The teacher side of a trainer: one teacher (or ensemble) per trainer, or one per fused member.

`check_teachers` refuses, before any compute, a teacher the method cannot take.

A `TeacherUnit` is one teacher (or an ensemble's list) made ready for training: frozen, in eval mode, its
validation predictions (for `kd_agreement`) and, where the method needs only logits, its logits on the
training set's fixed views (explorer/views.py). A solo trainer, and fused members of one config, have one.

Fused members may distil from different teachers (explorer/fused.py): several configs of one student
recipe whose teacher checkpoints differ, such as the cells of a confirmation, train as one model.
`MemberTeachers` then holds one unit per distinct teacher and gives each member its own teacher's logits
on its own rows: a table lookup per unit on the views every member drew (the views of a sample are the
same for every teacher), or, on the live path, one teacher forward per unit over its members' rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import KdxError, bad_value
from .evaluation import TeacherEnsemble, evaluate
from .methods import Method, check_method_params
from .views import TeacherViews, teacher_views


def check_teachers(cfg, method: Method, teachers: list[nn.Module]) -> None:
    """Refuse (one sentence, before any compute) a teacher `method` cannot take for the TrainConfig
    `cfg`: none where it needs one, an ensemble where it takes one, or an architecture whose features
    it cannot read."""
    check_method_params(cfg.method, cfg.method_params, cfg.epochs,
                        archs=[cfg.arch] + [t.arch for t in teachers if hasattr(t, "arch")])
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


def teacher_unit(teachers: list[nn.Module], splits, views: int | None, device) -> TeacherUnit:
    """`teachers` (one, or an ensemble's) frozen on `device`, evaluated on the validation split, and
    with their logits on `views` fixed views (the recipe's V; None where the method reads features,
    whose teacher must run on every batch)."""
    for t in teachers:
        t.to(device).eval()
        for p in t.parameters():
            p.requires_grad_(False)
    teacher = teachers[0] if len(teachers) == 1 else TeacherEnsemble(teachers)
    val_acc, _, val_preds = evaluate(teacher, splits.val_x, splits.val_y)
    table = None if views is None else teacher_views(teachers, splits, views)
    return TeacherUnit(list(teachers), teacher, val_acc, val_preds, table)


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
