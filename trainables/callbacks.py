"""Driver-side Tune callbacks: MLflow logging keyed by trial id, and a progress line.

Why not Ray's `MLflowLoggerCallback` / `setup_mlflow` (../shared/DESIGN.md, known traps): they log
`config/*`, `pid`, `done` as metrics, open a new run for a resumed trial, and never end runs. Here
one trial is one MLflow run for its whole life, found again by its `trial_id` tag after a resume,
child of the search's parent run, and always ended (FINISHED, KILLED or FAILED).

All MLflow writes happen on the driver, so a SQLite store has one writer per search. The callbacks
are pickled with the Tuner (resume restores them), so they hold only plain data and open their
MLflow client lazily.
"""

from __future__ import annotations

import math
import time

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from explorer.tracking import (
    COMPLETED, DIVERGED, EPOCH_METRICS, FAILED, INTERRUPTED, KIND_TAG, PARENT_TAG, PRUNED, ROLE_TAG, ROLE_TRIAL,
    RUNNING, STATUS_TAG, TEACHER_KEY_TAG, TRIAL_ID_TAG, TRIAL_PARAMS, is_better,
)
from explorer.tracking import trial_status as _status_of

from .plan import Plan, trial_label


def trial_status(trial, epochs: int) -> str:
    """completed / pruned / diverged of a finished Tune trial (explorer.tracking.trial_status)."""
    return _status_of(trial.last_result, epochs)


def logged_metrics(result: dict) -> dict[str, float]:
    """The per-epoch metrics of a result that go to MLflow: `EPOCH_METRICS` and every loss term the
    method returned (`train_<term>`), finite numbers only."""
    return {k: float(v) for k, v in result.items()
            if (k in EPOCH_METRICS or k.startswith("train_")) and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


def _fmt(v) -> str:
    return "none" if v is None else str(v)


class MlflowTrialLogger(Callback):
    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, plan: Plan, kind: str):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.plan = plan
        self.kind = kind
        self._client = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._last_step: dict[str, int] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_client=None, _runs={}, _last_step={})
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _existing_run(self, trial_id: str):
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.{TRIAL_ID_TAG} = '{trial_id}' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
            max_results=1,
        )
        return runs[0] if runs else None

    def run_id(self, trial) -> str:
        """The trial's run: created on first sight, reopened (not duplicated) after a resume."""
        tid = trial.trial_id
        if tid in self._runs:
            return self._runs[tid]
        existing = self._existing_run(tid)
        if existing is not None:
            run_id = existing.info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, STATUS_TAG, RUNNING)
            steps = [m.step for m in self.client.get_metric_history(run_id, "val_acc")]
            self._last_step[tid] = max(steps, default=0)
        else:
            settings = self.plan.settings(trial.config, self.kind)
            tags = {PARENT_TAG: self.parent_run_id, ROLE_TAG: ROLE_TRIAL, TRIAL_ID_TAG: tid,
                    TEACHER_KEY_TAG: settings["teacher_key"], STATUS_TAG: RUNNING, KIND_TAG: self.kind}
            run = self.client.create_run(self.experiment_id, run_name=trial_label(settings), tags=tags)
            run_id = run.info.run_id
            # every trial param, and every searched value that is not one (a teacher-recipe field)
            names = TRIAL_PARAMS + tuple(k for k in self.plan.spec.searched_axes() if k not in TRIAL_PARAMS)
            params = [Param(k, _fmt(settings[k])) for k in names if k in settings]
            self.client.log_batch(run_id, params=params)
            self._last_step[tid] = 0
        self._runs[tid] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.run_id(trial)
        step = int(result.get("epoch", 0))
        if step <= self._last_step.get(trial.trial_id, 0):
            return  # already logged before a resume
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in logged_metrics(result).items()]
        self.client.log_batch(run_id, metrics=metrics)
        self._last_step[trial.trial_id] = step

    def _end(self, trial, status: str, run_status: str) -> None:
        run_id = self.run_id(trial)
        self.client.log_batch(run_id, tags=[RunTag(STATUS_TAG, status)])
        self.client.set_terminated(run_id, run_status)
        self._runs.pop(trial.trial_id, None)

    def on_trial_complete(self, iteration, trials, trial, **info):
        status = trial_status(trial, self.plan.epochs)
        self._end(trial, status, "FAILED" if status == DIVERGED else "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, FAILED, "FAILED")

    def on_experiment_end(self, trials, **info):
        self.close_open_runs()

    def close_open_runs(self) -> None:
        """Interrupted trials: their runs end KILLED (a resume reopens them)."""
        for tid, run_id in list(self._runs.items()):
            self.client.set_tag(run_id, STATUS_TAG, INTERRUPTED)
            self.client.set_terminated(run_id, "KILLED")
            self._runs.pop(tid)


class ProgressLine(Callback):
    """Prints trials done / running / pruned / failed, the best so far, and elapsed time."""

    def __init__(self, plan: Plan, metric: str, mode: str, kind: str, every_s: float = 10.0, out=print):
        self.plan, self.metric, self.mode, self.kind, self.every_s, self.out = plan, metric, mode, kind, every_s, out
        self._start = None
        self._last = 0.0

    def __getstate__(self):
        return self.__dict__ | {"_start": None, "out": print}

    def setup(self, **info):
        self._start = time.monotonic()

    def _line(self, trials) -> str:
        counts = {COMPLETED: 0, PRUNED: 0, DIVERGED: 0, FAILED: 0, RUNNING: 0, "pending": 0}
        best, best_trial = None, None
        for t in trials:
            if t.status == "RUNNING":
                counts[RUNNING] += 1
            elif t.status == "PENDING":
                counts["pending"] += 1
            elif t.status == "ERROR":
                counts[FAILED] += 1
            elif t.status == "TERMINATED":
                st = trial_status(t, self.plan.epochs)
                counts[st] += 1
                v = (t.last_result or {}).get(self.metric)
                if st == COMPLETED and is_better(v, best, self.mode):
                    best, best_trial = v, t
        elapsed = time.monotonic() - (self._start or time.monotonic())
        text = (f"[{self.plan.name} {self.kind} {elapsed:6.0f}s] done {counts[COMPLETED]}, running {counts[RUNNING]}, "
                f"pending {counts['pending']}, pruned {counts[PRUNED]}, diverged {counts[DIVERGED]}, "
                f"failed {counts[FAILED]}")
        if best_trial is not None:
            text += f" | best {self.metric} {best:.4f} ({trial_label(self.plan.settings(best_trial.config, self.kind))})"
        return text

    def _maybe_print(self, trials) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self.out(self._line(trials), flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._maybe_print(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._maybe_print(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._maybe_print(trials)

    def on_experiment_end(self, trials, **info):
        self.out(self._line(trials), flush=True)
