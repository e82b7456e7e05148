"""Adversarial transferability per method and teacher (seed 000 section IV-D, Fig. 1's last column).

Trials of a spec with `evaluate: {transfer: true}` log `transfer_rate`: the success rate on the student
of PGD examples made on its teacher (explorer/training/attacks.py). Here, per student x method x teacher x
teacher stop epoch, the config is chosen the way every best config is chosen (its best completed trial
by final val_acc, `rank_trials`), and that config's transfer rates are averaged over its seeds, each
seed counted once, with a t interval. Configs are never pooled: a cell is one config's seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .cells import mean_interval, per_seed
from .configs import best_config_rows, distilled
from .plots import _figure, _save
from .words import num, plural

METRIC = "transfer_rate"
KEYS = ["student", "method", "teacher", "teacher_stop_epoch"]
COLUMNS = [*KEYS, "teacher_params", "transfer_mean", "ci_low", "ci_high", "n_seeds", "samples_mean"]


def transfer_table(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """One row per student x method x teacher x stop epoch: the best config's mean transfer rate,
    interval and seed count (empty when no trial logged a transfer rate)."""
    if METRIC not in df.columns:
        return pd.DataFrame(columns=COLUMNS)
    runs = distilled(df)
    runs = runs[np.isfinite(runs[METRIC].astype(float))]
    rows = []
    for key, group in runs.groupby(KEYS, sort=True):
        mine = best_config_rows(group)
        best = mine.iloc[0]
        mean, lo, hi = mean_interval(per_seed(mine, METRIC), confidence)
        rows.append(dict(zip(KEYS, key)) | {
            "teacher_params": best.get("teacher_params"), "transfer_mean": mean, "ci_low": lo, "ci_high": hi,
            "n_seeds": int(mine["seed"].nunique()), "samples_mean": float(mine["transfer_samples"].astype(float).mean())})
    return pd.DataFrame(rows, columns=COLUMNS)


def transfer_words(table: pd.DataFrame) -> list[str]:
    """Per student and teacher: the methods by transfer rate, and whether the highest is separated from the
    next by non-overlapping intervals (a conservative reading; overlapping intervals are not a test)."""
    out = []
    for (student, teacher, stop), t in table.groupby(["student", "teacher", "teacher_stop_epoch"], sort=True):
        t = t.sort_values("transfer_mean", ascending=False)
        parts = [f"{r.method} {num(r.transfer_mean)} [{num(r.ci_low)}, {num(r.ci_high)}] ({plural(r.n_seeds, 'seed')})"
                 for r in t.itertuples()]
        line = f"`{student}` from `{teacher}`@{stop}: " + "; ".join(parts) + "."
        if len(t) > 1:
            a, b = t.iloc[0], t.iloc[1]
            if np.isfinite(a.ci_low) and np.isfinite(b.ci_high) and a.ci_low > b.ci_high:
                line += f" {a.method} transfers more than every other method (its interval lies above theirs)."
            else:
                line += f" The intervals of {a.method} and {b.method} overlap: the top cannot be separated."
        out.append(line)
    return out


def plot_transfer(table: pd.DataFrame, path: Path) -> Path | None:
    """Transfer rate per method (x), one series per teacher, for each student."""
    if not len(table):
        return None
    students = sorted(table["student"].unique())
    fig, axes = _figure(len(students), width=6.0)
    for ax, student in zip(axes, students):
        t = table[table["student"] == student]
        methods = sorted(t["method"].unique())
        series = list(t.groupby(["teacher", "teacher_stop_epoch"], sort=True))
        for i, ((teacher, stop), s) in enumerate(series):
            x = [methods.index(m) + (i - (len(series) - 1) / 2) * 0.15 for m in s["method"]]
            err = [s["transfer_mean"] - s["ci_low"], s["ci_high"] - s["transfer_mean"]]
            ax.errorbar(x, s["transfer_mean"], yerr=np.nan_to_num(np.array(err, float)), fmt="o", capsize=3,
                        label=f"{teacher}@{stop}")
        ax.set_xticks(range(len(methods)), [f"{m}\n(n={int(t[t['method'] == m]['n_seeds'].min())})" for m in methods],
                      fontsize=8)
        ax.set_ylabel("transfer rate (teacher PGD -> student)")
        ax.set_title(f"Student {student}")
        ax.legend(fontsize=7)
    return _save(fig, path)


def write_transfer(d, table: pd.DataFrame, plot: Path | None, confidence: float) -> None:
    """The report's transferability section (nothing when no trial measured it)."""
    if not len(table):
        return
    d.h(2, "Adversarial transferability (seed 000 section IV-D)")
    d.p(f"Success rate on the student of L-inf PGD examples made on its teacher (eps 0.031, step 0.003, 20 steps, "
        f"in pixel-range units), over the test samples both classify correctly; the best config of each cell by "
        f"val_acc, mean and {confidence:.0%} t interval over its seeds. Higher = the student is more like its "
        "teacher.")
    d.bullets(transfer_words(table))
    d.table(table)
    if plot is not None:
        d.img(plot.name, "Transfer rate per method and teacher, mean and interval over seeds")
