"""The search space and the searcher: spec axes as Optuna distributions (or Tune domains for random
and grid search), and an Optuna searcher that is told which trials ASHA pruned."""

from __future__ import annotations

from explorer.axes import Axis
from explorer.errors import KdxError
from explorer.spec import SearchSpec


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
    """OptunaSearch that tells Optuna about ASHA-stopped trials as PRUNED (../shared/DESIGN.md trap).

    Ray reports a trial stopped by the scheduler as COMPLETE with its early-epoch value, so TPE would
    learn from truncated scores. Here a trial that ended before `max_t` epochs is PRUNED (its
    intermediate values stay in Optuna as reported), a diverged trial FAIL.
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
            state = None
            if result.get("diverged"):
                state = TrialState.FAIL
            elif result.get("epoch", 0) < self.max_t:
                state = TrialState.PRUNED
            if state is None:
                return super().on_trial_complete(trial_id, result, error)
            self._ot_study.tell(self._ot_trials[trial_id], None, state=state)
            self._completed_trials.add(trial_id)

    return PrunedAwareOptunaSearch(**kwargs)


def tune_setup(spec: SearchSpec, num_samples: int | None):
    """(param_space, search_alg, num_samples) for the KD search."""
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from optuna.samplers import TPESampler

    axes = spec.searched_axes()
    s = spec.search
    n = num_samples or s.num_samples
    if s.algorithm == "optuna":
        if not axes:
            raise KdxError("distill: nothing is searched; allowed: make at least one distill or student value a "
                           "choice or a range, or give several teachers, stop epochs or seeds.")
        searcher = make_pruned_aware_optuna(
            max_t=spec.student.epochs, space={k: _optuna_distribution(a) for k, a in axes.items()},
            metric=s.metric, mode=s.mode, sampler=TPESampler(seed=s.seed),
            points_to_evaluate=[dict(p) for p in s.points_to_evaluate] or None,
        )
        return {}, searcher, n
    space = {k: _tune_domain(a) for k, a in axes.items()}
    if s.algorithm == "grid":
        n = num_samples or 1
    return space, BasicVariantGenerator(random_state=s.seed, points_to_evaluate=s.points_to_evaluate or None), n


