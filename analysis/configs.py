"""What every question shares: which trials count, what a config is, and which trial is best.

- Only trials with status `completed` (and a finite final val_acc) enter comparisons.
- A *config* is every param a trial logged except its seed (`SEED_PARAM`) and the params derived
  from the others (`DERIVED_PARAMS`: parameter counts, the teacher's recipe facts). The columns
  are derived from the frame (`config_columns`), never listed here, so a new method
  hyperparameter (`teacher_temperature`, `branches`) or a new search axis (`student.lr`) keys
  configs with no list to update. Runs that agree on every config column are seeds of one config.
- The best trial, everywhere: the highest final val_acc; among equal scores, the first logged
  (earliest start time, then frame order). `rank_trials` is that rule; `best_trial` its head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from explorer.tracking import (COMPLETED, DERIVED_PARAMS, KIND_BASELINE, KIND_CONFIRM, KIND_SEARCH, NO_TEACHER, PRUNED,
                               SEED_PARAM)

from .runs import is_none, param_columns, typed


@dataclass
class Answer:
    """One question's answer: a table, per-student findings in plain Python, optional details."""

    table: pd.DataFrame
    by_student: dict = field(default_factory=dict)
    details: pd.DataFrame | None = None


def plain(value):
    """`value` with numpy/pandas scalars turned into Python ones (recursively for dicts/lists)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return value
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


def as_float(value) -> float:
    """A plain float; NaN for None/NA and for anything that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def std(x) -> float:
    """Sample std (ddof=1) of the finite values; NaN with fewer than 2."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.std(x, ddof=1)) if len(x) >= 2 else math.nan


def first(values: pd.Series) -> float:
    v = values.dropna()
    return float(v.iloc[0]) if len(v) else math.nan


def students(df: pd.DataFrame) -> list[str]:
    return sorted(df["student"].dropna().unique().tolist())


def teacher_order(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(["student", "teacher_params", "teacher"], na_position="last").reset_index(drop=True)


# ------------------------------------------------------------------ configs


def config_columns(df: pd.DataFrame) -> list[str]:
    """The columns that key a config: every param column of `df` except the seed and `DERIVED_PARAMS`."""
    skip = {SEED_PARAM, *DERIVED_PARAMS}
    return [c for c in param_columns(df) if c not in skip]


def config_token(v) -> str:
    """One config value as text: "none" and a missing value agree; 4 and 4.0 agree."""
    if is_none(v):
        return "none"
    if isinstance(v, (float, np.floating, int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return repr(float(v))
    return str(v)


def config_keys(df: pd.DataFrame, columns: list[str]) -> list[str]:
    """One text key per row: its values of `columns` ("name=value" joined by "|")."""
    return ["|".join(f"{c}={config_token(v)}" for c, v in zip(columns, row))
            for row in df[columns].itertuples(index=False, name=None)]


def no_teacher(s: pd.Series) -> pd.Series:
    return pd.Series([is_none(v) or str(v).lower() == NO_TEACHER for v in s], index=s.index, dtype=bool)


def is_baseline(df: pd.DataFrame) -> pd.Series:
    """CE-only student runs: kind `baseline`, or teacher "none" with method `ce`."""
    return (df["kind"] == KIND_BASELINE) | (no_teacher(df["teacher"]) & (df["method"] == "ce"))


def completed(df: pd.DataFrame) -> pd.DataFrame:
    """Completed trials with a finite score (final val_acc), with `score` and `config` columns."""
    columns = config_columns(df)
    df = typed(df)
    out = df[(df["status"] == COMPLETED) & np.isfinite(df["val_acc"])].copy()
    out["score"] = out["val_acc"].astype(float)
    out["config"] = config_keys(out, columns)
    return out


def searched(df: pd.DataFrame) -> pd.DataFrame:
    """Completed runs of the search and its baselines: every completed run but the confirmation's. Those
    answer only the confirmed cells (analysis.cells); the search's sections choose the best run on
    validation, and must neither choose a lucky confirmation seed nor pool the selected search run with
    the unselected fresh seeds."""
    c = completed(df)
    return c[c["kind"] != KIND_CONFIRM]


def distilled(df: pd.DataFrame) -> pd.DataFrame:
    """Completed search runs with a teacher (`searched`)."""
    c = searched(df)
    return c[~is_baseline(c) & ~no_teacher(c["teacher"])]


def baselines(df: pd.DataFrame) -> pd.DataFrame:
    """Completed CE-only baseline runs of the search (`searched`)."""
    c = searched(df)
    return c[is_baseline(c)]


# ------------------------------------------------------------------ the best trial


def rank_trials(rows: pd.DataFrame, metric: str = "score", mode: str = "max") -> pd.DataFrame:
    """`rows` with a finite `metric`, best first (highest for mode "max", lowest for "min"); equal
    values keep the order they were logged (start time, then frame order). The one ranking rule of
    the analysis: every "best run", "best config" and "best cell" is the head of this ranking."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode: got {mode!r}; allowed: max, min")
    values = pd.to_numeric(rows[metric], errors="coerce").to_numpy(float)
    keep = np.isfinite(values)
    values = values[keep] if mode == "min" else -values[keep]
    logged = np.arange(len(values))
    start = np.zeros(len(values))
    if "start_time" in rows.columns:  # a frame read back from CSV holds it as text; by hand, maybe not at all
        t = pd.to_datetime(rows["start_time"], utc=True, errors="coerce")
        start = (t - pd.Timestamp(0, tz="UTC")).dt.total_seconds().fillna(np.inf).to_numpy(float)[keep]
    order = np.lexsort((logged, start, values))  # last key first: value, then start time, then position
    return rows[keep].iloc[order]


