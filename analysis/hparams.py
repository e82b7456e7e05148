"""How student accuracy depends on the KD hyperparameters: the T x alpha map (seed 001 table 1) and
the importance of every searched param (fANOVA on the runs). The searched params are derived from
the runs (`analysis.configs.config_columns`), never listed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .configs import (Answer, as_float, best_trial, config_columns, config_token, distilled, plain, students,
                      varying_columns)

MIN_IMPORTANCE_TRIALS = 4


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


def _ta_pool(pool: pd.DataFrame, best: pd.Series, scope: str) -> tuple[pd.DataFrame, str]:
    """(runs, scope used) for one student: `scope` "auto" resolved to "sweet_spot" (the runs with the
    best run's teacher and stop epoch) when that checkpoint has at least 4 distinct (T, alpha) pairs,
    else "all"."""
    at_ss = pool[(pool["teacher"] == best["teacher"]) & (pool["teacher_stop_epoch"] == best["teacher_stop_epoch"])]
    n_pairs = len(at_ss[["temperature", "alpha"]].drop_duplicates())
    used = scope if scope != "auto" else ("sweet_spot" if n_pairs >= 4 else "all")
    if used not in ("sweet_spot", "all"):
        raise ValueError(f"scope: got {scope!r}; allowed: auto, sweet_spot, all")
    return (at_ss if used == "sweet_spot" else pool), used


def _ta_cells(pool: pd.DataFrame, max_levels: int, n_bins: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs with their T and alpha bins, one row per (T, alpha) cell: its bounds, n and score stats)."""
    pool = pool.copy()
    pool["T_bin"], pool["T_lo"], pool["T_hi"] = _bin(pool["temperature"], max_levels, n_bins, log=True)
    pool["alpha_bin"], pool["alpha_lo"], pool["alpha_hi"] = _bin(pool["alpha"], max_levels, n_bins, log=False)
    cells = (pool.groupby(["T_bin", "alpha_bin"], sort=False)
             .agg(T_lo=("T_lo", "first"), T_hi=("T_hi", "first"), alpha_lo=("alpha_lo", "first"),
                  alpha_hi=("alpha_hi", "first"), n=("score", "size"), mean=("score", "mean"),
                  std=("score", "std"), max=("score", "max"), test_mean=("test_acc", "mean"))
             .reset_index().sort_values(["T_lo", "alpha_lo"]).reset_index(drop=True))
    return pool, cells


def _ta_facts(pool: pd.DataFrame, cells: pd.DataFrame, best: pd.Series, used: str, top_k: int,
              flat_threshold: float) -> dict:
    """One student's `by_student` entry of `temperature_alpha_map`."""
    bc = best_trial(cells, "mean")
    scores = pool["score"].sort_values(ascending=False).to_numpy()
    k = min(top_k, len(scores))
    spread = float(scores[0] - scores[k - 1])
    at_ss = used == "sweet_spot"
    return {
        "scope": used, "teacher": best["teacher"] if at_ss else None,
        "teacher_stop_epoch": as_float(best["teacher_stop_epoch"]) if at_ss else None,
        "n_runs": int(len(pool)), "n_cells": int(len(cells)),
        "best_cell": {"temperature": bc["T_bin"], "alpha": bc["alpha_bin"], "mean": float(bc["mean"]), "n": int(bc["n"])},
        "best_run": {"temperature": as_float(best["temperature"]), "alpha": as_float(best["alpha"]),
                     "val_acc": as_float(best["score"]), "test_acc": as_float(best["test_acc"])},
        "cell_mean_range": float(cells["mean"].max() - cells["mean"].min()),
        "top_k": int(k), "top_k_spread": spread, "flat": bool(spread <= flat_threshold),
        "flat_threshold": float(flat_threshold),
        "temperature_marginal": {f"{t:g}": float(v) for t, v in pool.groupby("T_lo")["score"].mean().items()},
        "alpha_marginal": {f"{a:g}": float(v) for a, v in pool.groupby("alpha_lo")["score"].mean().items()},
    }


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
    for student in students(kd):
        pool = kd[kd["student"] == student]
        best = best_trial(pool)
        pool, used = _ta_pool(pool, best, scope)
        pool, cells = _ta_cells(pool, max_levels, n_bins)
        cells.insert(0, "student", student)
        tables.append(cells)
        by_student[student] = _ta_facts(pool, cells, best, used, top_k, flat_threshold)
    cols = ["student", "T_bin", "alpha_bin", "T_lo", "T_hi", "alpha_lo", "alpha_hi", "n", "mean", "std", "max",
            "test_mean"]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=cols)
    return Answer(table, plain(by_student))


