"""MLflow runs -> pandas: the trial runs a `kdx search` logged, one row per trial.

The schema (tags, params, metric names) is `explorer.tracking`; this module only reads it.

Conventions of the frame `load_trials` returns (the rest of `analysis` relies on them):

- one row per run tagged `kdx.role=trial` in the experiment (deleted runs are not read);
- `status` is the trial's `status` tag (completed, pruned, diverged, failed, running); a run
  without that tag gets `running`/`failed` from MLflow's own run status when MLflow says the run
  is running or failed/killed, and `unknown` otherwise, so an untagged run never enters a
  comparison by accident;
- params: `dataset`, `student`, `teacher`, `method` stay strings (`teacher` is "none" for the CE
  baseline); every other param of `TRIAL_PARAMS` becomes a float, with "none" (or a missing
  param) as NaN;
- metrics: the value of each `EPOCH_METRICS` metric at the last epoch that metric was logged
  (MLflow's latest value: highest step, then latest timestamp); `val_acc` is read from its full
  history, which also gives `best_val_acc` (max over epochs), `best_epoch` (first epoch reaching
  it) and `epochs_done` (last logged epoch, 0 if none);
- the score of a trial in every comparison is its final `val_acc` (ASHA compares trials at the
  same epoch, so the final value, not the best-ever one, is what the search optimised).
"""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd

from explorer.errors import KdxError
from explorer.tracking import (
    EPOCH_METRICS,
    default_tracking_uri,
    KIND_TAG,
    PARENT_TAG,
    ROLE_SEARCH,
    ROLE_TAG,
    ROLE_TRIAL,
    STATUS_TAG,
    TEACHER_KEY_TAG,
    TRIAL_ID_TAG,
    TRIAL_PARAMS,
)

# Params that stay strings; every other TRIAL_PARAMS entry is numeric.
STRING_PARAMS = ("dataset", "student", "teacher", "method", "teacher_kind", "teacher_chain")
NUMERIC_PARAMS = tuple(p for p in TRIAL_PARAMS if p not in STRING_PARAMS)

ID_COLUMNS = ("run_id", "run_name", "trial_id", "status", "kind", "teacher_key", "parent_run_id",
              "mlflow_status", "start_time")
DERIVED_COLUMNS = ("best_val_acc", "best_epoch", "epochs_done")
TRIAL_COLUMNS = ID_COLUMNS + TRIAL_PARAMS + EPOCH_METRICS + DERIVED_COLUMNS
HISTORY_COLUMNS = ("run_id", "step", "metric", "value")

_PAGE = 1000


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI, None for other schemes or in-memory DBs."""
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri[len("sqlite:///"):].split("?", 1)[0])  # sqlite:////abs -> "/abs"
    if not path or path == ":memory:":
        return None
    return Path(path)


def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())


def _missing(experiment: str, uri: str) -> KdxError:
    return KdxError(f"experiment: got {experiment!r}; no MLflow experiment of that name at URI {uri}, "
                    "run `kdx search` first or pass --tracking-uri.")


def _open(experiment: str, tracking_uri: str | None):
    """(client, experiment id) of `experiment`; KdxError if there is no such experiment.

    A SQLite URI whose file does not exist is reported the same way, before any client is made
    (an MLflow client creates the database file on first use).
    """
    uri = tracking_uri or default_tracking_uri()
    db = _sqlite_path(uri)
    if db is not None and not db.exists():
        raise _missing(experiment, uri)
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None or getattr(exp, "lifecycle_stage", "active") == "deleted":
        raise _missing(experiment, uri)
    return client, exp.experiment_id


def get_experiment_id(experiment: str, tracking_uri: str | None = None) -> str:
    """The id of the MLflow experiment named `experiment`; KdxError if there is none."""
    return _open(experiment, tracking_uri)[1]


def _search_all(client, experiment_id: str, filter_string: str, order_by=None) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=_PAGE,
                                  order_by=order_by, page_token=token)
        runs.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return runs


def _role_filter(role: str) -> str:
    return f"tags.`{ROLE_TAG}` = '{role}'"


def find_parent_run(experiment: str, tracking_uri: str | None = None):
    """The latest run (by start time) tagged `kdx.role=search` in `experiment`, or None."""
    client, exp_id = _open(experiment, tracking_uri)
    page = client.search_runs([exp_id], filter_string=_role_filter(ROLE_SEARCH), max_results=1,
                              order_by=["attributes.start_time DESC"])
    return page[0] if len(page) else None


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric, sorted by step; a step logged twice keeps its latest value."""
    by_step: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run_id, key):
        prev = by_step.get(m.step)
        if prev is None or m.timestamp >= prev[0]:
            by_step[m.step] = (m.timestamp, float(m.value))
    return [(s, by_step[s][1]) for s in sorted(by_step)]


