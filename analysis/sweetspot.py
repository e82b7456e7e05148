"""The questions `kdx analyze` answers, as pure functions of the trials frame (`runs.load_trials`).

This module is the one place to import them from; each lives with its kind:
`analysis.teachers` (capacity_curve, stop_epoch_table, diagnostics), `analysis.hparams`
(temperature_alpha_map, param_importance), `analysis.gain` (kd_gain, gain_statistics); run statuses,
the sweet spot and the summary are here. The rules they share are `analysis.configs`:

- Only trials with status `completed` enter comparisons. The others are counted and listed by
  `status_counts`.
- The score of a trial is its final `val_acc` (value at its last logged epoch). Every choice
  ("best run", "best teacher", "best stop epoch", "best config") is made on that score alone, by
  one rule (`best_trial`: highest score, ties to the first logged); `test_acc` is reported beside
  it, never used to choose.
- These questions read the search's runs (`searched`): a confirmation run (`kdx confirm`, kind
  `confirm`) answers only the confirmed cells (`analysis.cells`, the report's Answer), so a fresh seed
  is never chosen here nor pooled with the search's selected run.
- A *baseline* run is a CE-only student: kind `baseline`, or teacher "none" with method `ce`.
  A *distilled* run is a completed run with a teacher. Teacher-free runs with another method are
  neither and are left out.
- A *config* is every param a trial logged except its seed and the derived params (parameter
  counts, the teacher's recipe facts): `config_columns(df)`, derived from the frame. Runs of one
  config with different seeds (`seeds` of a search, fused or not) are grouped: the best run picks the
  config, and the config's seeds give the mean, std and the KD-gain statistics.
- Every selection picks the single best run by score (the winner's-curse bias of a max over many
  configs is why `val_acc_mean` over the config's seeds, and the KD gain across seeds, sit beside it).

Each question returns an `Answer`: `table` (a DataFrame), `by_student` (plain Python values
only: floats, ints, strings, bools, None, lists, dicts; NaN marks a missing number) and
`details` (an optional second DataFrame).
"""

from __future__ import annotations

import math

import pandas as pd

from explorer.tracking import COMPLETED, STATUSES

from .cells import confirmed_cells, headline_metrics
from .configs import (Answer, as_float, at_best, baselines, best_trial, cell_configs, completed, config_columns,
                      config_keys, config_token, config_value, distilled, is_baseline, other_config, plain, rank_trials,
                      students, varying_columns)
from .gain import gain_statistics, kd_gain
from .hparams import MIN_IMPORTANCE_TRIALS, param_importance, temperature_alpha_map
from .teachers import capacity_curve, diagnostics, stop_epoch_table

__all__ = [
    "Answer", "MIN_IMPORTANCE_TRIALS", "SWEET_SPOT_COLUMNS", "baselines", "best_trial", "cell_configs",
    "capacity_curve", "completed", "config_columns", "config_keys", "config_token", "config_value", "diagnostics",
    "distilled", "gain_statistics", "is_baseline", "kd_gain", "other_config", "param_importance", "plain",
    "rank_trials", "status_counts", "stop_epoch_table", "summary", "sweet_spot", "temperature_alpha_map",
    "varying_columns",
]


# ------------------------------------------------------------------ 0. run statuses


def status_counts(df: pd.DataFrame) -> Answer:
    """Trials per student and status; `details` lists every trial that is not completed."""
    statuses = list(STATUSES) + sorted(set(df["status"].dropna()) - set(STATUSES))
    table = pd.crosstab(df["student"].fillna("?"), df["status"]).reindex(columns=statuses, fill_value=0)
    table.index.name, table.columns.name = "student", None
    table["total"] = table.sum(axis=1)
    table = table.reset_index()
    by_student = {row["student"]: {s: int(row[s]) for s in statuses + ["total"]} for _, row in table.iterrows()}
    by_student["all"] = {s: int(table[s].sum()) for s in statuses + ["total"]}
    cols = ["run_name", "trial_id", "student", "teacher", "teacher_stop_epoch", "temperature", "alpha",
            "kind", "status", "epochs_done", "val_acc"]
    details = (df.loc[df["status"] != COMPLETED, cols].sort_values(["status", "student", "run_name"])
               .reset_index(drop=True))
    return Answer(table, plain(by_student), details)


