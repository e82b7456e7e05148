"""One MLflow run per trial, child of the search's parent run: a Tune callback on the driver.

Why not Ray's `MLflowLoggerCallback` / `setup_mlflow` (docs/DESIGN.md, known traps): they log
`config/*`, `pid`, `done` as metrics, open a new run for a resumed trial, and never end runs. Here
one trial is one MLflow run for its whole life, found again by its `trial_id` tag after a resume,
child of the search's parent run, and always ended (FINISHED, KILLED or FAILED), with its status tag
(trainables/clock.py) when it finished.

A trial that trains fused members (a trial with `members`: its seeds as one model, explorer's fused
training; confirmation trials, and every trial with `search.fuse_seeds`) is one MLflow run per member,
tagged with the member's seed and given the member's own metrics, so every seed looks the same in
MLflow and in the analysis whether it trained fused or alone.

All MLflow writes happen on the driver, so a SQLite store has one writer per search. A trial's
epoch metrics are written in batches (`FLUSH_SECONDS`), not one transaction per epoch, and always
before a checkpoint is registered and when the trial ends: an epoch a restarted trial will not
repeat is never left unwritten. The callback is pickled with the Tuner (resume restores it), so
it holds only plain data and opens its MLflow client lazily.
"""

from __future__ import annotations

import math
import time

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from explorer.tracking import (DIVERGED, EARLIER_EPOCHS, EPOCH_METRICS, FAILED, INTERRUPTED, KIND_CONFIRM, KIND_TAG,
                               MEMBER_TAG, PARENT_TAG, ROLE_TAG, ROLE_TRIAL, RUNNING, STATUS_TAG, TEACHER_KEY_TAG,
                               TRIAL_ID_TAG, TRIAL_PARAMS)

from ..clock import trial_outcome
from ..plan import Plan, member_points, member_tag, trial_label
from .owners import owner_tags