def best_trial(rows: pd.DataFrame, metric: str = "score", mode: str = "max") -> pd.Series:
    """The best row of `rows` by `rank_trials` (callers pass a non-empty pool)."""
    return rank_trials(rows, metric, mode).iloc[0]


def best_config_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Every run (each seed) of the best config among `rows`: the config of their `best_trial`."""
    return rows[rows["config"] == best_trial(rows)["config"]]


def config_value(v):
    """A config value as a trial config holds it: None for "none"/NaN, 4.0 -> 4, Python scalars."""
    if is_none(v):
        return None
    v = plain(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def config_means(rows: pd.DataFrame, columns: list[str], metric: str) -> pd.DataFrame:
    """One row per config of `rows` (its first), its `metric` the mean over the config's runs: a config
    is judged by what its seeds get on average, not by its luckiest seed."""
    keys = pd.Series(config_keys(rows, columns), index=rows.index)
    means = pd.to_numeric(rows[metric], errors="coerce").groupby(keys).transform("mean")
    return rows.assign(**{metric: means})[~keys.duplicated()]


def cell_configs(df: pd.DataFrame, cells: list[str], metric: str = "val_acc", mode: str = "max"
                 ) -> tuple[list[dict], list[dict]]:
    """The confirmation stage's choice: the best config of every cell (one value of each of the
    `cells` params, e.g. teacher x teacher_stop_epoch) among the distilled search trials, ranked
    by final `metric` with `rank_trials` (validation only); a config with several runs (the seeds of a
    fused search trial, `search.fuse_seeds`) is ranked by their mean. A cell's completed trials come first;
    a cell whose trials were all pruned by ASHA gets its best pruned trial (by its value at the
    rung where it was stopped), so the confirmation gives it a full, unpruned run rather than let
    it vanish. Returns (configs, missing): each config as {config column: value} (plus
    `from_status`: completed or pruned) ready to re-run with fresh seeds (`kdx confirm`), and the
    cells whose trials all diverged or failed, each with its trial statuses."""
    columns = config_columns(df)
    tried = typed(df)
    tried = tried[(tried["kind"] == KIND_SEARCH) & ~no_teacher(tried["teacher"])]
    configs, missing = [], []
    if not len(tried):
        return configs, missing
    for key, group in tried.groupby([tried[c].map(config_token) for c in cells], sort=True):
        pool = group[np.isfinite(group[metric].astype(float))]
        for status in (COMPLETED, PRUNED):
            best = rank_trials(config_means(pool[pool["status"] == status], columns, metric), metric, mode)
            if len(best):
                configs.append({c: config_value(best.iloc[0][c]) for c in columns} | {"from_status": status})
                break
        else:
            missing.append({c: config_value(group.iloc[0][c]) for c in cells}
                           | {"statuses": {str(k): int(v) for k, v in group["status"].value_counts().items()}})
    return configs, missing


def varying_columns(rows: pd.DataFrame, columns: list[str]) -> list[str]:
    """The config `columns` that take more than one value among `rows`: the axes a search varied."""
    return [c for c in columns if len({config_token(v) for v in rows[c]}) > 1]


# The config columns that the answers' tables show by name; `other_config` gives the others.
SHOWN_CONFIG = ("dataset", "student", "teacher", "teacher_stop_epoch", "method", "temperature", "alpha",
                "kd_stop_epoch", "epochs")


def other_config(row: pd.Series, pool: pd.DataFrame, columns: list[str]) -> dict:
    """`row`'s set values of the config `columns` that vary in `pool` and are not in `SHOWN_CONFIG`:
    what a table with fixed columns would hide (a searched `teacher_temperature`, `student.lr`)."""
    out = {c: config_value(row[c]) for c in varying_columns(pool, columns) if c not in SHOWN_CONFIG}
    return {c: v for c, v in out.items() if v is not None}


# ------------------------------------------------------------------ a group's best config and its seeds


def kd_loss_values(rows: pd.DataFrame) -> pd.Series:
    """Final train_kd, NaN where KD was switched off before the last epoch (the term is 0 there)."""
    off = np.isfinite(rows["kd_stop_epoch"]) & (rows["kd_stop_epoch"] <= rows["epochs_done"])
    return rows["train_kd"].where(~off)


def at_best(group: pd.DataFrame, pool: pd.DataFrame) -> dict:
    """The best trial of `group` and the statistics of its config's runs (its seeds) in `pool`."""
    best = best_trial(group)
    same = pool[pool["config"] == best["config"]]
    if len(same) >= 2:
        err, err_source = std(same["score"]), "std over seeds of the best config"
    elif len(group) >= 2:
        top = group["score"].nlargest(3)
        err, err_source = std(top), f"std of the top {len(top)} configs"
    else:
        err, err_source = math.nan, "none (one run)"
    return {
        "run_id": best["run_id"], "run_name": best.get("run_name"),
        "teacher_stop_epoch": as_float(best["teacher_stop_epoch"]),
        "teacher_epochs": as_float(best["teacher_epochs"]),
        "method": best["method"], "temperature": as_float(best["temperature"]), "alpha": as_float(best["alpha"]),
        "kd_stop_epoch": as_float(best["kd_stop_epoch"]),
        "val_acc": as_float(best["score"]), "test_acc": as_float(best["test_acc"]),
        "val_acc_mean": float(same["score"].mean()), "val_acc_std": std(same["score"]),
        "test_acc_mean": float(same["test_acc"].mean()), "n_seeds": int(len(same)),
        "err": err, "err_source": err_source, "n_runs": int(len(group)),
        "teacher_val_acc": as_float(best["teacher_val_acc"]),
        "kd_agreement": float(same["kd_agreement"].mean()),
        "train_kd": float(kd_loss_values(same).mean()),
    }