# ------------------------------------------------------------------ sweet spot & summary


SWEET_SPOT_COLUMNS = ("student", "teacher", "teacher_params", "capacity_ratio", "teacher_stop_epoch", "teacher_epochs",
                      "method", "temperature", "alpha", "kd_stop_epoch", "val_acc", "test_acc", "val_acc_mean",
                      "val_acc_std", "test_acc_mean", "n_seeds", "baseline_val_acc", "baseline_test_acc", "n_baseline",
                      "run_id", "run_name")


def sweet_spot(df: pd.DataFrame) -> pd.DataFrame:
    """Per student, the best distilled run (`best_trial`) and its config: teacher, stop epoch, T,
    alpha, KD stop epoch, val and test acc of that run, their means over the config's seeds, and the
    CE baseline's means. The columns are `SWEET_SPOT_COLUMNS`, then one column per other config
    param that some student's best config sets (`teacher_temperature`, `student.lr`, ...), so a
    searched axis outside the fixed columns is still shown."""
    columns = config_columns(df)
    kd, base = distilled(df), baselines(df)
    rows, others = [], {}
    for student in students(kd):
        pool = kd[kd["student"] == student]
        best = at_best(pool, pool)
        r = best_trial(pool)
        b = base[base["student"] == student]
        other = other_config(r, pool, columns)
        others |= dict.fromkeys(other)
        rows.append({"student": student, "teacher": r["teacher"], "teacher_params": as_float(r["teacher_params"]),
                     "capacity_ratio": as_float(r["capacity_ratio"])}
                    | {k: best[k] for k in ("teacher_stop_epoch", "teacher_epochs", "method", "temperature", "alpha",
                                            "kd_stop_epoch", "val_acc", "test_acc", "val_acc_mean", "val_acc_std",
                                            "test_acc_mean", "n_seeds", "run_id", "run_name")}
                    | {"baseline_val_acc": float(b["score"].mean()) if len(b) else math.nan,
                       "baseline_test_acc": float(b["test_acc"].mean()) if len(b) else math.nan,
                       "n_baseline": int(len(b))} | other)
    return pd.DataFrame(rows, columns=list(SWEET_SPOT_COLUMNS) + [c for c in others if c not in SWEET_SPOT_COLUMNS])


def summary(df: pd.DataFrame, confidence: float = 0.95) -> dict:
    """Plain-Python summary: trial counts; per student the search's best config (its other set
    config values under `other_config`) and KD gain; the confirmed answers (`confirmed`,
    analysis.cells) and their `headline` numbers, which the parent MLflow run carries."""
    spots = sweet_spot(df)
    gain = kd_gain(df, confidence).by_student
    counts = status_counts(df).by_student
    per_student = []
    for _, r in spots.iterrows():
        g = gain.get(r["student"], {})
        other = {k: config_value(r[k]) for k in spots.columns if k not in SWEET_SPOT_COLUMNS}
        per_student.append(plain({k: r[k] for k in SWEET_SPOT_COLUMNS} | {
            "other_config": {k: v for k, v in other.items() if v is not None},
            "kd_gain": {m: {k: g[m][k] for k in ("diff", "ci_low", "ci_high", "confidence", "test", "p_value",
                                                  "n_kd", "n_base", "kd_mean", "base_mean", "verdict")}
                        for m in ("val_acc", "test_acc") if m in g}}))
    cells = confirmed_cells(df, confidence)
    return {"trials": counts.get("all", {}), "trials_by_student": {k: v for k, v in counts.items() if k != "all"},
            "students": per_student, "confirmed": cells.by_student, "headline": headline_metrics(cells)}
