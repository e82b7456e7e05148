"""The questions `kdx analyze` answers, as pure functions of the trials frame (`runs.load_trials`).

Rules shared by every function (they are written into the report's method notes too):

- Only trials with status `completed` enter comparisons. The others are counted and listed by
  `status_counts`.
- The score of a trial is its final `val_acc` (value at its last logged epoch). Every choice
  ("best run", "best teacher", "best stop epoch", "best config") is made on that score alone;
  `test_acc` is reported beside it, never used to choose.
- A *baseline* run is a CE-only student: kind `baseline`, or teacher "none" with method `ce`.
  A *distilled* run is a completed run with a teacher. Teacher-free runs with another method are
  neither and are left out.
- A *config* is a trial's params without its seed and without the derived parameter counts:
  dataset, student, teacher, teacher stop epoch, teacher epochs, method, T, alpha, KD stop epoch,
  epochs. Runs of one config with different seeds (a search run plus `kdx confirm` re-runs) are
  grouped: the best run picks the config, and the config's seeds give the mean, std and the
  KD-gain statistics.
- Every selection picks the single best run by score (the winner's-curse bias of a max over many
  configs is why `val_acc_mean` over the config's seeds, and the KD gain across seeds, sit beside it).

Each question returns an `Answer`: `table` (a DataFrame), `by_student` (plain Python values
only: floats, ints, strings, bools, None, lists, dicts; NaN marks a missing number) and
`details` (an optional second DataFrame).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from explorer.tracking import COMPLETED, EPOCH_METRICS, KIND_BASELINE, NO_TEACHER, STATUSES

CONFIG_COLUMNS = ("dataset", "student", "teacher", "teacher_stop_epoch", "teacher_epochs", "method",
                  "temperature", "alpha", "kd_stop_epoch", "epochs")
SEARCHED_PARAMS = ("temperature", "alpha", "teacher_params", "teacher_stop_epoch", "kd_stop_epoch")
MIN_IMPORTANCE_TRIALS = 4


@dataclass
class Answer:
    """One question's answer: a table, per-student findings in plain Python, optional details."""

    table: pd.DataFrame
    by_student: dict = field(default_factory=dict)
    details: pd.DataFrame | None = None


# ------------------------------------------------------------------ helpers


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


def _f(value) -> float:
    """A plain float; NaN for None/NA."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


def _no_teacher(s: pd.Series) -> pd.Series:
    return s.isna() | (s.astype(str).str.lower() == NO_TEACHER)


def is_baseline(df: pd.DataFrame) -> pd.Series:
    """CE-only student runs: kind `baseline`, or teacher "none" with method `ce`."""
    return (df["kind"] == KIND_BASELINE) | (_no_teacher(df["teacher"]) & (df["method"] == "ce"))


def _numeric(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with the numeric columns as floats (a frame read back from CSV, or an empty one, may
    hold them as objects)."""
    from .runs import NUMERIC_PARAMS

    out = df.copy()
    for c in NUMERIC_PARAMS + EPOCH_METRICS + ("best_val_acc", "best_epoch", "epochs_done"):
        if c in out.columns:
            out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    return out


def completed(df: pd.DataFrame) -> pd.DataFrame:
    """Completed trials with a finite score (final val_acc), with `score` and `config` columns."""
    df = _numeric(df)
    out = df[(df["status"] == COMPLETED) & np.isfinite(df["val_acc"])].copy()
    out["score"] = out["val_acc"].astype(float)
    out["config"] = [_config_key(r) for r in out[list(CONFIG_COLUMNS)].itertuples(index=False)]
    return out


def distilled(df: pd.DataFrame) -> pd.DataFrame:
    """Completed runs with a teacher."""
    c = completed(df)
    return c[~is_baseline(c) & ~_no_teacher(c["teacher"])]


def baselines(df: pd.DataFrame) -> pd.DataFrame:
    """Completed CE-only baseline runs."""
    c = completed(df)
    return c[is_baseline(c)]


