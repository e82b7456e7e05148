"""Which teacher: student accuracy vs teacher size (the capacity gap), vs the teacher's stop epoch,
and what the student's agreement with the teacher says about it. Pure functions of the trials
frame; the shared rules (which trials count, configs, the best trial) are `analysis.configs`."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from explorer.tracking import COMPLETED

from .configs import (Answer, no_teacher, as_float, at_best, baselines, best_trial, distilled, first, kd_loss_values,
                      plain, students, teacher_order)

# ------------------------------------------------------------------ 1. capacity gap


def _shape(values: list[float]) -> tuple[str, int]:
    if len(values) == 1:
        return "single teacher", 0
    peak = int(np.argmax(values))
    if max(values) == min(values):
        return "flat", peak
    if 0 < peak < len(values) - 1 and values[-1] < values[peak] and values[0] < values[peak]:
        return "rises then falls", peak
    if peak == len(values) - 1:
        return "rises", peak
    if peak == 0:
        return "falls", peak
    return "rises then falls", peak


def capacity_curve(df: pd.DataFrame) -> Answer:
    """Student val_acc vs teacher size, at each teacher architecture's best run (seed 004 5.1).

    `table`: one row per (student, teacher), sorted by teacher_params. `by_student`: the sweet-spot
    teacher, the curve's shape ("rises then falls", "rises", "falls", "flat", "single teacher"),
    where it peaks and falls, the most accurate teacher (max teacher_val_acc over its runs) and
    whether it is also the best teacher, and the CE baseline's mean val_acc for reference.
    """
    kd, base = distilled(df), baselines(df)
    rows = []
    for (student, teacher), g in kd.groupby(["student", "teacher"]):
        rows.append({"student": student, "teacher": teacher, "teacher_params": first(g["teacher_params"]),
                     "capacity_ratio": first(g["capacity_ratio"]),
                     "teacher_val_acc_max": float(g["teacher_val_acc"].max())}
                    | at_best(g, kd[kd["student"] == student]))
    cols = ["student", "teacher", "teacher_params", "capacity_ratio", "val_acc", "test_acc", "val_acc_mean",
            "val_acc_std", "test_acc_mean", "n_seeds", "err", "err_source", "n_runs", "teacher_stop_epoch",
            "temperature", "alpha", "kd_stop_epoch", "method", "teacher_val_acc", "teacher_val_acc_max", "run_id"]
    table = teacher_order(pd.DataFrame(rows, columns=cols)) if rows else pd.DataFrame(columns=cols)
    by_student = {}
    for student in students(table):
        t = table[table["student"] == student].reset_index(drop=True)
        values = t["val_acc"].tolist()
        shape, peak = _shape(values)
        names = t["teacher"].tolist()
        acc = t["teacher_val_acc_max"]
        most_acc = names[int(np.nanargmax(acc.to_numpy(float)))] if np.isfinite(acc).any() else None
        b = base[base["student"] == student]
        by_student[student] = {
            "sweet_spot_teacher": names[peak], "sweet_spot_params": as_float(t.loc[peak, "teacher_params"]),
            "sweet_spot_capacity_ratio": as_float(t.loc[peak, "capacity_ratio"]), "sweet_spot_val_acc": values[peak],
            "sweet_spot_test_acc": as_float(t.loc[peak, "test_acc"]),
            "shape": shape, "teachers": names, "val_acc": values,
            "sizes_known": bool(t["teacher_params"].notna().all()),
            "rise_to_peak": values[peak] - min(values[: peak + 1]),
            "falls_after": names[peak + 1] if peak + 1 < len(names) and values[peak + 1] < values[peak] else None,
            "fall_from_peak": values[peak] - min(values[peak:]),
            "most_accurate_teacher": most_acc,
            "best_is_most_accurate": (most_acc == names[peak]) if most_acc is not None else None,
            "baseline_val_acc": float(b["score"].mean()) if len(b) else math.nan,
            "n_baseline": int(len(b)),
            "teachers_not_completed": _teachers_not_completed(df, student, names),
        }
    return Answer(table, plain(by_student))


def _teachers_not_completed(df: pd.DataFrame, student: str, on_curve: list[str]) -> list[dict]:
    """Teachers of `student` with trials but none completed (e.g. all pruned by ASHA): not on the
    curve, but the user should know they were tried and how far their students got."""
    d = df[(df["student"] == student) & (df["status"] != COMPLETED) & ~no_teacher(df["teacher"])
           & ~df["teacher"].isin(on_curve) & np.isfinite(df["val_acc"])]
    out = []
    for teacher, g in d.groupby("teacher"):
        best = best_trial(g, "val_acc")
        out.append({"teacher": teacher, "n_trials": int(len(g)),
                    "statuses": {k: int(v) for k, v in g["status"].value_counts().items()},
                    "best_val_acc": float(best["val_acc"]), "at_epoch": int(best["epochs_done"])})
    return out


# ------------------------------------------------------------------ 2. teacher stop epoch


def stop_epoch_table(df: pd.DataFrame) -> Answer:
    """Student val_acc over teacher x teacher_stop_epoch, each cell at its best run (seed 004 5.5).

    A checkpoint is *full* when teacher_stop_epoch == teacher_epochs (None when teacher_epochs was
    not logged; such cells count as neither full nor early-stopped). `by_student`: the best stop
    epoch per teacher, the best fully trained teacher, the best early-stopped checkpoint, whether
    any early-stopped checkpoint beats the best fully trained teacher, which ones do, and whether
    the largest teacher's best early-stopped checkpoint does.
    """
    kd = distilled(df)
    kd = kd[np.isfinite(kd["teacher_stop_epoch"])]
    rows = []
    for (student, teacher, stop), g in kd.groupby(["student", "teacher", "teacher_stop_epoch"]):
        best = at_best(g, kd[kd["student"] == student])
        te = best["teacher_epochs"]
        rows.append({"student": student, "teacher": teacher, "teacher_params": first(g["teacher_params"]),
                     "teacher_stop_epoch": float(stop), "teacher_epochs": te,
                     "full": bool(float(stop) == te) if np.isfinite(te) else None}
                    | {k: best[k] for k in ("val_acc", "test_acc", "val_acc_mean", "val_acc_std", "n_seeds",
                                            "n_runs", "temperature", "alpha", "kd_stop_epoch",
                                            "teacher_val_acc", "run_id")})
    cols = ["student", "teacher", "teacher_params", "teacher_stop_epoch", "teacher_epochs", "full", "val_acc",
            "test_acc", "val_acc_mean", "val_acc_std", "n_seeds", "n_runs", "temperature", "alpha",
            "kd_stop_epoch", "teacher_val_acc", "run_id"]
    table = pd.DataFrame(rows, columns=cols)
    if len(table):
        table = table.sort_values(["student", "teacher_params", "teacher", "teacher_stop_epoch"],
                                  na_position="last").reset_index(drop=True)
    by_student = {}
    for student in students(table):
        t = table[table["student"] == student]
        best_stop = {teacher: float(best_trial(g, "val_acc")["teacher_stop_epoch"])
                     for teacher, g in t.groupby("teacher", sort=False)}
        full, early = t[t["full"] == True], t[t["full"] == False]  # noqa: E712 (None = unknown)

        def cell(r):
            return {"teacher": r["teacher"], "teacher_stop_epoch": r["teacher_stop_epoch"],
                    "teacher_epochs": r["teacher_epochs"], "teacher_params": r["teacher_params"],
                    "val_acc": r["val_acc"], "test_acc": r["test_acc"]}

        best_full = cell(best_trial(full, "val_acc")) if len(full) else None
        best_early = cell(best_trial(early, "val_acc")) if len(early) else None
        winners, beats, largest_beats = [], None, None
        sizes = t.groupby("teacher", sort=False)["teacher_params"].first()
        largest = sizes.idxmax() if sizes.notna().any() else None
        if best_full is not None and best_early is not None:
            w = early[early["val_acc"] > best_full["val_acc"]].sort_values("val_acc", ascending=False)
            winners = [cell(r) for _, r in w.iterrows()]
            beats = bool(len(winners))
            le = early[early["teacher"] == largest]
            largest_beats = bool(le["val_acc"].max() > best_full["val_acc"]) if len(le) else None
        by_student[student] = {
            "best_stop_by_teacher": best_stop, "best_full": best_full, "best_early": best_early,
            "early_beats_best_full": beats, "early_winners": winners,
            "largest_teacher": largest, "largest_teacher_early_beats_best_full": largest_beats,
        }
    return Answer(table, plain(by_student))


# ------------------------------------------------------------------ 5. diagnostics


def _spearman(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan
    return float(stats.spearmanr(x[ok], y[ok]).statistic)


def diagnostics(df: pd.DataFrame) -> Answer:
    """KD agreement (final-epoch val agreement with the teacher) and final KD loss vs teacher size
    (seed 004 5.2): at each teacher's best config (mean over its seeds) and over all its runs.

    The KD loss of a run whose KD term was switched off (kd_stop_epoch <= epochs done) is 0 at the
    final epoch and is left out. `by_student`: Spearman correlations with teacher_params (NaN
    with fewer than 3 teachers) and the teacher with the lowest agreement.
    """
    kd = distilled(df)
    rows = []
    for (student, teacher), g in kd.groupby(["student", "teacher"]):
        best = at_best(g, kd[kd["student"] == student])
        rows.append({"student": student, "teacher": teacher, "teacher_params": first(g["teacher_params"]),
                     "capacity_ratio": first(g["capacity_ratio"]), "val_acc": best["val_acc"],
                     "kd_agreement": best["kd_agreement"], "train_kd": best["train_kd"],
                     "kd_agreement_all": float(g["kd_agreement"].mean()),
                     "train_kd_all": float(kd_loss_values(g).mean()), "n_runs": int(len(g)),
                     "n_seeds": best["n_seeds"]})
    cols = ["student", "teacher", "teacher_params", "capacity_ratio", "val_acc", "kd_agreement", "train_kd",
            "kd_agreement_all", "train_kd_all", "n_runs", "n_seeds"]
    table = teacher_order(pd.DataFrame(rows, columns=cols)) if rows else pd.DataFrame(columns=cols)
    by_student = {}
    for student in students(table):
        t = table[table["student"] == student]
        agree = t["kd_agreement"].to_numpy(float)
        lowest = t["teacher"].iloc[int(np.nanargmin(agree))] if np.isfinite(agree).any() else None
        by_student[student] = {
            "spearman_agreement_vs_params": _spearman(t["teacher_params"], t["kd_agreement"]),
            "spearman_kd_loss_vs_params": _spearman(t["teacher_params"], t["train_kd"]),
            "lowest_agreement_teacher": lowest,
            "largest_teacher": t["teacher"].iloc[int(np.nanargmax(t["teacher_params"].to_numpy(float)))]
            if t["teacher_params"].notna().any() else None,
        }
    return Answer(table, plain(by_student))
