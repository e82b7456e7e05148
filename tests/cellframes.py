"""Confirmation runs as a trials frame, logged as trials log their params: the made-up cells of
tests/test_cells.py (whose levels the tests check the answer against) and of the MLflow UI check."""

import numpy as np
import pandas as pd

from analysis.runs import param_values
from explorer.tracking import TRIAL_PARAMS

SPEC = {
    "name": "cells",
    "student": {"arch": "cnn1d_w4", "epochs": 3},
    "teachers": {"archs": ["cnn1d_w8", "cnn1d_w16", "cnn1d_w32"], "stop_epochs": [2, 3], "recipe": {"epochs": 3}},
    "distill": {"method": "kd", "temperature": {"loguniform": [1.0, 16.0]}, "alpha": {"uniform": [0.1, 1.0]}},
    "seeds": [0, 1],
    "confirm": {"seeds": [100, 101, 102, 103, 104]},
}
SEEDS = [100, 101, 102, 103, 104]
NOISE = np.array([0.01, -0.02, 0.015, 0.0, -0.005])  # per-seed effect shared by every arm (pairing)


def frame(plan, rows: list[tuple[dict, str, str, float, float]], parent_params=None) -> pd.DataFrame:
    """rows: (point, kind, status, val_acc, test_acc), logged as a trial logs its params."""
    out = []
    for i, (point, kind, status, val, test) in enumerate(rows):
        s = plan.settings(point)
        params = {k: "none" if s[k] is None else str(s[k]) for k in TRIAL_PARAMS}
        out.append({"run_id": f"r{i}", "status": status, "kind": kind, "val_acc": val, "test_acc": test,
                    "teacher_val_acc": 0.8, "start_time": pd.Timestamp(i, unit="s", tz="UTC")} | params)
    df = pd.DataFrame(out)
    for c in TRIAL_PARAMS:
        df[c] = param_values(df[c])
    df.attrs["param_columns"] = list(TRIAL_PARAMS)
    if parent_params:
        df.attrs["parent_params"] = parent_params
    return df


def kd(teacher, stop, t=4.0, a=0.9, seed=100):
    return {"teacher": teacher, "teacher_stop_epoch": stop, "temperature": t, "alpha": a, "seed": seed}


def ce(seed):
    return {"method": "ce", "teacher": "none", "seed": seed}


# cell -> per-seed mean level (val = test + 0.01); w32@3 is clearly worse, w16@3 close to the best
LEVELS = {("cnn1d_w8", 3): 0.70, ("cnn1d_w16", 3): 0.695, ("cnn1d_w32", 3): 0.62, ("cnn1d_w8", 2): 0.69}
CE_LEVEL = 0.60


def confirm_rows():
    rows = []
    for (teacher, stop), level in LEVELS.items():
        jitter = np.array([0.0, 0.004, -0.003, 0.002, -0.001]) * (1 if teacher != "cnn1d_w16" else 3)
        for seed, n, j in zip(SEEDS, NOISE, jitter):
            rows.append((kd(teacher, stop, seed=seed), "confirm", "completed", level + n + j + 0.01, level + n + j))
    for seed, n in zip(SEEDS, NOISE):
        rows.append((ce(seed), "confirm", "completed", CE_LEVEL + n + 0.01, CE_LEVEL + n))
    return rows
