"""The omitted class (seed 003 section 4.1, Table 2) and the class counts a data condition left.

Omitted class. A student whose training split lacks some classes (`dataset.omit_classes`) logs
`test_acc_omitted`, its accuracy on the test samples of those classes, and, with a teacher, the teacher's
accuracy on the same samples (`teacher_test_acc_omitted`; the teacher trained `teachers.data_condition:
clean` saw them). Per student x method x teacher x stop epoch the config is chosen as every best config
is (its best completed trial by final val_acc, `best_trial`), and that config's omitted-class accuracy is
averaged over its seeds (each once) with a t interval; beside it the teacher's (one model: no interval)
and the CE baseline's, which never saw the class (its best config by val_acc, over its seeds).

Class counts. Every trial logs its training split's largest and smallest class (`class_count_max`,
`class_count_min`, before label noise). Where they differ by 2x or more (an imbalance), the report
states them, so a reproduction at a smaller scale than its seed says so (seed 000 Table VI: 5000 / 250).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .cells import mean_interval, per_seed
from .configs import baselines, best_config_rows, distilled
from .words import num, plural

METRIC, TEACHER_METRIC = "test_acc_omitted", "teacher_test_acc_omitted"
KEYS = ["student", "method", "teacher", "teacher_stop_epoch"]
COLUMNS = [*KEYS, "omitted_mean", "ci_low", "ci_high", "n_seeds", "teacher_omitted", "base_mean", "base_low",
           "base_high", "base_seeds", "test_acc"]
SEED000 = (5000, 250)  # seed 000 Table VI's largest and smallest class (CIFAR-10, no validation split)


def omitted_table(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """One row per student x method x teacher x stop epoch whose runs logged `test_acc_omitted` (empty when
    none did): the best config's mean over seeds with its interval, the teacher's value, the CE baseline's."""
    if METRIC not in df.columns:
        return pd.DataFrame(columns=COLUMNS)
    runs = distilled(df)
    runs = runs[np.isfinite(runs[METRIC].astype(float))]
    base = baselines(df)
    base = base[np.isfinite(base[METRIC].astype(float))]
    base_by_student = {}
    for student, group in base.groupby("student", sort=True):
        mine = best_config_rows(group)
        base_by_student[student] = (*mean_interval(per_seed(mine, METRIC), confidence), int(mine["seed"].nunique()))
    rows = []
    for key, group in runs.groupby(KEYS, sort=True):
        mine = best_config_rows(group)
        mean, lo, hi = mean_interval(per_seed(mine, METRIC), confidence)
        teacher = mine[TEACHER_METRIC].astype(float) if TEACHER_METRIC in mine else pd.Series(dtype=float)
        b_mean, b_lo, b_hi, b_n = base_by_student.get(key[0], (np.nan, np.nan, np.nan, 0))
        rows.append(dict(zip(KEYS, key)) | {
            "omitted_mean": mean, "ci_low": lo, "ci_high": hi, "n_seeds": int(mine["seed"].nunique()),
            "teacher_omitted": float(teacher.mean()) if teacher.notna().any() else np.nan,
            "base_mean": b_mean, "base_low": b_lo, "base_high": b_hi, "base_seeds": b_n,
            "test_acc": float(per_seed(mine, "test_acc").mean())})
    for student, (b_mean, b_lo, b_hi, b_n) in base_by_student.items():  # a baseline-only student still shows
        if not len(runs) or student not in set(runs["student"]):
            rows.append({"student": student, "method": "ce", "teacher": "none", "teacher_stop_epoch": np.nan,
                         "base_mean": b_mean, "base_low": b_lo, "base_high": b_hi, "base_seeds": b_n})
    return pd.DataFrame(rows, columns=COLUMNS)


def _iv(mean, lo, hi, n) -> str:
    shown = f"{num(mean)} [{num(lo)}, {num(hi)}]" if np.isfinite(lo) else f"{num(mean)} (no interval)"
    return f"{shown} ({plural(n, 'seed')})"


