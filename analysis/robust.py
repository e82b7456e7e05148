"""Robust accuracy per method, teacher and adversarial training (seed 003 section 4.4, table 5).

Trials of a spec with `evaluate: {robust: true}` log `robust_acc_pgd` (test accuracy under the training
attack's PGD, or PGD-7) and `robust_acc_pgd50` (PGD-50 from several random starts; explorer/training/attacks.py).
Per student x method x teacher x `student.adversarial_steps` (the CE-only runs included: table 5's "no
teacher" row), the config is the best completed trial by final val_acc (`best_config_rows`), and its
clean and robust test accuracies are averaged over its seeds, each seed once, with a t interval.
"""

from __future__ import annotations

import pandas as pd

from .cells import mean_interval, per_seed
from .configs import best_config_rows, completed
from .words import num, plural

METRICS = ("test_acc", "robust_acc_pgd", "robust_acc_pgd50")
STEPS = "student.adversarial_steps"


def robust_table(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """One row per cell: the best config's seed count and, per metric, mean and interval (empty when no
    trial logged robust accuracy)."""
    if "robust_acc_pgd50" not in df.columns:
        return pd.DataFrame()
    runs = completed(df)
    runs = runs[runs["robust_acc_pgd50"].notna()]
    keys = ["student", "method", "teacher"] + ([STEPS] if STEPS in runs.columns else [])
    rows = []
    for key, group in runs.groupby(keys, sort=True, dropna=False):
        mine = best_config_rows(group)
        row = dict(zip(keys, key)) | {"n_seeds": int(mine["seed"].nunique())}
        for metric in METRICS:
            row[f"{metric}_mean"], row[f"{metric}_low"], row[f"{metric}_high"] = mean_interval(
                per_seed(mine, metric), confidence)
        rows.append(row)
    return pd.DataFrame(rows)


def write_robust(d, table: pd.DataFrame, confidence: float) -> None:
    """The report's robustness section (nothing when no trial measured it)."""
    if not len(table):
        return
    d.h(2, "Robust accuracy (seed 003 section 4.4, table 5)")
    d.p(f"Test accuracy clean, under the training attack's PGD (PGD-7 for students trained clean) and under "
        f"PGD-50 from several random starts (a sample counts only if it survives all), L-inf in pixel-range "
        f"units; the best config of each cell by val_acc, mean and {confidence:.0%} t interval over its seeds. "
        "AutoAttack, which the seed reports, is not on PyPI: PGD-50 is a weaker attack, so these are upper "
        "bounds on robust accuracy.")
    lines = []
    for r in table.to_dict("records"):
        steps = f", adversarial_steps {num(r[STEPS])}" if STEPS in r else ""
        parts = [f"{m} {num(r[f'{m}_mean'])} [{num(r[f'{m}_low'])}, {num(r[f'{m}_high'])}]" for m in METRICS]
        lines.append(f"`{r['student']}` {r['method']} from `{r['teacher']}`{steps} ({plural(r['n_seeds'], 'seed')}): "
                     + "; ".join(parts) + ".")
    d.bullets(lines)
    d.table(table)
