"""MLflow runs -> pandas: the trial runs a `kdx search` logged, one row per trial.

The schema (tags, params, metric names) is `explorer.tracking`; this module only reads it. Runs are
read with MLflow's own pandas output (`mlflow.search_runs`), so whatever a trial logged arrives as
a column with no list to update here when the trainable logs a new param or metric.

Conventions of the frame `load_trials` returns (the rest of `analysis` relies on them):

- one row per run tagged `kdx.role=trial` under the experiment's latest search (its parent run:
  searches of one name are never pooled; `df.attrs["earlier_searches"]` counts the older ones),
  deleted runs not read, in the order they were logged (start time);
- the ID columns `ID_COLUMNS`: `status` is the trial's `status` tag (completed, pruned, diverged,
  failed, running); a run without that tag gets `running`/`failed` from MLflow's own run status
  when MLflow says the run is running or failed/killed, and `unknown` otherwise, so an untagged
  run never enters a comparison by accident;
- params: **every** param any trial logged, by its own name (`student.lr` stays `student.lr`),
  plus the `TRIAL_PARAMS` even where nobody logged them; `df.attrs["param_columns"]` names them.
  A param column whose values other than "none" all parse as numbers is a float column with
  "none" (or a missing param) as NaN; any other param column keeps the strings as logged;
- metrics: every metric any trial logged (`EPOCH_METRICS` always), at the last epoch it was
  logged (MLflow's latest value: highest step, then latest timestamp); `val_acc` is read from its
  full history, which also gives `best_val_acc` (max over epochs), `best_epoch` (first epoch
  reaching it) and `epochs_done` (last logged epoch, 0 if none);
- the score of a trial in every comparison is its final `val_acc` (ASHA compares trials at the
  same epoch, so the final value, not the best-ever one, is what the search optimised).

A frame that lost its `attrs` (read back from `trials.csv`, or built by hand) still works:
`param_columns` then takes every column that is not an ID, derived or metric column.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd

from explorer.errors import KdxError
from explorer.tracking import (EPOCH_METRICS, KIND_TAG, PARENT_TAG, ROLE_TAG, ROLE_TRIAL, STATUS_TAG, TEACHER_KEY_TAG,
                               TRIAL_ID_TAG, TRIAL_PARAMS, default_tracking_uri, latest_search)

ID_COLUMNS = ("run_id", "run_name", "trial_id", "status", "kind", "teacher_key", "parent_run_id",
              "mlflow_status", "start_time")
DERIVED_COLUMNS = ("best_val_acc", "best_epoch", "epochs_done")
# Columns every trials frame has, whatever the runs logged (more params and metrics may follow).
TRIAL_COLUMNS = ID_COLUMNS + TRIAL_PARAMS + EPOCH_METRICS + DERIVED_COLUMNS
# Columns the analysis adds to a trials frame (`sweetspot.completed`): never params.
ANALYSIS_COLUMNS = ("score", "config")
HISTORY_COLUMNS = ("run_id", "step", "metric", "value")
PARAMS_ATTR = "param_columns"
NONE_WORDS = ("none", "", "nan", "null")


# ------------------------------------------------------------------ which columns are params


def is_metric_name(name: str) -> bool:
    """A metric the trainer logs: `EPOCH_METRICS`, or `train_<term>` for a method's loss term."""
    return name in EPOCH_METRICS or name.startswith("train_")


def param_columns(df: pd.DataFrame) -> list[str]:
    """The columns of `df` that hold logged params, in frame order.

    `load_trials` lists them in `df.attrs["param_columns"]`; a frame without that list (read back
    from CSV, built by hand) gets every column that is not an ID, derived, analysis or metric
    column, which is exact for what kdx logs.
    """
    listed = df.attrs.get(PARAMS_ATTR)
    if listed is not None:
        keep = set(listed)
        return [c for c in df.columns if c in keep]
    fixed = set(ID_COLUMNS) | set(DERIVED_COLUMNS) | set(ANALYSIS_COLUMNS)
    return [c for c in df.columns if c not in fixed and not is_metric_name(str(c))]


def is_none(value) -> bool:
    """Missing, NaN, or a "none"-like string: how a run says a param has no value."""
    if value is None or value is pd.NaT:
        return True
    if isinstance(value, str):
        return value.strip().lower() in NONE_WORDS
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _to_number(value) -> float:
    if is_none(value):
        return math.nan
    try:
        return float(str(value).strip())
    except ValueError:
        return math.nan