def omitted_words(table: pd.DataFrame) -> list[str]:
    """Per row: the student's omitted-class accuracy beside the CE baseline's and the teacher's, and only
    what the intervals support (separated where they do not overlap; overlapping is not a test)."""
    out = []
    for r in table.itertuples():
        if r.method == "ce":
            out.append(f"`{r.student}` CE only: {_iv(r.base_mean, r.base_low, r.base_high, r.base_seeds)} on the omitted "
                       "classes.")
            continue
        line = (f"`{r.student}` {r.method} from `{r.teacher}`@{r.teacher_stop_epoch:g}: "
                f"{_iv(r.omitted_mean, r.ci_low, r.ci_high, r.n_seeds)} on the classes its training split lacked")
        line += f"; its teacher {num(r.teacher_omitted)}" if np.isfinite(r.teacher_omitted) else ""
        if r.base_seeds:
            line += f"; CE baseline {_iv(r.base_mean, r.base_low, r.base_high, r.base_seeds)}."
            if np.isfinite(r.ci_low) and np.isfinite(r.base_high) and r.ci_low > r.base_high:
                line += (" The student's interval lies above the baseline's: it learned the omitted classes from the "
                         "teacher's soft labels alone.")
            elif np.isfinite(r.ci_low) and np.isfinite(r.base_high):
                line += " The intervals overlap: the student cannot be separated from the baseline on these classes."
            else:
                line += " Too few seeds for intervals: no comparison is claimed."
        else:
            line += "; no CE baseline ran."
        if np.isfinite(r.teacher_omitted) and np.isfinite(r.ci_high) and r.ci_high < r.teacher_omitted:
            line += " The student stays below its teacher on them (the teacher's value lies above its interval)."
        out.append(line)
    return out


def class_count_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, the training split's largest and smallest class as trials logged them, where they differ
    by 2x or more (an imbalance condition); empty otherwise."""
    cols = ["dataset", "class_count_max", "class_count_min", "ratio", "n_runs"]
    if "class_count_max" not in df.columns or "dataset" not in df.columns:
        return pd.DataFrame(columns=cols)
    rows = []
    for dataset, g in df.groupby("dataset", sort=True):
        hi, lo = g["class_count_max"].astype(float).max(), g["class_count_min"].astype(float).min()
        if np.isfinite(hi) and np.isfinite(lo) and lo > 0 and hi / lo >= 2:
            rows.append({"dataset": dataset, "class_count_max": int(hi), "class_count_min": int(lo),
                         "ratio": hi / lo, "n_runs": int(g["class_count_max"].notna().sum())})
    return pd.DataFrame(rows, columns=cols)


def write_omitted(d, table: pd.DataFrame, counts: pd.DataFrame, confidence: float) -> None:
    """The report's omitted-class section and class-count note (each only when the runs hold its data)."""
    if len(table):
        d.h(2, "The omitted class (seed 003 section 4.1, Table 2)")
        d.p(f"Test accuracy on the classes the student's training split lacked (`dataset.omit_classes`): the best "
            f"config of each cell by val_acc, mean and {confidence:.0%} t interval over its seeds; the teacher's "
            "accuracy on the same samples (one model), and the CE baseline's, which never saw those classes.")
        d.bullets(omitted_words(table))
        d.table(table)
    if len(counts):
        d.h(2, "Class counts of the training split (imbalance as applied)")
        lines = [f"{r.dataset}: largest class {r.class_count_max}, smallest {r.class_count_min} (ratio {r.ratio:.3g})."
                 for r in counts.itertuples()]
        if "cifar10" in set(counts["dataset"]):
            lines.append(f"Seed 000 Table VI used {SEED000[0]} and {SEED000[1]} (ratio {SEED000[0] / SEED000[1]:g}) "
                         "of CIFAR-10's full 50,000 training images; kdx holds a validation split out of them, so the "
                         "largest class can hold at most what the split leaves (4500 at val_fraction 0.1). Keeping the "
                         "ratio keeps the seed's class distribution at 0.9 times its size (explorer/data/condition.py).")
        d.bullets(lines)
