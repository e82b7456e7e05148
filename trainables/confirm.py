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

from explorer.spec import SearchSpec
from explorer.tracking import KIND_CONFIRM, NO_TEACHER

from .plan import make_plan
from .search import Locations, points_setup, run_experiments


def confirm_points(spec: SearchSpec, configs: list[dict], seeds: list[int]) -> list[dict]:
    """Trial points: each config's searched values with each seed, then the CE baseline with each
    seed at every distinct set of the configs' searched student values (architecture, learning
    rate, ...), so each config has a baseline trained with its own student recipe."""
    searched = [k for k in spec.searched_axes() if k != "seed"]
    picked = [{k: cfg[k] for k in searched if k in cfg} for cfg in configs]
    points = [p | {"seed": s} for p in picked for s in seeds]
    students = []
    for p in picked:
        values = {k: v for k, v in p.items() if k.startswith("student")}
        if values not in students:
            students.append(values)
    points += [v | {"method": "ce", "teacher": NO_TEACHER, "seed": s} for v in students for s in seeds]
    return points


def run_confirm(spec: SearchSpec, spec_text: str, configs: list[dict], seeds: list[int], loc: Locations, *,
                address: str | None = None, max_concurrent: int | None = None, out=print):
    """Run the confirmation trials of `configs` under the search's parent run. The Ray experiment is
    named by its points: running the same confirmation again continues it (finished trials are
    not rerun); a different choice of configs (the search went on) is a new experiment."""
    points = confirm_points(spec, configs, seeds)
    plan = make_plan(spec, loc.store_root)
    out(f"confirm {spec.name!r}: {len(configs)} cell(s) + the CE baseline x {len(seeds)} fresh seeds = "
        f"{len(points)} trials")
    for cfg in configs:
        out("  " + ", ".join(f"{k}={cfg[k]}" for k in spec.searched_axes() if k in cfg and k != "seed"))
    digest = hashlib.sha256(json.dumps(points, sort_keys=True, default=str).encode()).hexdigest()[:8]
    setup = points_setup(KIND_CONFIRM, f"{spec.name}__confirm_{digest}", points)
    return run_experiments(spec, spec_text, plan, loc, [setup], address=address, resume=True,
                           max_concurrent=max_concurrent, out=out, what="confirmation of")