def _to_number(value) -> float:
    if value is None:
        return math.nan
    text = str(value).strip()
    if text.lower() in ("none", "", "nan", "null"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def _status(tags: dict, mlflow_status: str) -> str:
    if tags.get(STATUS_TAG):
        return tags[STATUS_TAG]
    if mlflow_status in ("RUNNING", "SCHEDULED"):
        return "running"
    if mlflow_status in ("FAILED", "KILLED"):
        return "failed"
    return "unknown"


def _row(client, run) -> dict:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    row = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "trial_id": tags.get(TRIAL_ID_TAG),
        "status": _status(tags, run.info.status),
        "kind": tags.get(KIND_TAG),
        "teacher_key": tags.get(TEACHER_KEY_TAG),
        "parent_run_id": tags.get(PARENT_TAG),
        "mlflow_status": run.info.status,
        "start_time": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC") if run.info.start_time else pd.NaT,
    }
    for p in STRING_PARAMS:
        row[p] = params.get(p)
    for p in NUMERIC_PARAMS:
        row[p] = _to_number(params.get(p))
    for m in EPOCH_METRICS:
        row[m] = float(metrics[m]) if m in metrics else math.nan
    hist = _history(client, run.info.run_id, "val_acc") if "val_acc" in metrics else []
    if hist:
        steps = np.array([s for s, _ in hist])
        values = np.array([v for _, v in hist])
        finite = np.isfinite(values)
        row["val_acc"] = float(values[-1])
        row["best_val_acc"] = float(values[finite].max()) if finite.any() else math.nan
        row["best_epoch"] = float(steps[finite][np.argmax(values[finite])]) if finite.any() else math.nan
        row["epochs_done"] = int(steps[-1])
    else:
        row["best_val_acc"] = row["best_epoch"] = math.nan
        row["epochs_done"] = 0
    return row


def _trial_runs(experiment: str, tracking_uri: str | None):
    client, exp_id = _open(experiment, tracking_uri)
    return client, _search_all(client, exp_id, _role_filter(ROLE_TRIAL), order_by=["attributes.start_time ASC"])


def load_trials(experiment: str, tracking_uri: str | None = None, histories: bool = False):
    """One row per trial run of `experiment` (see the module docstring for the columns).

    With `histories=True` returns `(trials, histories)`, the second frame being what
    `load_histories` returns for the same runs; otherwise just the trials frame.
    An unknown experiment raises `KdxError`.
    """
    client, runs = _trial_runs(experiment, tracking_uri)
    rows = [_row(client, r) for r in runs]
    df = pd.DataFrame(rows, columns=list(TRIAL_COLUMNS))
    for c in NUMERIC_PARAMS + EPOCH_METRICS + ("best_val_acc", "best_epoch"):
        df[c] = df[c].astype(float)
    df["epochs_done"] = df["epochs_done"].astype(int)
    df = df.reset_index(drop=True)
    if histories:
        return df, _histories(client, list(df["run_id"]), EPOCH_METRICS)
    return df


def _histories(client, run_ids: list[str], metrics) -> pd.DataFrame:
    rows = []
    for run_id in run_ids:
        for key in metrics:
            rows.extend((run_id, step, key, value) for step, value in _history(client, run_id, key))
    df = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    df["step"] = df["step"].astype(int)
    df["value"] = df["value"].astype(float)
    return df


def load_histories(experiment: str, tracking_uri: str | None = None, metrics=EPOCH_METRICS,
                   run_ids: list[str] | None = None) -> pd.DataFrame:
    """Per-epoch metrics of the trial runs as a long frame: run_id, step (epoch), metric, value.

    `run_ids` restricts to those runs (default: every trial run of the experiment); `metrics` to
    those metric names. A step logged twice keeps its latest value.
    """
    client, runs = _trial_runs(experiment, tracking_uri)
    ids = [r.info.run_id for r in runs]
    if run_ids is not None:
        wanted = set(run_ids)
        ids = [i for i in ids if i in wanted]
    return _histories(client, ids, tuple(metrics))