# ------------------------------------------------------------------ 6. parameter importance


def _searched(pool: pd.DataFrame, columns: list[str]) -> dict:
    """{param: (distribution, values)} for the config `columns` that take more than one value in
    `pool`: numbers as a float range, anything else (text, or numbers mixed with "none") as
    categories. Different teachers enter as `teacher_params`, the size axis, when the sizes are
    logged and tell the teachers apart; otherwise as the categorical `teacher`."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out = {}
    for c in varying_columns(pool, columns):
        tokens = [config_token(v) for v in pool[c]]
        if c == "teacher":
            sizes = pool["teacher_params"] if "teacher_params" in pool else pd.Series(dtype=float)
            size_known = len(sizes) and pd.api.types.is_numeric_dtype(sizes) and np.isfinite(sizes).all()
            if size_known and sizes.nunique() == len(set(tokens)):
                c, tokens = "teacher_params", None
        values = pool[c]
        if tokens is None or (pd.api.types.is_numeric_dtype(values) and np.isfinite(values).all()):
            v = values.astype(float).tolist()
            out[c] = (FloatDistribution(min(v), max(v)), v)
        else:
            out[c] = (CategoricalDistribution(sorted(set(tokens))), tokens)
    return out


def param_importance(df: pd.DataFrame, seed: int = 0, min_trials: int = MIN_IMPORTANCE_TRIALS,
                     evaluator: str = "fanova") -> Answer:
    """Importance of the searched params for the final val_acc of completed distilled trials.

    The searched params are the config columns (`config_columns`) that take more than one value
    among the student's completed distilled trials (see `_searched`; kd_stop_epoch "none" = never
    switched off = epochs + 1). Per student: an in-memory Optuna study holds one trial per run,
    then `optuna.importance.get_param_importances` with `FanovaImportanceEvaluator(seed=seed)`
    (`evaluator="pedanova"`: `PedAnovaImportanceEvaluator()`). Fewer than `min_trials` trials: no
    numbers, a note says so.
    """
    import optuna

    if evaluator not in ("fanova", "pedanova"):
        raise ValueError(f"evaluator: got {evaluator!r}; allowed: fanova, pedanova")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    columns = config_columns(df)
    kd = distilled(df)
    rows, by_student = [], {}
    for student in students(kd):
        pool = kd[kd["student"] == student].copy()
        if pd.api.types.is_numeric_dtype(pool["kd_stop_epoch"]):
            never = pool["epochs"].fillna(pool["kd_stop_epoch"].max()) + 1
            pool["kd_stop_epoch"] = pool["kd_stop_epoch"].fillna(never)
        searched = _searched(pool, columns)
        params = list(searched)
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
        dists = {p: d for p, (d, _) in searched.items()}
        trials = [optuna.trial.create_trial(params={p: searched[p][1][i] for p in params}, distributions=dists,
                                            value=float(score)) for i, score in enumerate(pool["score"])]
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
        study.add_trials(trials)
        if evaluator == "fanova":
            ev = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        else:
            ev = optuna.importance.PedAnovaImportanceEvaluator()
        imp = optuna.importance.get_param_importances(study, evaluator=ev, params=params)
        info["importances"] = {p: float(v) for p, v in imp.items()}
        rows.extend({"student": student, "param": p, "importance": float(v), "n_trials": len(pool)}
                    for p, v in imp.items())
    table = pd.DataFrame(rows, columns=["student", "param", "importance", "n_trials"])
    return Answer(table, plain(by_student))
