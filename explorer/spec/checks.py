"""Rules of a spec that span several sections (`SearchSpec.check` in explorer/spec.py calls them):
the equal budget per cell (`search.trials_per_cell`) and fused search trials (`search.fuse_seeds`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import KdxError
from .fused import adversarial_problem, evaluate_problem, fuse_problem

if TYPE_CHECKING:
    from .methods import Method
    from .spec import SearchSpec


def check_fused_search(spec: SearchSpec, methods: list[Method]) -> None:
    """`search.fuse_seeds` needs several seeds, and methods and evaluations that train and attack
    members as one model (whether the student's architecture fuses is checked by the plan)."""
    if not spec.search.fuse_seeds:
        return
    if len(spec.seeds) < 2:
        raise KdxError(f"search.fuse_seeds: got true with seeds {spec.seeds}; allowed: true with two or more "
                       "seeds (each trial trains them all), or false.")
    steps = spec.value_axes().get("student.adversarial_steps")
    problems = [p for p in [*map(fuse_problem, methods), evaluate_problem(spec.evaluate),
                            adversarial_problem(any(steps.values() if steps else [spec.student.adversarial_steps]))] if p]
    if problems:
        raise KdxError(f"search.fuse_seeds: got true, but {problems[0]}; allowed: false for this spec "
                       "(each seed its own trial).")


def check_cell_budget(spec: SearchSpec) -> None:
    """`search.trials_per_cell` needs Optuna, no `num_samples`, an axis besides the cells, and two or more cells."""
    per_cell = spec.search.trials_per_cell
    if per_cell is None:
        return
    if spec.search.algorithm != "optuna":
        raise KdxError(f"search.trials_per_cell: got {per_cell} with search.algorithm {spec.search.algorithm}; "
                       "allowed: with algorithm optuna (a TPE per cell), or leave it out.")
    if "num_samples" in spec.search.model_fields_set:
        raise KdxError(f"search.num_samples: got {spec.search.num_samples} with search.trials_per_cell; allowed: "
                       "leave it out (the search runs trials_per_cell x cells trials).")
    if not set(spec.searched_axes()) - set(spec.cell_params()) - {"seed"}:
        raise KdxError(f"search.trials_per_cell: got {per_cell}, but only the cell params ({', '.join(spec.cell_params())}) "
                       "are searched; allowed: with a distill or student axis for each cell's TPE, or leave it out.")
    if len(spec.search_cells()) < 2:
        raise KdxError(f"search.trials_per_cell: got {per_cell}, but the cell params ({', '.join(spec.cell_params())}) "
                       "take one value; allowed: several teachers, stop epochs or students, or leave it out.")
