"""Does KD help: the best distilled config against the same student's CE-only baseline, across seeds,
with a scipy t interval and p-value."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from .configs import (Answer, as_float, baselines, best_trial, config_columns, config_token, distilled,
                      other_config, plain, std, students)


# ------------------------------------------------------------------ 4. KD gain


def _mean_ci(x: np.ndarray, confidence: float) -> tuple[float, float]:
    if len(x) < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * np.std(x, ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def _per_seed(rows: pd.DataFrame, metric: str) -> pd.Series:
    """`metric` per seed (runs of one seed averaged; a run without a seed is its own unit)."""
    seeds = pd.Series([f"run:{r}" if pd.isna(s) else float(s) for s, r in zip(rows["seed"], rows["run_id"])],
                      index=rows.index, dtype=object)
    vals = rows[metric].astype(float)
    keep = np.isfinite(vals)
    return vals[keep].groupby(seeds[keep]).mean()


def gain_statistics(kd: pd.Series, base: pd.Series, confidence: float = 0.95) -> dict:
    """Mean difference kd - base with its interval and p-value; `kd`/`base` indexed by seed.

    Paired t (scipy.stats.ttest_rel) when both sides have the same set of at least 2 seeds, else
    Welch's t (scipy.stats.ttest_ind, equal_var=False). Fewer than 2 seeds on either side: no
    interval, no p-value, verdict "not enough seeds". `p_value_welch` is Welch's p in every case.
    """
    a, b = kd.to_numpy(float), base.to_numpy(float)
    out = {"kd_mean": float(a.mean()) if len(a) else math.nan, "kd_std": std(a), "n_kd": int(len(a)),
           "base_mean": float(b.mean()) if len(b) else math.nan, "base_std": std(b), "n_base": int(len(b)),
           "confidence": float(confidence), "test": None, "ci_low": math.nan, "ci_high": math.nan,
           "p_value": math.nan, "p_value_welch": math.nan, "dof": math.nan, "arms_overlap": None,
           "kd_seeds": [plain(s) for s in kd.index], "base_seeds": [plain(s) for s in base.index]}
    out["diff"] = out["kd_mean"] - out["base_mean"]
    if len(a) < 2 or len(b) < 2:
        out["verdict"] = (f"not enough seeds ({len(a)} distilled, {len(b)} baseline; at least 2 on each "
                          "side are needed for an interval)")
        return out
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        out["verdict"] = "inconclusive (no variance across seeds on either side, so no interval)"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision note for near-identical samples
        welch = stats.ttest_ind(a, b, equal_var=False)
        out["p_value_welch"] = float(welch.pvalue)
        if set(kd.index) == set(base.index):
            common = sorted(kd.index, key=str)
            res = stats.ttest_rel(kd[common].to_numpy(float), base[common].to_numpy(float))
            out["test"] = "paired t"
        else:
            res = welch
            out["test"] = "Welch t"
        ci = res.confidence_interval(confidence)
    out["ci_low"], out["ci_high"] = float(ci.low), float(ci.high)
    out["p_value"], out["dof"] = float(res.pvalue), float(res.df)
    ka, ba = _mean_ci(a, confidence), _mean_ci(b, confidence)
    out["kd_ci"], out["base_ci"] = list(ka), list(ba)
    out["arms_overlap"] = bool(ka[0] <= ba[1] and ba[0] <= ka[1])
    pct = f"{confidence:.0%}"
    if not (np.isfinite(out["ci_low"]) and np.isfinite(out["ci_high"])):
        out["verdict"] = "inconclusive (no variance across seeds, so no interval)"
    elif out["ci_low"] > 0:
        out["verdict"] = f"gain: the {pct} interval excludes 0"
    elif out["ci_high"] < 0:
        out["verdict"] = f"loss: the {pct} interval excludes 0"
    else:
        out["verdict"] = f"inconclusive: the {pct} interval includes 0"
    if out["arms_overlap"]:
        out["verdict"] += f"; the two arms' {pct} intervals of the mean overlap"
    return out


def kd_gain(df: pd.DataFrame, confidence: float = 0.95, metrics=("val_acc", "test_acc")) -> Answer:
    """Best distilled config vs the same student's CE-only baseline, across seeds.

    The best config is the config of the student's best distilled run (`best_trial`); all its
    completed search runs (any seed; never the confirmation's) form the distilled side; the student's completed
    baseline runs of the same dataset form the other, narrowed to those trained like the best
    config (same `epochs`, then same value of each `student.*` recipe param) wherever some are.
    Statistics per metric by `gain_statistics`. `table`: one row per (student, metric);
    `by_student[...]["config"]["other_config"]`: the best config's other set values.
    """
    columns = config_columns(df)
    recipe = [c for c in columns if c == "epochs" or c.startswith("student.")]
    kd_all, base_all = distilled(df), baselines(df)
    rows, by_student = [], {}
    for student in students(kd_all):
        pool = kd_all[kd_all["student"] == student]
        best = best_trial(pool)
        kd_rows = pool[pool["config"] == best["config"]]
        base = base_all[base_all["student"] == student]
        if "dataset" in base and isinstance(best["dataset"], str):
            base = base[base["dataset"] == best["dataset"]]
        for c in recipe:
            same = base[[config_token(v) == config_token(best[c]) for v in base[c]]]
            if len(same):
                base = same
        cfg = {"teacher": best["teacher"], "teacher_stop_epoch": as_float(best["teacher_stop_epoch"]),
               "method": best["method"], "temperature": as_float(best["temperature"]), "alpha": as_float(best["alpha"]),
               "kd_stop_epoch": as_float(best["kd_stop_epoch"]), "run_id": best["run_id"]}
        by_student[student] = {"config": cfg | {"other_config": other_config(best, pool, columns)}}
        for metric in metrics:
            st = gain_statistics(_per_seed(kd_rows, metric), _per_seed(base, metric), confidence)
            if not len(base):
                st["verdict"] = "no completed CE baseline runs for this student"
            by_student[student][metric] = st
            rows.append({"student": student, "metric": metric} | cfg
                        | {k: v for k, v in st.items() if k not in ("kd_seeds", "base_seeds", "kd_ci", "base_ci")})
    cols = ["student", "metric", "teacher", "teacher_stop_epoch", "method", "temperature", "alpha", "kd_stop_epoch",
            "kd_mean", "kd_std", "n_kd", "base_mean", "base_std", "n_base", "diff", "ci_low", "ci_high",
            "confidence", "test", "p_value", "p_value_welch", "dof", "arms_overlap", "verdict", "run_id"]
    return Answer(pd.DataFrame(rows, columns=cols), plain(by_student))
