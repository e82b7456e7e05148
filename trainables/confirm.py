"""Confirmation runs: the best configuration of every cell of a search re-run with fresh seeds, with
the CE baseline trained with the same seeds, as unpruned trials through the same Ray machinery
(`kdx confirm`, kdx/confirm.py, chooses the configurations from MLflow with the analysis; this
module only plans and runs them).

A configuration is keyed by every searched value (the spec's `searched_axes`, by param name), so a
searched `teacher_temperature`, `epsilon`, `student.lr` or `student` architecture is re-run at the
value the search found, not at a default.
"""

from __future__ import annotations

import hashlib
import json

from torch import nn

from explorer.models import build_model
from explorer.spec import SearchSpec
from explorer.tracking import KIND_CONFIRM, NO_TEACHER

from .plan import Plan, make_plan
from .search import Locations, points_setup, run_experiments


def confirm_points(spec: SearchSpec, configs: list[dict], seeds: list[int], plan: Plan | None = None) -> list[dict]:
    """Trial points: each config's searched values with each seed, then the CE baseline with each
    seed at every distinct set of the configs' searched student values (architecture, learning
    rate, ...), so each config has a baseline trained with its own student recipe.

    With `confirm.fuse` (true, or auto where it pays; and a `plan` to check against), the seeds of a config whose method and student
    can be fused are one trial: `{"seed": first, "members": seeds}`, trained as one fused model
    (explorer/fused.py); each member still gets its own MLflow run, the same as a solo seed's."""
    searched = [k for k in spec.searched_axes() if k != "seed"]
    picked = [{k: cfg[k] for k in searched if k in cfg} for cfg in configs]
    students = []
    for p in picked:
        values = {k: v for k, v in p.items() if k.startswith("student")}
        if values not in students:
            students.append(values)
    picked += [v | {"method": "ce", "teacher": NO_TEACHER} for v in students]
    points = []
    for p in picked:
        if spec.confirm.fuse and plan is not None and fusable(plan, p):
            points.append(p | {"seed": seeds[0], "members": list(seeds)})
        else:
            points += [p | {"seed": s} for s in seeds]
    return points


def fusable(plan: Plan, point: dict) -> bool:
    """Whether the seeds of `point` train as fused members: they can (`Plan.fuse_problem`), and with
    `confirm.fuse: auto` it pays (GPU trials, or CPU students without 2-D convolutions)."""
    if plan.fuse_problem(point, KIND_CONFIRM) is not None:
        return False
    on_cpu = plan.spec.resources.trial.gpus == 0
    if plan.spec.confirm.fuse == "auto" and on_cpu:
        model = build_model(plan.settings(point | {"seed": 0}, KIND_CONFIRM)["train"].arch, plan.num_classes,
                            plan.input_shape)
        return not any(isinstance(m, nn.Conv2d) for m in model.modules())
    return True


def run_confirm(spec: SearchSpec, spec_text: str, configs: list[dict], seeds: list[int], loc: Locations, *,
                address: str | None = None, max_concurrent: int | None = None, out=print):
    """Run the confirmation trials of `configs` under the search's parent run. The Ray experiment is
    named by its points: running the same confirmation again continues it (finished trials are
    not rerun); a different choice of configs (the search went on) is a new experiment."""
    plan = make_plan(spec, loc.store_root)
    points = confirm_points(spec, configs, seeds, plan)
    fused = sum("members" in p for p in points)
    out(f"confirm {spec.name!r}: {len(configs)} cell(s) + the CE baseline x {len(seeds)} fresh seeds = "
        f"{len(points)} trials" + (f" ({fused} of them train their {len(seeds)} seeds fused)" if fused else ""))
    for cfg in configs:
        out("  " + ", ".join(f"{k}={cfg[k]}" for k in spec.searched_axes() if k in cfg and k != "seed"))
    digest = hashlib.sha256(json.dumps(points, sort_keys=True, default=str).encode()).hexdigest()[:8]
    setup = points_setup(KIND_CONFIRM, f"{spec.name}__confirm_{digest}", points)
    return run_experiments(spec, spec_text, plan, loc, [setup], address=address, resume=True,
                           max_concurrent=max_concurrent, out=out, what="confirmation of")
