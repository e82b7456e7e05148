"""The confirmed answers (issue 10): every reported point is a mean over the confirmation stage's
fresh seeds, paired with the CE baseline trained with the same seeds.

- A *cell* is one value of each cell param (`CELL_PARAMS`: the student, the teacher and its stop
  epoch by default; a spec's `confirm.cells` may add more, logged on the parent run). Its point is
  its confirmed config (the search's best in that cell, by validation) over its confirm seeds.
- A seed is counted once: runs of one config with one seed (a trial retried and logged twice) give
  one value, the first logged.
- Intervals are Student-t intervals over seeds (scipy). Differences between cells, and the KD gain
  over CE, are paired by seed (`scipy.stats.ttest_rel`).
- The sweet spot is every cell not significantly worse than the best on validation (the best by
  mean val_acc; one-sided paired t tests of best - cell, Holm-corrected for the number of
  comparisons). Selection uses validation only; test means are reported beside it. "The cells
  cannot be separated" is a valid answer, and is the answer whenever no cell is significantly worse.
- Cells without a confirmed point say why: their search trials all diverged or failed, or they
  were never tried, or the confirmation has not run yet (`kdx confirm` confirms a cell whose
  trials were all pruned from its best pruned trial, analysis.configs.cell_configs).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from explorer.spec.sections import CELL_LISTS as CELL_PARAMS
from explorer.tracking import KIND_CONFIRM, KIND_SEARCH

from .configs import Answer, completed, config_token, config_value, is_baseline, no_teacher, plain, students
from .gain import gain_statistics
from .runs import load_trials, typed

CONFIG_SHOWN = ("method", "temperature", "alpha", "kd_stop_epoch")


def cell_params(df: pd.DataFrame) -> list[str]:
    """The params that key a cell: the parent run's `confirm_cells` when it logged them, else
    `CELL_PARAMS`, with the teacher params first (the student is always a group of its own)."""
    logged = (df.attrs.get("parent_params") or {}).get("confirm_cells")
    names = [c for c in logged.split(",") if c] if logged else list(CELL_PARAMS)
    return [c for c in dict.fromkeys([*CELL_PARAMS, *names]) if c != "student" and c in df.columns]


def per_seed(rows: pd.DataFrame, metric: str) -> pd.Series:
    """`metric` indexed by seed, each seed once (its first logged run)."""
    rows = rows[np.isfinite(rows[metric].astype(float)) & rows["seed"].notna()]
    return rows.drop_duplicates("seed", keep="first").set_index("seed")[metric].astype(float).sort_index()


def mean_interval(values: pd.Series, confidence: float) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean; NaN ends with fewer than 2 values."""
    x = values.to_numpy(float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    if len(x) < 2:
        return float(x[0]), math.nan, math.nan
    lo, hi = stats.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=stats.sem(x)) if np.ptp(x) else (x[0], x[0])
    return float(x.mean()), float(lo), float(hi)


