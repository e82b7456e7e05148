"""The search space and the searcher: spec axes as Optuna distributions (or Tune domains for random
and grid search), and an Optuna searcher that is told which trials ASHA pruned."""

from __future__ import annotations

from explorer.errors import KdxError
from explorer.spec.axes import Axis
from explorer.spec.search import SearchSpec
from explorer.tracking import DIVERGED, PRUNED

from .clock import trial_outcome


def _tune_domain(axis: Axis):
    from ray import tune

    return {"choice": lambda v: tune.choice(v), "grid": lambda v: tune.grid_search(v),
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v)}[axis.kind](
        getattr(axis, axis.kind))


def _optuna_distribution(axis: Axis):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if axis.kind == "choice":
        return CategoricalDistribution(axis.choice)
    lo, hi = getattr(axis, axis.kind)
    if all(float(x).is_integer() for x in (lo, hi)) and axis.kind == "uniform" and isinstance(lo, int):
        return IntDistribution(int(lo), int(hi))
    return FloatDistribution(lo, hi, log=axis.kind == "loguniform")


def make_pruned_aware_optuna(**kwargs):
    """OptunaSearch that tells Optuna about ASHA-stopped trials as PRUNED (docs/DESIGN.md trap).

    Ray reports a trial stopped by the scheduler as COMPLETE with its early-epoch value, so TPE would
    learn from truncated scores. Here a trial that ended before its own last epoch (its reports say
    which, trainables/clock.py; `max_t`, the space's longest trial, for one that does not) is PRUNED
    (its intermediate values stay in Optuna as reported), a diverged trial FAIL.
    """
    import optuna
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # kdx prints its own progress

    class PrunedAwareOptunaSearch(OptunaSearch):
        def __init__(self, max_t: int, **kw):
            super().__init__(**kw)
            self.max_t = max_t

        def on_trial_complete(self, trial_id, result=None, error=False):
            if error or not result or trial_id in self._completed_trials:
                return super().on_trial_complete(trial_id, result, error)
            state = {DIVERGED: TrialState.FAIL, PRUNED: TrialState.PRUNED}.get(trial_outcome(result, self.max_t))
            if state is None:
                return super().on_trial_complete(trial_id, result, error)
            self._ot_study.tell(self._ot_trials[trial_id], None, state=state)
            self._completed_trials.add(trial_id)

    return PrunedAwareOptunaSearch(**kwargs)


def make_cell_searcher(cells: list[dict], per_cell: int, make_inner):
    """A searcher with an equal budget per cell (`search.trials_per_cell`): cell i gets its own searcher
    `make_inner(i, cell)` over the other axes, the cell's values are fixed in every config it proposes, and
    each new trial goes to the cell that has had the fewest (ties: the first), until every cell has had
    `per_cell`. Results go back to the searcher of the trial's cell, so each TPE learns from its own cell."""
    from ray import cloudpickle
    from ray.tune.search import Searcher

    class CellSearcher(Searcher):
        def __init__(self):
            super().__init__()
            self.cells, self.per_cell = cells, per_cell
            self.inner = [make_inner(i, c) for i, c in enumerate(cells)]
            self.given = [0] * len(cells)
            self.owner: dict[str, int] = {}

        def set_search_properties(self, metric, mode, config, **spec):
            return True  # the inner searchers were built with the spec's metric and mode

        def suggest(self, trial_id):
            open_cells = [i for i, n in enumerate(self.given) if n < self.per_cell]
            if not open_cells:
                return Searcher.FINISHED
            i = min(open_cells, key=lambda j: self.given[j])
            config = self.inner[i].suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                return config
            self.given[i] += 1
            self.owner[trial_id] = i
            return {**config, **self.cells[i]}

        def on_trial_result(self, trial_id, result):
            if trial_id in self.owner:
                self.inner[self.owner[trial_id]].on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id, result=None, error=False):
            if trial_id in self.owner:
                self.inner[self.owner[trial_id]].on_trial_complete(trial_id, result, error)

        def save(self, checkpoint_path):
            with open(checkpoint_path, "wb") as f:
                cloudpickle.dump((self.inner, self.given, self.owner), f)

        def restore(self, checkpoint_path):
            with open(checkpoint_path, "rb") as f:
                self.inner, self.given, self.owner = cloudpickle.load(f)

    return CellSearcher()


def tune_setup(spec: SearchSpec, num_samples: int | None):
    """(param_space, search_alg, num_samples) for the KD search."""
    from optuna.samplers import TPESampler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    axes = spec.searched_axes()
    s = spec.search
    n = num_samples or s.num_samples
    if s.algorithm == "optuna":
        if not axes:
            raise KdxError("distill: nothing is searched; allowed: make at least one distill or student value a "
                           "choice or a range, or give several teachers, stop epochs or seeds.")
        def optuna(names, seed, points):
            return make_pruned_aware_optuna(
                max_t=spec.trial_epochs(), space={k: _optuna_distribution(axes[k]) for k in names},
                metric=s.metric, mode=s.mode, sampler=TPESampler(seed=seed), points_to_evaluate=points or None)

        cells = spec.search_cells()
        if not cells:
            return {}, optuna(axes, s.seed, [dict(p) for p in s.points_to_evaluate]), n

        def per_cell(i, cell):  # a TPE over the other axes, seeded per cell, with the points of its cell
            inside = [{k: v for k, v in p.items() if k not in cell} for p in s.points_to_evaluate
                      if all(p.get(k) == v for k, v in cell.items())]
            return optuna([k for k in axes if k not in cell], s.seed + i, inside)

        return {}, make_cell_searcher(cells, s.trials_per_cell, per_cell), s.trials_per_cell * len(cells)
    space = {k: _tune_domain(a) for k, a in axes.items()}
    if s.algorithm == "grid":
        n = num_samples or 1
    return space, BasicVariantGenerator(random_state=s.seed, points_to_evaluate=s.points_to_evaluate or None), n