def param_values(values: pd.Series) -> pd.Series:
    """A param column as the analysis uses it: floats ("none"/missing as NaN) when every value that
    is not "none" is a number, else the values as logged (the rule is derived per column, so a new
    param needs no list of which params are strings)."""
    nums = pd.Series([_to_number(v) for v in values], index=values.index, dtype=float)
    given = ~pd.Series([is_none(v) for v in values], index=values.index, dtype=bool)
    if nums[given].notna().all():
        return nums
    return values


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with param columns typed by `param_values` and metric/derived columns as floats (a
    frame read back from CSV, or an empty one, may hold them as objects)."""
    out = df.copy()
    params = set(param_columns(df))
    for c in out.columns:
        if c in params:
            out[c] = param_values(out[c])
        elif c in DERIVED_COLUMNS or is_metric_name(str(c)):
            out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    return out


# ------------------------------------------------------------------ opening the store


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
    """(client, experiment id, uri) of `experiment`; KdxError if there is no such experiment.

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
    return client, exp.experiment_id, uri


def get_experiment_id(experiment: str, tracking_uri: str | None = None) -> str:
    """The id of the MLflow experiment named `experiment`; KdxError if there is none."""
    return _open(experiment, tracking_uri)[1]


def _role_filter(role: str) -> str:
    return f"tags.`{ROLE_TAG}` = '{role}'"


def find_parent_run(experiment: str, tracking_uri: str | None = None):
    """The latest run (by start time) tagged `kdx.role=search` in `experiment`, or None."""
    client, exp_id, _ = _open(experiment, tracking_uri)
    return latest_search(client, exp_id)


@contextmanager
def _tracking(uri: str):
    """`mlflow.search_runs` reads the global tracking URI: point it at `uri`, then put it back."""
    import mlflow

    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def _trial_runs(experiment: str, tracking_uri: str | None):
    """(client, raw frame): MLflow's pandas output for the experiment's trial runs, oldest first
    (MLflow pages through the store itself; deleted runs are not searched)."""
    import mlflow

    client, exp_id, uri = _open(experiment, tracking_uri)
    with _tracking(uri):
        raw = mlflow.search_runs(experiment_ids=[exp_id], filter_string=_role_filter(ROLE_TRIAL),
                                 max_results=None, order_by=["attributes.start_time ASC"], output_format="pandas")
    return client, raw.reset_index(drop=True)


def _logged(raw: pd.DataFrame, prefix: str) -> list[str]:
    return [c[len(prefix):] for c in raw.columns if c.startswith(prefix)]