def _config_key(values) -> str:
    parts = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            parts.append("none")
        elif isinstance(v, (float, np.floating)):
            parts.append(repr(float(v)))
        else:
            parts.append(str(v))
    return "|".join(parts)


def _best_row(group: pd.DataFrame) -> pd.Series:
    """The run with the highest score (first logged among ties)."""
    return group.loc[group["score"].idxmax()]


def _std(x) -> float:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.std(x, ddof=1)) if len(x) >= 2 else math.nan


def _at_best(group: pd.DataFrame, pool: pd.DataFrame) -> dict:
    """The best run of `group` and the statistics of its config's runs in `pool`."""
    best = _best_row(group)
    same = pool[pool["config"] == best["config"]]
    if len(same) >= 2:
        err, err_source = _std(same["score"]), "std over seeds of the best config"
    elif len(group) >= 2:
        top = group["score"].nlargest(3)
        err, err_source = _std(top), f"std of the top {len(top)} configs"
    else:
        err, err_source = math.nan, "none (one run)"
    return {
        "run_id": best["run_id"], "run_name": best.get("run_name"),
        "teacher_stop_epoch": _f(best["teacher_stop_epoch"]), "teacher_epochs": _f(best["teacher_epochs"]),
        "method": best["method"], "temperature": _f(best["temperature"]), "alpha": _f(best["alpha"]),
        "kd_stop_epoch": _f(best["kd_stop_epoch"]),
        "val_acc": _f(best["score"]), "test_acc": _f(best["test_acc"]),
        "val_acc_mean": float(same["score"].mean()), "val_acc_std": _std(same["score"]),
        "test_acc_mean": float(same["test_acc"].mean()), "n_seeds": int(len(same)),
        "err": err, "err_source": err_source, "n_runs": int(len(group)),
        "teacher_val_acc": _f(best["teacher_val_acc"]),
        "kd_agreement": float(same["kd_agreement"].mean()),
        "train_kd": float(_kd_loss_values(same).mean()),
    }


def _kd_loss_values(rows: pd.DataFrame) -> pd.Series:
    """Final train_kd, NaN where KD was switched off before the last epoch (the term is 0 there)."""
    off = np.isfinite(rows["kd_stop_epoch"]) & (rows["kd_stop_epoch"] <= rows["epochs_done"])
    return rows["train_kd"].where(~off)


def _first(values: pd.Series) -> float:
    v = values.dropna()
    return float(v.iloc[0]) if len(v) else math.nan


