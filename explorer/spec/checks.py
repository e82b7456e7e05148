"""Rules of a spec that span several sections (`SearchSpec.check` in explorer/spec/search.py calls them):
the equal budget per cell (`search.trials_per_cell`) and fused search trials (`search.fuse_seeds`)."""

from __future__ import annotations

from explorer.data.registry import dataset_info
from explorer.errors import KdxError
from explorer.methods import METHODS, Method, get_method
from explorer.spec.axes import Axis
from explorer.teachers.entries import distillation_problem
from explorer.training.fused import architecture_problem, fused_problem


def check_fused_search(spec, methods: list[Method]) -> None:
    """`search.fuse_seeds` needs several seeds, and every student architecture, method (CE too, for the
    baselines) and adversarial setting must train fused (`fused_problem`): refused in one sentence before
    anything starts, never a failed trial."""
    if not spec.search.fuse_seeds:
        return
    if len(spec.seeds) < 2:
        raise KdxError(f"search.fuse_seeds: got true with seeds {spec.seeds}; allowed: true with two or more "
                       "seeds (each trial trains them all), or false.")
    info = dataset_info(spec.dataset.name)
    steps = spec.value_axes().get("student.adversarial_steps")
    for arch in spec.student_archs():
        fuses = architecture_problem(arch, info.num_classes, tuple(info.input_shape))  # once per architecture
        for method in dict.fromkeys([m.name for m in methods] + ["ce"]):
            for step in steps.values() if steps else [spec.student.adversarial_steps]:
                cfg = spec.student_config({"student": arch, "student.adversarial_steps": step}, 0, method, {})
                problem = fused_problem(cfg, spec.evaluate) or fuses  # `fused_problem` with the shape, in order
                if problem is not None:
                    raise KdxError(f"search.fuse_seeds: got true, but student {arch!r} with method {method!r} "
                                   f"cannot train fused ({problem}); allowed: false for this spec (each seed its "
                                   "own trial).")


def check_cell_budget(spec) -> None:
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


def check_axis_forms(value_axes: dict[str, Axis], algorithm: str) -> None:
    """Each searched value's form fits the search algorithm (a grid for grid search, no grid for Optuna)."""
    for where, axis in value_axes.items():
        if axis.kind in ("uniform", "loguniform") and where == "distill.method":
            raise KdxError(f"{where}: got {axis.kind}; allowed: a fixed value, a choice or a grid.")
        if axis.kind in ("uniform", "loguniform") and algorithm == "grid":
            raise KdxError(f"{where}: got a {axis.kind} range with search.algorithm grid; "
                           "allowed: a fixed value or a grid.")
        if axis.kind == "grid" and algorithm == "optuna":
            raise KdxError(f"{where}: got a grid with search.algorithm optuna; allowed: a fixed value, "
                           "a choice or a range (or set search.algorithm to grid or random).")
        if axis.kind == "choice" and algorithm == "grid":
            raise KdxError(f"{where}: got a choice with search.algorithm grid; allowed: a fixed value or a grid.")


def check_methods(axes: dict[str, Axis]) -> list[Method]:
    """The `distill:` axes name known methods, every hyperparameter value (range ends included) is valid for
    every method asked for, and a hyperparameter is given only where a method takes it; the methods."""
    for method in axes["method"].values():
        if method not in METHODS:
            raise KdxError(f"distill.method: got {method!r}; allowed: {', '.join(sorted(METHODS))}.")
    methods = [get_method(m) for m in axes["method"].values()]
    for m in methods:
        for hp in m.hparams:
            for v in axes[hp.name].values():
                if v is None:
                    continue  # the method's default
                try:
                    m.resolve({hp.name: v})
                except KdxError as e:
                    raise KdxError(f"distill.{e}") from None
    for name, axis in axes.items():
        takers = [m.name for m in methods if name in {h.name for h in m.hparams}]
        if name != "method" and axis.values() != [None] and not takers:
            others = [m.name for m in METHODS.values() if name in {h.name for h in m.hparams}]
            raise KdxError(f"distill.{name}: got {axis.values()[0]!r}; allowed only with a method that takes it "
                           f"({', '.join(others)}), and distill.method is {', '.join(m.name for m in methods)}.")
    return methods


def check_methods_fit_teachers(spec, method_names) -> None:
    """Every method asked for can train every student from every teacher entry (`distillation_problem`)."""
    entries = spec.teachers.entries()
    for method in method_names:
        m = get_method(method)
        for arch in spec.student_archs():
            for entry in (entries if m.needs_teacher else [None]):
                problem = distillation_problem(m, arch, entry, spec.teachers.seed)
                if problem and entry is None:
                    raise KdxError(f"distill.method: got {method!r}; {problem}.")
                if problem:
                    raise KdxError(f"distill.method: got {method!r} with teacher {entry!r}; {problem} "
                                   "(give such methods their own spec, or teachers that fit every method).")
