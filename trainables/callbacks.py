"""Driver-side Tune callbacks: MLflow logging keyed by trial id, and the search's progress (rich).

Why not Ray's `MLflowLoggerCallback` / `setup_mlflow` (../shared/DESIGN.md, known traps): they log
`config/*`, `pid`, `done` as metrics, open a new run for a resumed trial, and never end runs. Here
one trial is one MLflow run for its whole life, found again by its `trial_id` tag after a resume,
child of the search's parent run, and always ended (FINISHED, KILLED or FAILED).

A trial that trains fused members (a trial with `members`: its seeds as one model, explorer/fused.py;
confirmation trials, and every trial with `search.fuse_seeds`) is one MLflow run per member, tagged with
the member's seed and given the member's own metrics, so every seed looks the same in MLflow and in the
analysis whether it trained fused or alone.

All MLflow writes happen on the driver, so a SQLite store has one writer per search. A trial's
epoch metrics are written in batches (`FLUSH_SECONDS`), not one transaction per epoch, and always
before a checkpoint is registered and when the trial ends: an epoch a restarted trial will not
repeat is never left unwritten. The callbacks are pickled with the Tuner (resume restores them), so
they hold only plain data and open their MLflow client lazily.
"""

from __future__ import annotations

import math
import time

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from explorer.tracking import (
    COMPLETED, DIVERGED, EARLIER_EPOCHS, EPOCH_METRICS, FAILED, INTERRUPTED, KIND_CONFIRM, KIND_TAG, MEMBER_TAG,
    PARENT_TAG, PRUNED, ROLE_TAG, ROLE_TRIAL, RUNNING, STATUS_TAG, TEACHER_KEY_TAG, TRIAL_ID_TAG, TRIAL_PARAMS, is_better,
)
from explorer.tracking import trial_status as _status_of

from .connect import OPEN_RUNS, owner_tags

from .plan import Plan, member_points, member_tag, trial_label


def trial_status(trial, epochs: int) -> str:
    """completed / pruned / diverged of a finished Tune trial (explorer.tracking.trial_status)."""
    return _status_of(trial.last_result, epochs)


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
        OPEN_RUNS.add(run_id)
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
            OPEN_RUNS.discard(run_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        def status_of(index):
            status = _status_of(member_result(trial.last_result or {}, index), self.plan.epochs)
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
            OPEN_RUNS.discard(run_id)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class SearchProgress(Callback):
    """Trials done of the total (completed, pruned, diverged, failed), running and pending, elapsed
    time and an ETA (elapsed per finished trial times the trials left), and the best so far.

    On a terminal: a rich progress bar, redrawn in place. Otherwise (a log file, a pipe): the same
    numbers as one plain line every `every_s` seconds. At the end of the experiment, trials that
    were stopped without finishing (Ctrl-C) are counted as interrupted, never as pruned."""

    _live: list = []  # displays open in this process (a restored Tuner unpickles its own copy)

    def __init__(self, plan: Plan, metric: str, mode: str, kind: str, total: int, every_s: float = 10.0, out=print):
        self.plan, self.metric, self.mode, self.kind, self.total = plan, metric, mode, kind, total
        self.every_s, self.out = every_s, out
        self._start, self._last, self._bar, self._task = None, 0.0, None, None
        self._ended: set[str] = set()  # trials Tune reported complete or errored during this run
        self._earlier: set[str] | None = None  # trials already finished when this run started (a resume)

    def __getstate__(self):
        return self.__dict__ | {"_start": None, "_bar": None, "_task": None, "out": print, "_ended": set(),
                                "_earlier": None}

    def setup(self, **info):
        self._start = time.monotonic()
        if self.out is print:
            from rich.console import Console

            console = Console()
            if console.is_terminal:
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                           TimeRemainingColumn)

                self._bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                     TextColumn("{task.fields[counts]}"), console=console, transient=False)
                self._task = self._bar.add_task(f"{self.plan.name} {self.kind}", total=self.total, counts="")
                self._bar.start()
        SearchProgress._live.append(self)

    def counts(self, trials, final: bool = False) -> tuple[dict, object, object]:
        """({outcome: n}, best value, best trial) over `trials`; `final`: unfinished ones are interrupted."""
        self._note_earlier(trials)
        counts = {COMPLETED: 0, PRUNED: 0, DIVERGED: 0, FAILED: 0, INTERRUPTED: 0, RUNNING: 0, "pending": 0}
        best, best_trial = None, None
        for t in trials:
            ended = t.trial_id in self._ended or t.trial_id in self._earlier
            if t.status == "ERROR":
                counts[FAILED] += 1
            elif t.status == "TERMINATED" and ended:
                st = trial_status(t, self.plan.epochs)
                counts[st] += 1
                v = (t.last_result or {}).get(self.metric)
                if st == COMPLETED and is_better(v, best, self.mode):
                    best, best_trial = v, t
            elif final or t.status == "TERMINATED":
                counts[INTERRUPTED] += 1
            elif t.status == "RUNNING":
                counts[RUNNING] += 1
            else:
                counts["pending"] += 1
        return counts, best, best_trial

    def _show(self, trials, final: bool = False) -> None:
        counts, best, best_trial = self.counts(trials, final)
        done = sum(counts[k] for k in (COMPLETED, PRUNED, DIVERGED, FAILED))
        elapsed = time.monotonic() - (self._start or time.monotonic())
        parts = [f"{counts[k]} {k}" for k in (COMPLETED, PRUNED, DIVERGED, FAILED, INTERRUPTED) if counts[k]]
        text = (", ".join(parts) or "none finished") + f"; {counts[RUNNING]} running, {counts['pending']} pending"
        if best_trial is not None:
            text += f" | best {self.metric} {best:.4f}"
        if self._bar is not None:
            self._bar.update(self._task, completed=done, counts=text)
            return
        new = done - len(self._earlier or ())
        eta = _duration(elapsed / new * (self.total - done)) if 0 < new and done < self.total else "-"
        label = f" ({trial_label(self.plan.settings(best_trial.config, self.kind))})" if best_trial else ""
        self.out(f"[{self.plan.name} {self.kind}] {done}/{self.total} trials done, elapsed {_duration(elapsed)}, "
                 f"ETA {eta}: {text}{label}", flush=True)

    def _maybe_show(self, trials) -> None:
        if self._bar is not None or time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self._show(trials)

    def _note_earlier(self, trials) -> None:
        """The trials finished before this run started (a resume), noted at the run's first step:
        noted later, trials that Ctrl-C stopped would pass for finished ones."""
        if self._earlier is None:
            self._earlier = {t.trial_id for t in trials
                             if t.status in ("TERMINATED", "ERROR") and t.trial_id not in self._ended}

    def on_step_begin(self, iteration, trials, **info):
        self._note_earlier(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._maybe_show(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended.add(trial.trial_id)
        self._maybe_show(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended.add(trial.trial_id)
        self._maybe_show(trials)

    def on_experiment_end(self, trials, **info):
        self._show(trials, final=True)
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self in SearchProgress._live:
            SearchProgress._live.remove(self)

    @classmethod
    def close_all(cls) -> None:
        for p in list(cls._live):
            p.close()