def logged_metrics(result: dict) -> dict[str, float]:
    """The per-epoch metrics of a result that go to MLflow: `EPOCH_METRICS` and every loss term the
    method returned (`train_<term>`), finite numbers only; none from the report of a diverged epoch,
    whose val_acc 0 only tells ASHA and the searcher to drop the trial (it was never measured)."""
    if result.get("diverged"):
        return {}
    return {k: float(v) for k, v in result.items()
            if (k in EPOCH_METRICS or k.startswith("train_")) and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


def trial_members(config: dict) -> list[str | None]:
    """The member tags (`member_tag`) of a trial that trains fused members, in member order, else [None]
    (one run, the trial's)."""
    return [member_tag(m) for m in config.get("point", config).get("members") or []] or [None]


def member_result(result: dict, index: int | None) -> dict:
    """Member `index`'s view of a trial's result: the trial-wide values (epoch, lr, timings) overlaid with
    the member's own row (rows come in member order). A report without member rows (a trial whose every
    member diverged) is every member's."""
    rows = result.get("members") or ()
    if index is None or index >= len(rows):
        return result
    return {k: v for k, v in result.items() if k != "members"} | rows[index]


# How long a trial's epoch metrics may wait on the driver before they are written to MLflow.
FLUSH_SECONDS = 5.0


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
        self._runs: dict[tuple, str] = {}  # (trial id, member seed or None) -> run id
        self._last_step: dict[tuple, int] = {}
        self._pending: dict[tuple, list[Metric]] = {}  # (trial id, member) -> metrics not yet written
        self._flushed: dict[str, float] = {}  # trial id -> when its metrics were last written

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_client=None, _runs={}, _last_step={}, _pending={}, _flushed={})
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _existing_run(self, trial_id: str, member: int | None):
        filter_string = f"tags.{TRIAL_ID_TAG} = '{trial_id}' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
        if member is not None:
            filter_string += f" and tags.`{MEMBER_TAG}` = '{member}'"
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1)
        return runs[0] if runs else None

    def run_ids(self, trial) -> dict[str | None, str]:
        """The trial's runs by member tag, in member order (one, keyed None, for a trial without fused
        members)."""
        points = member_points(trial.config) or [None]
        return {m: self.run_id(trial, m, p) for m, p in zip(trial_members(trial.config), points)}

    def run_id(self, trial, member: str | None = None, point: dict | None = None) -> str:
        """A trial's (member's, whose own point is `point`) run: created on first sight, reopened (not
        duplicated) after a resume."""
        tid = trial.trial_id
        if (tid, member) in self._runs:
            return self._runs[tid, member]
        existing = self._existing_run(tid, member)
        if existing is not None:
            run_id = existing.info.run_id
            self.client.update_run(run_id, status="RUNNING")
            tags = owner_tags() | {STATUS_TAG: RUNNING}  # this process owns the reopened run now
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            steps = [m.step for m in self.client.get_metric_history(run_id, "val_acc")]
            self._last_step[tid, member] = max(steps, default=0)
        else:
            settings = self.plan.settings(trial.config if point is None else point, self.kind)
            tags = {PARENT_TAG: self.parent_run_id, ROLE_TAG: ROLE_TRIAL, TRIAL_ID_TAG: tid,
                    TEACHER_KEY_TAG: settings["teacher_key"], STATUS_TAG: RUNNING, KIND_TAG: self.kind,
                    **({MEMBER_TAG: str(member)} if member is not None else {}), **owner_tags()}
            name = trial_label(settings)  # confirm runs say so (the same config was a search run)
            run = self.client.create_run(self.experiment_id, tags=tags,
                                         run_name=f"confirm {name}" if self.kind == KIND_CONFIRM else name)
            run_id = run.info.run_id
            # every trial param, and every searched value that is not one (a teacher-recipe field)
            names = TRIAL_PARAMS + tuple(k for k in self.plan.spec.searched_axes() if k not in TRIAL_PARAMS)
            params = [Param(k, _fmt(settings[k])) for k in names if k in settings]
            self.client.log_batch(run_id, params=params)
            self._last_step[tid, member] = 0
        self._runs[tid, member] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_ids(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid, now = trial.trial_id, int(time.time() * 1000)
        for epoch_result in [*result.get(EARLIER_EPOCHS, ()), result]:  # a report batches epochs
            for index, member in enumerate(self.run_ids(trial)):
                row = member_result(epoch_result, None if member is None else index)
                step = int(row.get("epoch", 0))
                if step <= self._last_step.get((tid, member), 0):
                    continue  # already logged before a resume
                self._pending.setdefault((tid, member), []).extend(
                    Metric(k, v, now, step) for k, v in logged_metrics(row).items())
                self._last_step[tid, member] = step
        self._flushed.setdefault(tid, time.monotonic())

    def on_step_end(self, iteration, trials, **info):
        """Write the metrics that have waited FLUSH_SECONDS. Here rather than in `on_trial_result`: Tune
        calls that before it sends the reporting trial back to training, so the trial would wait for the
        writes (a function trainable's report is synchronous), one per member run of a fused trial."""
        now = time.monotonic()
        for tid in {key[0] for key in self._pending}:
            if now - self._flushed.setdefault(tid, now) >= FLUSH_SECONDS:
                self._flush(tid)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self._flush(trial.trial_id)  # a restart from this checkpoint does not repeat these epochs

    def _flush(self, tid: str) -> None:
        self._flushed[tid] = time.monotonic()
        for key in [k for k in self._pending if k[0] == tid]:
            metrics = self._pending.pop(key)
            if metrics and key in self._runs:
                self.client.log_batch(self._runs[key], metrics=metrics)  # MLflow splits big batches itself

    def _end(self, trial, status_of) -> None:
        """End each of the trial's runs with `status_of(member index or None)`: (status tag, MLflow run status)."""
        self._flush(trial.trial_id)
        for index, (member, run_id) in enumerate(self.run_ids(trial).items()):
            status, run_status = status_of(None if member is None else index)
            self.client.log_batch(run_id, tags=[RunTag(STATUS_TAG, status)])
            self.client.set_terminated(run_id, run_status)
            self._runs.pop((trial.trial_id, member), None)

    def on_trial_complete(self, iteration, trials, trial, **info):
        def status_of(index):
            status = trial_outcome(member_result(trial.last_result or {}, index), self.plan.trial_epochs)
            return status, "FAILED" if status == DIVERGED else "FINISHED"
        self._end(trial, status_of)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, lambda member: (FAILED, "FAILED"))

    def on_experiment_end(self, trials, **info):
        self.close_open_runs()

    def close_open_runs(self) -> None:
        """Interrupted trials: their runs end KILLED (a resume reopens them)."""
        for key, run_id in list(self._runs.items()):
            self._flush(key[0])
            self.client.set_tag(run_id, STATUS_TAG, INTERRUPTED)
            self.client.set_terminated(run_id, "KILLED")
            self._runs.pop(key)