# ------------------------------------------------------------------ the trials frame


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric, sorted by step; a step logged twice keeps its latest value."""
    by_step: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run_id, key):
        prev = by_step.get(m.step)
        if prev is None or m.timestamp >= prev[0]:
            by_step[m.step] = (m.timestamp, float(m.value))
    return [(s, by_step[s][1]) for s in sorted(by_step)]


def _status(tag, mlflow_status) -> str:
    if isinstance(tag, str) and tag:
        return tag
    if mlflow_status in ("RUNNING", "SCHEDULED"):
        return "running"
    if mlflow_status in ("FAILED", "KILLED"):
        return "failed"
    return "unknown"


def _val_acc_facts(client, run_id: str) -> dict:
    """Final val_acc, best_val_acc, best_epoch and epochs_done from the full val_acc history (read for
    every run: MLflow's pandas output shows a metric logged as NaN and one never logged alike)."""
    hist = _history(client, run_id, "val_acc")
    if not hist:
        return {"val_acc": math.nan, "best_val_acc": math.nan, "best_epoch": math.nan, "epochs_done": 0}
    steps = np.array([s for s, _ in hist])
    values = np.array([v for _, v in hist])
    finite = np.isfinite(values)
    return {"val_acc": float(values[-1]),
            "best_val_acc": float(values[finite].max()) if finite.any() else math.nan,
            "best_epoch": float(steps[finite][np.argmax(values[finite])]) if finite.any() else math.nan,
            "epochs_done": int(steps[-1])}


def _trials_frame(client, raw: pd.DataFrame) -> pd.DataFrame:
    n = len(raw)

    def col(name: str) -> pd.Series:
        return raw[name].astype(object) if name in raw.columns else pd.Series([None] * n, dtype=object)

    def tag(key: str) -> list:
        return [v if isinstance(v, str) else None for v in col(f"tags.{key}")]

    data = {"run_id": col("run_id").tolist(), "run_name": tag("mlflow.runName"), "trial_id": tag(TRIAL_ID_TAG),
            "status": [_status(t, s) for t, s in zip(col(f"tags.{STATUS_TAG}"), col("status"))],
            "kind": tag(KIND_TAG), "teacher_key": tag(TEACHER_KEY_TAG), "parent_run_id": tag(PARENT_TAG),
            "mlflow_status": col("status").tolist(), "start_time": pd.to_datetime(col("start_time"), utc=True)}
    taken = set(ID_COLUMNS) | set(DERIVED_COLUMNS)  # an ID column wins over a param of the same name
    params = list(TRIAL_PARAMS) + sorted(set(_logged(raw, "params.")) - set(TRIAL_PARAMS) - taken)
    taken |= set(params)  # a param wins over a metric of the same name
    metrics = list(EPOCH_METRICS) + sorted(set(_logged(raw, "metrics.")) - set(EPOCH_METRICS) - taken)
    for p in params:
        data[p] = param_values(col(f"params.{p}").reset_index(drop=True))
    for m in metrics:
        data[m] = pd.to_numeric(col(f"metrics.{m}"), errors="coerce").astype(float).reset_index(drop=True)
    facts = pd.DataFrame([_val_acc_facts(client, rid) for rid in data["run_id"]],
                         columns=["val_acc", *DERIVED_COLUMNS])
    data |= {c: facts[c] for c in facts.columns}
    df = pd.DataFrame({c: pd.Series(v).reset_index(drop=True) for c, v in data.items()},
                      columns=list(ID_COLUMNS) + params + metrics + list(DERIVED_COLUMNS))
    for c in ["val_acc", "best_val_acc", "best_epoch"]:
        df[c] = df[c].astype(float)
    df["epochs_done"] = df["epochs_done"].astype(int)
    df.attrs[PARAMS_ATTR] = tuple(params)
    return df


def load_trials(experiment: str, tracking_uri: str | None = None, histories: bool = False):
    """One row per trial run of `experiment` (see the module docstring for the columns).

    With `histories=True` returns `(trials, histories)`, the second frame being what
    `load_histories` returns for the same runs; otherwise just the trials frame.
    An unknown experiment raises `KdxError`.
    """
    client, raw = _trial_runs(experiment, tracking_uri)
    df = _trials_frame(client, raw)
    df, raw = _latest_search(df, raw, find_parent_run(experiment, tracking_uri))
    if histories:
        return df, _histories(client, raw, list(df["run_id"]), None)
    return df


def _latest_search(df: pd.DataFrame, raw: pd.DataFrame, parent) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Only the trials of the latest search (its parent run): two searches of one name are never
    pooled. `df.attrs` gets `parent_run_id`, the parent's params (`parent_params`: the teacher and
    stop-epoch lists, the seeds, ...) and `earlier_searches`, the number of older parents left out."""
    if parent is None:
        return df, raw
    keep = (df["parent_run_id"] == parent.info.run_id).to_numpy()
    older = sorted(set(df.loc[~keep, "parent_run_id"].dropna()))
    attrs = dict(df.attrs)
    df, raw = df[keep].reset_index(drop=True), raw[keep].reset_index(drop=True)
    df.attrs.update(attrs | {"parent_run_id": parent.info.run_id, "parent_params": dict(parent.data.params),
                             "earlier_searches": len(older)})
    return df, raw


def _histories(client, raw: pd.DataFrame, run_ids: list[str], metrics) -> pd.DataFrame:
    """Long frame of the runs' metric histories: `metrics` (None: every metric each run logged)."""
    names = [m for m in _logged(raw, "metrics.") if metrics is None or m in metrics]
    if metrics is not None:  # the order asked for
        names = [m for m in metrics if m in names]
    rows = []
    for run_id in run_ids:
        for key in names:
            rows.extend((run_id, step, key, value) for step, value in _history(client, run_id, key))
    df = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    df["step"] = df["step"].astype(int)
    df["value"] = df["value"].astype(float)
    return df


def load_histories(experiment: str, tracking_uri: str | None = None, metrics=EPOCH_METRICS,
                   run_ids: list[str] | None = None) -> pd.DataFrame:
    """Per-epoch metrics of the trial runs as a long frame: run_id, step (epoch), metric, value.

    `run_ids` restricts to those runs (default: every trial run of the experiment); `metrics` to
    those metric names (None: every metric the runs logged, loss terms `train_<term>` included).
    A step logged twice keeps its latest value.
    """
    client, raw = _trial_runs(experiment, tracking_uri)
    ids = raw["run_id"].tolist() if len(raw) else []
    if run_ids is not None:
        wanted = set(run_ids)
        ids = [i for i in ids if i in wanted]
    return _histories(client, raw, ids, None if metrics is None else tuple(metrics))