def _teacher_order(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(["student", "teacher_params", "teacher"], na_position="last").reset_index(drop=True)


def _students(df: pd.DataFrame) -> list[str]:
    return sorted(df["student"].dropna().unique().tolist())


# ------------------------------------------------------------------ 0. run statuses


def status_counts(df: pd.DataFrame) -> Answer:
    """Trials per student and status; `details` lists every trial that is not completed."""
    statuses = list(STATUSES) + sorted(set(df["status"].dropna()) - set(STATUSES))
    students = df["student"].fillna("?")
    table = pd.crosstab(students, df["status"]).reindex(columns=statuses, fill_value=0)
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
        rows.append({"student": student, "teacher": teacher, "teacher_params": _first(g["teacher_params"]),
                     "capacity_ratio": _first(g["capacity_ratio"]),
                     "teacher_val_acc_max": float(g["teacher_val_acc"].max())}
                    | _at_best(g, kd[kd["student"] == student]))
    cols = ["student", "teacher", "teacher_params", "capacity_ratio", "val_acc", "test_acc", "val_acc_mean",
            "val_acc_std", "test_acc_mean", "n_seeds", "err", "err_source", "n_runs", "teacher_stop_epoch",
            "temperature", "alpha", "kd_stop_epoch", "method", "teacher_val_acc", "teacher_val_acc_max", "run_id"]
    table = _teacher_order(pd.DataFrame(rows, columns=cols)) if rows else pd.DataFrame(columns=cols)
    by_student = {}
    for student in _students(table):
        t = table[table["student"] == student].reset_index(drop=True)
        values = t["val_acc"].tolist()
        shape, peak = _shape(values)
        names = t["teacher"].tolist()
        acc = t["teacher_val_acc_max"]
        most_acc = names[int(np.nanargmax(acc.to_numpy(float)))] if np.isfinite(acc).any() else None
        b = base[base["student"] == student]
        by_student[student] = {
            "sweet_spot_teacher": names[peak], "sweet_spot_params": _f(t.loc[peak, "teacher_params"]),
            "sweet_spot_capacity_ratio": _f(t.loc[peak, "capacity_ratio"]), "sweet_spot_val_acc": values[peak],
            "sweet_spot_test_acc": _f(t.loc[peak, "test_acc"]),
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
    d = df[(df["student"] == student) & (df["status"] != COMPLETED) & ~_no_teacher(df["teacher"])
           & ~df["teacher"].isin(on_curve) & np.isfinite(df["val_acc"])]
    out = []
    for teacher, g in d.groupby("teacher"):
        best = g.loc[g["val_acc"].idxmax()]
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
        best = _at_best(g, kd[kd["student"] == student])
        te = best["teacher_epochs"]
        rows.append({"student": student, "teacher": teacher, "teacher_params": _first(g["teacher_params"]),
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
    for student in _students(table):
        t = table[table["student"] == student]
        best_stop = {teacher: float(g.loc[g["val_acc"].idxmax(), "teacher_stop_epoch"])
                     for teacher, g in t.groupby("teacher", sort=False)}
        full, early = t[t["full"] == True], t[t["full"] == False]  # noqa: E712 (None = unknown)

        def cell(r):
            return {"teacher": r["teacher"], "teacher_stop_epoch": r["teacher_stop_epoch"],
                    "teacher_epochs": r["teacher_epochs"], "teacher_params": r["teacher_params"],
                    "val_acc": r["val_acc"], "test_acc": r["test_acc"]}

        best_full = cell(full.loc[full["val_acc"].idxmax()]) if len(full) else None
        best_early = cell(early.loc[early["val_acc"].idxmax()]) if len(early) else None
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


# ------------------------------------------------------------------ 3. temperature and alpha


def _bin(values: pd.Series, max_levels: int, n_bins: int, log: bool):
    """(label, lo, hi) per value: the values themselves when there are few, else equal-width bins
    (geometric when `log` and the range spans a factor of 4 or more)."""
    v = values.to_numpy(float)
    levels = np.unique(v[np.isfinite(v)])
    if len(levels) <= max_levels:
        idx = np.searchsorted(levels, v)
        return [f"{levels[i]:g}" for i in idx], levels[idx], levels[idx]
    lo, hi = levels[0], levels[-1]
    if log and lo > 0 and hi / lo >= 4:
        edges = np.geomspace(lo, hi, n_bins + 1)
    else:
        edges = np.linspace(lo, hi, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, n_bins - 1)
    labels = [f"[{edges[i]:.3g}, {edges[i + 1]:.3g}{']' if i == n_bins - 1 else ')'}" for i in idx]
    return labels, edges[idx], edges[idx + 1]


def temperature_alpha_map(df: pd.DataFrame, scope: str = "auto", max_levels: int = 6, n_bins: int = 5,
                          top_k: int = 5, flat_threshold: float = 0.01) -> Answer:
    """Mean student val_acc over (T, alpha) cells (seed 001 table 1).

    `scope`: "sweet_spot" uses only runs with the sweet-spot teacher checkpoint (teacher and stop
    epoch of the best run), so T and alpha are not confounded with the teacher; "all" pools every
    distilled run; "auto" takes "sweet_spot" when that checkpoint has at least 4 distinct (T, alpha)
    pairs, else "all". Values with at most `max_levels` distinct levels are used as they are (a
    grid); otherwise they are cut into `n_bins` bins (geometric for T).

    `by_student`: the scope used, the best cell, the best run's T and alpha, the range of cell
    means, the spread of the top-k runs' scores, `flat` (top-k spread <= `flat_threshold`) and
    the marginal mean per T level and per alpha level.
    """
    kd = distilled(df)
    kd = kd[np.isfinite(kd["temperature"]) & np.isfinite(kd["alpha"])]
    tables, by_student = [], {}
    for student in _students(kd):
        pool = kd[kd["student"] == student]
        best = _best_row(pool)
        at_ss = pool[(pool["teacher"] == best["teacher"]) & (pool["teacher_stop_epoch"] == best["teacher_stop_epoch"])]
        n_pairs = len(at_ss[["temperature", "alpha"]].drop_duplicates())
        used = scope if scope != "auto" else ("sweet_spot" if n_pairs >= 4 else "all")
        if used == "sweet_spot":
            pool = at_ss
        elif used != "all":
            raise ValueError(f"scope: got {scope!r}; allowed: auto, sweet_spot, all")
        pool = pool.copy()
        pool["T_bin"], pool["T_lo"], pool["T_hi"] = _bin(pool["temperature"], max_levels, n_bins, log=True)
        pool["alpha_bin"], pool["alpha_lo"], pool["alpha_hi"] = _bin(pool["alpha"], max_levels, n_bins, log=False)
        cells = (pool.groupby(["T_bin", "alpha_bin"], sort=False)
                 .agg(T_lo=("T_lo", "first"), T_hi=("T_hi", "first"), alpha_lo=("alpha_lo", "first"),
                      alpha_hi=("alpha_hi", "first"), n=("score", "size"), mean=("score", "mean"),
                      std=("score", "std"), max=("score", "max"), test_mean=("test_acc", "mean"))
                 .reset_index().sort_values(["T_lo", "alpha_lo"]).reset_index(drop=True))
        cells.insert(0, "student", student)
        tables.append(cells)
        bc = cells.loc[cells["mean"].idxmax()]
        scores = pool["score"].sort_values(ascending=False).to_numpy()
        k = min(top_k, len(scores))
        t_marg = pool.groupby("T_lo")["score"].mean()
        a_marg = pool.groupby("alpha_lo")["score"].mean()
        spread = float(scores[0] - scores[k - 1])
        by_student[student] = {
            "scope": used, "teacher": best["teacher"] if used == "sweet_spot" else None,
            "teacher_stop_epoch": _f(best["teacher_stop_epoch"]) if used == "sweet_spot" else None,
            "n_runs": int(len(pool)), "n_cells": int(len(cells)),
            "best_cell": {"temperature": bc["T_bin"], "alpha": bc["alpha_bin"], "mean": float(bc["mean"]),
                          "n": int(bc["n"])},
            "best_run": {"temperature": _f(best["temperature"]), "alpha": _f(best["alpha"]),
                         "val_acc": _f(best["score"]), "test_acc": _f(best["test_acc"])},
            "cell_mean_range": float(cells["mean"].max() - cells["mean"].min()),
            "top_k": int(k), "top_k_spread": spread, "flat": bool(spread <= flat_threshold),
            "flat_threshold": float(flat_threshold),
            "temperature_marginal": {f"{t:g}": float(v) for t, v in t_marg.items()},
            "alpha_marginal": {f"{a:g}": float(v) for a, v in a_marg.items()},
        }
    cols = ["student", "T_bin", "alpha_bin", "T_lo", "T_hi", "alpha_lo", "alpha_hi", "n", "mean", "std", "max",
            "test_mean"]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=cols)
    return Answer(table, plain(by_student))


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
    out = {"kd_mean": float(a.mean()) if len(a) else math.nan, "kd_std": _std(a), "n_kd": int(len(a)),
           "base_mean": float(b.mean()) if len(b) else math.nan, "base_std": _std(b), "n_base": int(len(b)),
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

    The best config is the config of the student's best distilled run (by val_acc); all its
    completed runs (search and confirm, any seed) form the distilled side; the student's completed
    baseline runs form the other (those with the same `epochs` as the best config when there are
    any). Statistics per metric by `gain_statistics`. `table`: one row per (student, metric).
    """
    kd_all, base_all = distilled(df), baselines(df)
    rows, by_student = [], {}
    for student in _students(kd_all):
        pool = kd_all[kd_all["student"] == student]
        best = _best_row(pool)
        kd_rows = pool[pool["config"] == best["config"]]
        base = base_all[base_all["student"] == student]
        if "dataset" in base and isinstance(best["dataset"], str):
            base = base[base["dataset"] == best["dataset"]]
        same_epochs = base[base["epochs"] == best["epochs"]]
        if len(same_epochs):
            base = same_epochs
        cfg = {"teacher": best["teacher"], "teacher_stop_epoch": _f(best["teacher_stop_epoch"]),
               "method": best["method"], "temperature": _f(best["temperature"]), "alpha": _f(best["alpha"]),
               "kd_stop_epoch": _f(best["kd_stop_epoch"]), "run_id": best["run_id"]}
        by_student[student] = {"config": cfg}
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
        best = _at_best(g, kd[kd["student"] == student])
        rows.append({"student": student, "teacher": teacher, "teacher_params": _first(g["teacher_params"]),
                     "capacity_ratio": _first(g["capacity_ratio"]), "val_acc": best["val_acc"],
                     "kd_agreement": best["kd_agreement"], "train_kd": best["train_kd"],
                     "kd_agreement_all": float(g["kd_agreement"].mean()),
                     "train_kd_all": float(_kd_loss_values(g).mean()), "n_runs": int(len(g)),
                     "n_seeds": best["n_seeds"]})
    cols = ["student", "teacher", "teacher_params", "capacity_ratio", "val_acc", "kd_agreement", "train_kd",
            "kd_agreement_all", "train_kd_all", "n_runs", "n_seeds"]
    table = _teacher_order(pd.DataFrame(rows, columns=cols)) if rows else pd.DataFrame(columns=cols)
    by_student = {}
    for student in _students(table):
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


# ------------------------------------------------------------------ 6. parameter importance


def param_importance(df: pd.DataFrame, seed: int = 0, min_trials: int = MIN_IMPORTANCE_TRIALS,
                     evaluator: str = "fanova") -> Answer:
    """Importance of the searched params for the final val_acc of completed distilled trials.

    Per student: an in-memory Optuna study holds one trial per run (params: those of
    `SEARCHED_PARAMS` that take more than one value, as float distributions over their observed
    range; kd_stop_epoch "none" = never switched off = epochs + 1), then
    `optuna.importance.get_param_importances` with `FanovaImportanceEvaluator(seed=seed)`
    (`evaluator="pedanova"`: `PedAnovaImportanceEvaluator()`). Fewer than `min_trials` trials: no
    numbers, a note says so.
    """
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kd = distilled(df)
    rows, by_student = [], {}
    for student in _students(kd):
        pool = kd[kd["student"] == student].copy()
        never = pool["epochs"].fillna(pool["kd_stop_epoch"].max()) + 1
        pool["kd_stop_epoch"] = pool["kd_stop_epoch"].fillna(never)
        params = [p for p in SEARCHED_PARAMS
                  if pool[p].notna().all() and pool[p].nunique() > 1]
        info = {"n_trials": int(len(pool)), "params": params, "importances": {}, "note": None,
                "evaluator": f"{evaluator} (seed {seed})" if evaluator == "fanova" else evaluator}
        by_student[student] = info
        if len(pool) < min_trials:
            info["note"] = (f"not enough completed trials for parameter importance ({len(pool)} < {min_trials})")
            continue
        if not params:
            info["note"] = "no searched parameter took more than one value"
            continue
        if pool["score"].nunique() < 2:
            info["note"] = "val_acc is the same in every trial; nothing to attribute"
            continue
        dists = {p: FloatDistribution(float(pool[p].min()), float(pool[p].max())) for p in params}
        trials = [optuna.trial.create_trial(params={p: float(r[p]) for p in params}, distributions=dists,
                                            value=float(r["score"])) for _, r in pool.iterrows()]
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
        study.add_trials(trials)
        if evaluator == "fanova":
            ev = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        elif evaluator == "pedanova":
            ev = optuna.importance.PedAnovaImportanceEvaluator()
        else:
            raise ValueError(f"evaluator: got {evaluator!r}; allowed: fanova, pedanova")
        imp = optuna.importance.get_param_importances(study, evaluator=ev, params=params)
        info["importances"] = {p: float(v) for p, v in imp.items()}
        rows.extend({"student": student, "param": p, "importance": float(v), "n_trials": len(pool)}
                    for p, v in imp.items())
    table = pd.DataFrame(rows, columns=["student", "param", "importance", "n_trials"])
    return Answer(table, plain(by_student))


# ------------------------------------------------------------------ sweet spot & summary


def sweet_spot(df: pd.DataFrame) -> pd.DataFrame:
    """Per student, the best distilled run (by final val_acc) and its config: teacher, stop epoch, T,
    alpha, KD stop epoch, val and test acc of that run, their means over the config's seeds, and the
    CE baseline's means."""
    kd, base = distilled(df), baselines(df)
    rows = []
    for student in _students(kd):
        pool = kd[kd["student"] == student]
        best = _at_best(pool, pool)
        r = _best_row(pool)
        b = base[base["student"] == student]
        rows.append({"student": student, "teacher": r["teacher"], "teacher_params": _f(r["teacher_params"]),
                     "capacity_ratio": _f(r["capacity_ratio"])}
                    | {k: best[k] for k in ("teacher_stop_epoch", "teacher_epochs", "method", "temperature", "alpha",
                                            "kd_stop_epoch", "val_acc", "test_acc", "val_acc_mean", "val_acc_std",
                                            "test_acc_mean", "n_seeds", "run_id", "run_name")}
                    | {"baseline_val_acc": float(b["score"].mean()) if len(b) else math.nan,
                       "baseline_test_acc": float(b["test_acc"].mean()) if len(b) else math.nan,
                       "n_baseline": int(len(b))})
    cols = ["student", "teacher", "teacher_params", "capacity_ratio", "teacher_stop_epoch", "teacher_epochs",
            "method", "temperature", "alpha", "kd_stop_epoch", "val_acc", "test_acc", "val_acc_mean", "val_acc_std",
            "test_acc_mean", "n_seeds", "baseline_val_acc", "baseline_test_acc", "n_baseline", "run_id", "run_name"]
    return pd.DataFrame(rows, columns=cols)


def summary(df: pd.DataFrame, confidence: float = 0.95) -> dict:
    """Plain-Python summary: trial counts, and per student the sweet spot and the KD gain."""
    spots = sweet_spot(df)
    gain = kd_gain(df, confidence).by_student
    counts = status_counts(df).by_student
    students = []
    for _, r in spots.iterrows():
        g = gain.get(r["student"], {})
        students.append(plain({k: r[k] for k in spots.columns} | {
            "kd_gain": {m: {k: g[m][k] for k in ("diff", "ci_low", "ci_high", "confidence", "test", "p_value",
                                                  "n_kd", "n_base", "kd_mean", "base_mean", "verdict")}
                        for m in ("val_acc", "test_acc") if m in g}}))
    return {"trials": counts.get("all", {}), "trials_by_student": {k: v for k, v in counts.items() if k != "all"},
            "students": students}