def paired_difference(a: pd.Series, b: pd.Series, confidence: float) -> dict:
    """a - b over their common seeds: mean, interval, one-sided p of a > b, and n."""
    common = a.index.intersection(b.index)
    d = (a[common] - b[common]).to_numpy(float)
    out = {"diff": float(d.mean()) if len(d) else math.nan, "low": math.nan, "high": math.nan,
           "p_greater": math.nan, "n": int(len(d))}
    if len(d) >= 2:
        if np.ptp(d) == 0:
            out["low"] = out["high"] = out["diff"]
            out["p_greater"] = 0.0 if d[0] > 0 else 1.0
        else:
            res = stats.ttest_1samp(d, 0.0, alternative="greater")
            ci = stats.ttest_1samp(d, 0.0).confidence_interval(confidence)
            out.update(low=float(ci.low), high=float(ci.high), p_greater=float(res.pvalue))
    return out


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of `p_values` (NaN stays NaN, and counts as a comparison)."""
    p = np.asarray(p_values, float)
    m = len(p)
    order = np.argsort(np.where(np.isfinite(p), p, np.inf))
    adjusted, running = np.full(m, np.nan), 0.0
    for rank, i in enumerate(order):
        if not np.isfinite(p[i]):
            continue
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def _baseline_for(base: pd.DataFrame, config: pd.Series) -> pd.DataFrame:
    """The confirmed CE runs trained like `config`: same student recipe values (`student.*`, epochs)."""
    recipe = [c for c in base.columns if c.startswith("student.") or c == "epochs"]
    for c in recipe:
        same = base[[config_token(v) == config_token(config[c]) for v in base[c]]]
        if len(same):
            base = same
    return base


def _cell_points(kd: pd.DataFrame, cells: list[str], confidence: float) -> list[dict]:
    """One row per confirmed cell: its config (the one with the most seeds; ties to the best mean
    val_acc) and its per-seed values."""
    rows = []
    # sorted by the cells' values, not by the order the runs came back in: the answer reads the same every time
    for key, group in kd.groupby([kd[c].map(config_token) for c in cells], sort=True):
        by_config = [(len(per_seed(g, "val_acc")), per_seed(g, "val_acc").mean(), g) for _, g in group.groupby("config")]
        _, _, g = max(by_config, key=lambda t: (t[0], t[1]))
        first = g.iloc[0]
        val, test = per_seed(g, "val_acc"), per_seed(g, "test_acc")
        vm, vlo, vhi = mean_interval(val, confidence)
        tm, tlo, thi = mean_interval(test, confidence)
        rows.append({c: config_value(first[c]) for c in cells}
                    | {"teacher_params": config_value(first.get("teacher_params")),
                       "teacher_val_acc": float(first["teacher_val_acc"])}
                    | {c: config_value(first[c]) for c in CONFIG_SHOWN if c in g.columns}
                    | {"status": "confirmed", "n_seeds": int(len(val)), "val_mean": vm, "val_low": vlo, "val_high": vhi,
                       "test_mean": tm, "test_low": tlo, "test_high": thi, "_val": val, "_test": test, "_row": first})
    return rows


def _unconfirmed(df: pd.DataFrame, student: str, cells: list[str], done: set) -> list[dict]:
    """Cells of the search (and of the parent's teacher x stop grid) without a confirmed point."""
    tried = typed(df)
    tried = tried[(tried["kind"] == KIND_SEARCH) & (tried["student"] == student) & ~no_teacher(tried["teacher"])]
    rows, seen = [], set(done)
    for key, g in tried.groupby([tried[c].map(config_token) for c in cells], sort=False):
        key = key if isinstance(key, tuple) else (key,)
        if key in seen:
            continue
        seen.add(key)
        counts = g["status"].value_counts()
        status = ("not confirmed yet" if {"completed", "pruned"} & set(counts.index)
                  else "search: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        rows.append({c: config_value(g.iloc[0][c]) for c in cells} | {"status": status, "n_seeds": 0})
    params = df.attrs.get("parent_params") or {}
    if cells == list(CELL_PARAMS) and params.get("teachers") and params.get("teacher_stop_epochs"):
        for t in params["teachers"].split(","):
            for s in params["teacher_stop_epochs"].split(","):
                key = (config_token(t), config_token(float(s)))
                if key not in seen:
                    seen.add(key)
                    rows.append({"teacher": t, "teacher_stop_epoch": int(s), "status": "not tried", "n_seeds": 0})
    return rows


def _teacher_curve(points: list[dict], best: dict) -> list[dict]:
    """The capacity curve: per teacher (by size) its best confirmed cell by mean val_acc, whether
    that cell is in the sweet spot, and on which side of the best teacher it lies."""
    by_teacher: dict[str, dict] = {}
    for p in points:
        t = p["teacher"]
        if t not in by_teacher or p["val_mean"] > by_teacher[t]["val_mean"]:
            by_teacher[t] = p
    order = sorted(by_teacher.values(), key=lambda p: (p["teacher_params"] is None, p["teacher_params"] or 0))
    sizes = [p["teacher_params"] for p in order]
    best_size = best["teacher_params"]
    out = []
    for p, size in zip(order, sizes):
        side = ("best" if p["teacher"] == best["teacher"] else "unknown" if size is None or best_size is None
                else "smaller" if size < best_size else "larger")
        out.append({k: p[k] for k in ("teacher", "teacher_stop_epoch", "teacher_params", "n_seeds", "val_mean",
                                      "test_mean", "test_low", "test_high", "in_sweet_spot")}
                   | {"side": side, "worse_by": p.get("worse_by"), "worse_low": p.get("worse_low"),
                      "worse_high": p.get("worse_high")})
    return out


def confirmed_cells(df: pd.DataFrame, confidence: float = 0.95) -> Answer:
    """Every cell's confirmed point, the sweet spot and the KD gain, per student (see the module
    docstring). `table`: one row per cell (confirmed or not, with its status). `by_student`: the
    best cell, the sweet spot (cells not significantly worse), the separated (worse) cells with
    their paired val differences, the confirmed baseline and the best cell's KD gain (val and test,
    `gain_statistics`: paired t over the shared seeds)."""
    cells = cell_params(df)
    conf = completed(df)
    conf = conf[conf["kind"] == KIND_CONFIRM]
    kd_all, base_all = conf[~is_baseline(conf) & ~no_teacher(conf["teacher"])], conf[is_baseline(conf)]
    rows, by_student = [], {}
    for student in students(typed(df)):
        points = _cell_points(kd_all[kd_all["student"] == student], cells, confidence)
        done = {tuple(config_token(p[c]) for c in cells) for p in points}
        extra = _unconfirmed(df, student, cells, done)
        if not points:
            rows += [{"student": student} | r for r in extra]
            by_student[student] = {"confirmed": False, "n_cells": 0, "unconfirmed": len(extra)}
            continue
        best = max(points, key=lambda p: (p["n_seeds"] >= 2, p["val_mean"]))
        others = [p for p in points if p is not best]
        comps = [paired_difference(best["_val"], p["_val"], confidence) for p in others]
        adjusted = holm([c["p_greater"] for c in comps])
        alpha = 1 - confidence
        best.update(in_sweet_spot=True, worse_by=0.0, p_holm=math.nan)
        for p, c, padj in zip(others, comps, adjusted):
            p.update(in_sweet_spot=not (padj < alpha), worse_by=c["diff"], worse_low=c["low"],
                     worse_high=c["high"], p_holm=padj)
        base = _baseline_for(base_all[base_all["student"] == student], best["_row"])
        gain = {m: gain_statistics(best[own], per_seed(base, m), confidence)
                for m, own in (("val_acc", "_val"), ("test_acc", "_test"))}
        for p in points:
            g = paired_difference(p["_test"], per_seed(_baseline_for(base_all[base_all["student"] == student],
                                                                        p["_row"]), "test_acc"), confidence)
            p.update(gain_test=g["diff"], gain_test_low=g["low"], gain_test_high=g["high"])
        curve = _teacher_curve(points, best)
        bm, blo, bhi = mean_interval(per_seed(base, "test_acc"), confidence)
        label = lambda p: ", ".join(f"{c}={config_value(p[c])}" for c in cells)  # noqa: E731
        by_student[student] = {
            "confirmed": True, "cells": cells, "n_cells": len(points), "unconfirmed": len(extra),
            "best": {k: v for k, v in best.items() if not k.startswith("_")} | {"label": label(best)},
            "sweet_spot": [label(p) for p in points if p["in_sweet_spot"]],
            "separated": [{"label": label(p), "worse_by": p["worse_by"], "low": p["worse_low"], "high": p["worse_high"],
                           "p_holm": p["p_holm"]} for p in others if not p["in_sweet_spot"]],
            "min_seeds": min(p["n_seeds"] for p in points),
            "max_half_width_test": max((p["test_high"] - p["test_low"]) / 2 for p in points),
            "baseline": {"n_seeds": int(len(per_seed(base, "test_acc"))), "test_mean": bm, "test_low": blo,
                         "test_high": bhi},
            "kd_gain": gain, "confidence": confidence, "teachers": curve,
        }
        rows += [{"student": student} | {k: v for k, v in p.items() if not k.startswith("_")} for p in points]
        rows += [{"student": student} | r for r in extra]
    table = pd.DataFrame(rows)
    if len(table) and "teacher_params" in table:
        table = table.sort_values(["student", "teacher_params", *cells], na_position="last", kind="stable")
    return Answer(table.reset_index(drop=True), plain(by_student))


def load_answer(experiment: str, tracking_uri: str | None = None, confidence: float = 0.95) -> Answer:
    """The confirmed answer of `experiment`, read from MLflow: `confirmed_cells` over the trials of
    its latest search (`load_trials(experiment, tracking_uri)`), with `confidence` intervals; what
    `kdx analyze`'s report leads with, as pandas.

    `.table`: one row per student x cell (the cell params: teacher, teacher_stop_epoch and any
    `confirm.cells` of the spec), confirmed or not (`status`); a confirmed cell holds its config
    (`method`, `temperature`, `alpha`, `kd_stop_epoch`), `n_seeds`, the val and test means over the
    confirm seeds with their intervals (`val_mean`, `val_low`, `val_high`, `test_*`), whether it is
    `in_sweet_spot`, how much worse than the best it is on val (`worse_by`, `worse_low`,
    `worse_high`, Holm-adjusted `p_holm`) and its paired KD gain over CE on test (`gain_test`,
    `gain_test_low`, `gain_test_high`).
    `.by_student`: per student, `confirmed` (False until `kdx confirm` ran) and then the `best` cell,
    the `sweet_spot` (labels of the cells not significantly worse than the best), the `separated`
    cells, the confirmed CE `baseline`, the best cell's `kd_gain` (`val_acc` and `test_acc`: diff,
    interval, test) and the capacity curve over `teachers`.
    """
    return confirmed_cells(load_trials(experiment, tracking_uri), confidence)


def headline_metrics(answer: Answer) -> dict[str, float]:
    """The numbers the parent MLflow run carries (one student: no prefix; several: `<student>.`),
    so searches compare in the MLflow UI."""
    out = {}
    several = len(answer.by_student) > 1
    for student, f in answer.by_student.items():
        if not f.get("confirmed"):
            continue
        pre = f"{student}." if several else ""
        b, g = f["best"], f["kd_gain"]["test_acc"]
        vals = {"best_val_acc": b["val_mean"], "best_test_acc": b["test_mean"], "best_test_acc_low": b["test_low"],
                "best_test_acc_high": b["test_high"], "best_n_seeds": b["n_seeds"], "kd_gain_test": g["diff"],
                "kd_gain_test_low": g["ci_low"], "kd_gain_test_high": g["ci_high"],
                "baseline_test_acc": f["baseline"]["test_mean"], "sweet_spot_cells": len(f["sweet_spot"]),
                "confirmed_cells": f["n_cells"]}
        out |= {pre + k: float(v) for k, v in vals.items() if v is not None and math.isfinite(float(v))}
    return out
