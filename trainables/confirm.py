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

from explorer.errors import KdxError
from explorer.models import build_model
from explorer.spec.search import SearchSpec
from explorer.tracking import KIND_CONFIRM, NO_TEACHER
from explorer.training.fused import member_setup

from .locations import Locations
from .plan import Plan, make_plan
from .search import points_setup, run_experiments
from .tracking.parent import ParentRun, find_search
from .tracking.store import open_experiment


def confirm_points(spec: SearchSpec, configs: list[dict], seeds: list[int], plan: Plan | None = None) -> list[dict]:
    """Trial points: each config's searched values with each seed, then the CE baseline with each
    seed at every distinct set of the configs' searched student values (architecture, learning
    rate, ...), so each config has a baseline trained with its own student recipe.

    With `confirm.fuse` (true, or auto where it pays; and a `plan` to check against), the seeds of a config whose method and student
    can be fused are one trial: `{"seed": first, "members": seeds}`, trained as one fused model
    (explorer/training/fused.py); each member still gets its own MLflow run, the same as a solo seed's. Configs
    that can share a fused model (`shares_trial`: one student recipe and method; their teachers, lr and
    T, alpha, ... may differ) share a trial up to `confirm.members_per_trial` members; its `members`
    are then each member's own point (config values and seed)."""
    searched = [k for k in spec.searched_axes() if k != "seed"]
    picked = [{k: cfg[k] for k in searched if k in cfg} for cfg in configs]
    students = []
    for p in picked:
        values = {k: v for k, v in p.items() if k.startswith("student")}
        if values not in students:
            students.append(values)
    picked += [v | {"method": "ce", "teacher": NO_TEACHER} for v in students]
    per_trial = max(1, spec.confirm.members_per_trial // len(seeds))  # configs per fused trial
    trials: list[tuple[bool, list[dict]]] = []  # (fused, the configs that train in one trial)
    for p in picked:
        fused = bool(spec.confirm.fuse) and plan is not None and fusable(plan, p)
        group = next((g for f, g in trials if fused and f and len(g) < per_trial and shares_trial(plan, g[0], p)),
                     None)
        if group is not None:
            group.append(p)
        else:
            trials.append((fused, [p]))
    points = []
    for fused, group in trials:
        if not fused:
            points += [group[0] | {"seed": s} for s in seeds]
        elif len(group) == 1:
            points.append(group[0] | {"seed": seeds[0], "members": list(seeds)})
        else:
            points.append(group[0] | {"seed": seeds[0], "members": [q | {"seed": s} for q in group for s in seeds]})
    return points


def shares_trial(plan: Plan, first: dict, point: dict) -> bool:
    """Whether the config `point` can train in the fused model of the config `first`: one student
    recipe and method, with the same number of teachers (explorer/training/fused.py `member_setup`: only seed, lr
    and the method's real-valued hyperparameters, which its loss must take per member, may differ)."""
    a, b = (plan.settings(q | {"seed": 0}, KIND_CONFIRM) for q in (first, point))
    teachers = [0 if s["teacher_key"] == NO_TEACHER else len(s["teacher_key"].split(",")) for s in (a, b)]
    if teachers[0] != teachers[1]:
        return False
    try:
        member_setup(a["train"], [b["train"]], plan.num_classes, teachers[0])
    except KdxError:
        return False
    return True


def fusable(plan: Plan, point: dict) -> bool:
    """Whether the seeds of `point` train as fused members: they can (the one rule, `Plan.fuse_problem`),
    and with `confirm.fuse: auto`, fusing pays (`fusing_pays`)."""
    if plan.fuse_problem(point, KIND_CONFIRM) is not None:
        return False
    return plan.spec.confirm.fuse != "auto" or fusing_pays(plan, point)


def fusing_pays(plan: Plan, point: dict) -> bool:
    """Whether a fused model of `point`'s student is faster than its seeds one by one: on GPU trials, and
    on CPU for students without 2-D convolutions (benchmarks/fused_speed.py: fused 1-D CNNs train about
    4x faster on one CPU thread, fused resnets about 0.8x as fast, their convolutions being compute-bound)."""
    if plan.spec.resources.trial.gpus > 0:
        return True
    model = build_model(plan.settings(point | {"seed": 0}, KIND_CONFIRM)["train"].arch, plan.num_classes,
                        plan.input_shape)
    return not any(isinstance(m, nn.Conv2d) for m in model.modules())


def run_confirm(spec: SearchSpec, spec_text: str, configs: list[dict], seeds: list[int], loc: Locations, *,
                parent_id: str | None = None, address: str | None = None, max_concurrent: int | None = None,
                out=print):
    """Run the confirmation trials of `configs` under the search's parent run (run `parent_id`, else the
    experiment's latest search; refused in one sentence when there is none), with the search's
    locations `loc` (`trainables.tracking.parent.search_locations`). The tracking store must have been
    checked. The Ray experiment is named by its points: running the same confirmation again continues
    it (finished trials are not rerun); a different choice of configs (the search went on) is a new
    experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=loc.tracking_uri)
    open_experiment(client, spec.name, out)  # the runs a killed kdx left RUNNING are closed first
    parent = find_search(client, spec.name, loc.tracking_uri, parent_id)
    plan = make_plan(spec, loc.store_root)
    points = confirm_points(spec, configs, seeds, plan)
    fused = [p for p in points if "members" in p]
    out(f"confirm {spec.name!r}: {len(configs)} cell(s) + the CE baseline x {len(seeds)} fresh seeds = "
        f"{len(points)} trials" + (f" ({sum(len(p['members']) for p in fused)} runs train as members of the "
                                   f"{len(fused)} fused ones, one model per trial)" if fused else ""))
    for cfg in configs:
        out("  " + ", ".join(f"{k}={cfg[k]}" for k in spec.searched_axes() if k in cfg and k != "seed"))
    digest = hashlib.sha256(json.dumps(points, sort_keys=True, default=str).encode()).hexdigest()[:8]
    setup = points_setup(KIND_CONFIRM, f"{spec.name}__confirm_{digest}", points)
    return run_experiments(spec, spec_text, plan, loc, [setup], ParentRun(loc.tracking_uri, parent.info.run_id),
                           address=address, resume=True, max_concurrent=max_concurrent, out=out,
                           what="confirmation of")
