"""The search's progress on the driver (a Tune callback): trials done by outcome, running and pending,
elapsed time, an ETA and the best so far. (The MLflow side: trainables/tracking/trial_runs.py.)"""

from __future__ import annotations

import time

from ray.tune import Callback

from explorer.tracking import COMPLETED, DIVERGED, FAILED, INTERRUPTED, PRUNED, RUNNING, is_better

from .build_progress import duration
from .clock import trial_outcome
from .plan import Plan, trial_label
from .tracking.trial_runs import MlflowTrialLogger  # noqa: F401 (the name a search interrupted under an

# earlier kdx pickled its logger by: `--resume` unpickles it from here)


def trial_status(trial, plan: Plan) -> str:
    """completed / pruned / diverged of a finished Tune trial, on its own epoch clock (trainables/clock.py)."""
    return trial_outcome(trial.last_result, plan.trial_epochs)


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
                st = trial_status(t, self.plan)
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
        eta = duration(elapsed / new * (self.total - done)) if 0 < new and done < self.total else "-"
        label = f" ({trial_label(self.plan.settings(best_trial.config, self.kind))})" if best_trial else ""
        self.out(f"[{self.plan.name} {self.kind}] {done}/{self.total} trials done, elapsed {duration(elapsed)}, "
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
