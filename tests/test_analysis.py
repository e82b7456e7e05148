"""`analysis` against synthetic runs with planted ground truth, logged to a real MLflow SQLite store.

Every expected number below is either planted in the store (the tables at the top) or computed
here, independently, with numpy/scipy from those planted numbers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from explorer import tracking as tr
from explorer.errors import KdxError

EXP = "capacity_gap_synthetic"
EPOCHS = 5          # student epochs
TEACHER_EPOCHS = 30

# ---------------------------------------------------------------- ground truth, student "cnn_s"
S1, S1_PARAMS = "cnn_s", 1000
TEACHERS = {"t1": 2000, "t2": 8000, "t3": 32000, "t4": 128000}
STOPS = (10, 20, 30)
# final student val_acc per (teacher, stop) at the default config (T=4, alpha=0.9, seed 0);
# t3@20 is the sweet spot; t4 early-stopped (10) beats every fully trained teacher (best: t3@30 = .80)
CELL_VAL = {("t1", 10): .70, ("t1", 20): .72, ("t1", 30): .74,
            ("t2", 10): .75, ("t2", 20): .79, ("t2", 30): .78,
            ("t3", 10): .79, ("t3", 20): .84, ("t3", 30): .80,
            ("t4", 10): .82, ("t4", 20): .80, ("t4", 30): .76}
TEACHER_ACC = {"t1": .80, "t2": .85, "t3": .88, "t4": .90}      # fully trained teacher val acc
TEACHER_ACC_DROP = {10: .05, 20: .02, 30: 0.0}                   # early checkpoints are less accurate
AGREE = {"t1": .90, "t2": .85, "t3": .80, "t4": .70}             # falls with teacher size
KD_LOSS = {"t1": .10, "t2": .20, "t3": .30, "t4": .50}           # rises with teacher size
# T x alpha grid at the sweet-spot checkpoint t3@20 (the (4, .9) cell is the best config, below)
GRID = {(1, .1): .78, (1, .5): .79, (1, .9): .80, (4, .1): .805, (4, .5): .815,
        (10, .1): .80, (10, .5): .81, (10, .9): .825}
BEST_VAL = [.84, .83, .835, .825, .832]    # best config t3@20 T=4 a=.9, search seeds 0..4
BEST_TEST = [.82, .815, .81, .80, .818]
BASE_SEEDS = [10, 11, 12, 13, 14]          # different seeds -> Welch
BASE_VAL = [.70, .71, .705, .715, .695]
BASE_TEST = [.69, .70, .69, .70, .68]
PEAKY_HISTORY = [.60, .75, .90, .80, .75]  # t2@10: best_val_acc .90 at epoch 3, final .75
HIGH_TEST = .95                            # t2@20 has the best test_acc of all; must never be chosen
# non-completed runs that would win if they were counted
LOSERS = [("pruned", "t1", 30, .95, 2), ("diverged", "t4", 30, .96, 3), ("failed", "t2", 30, .97, 1),
          ("running", "t3", 30, .98, 4)]

# ---------------------------------------------------------------- student "mlp_s": paired seeds
S2, S2_PARAMS = "mlp_s", 500
S2_T1_VAL = .60
S2_BEST_VAL, S2_BEST_TEST = [.66, .68, .67], [.65, .66, .66]   # t3@30, T=4, alpha=.5, seeds 0,1,2
S2_BASE_VAL, S2_BASE_TEST = [.62, .63, .615], [.61, .62, .60]  # baseline seeds 0,1,2

# ---------------------------------------------------------------- student "cnn_xs": single seeds
S3 = "cnn_xs"


# the student's recipe as every trial run logs it (`student.<field>`, the values as `str()` writes them)
RECIPE = {"student.batch_size": 128, "student.lr": 0.05, "student.momentum": 0.9, "student.nesterov": False,
          "student.weight_decay": 5e-4, "student.schedule": "cosine", "student.milestones": (), "student.lr_gamma": 0.2,
          "student.views": 16, "student.adversarial_steps": 0, "student.adversarial_eps": 8 / 255,
          "student.adversarial_step": 2 / 255}


def _history(final: float, n: int) -> list[float]:
    return [final - 0.01 * (n - e) for e in range(1, n + 1)]


def _trial(**kw) -> dict:
    """One planted trial with defaults (a completed KD search run, seed 0, T=4, alpha=0.9)."""
    t = {"student": S1, "student_params": S1_PARAMS, "teacher": "t1", "stop": 30, "T": 4, "alpha": .9, "seed": 0,
         "kind": tr.KIND_SEARCH, "status": tr.COMPLETED, "val": .5, "test": None, "history": None,
         "epochs_done": EPOCHS, "method": "kd"}
    t.update(kw)
    if t["test"] is None:
        t["test"] = round(t["val"] - .02, 6)
    return t


def planted_trials() -> list[dict]:
    out = []
    for (teacher, stop), val in CELL_VAL.items():
        if (teacher, stop) == ("t3", 20):
            continue
        extra = {}
        if (teacher, stop) == ("t2", 10):
            extra["history"] = PEAKY_HISTORY
        if (teacher, stop) == ("t2", 20):
            extra["test"] = HIGH_TEST
        out.append(_trial(teacher=teacher, stop=stop, val=val, **extra))
    for (T, a), val in GRID.items():
        out.append(_trial(teacher="t3", stop=20, T=T, alpha=a, val=val))
    for seed, (v, te) in enumerate(zip(BEST_VAL, BEST_TEST)):
        out.append(_trial(teacher="t3", stop=20, seed=seed, val=v, test=te))
    for seed, v, te in zip(BASE_SEEDS, BASE_VAL, BASE_TEST):
        out.append(_trial(teacher=None, seed=seed, val=v, test=te, kind=tr.KIND_BASELINE, method="ce"))
    for status, teacher, stop, val, done in LOSERS:
        out.append(_trial(teacher=teacher, stop=stop, val=val, status=status, epochs_done=done, test=.99))
    s2 = {"student": S2, "student_params": S2_PARAMS}
    out.append(_trial(teacher="t1", stop=30, val=S2_T1_VAL, **s2))
    for seed, (v, te) in enumerate(zip(S2_BEST_VAL, S2_BEST_TEST)):
        out.append(_trial(teacher="t3", stop=30, alpha=.5, seed=seed, val=v, test=te, **s2))
    for seed, (v, te) in enumerate(zip(S2_BASE_VAL, S2_BASE_TEST)):
        out.append(_trial(teacher=None, seed=seed, val=v, test=te, kind=tr.KIND_BASELINE, method="ce", **s2))
    s3 = {"student": S3, "student_params": 300}
    out.append(_trial(teacher="t1", stop=30, val=.55, **s3))
    out.append(_trial(teacher=None, val=.50, kind=tr.KIND_BASELINE, method="ce", **s3))
    return out


def _log_trial(client, exp_id: str, parent_id: str, i: int, t: dict) -> str:
    from mlflow.entities import Metric, Param, RunTag

    teacher = t["teacher"] or tr.NO_TEACHER
    kd = t["teacher"] is not None
    tparams = TEACHERS[teacher] if kd else None
    params = {
        "dataset": "mnist1d", "student": t["student"], "teacher": teacher,
        "teacher_stop_epoch": t["stop"] if kd else "none", "teacher_epochs": TEACHER_EPOCHS if kd else "none",
        "method": t["method"], "temperature": t["T"] if kd else "none", "alpha": t["alpha"] if kd else "none",
        "kd_stop_epoch": "none", "seed": t["seed"], "student_params": t["student_params"],
        "teacher_params": tparams if kd else "none",
        "capacity_ratio": tparams / t["student_params"] if kd else "none", "epochs": EPOCHS,
        # issue 6: the teacher's kind and chain, and the hyperparameters of the other methods
        "teacher_kind": "plain" if kd else "none", "teacher_chain": teacher if kd else "none",
        "teacher_temperature": "none", "epsilon": "none", "delta": "none", "confidence": "none", "cohort": "none",
    }
    # issue "one source of truth": every method hyperparameter of the registry ("none" where the method has
    # none) and the student's recipe as `student.<field>`
    params |= {p: "none" for p in tr.METHOD_PARAMS if p not in params} | RECIPE
    assert set(params) == set(tr.TRIAL_PARAMS)
    params |= t.get("params", {})       # a trial's own values (a searched method hyperparameter or recipe field)
    tags = {tr.ROLE_TAG: tr.ROLE_TRIAL, tr.PARENT_TAG: parent_id, tr.TRIAL_ID_TAG: f"trial_{i:03d}",
            tr.TEACHER_KEY_TAG: f"key-{teacher}-{t['stop']}" if kd else tr.NO_TEACHER, tr.STATUS_TAG: t["status"],
            tr.KIND_TAG: t["kind"]}
    run = client.create_run(exp_id, run_name=f"trial_{i:03d}", tags=tags)
    n = t["epochs_done"]
    hist = t["history"] or _history(t["val"], n)
    ts = int(time.time() * 1000)
    metrics = []
    for e in range(1, n + 1):
        step = {"val_acc": hist[e - 1], "test_acc": t["test"] - 0.01 * (n - e), "train_loss": 1.0 / e,
                "train_ce": 0.5 / e, "val_loss": 1.1 / e, "test_loss": 1.2 / e, "epoch_seconds": 0.1,
                "samples_per_second": 1000.0, "lr": 0.05} | t.get("metrics", {})
        if kd:
            step |= {"train_kd": KD_LOSS[teacher], "kd_agreement": AGREE[teacher],
                     "teacher_val_acc": TEACHER_ACC[teacher] - TEACHER_ACC_DROP[t["stop"]]}
        else:
            step["train_kd"] = 0.0
        metrics += [Metric(k, float(v), ts + e, e) for k, v in step.items()]
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    mlflow_status = {"running": None, "failed": "FAILED", "diverged": "FAILED"}.get(t["status"], "FINISHED")
    if mlflow_status:
        client.set_terminated(run.info.run_id, mlflow_status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    d = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{d}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EXP, artifact_location=(d / "artifacts").as_uri())
    old = client.create_run(exp_id, run_name="search-old", tags={tr.ROLE_TAG: tr.ROLE_SEARCH},
                            start_time=int(time.time() * 1000) - 60_000)
    client.set_terminated(old.info.run_id, "FINISHED")
    parent = client.create_run(exp_id, run_name="search", tags={tr.ROLE_TAG: tr.ROLE_SEARCH})
    teacher_run = client.create_run(exp_id, run_name="teacher-t1", tags={tr.ROLE_TAG: tr.ROLE_TEACHER,
                                                                         tr.TEACHER_KEY_TAG: "key-t1-30"})
    client.log_metric(teacher_run.info.run_id, "val_acc", 0.99, step=1)  # a teacher run: never a trial
    ids = [_log_trial(client, exp_id, parent.info.run_id, i, t) for i, t in enumerate(planted_trials())]
    client.set_terminated(parent.info.run_id, "FINISHED")
    return {"uri": uri, "dir": d, "client": client, "exp_id": exp_id, "parent": parent.info.run_id,
            "old_parent": old.info.run_id, "trial_ids": ids, "trials": planted_trials()}


@pytest.fixture(scope="module")
def df(store):
    from analysis import load_trials

    return load_trials(EXP, store["uri"])


def _row(df, **where) -> pd.Series:
    m = np.ones(len(df), bool)
    for k, v in where.items():
        m &= (df[k] == v).to_numpy()
    rows = df[m]
    assert len(rows) == 1, where
    return rows.iloc[0]


def welch_by_hand(a, b, confidence=0.95):
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    d = a.mean() - b.mean()
    half = stats.t.ppf(0.5 + confidence / 2, dof) * se
    return d, d - half, d + half, 2 * stats.t.sf(abs(d / se), dof)


# ================================================================ runs.py


def test_load_trials_schema_and_conversions(store, df):
    planted = store["trials"]
    assert len(df) == len(planted)                      # the teacher run and parents are not trials
    assert set(df["run_id"]) == set(store["trial_ids"])
    for c in ("run_id", "run_name", "trial_id", "status", "kind", "teacher_key", "best_val_acc", "best_epoch",
              "epochs_done", *tr.TRIAL_PARAMS, *tr.EPOCH_METRICS):
        assert c in df.columns, c
    for c in ("temperature", "alpha", "teacher_stop_epoch", "kd_stop_epoch", "seed", "teacher_params",
              "capacity_ratio", "epochs"):
        assert pd.api.types.is_float_dtype(df[c]), c
    assert df["kd_stop_epoch"].isna().all()             # "none" -> NaN
    base = df[df["kind"] == tr.KIND_BASELINE]
    assert len(base) == len(BASE_SEEDS) + len(S2_BASE_VAL) + 1
    assert (base["teacher"] == tr.NO_TEACHER).all() and base["temperature"].isna().all()
    assert base["teacher_params"].isna().all()
    r = _row(df, student=S1, teacher="t3", teacher_stop_epoch=20.0, temperature=1.0, alpha=0.5)
    assert r["val_acc"] == pytest.approx(GRID[(1, .5)])
    assert r["capacity_ratio"] == pytest.approx(32.0) and r["teacher_params"] == 32000
    assert r["kd_agreement"] == pytest.approx(AGREE["t3"])
    assert r["teacher_val_acc"] == pytest.approx(TEACHER_ACC["t3"] - TEACHER_ACC_DROP[20])
    peaky = _row(df, student=S1, teacher="t2", teacher_stop_epoch=10.0)
    assert peaky["val_acc"] == pytest.approx(PEAKY_HISTORY[-1])
    assert peaky["best_val_acc"] == pytest.approx(max(PEAKY_HISTORY))
    assert peaky["best_epoch"] == 1 + int(np.argmax(PEAKY_HISTORY))
    assert peaky["epochs_done"] == EPOCHS
    pruned = _row(df, status="pruned")
    assert pruned["epochs_done"] == 2 and pruned["val_acc"] == pytest.approx(.95)
    assert sorted(df["status"].unique()) == sorted({t["status"] for t in planted})


def test_load_histories_long_frame(store, df):
    from analysis import load_histories, load_trials

    rid = _row(df, student=S1, teacher="t2", teacher_stop_epoch=10.0)["run_id"]
    h = load_histories(EXP, store["uri"], metrics=("val_acc", "kd_agreement"), run_ids=[rid])
    assert list(h.columns) == ["run_id", "step", "metric", "value"]
    v = h[h["metric"] == "val_acc"].sort_values("step")
    assert v["step"].tolist() == list(range(1, EPOCHS + 1))
    assert v["value"].tolist() == pytest.approx(PEAKY_HISTORY)
    assert h[h["metric"] == "kd_agreement"]["value"].tolist() == pytest.approx([AGREE["t2"]] * EPOCHS)
    trials, hist = load_trials(EXP, store["uri"], histories=True)
    assert len(trials) == len(df) and set(hist["run_id"]) == set(df["run_id"])
    # every run logs epochs_done val_acc points
    n = hist[hist["metric"] == "val_acc"].groupby("run_id").size()
    assert (n.reindex(df["run_id"]).to_numpy() == df["epochs_done"].to_numpy()).all()


def test_unknown_experiment_is_one_sentence(store, tmp_path):
    from analysis import load_trials

    with pytest.raises(KdxError, match=r"experiment: got 'nope'; no MLflow experiment of that name at URI"):
        load_trials("nope", store["uri"])
    missing = tmp_path / "no" / "mlflow.db"
    with pytest.raises(KdxError, match="run `kdx search` first or pass --tracking-uri"):
        load_trials(EXP, f"sqlite:///{missing}")
    assert not missing.exists()          # asking does not create a database


def test_find_parent_run_is_latest_search_run(store):
    from analysis import find_parent_run

    parent = find_parent_run(EXP, store["uri"])
    assert parent.info.run_id == store["parent"] != store["old_parent"]


def test_default_tracking_uri(tmp_path, monkeypatch):
    from analysis import default_tracking_uri

    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/kdx_runs/mlflow.db"
    assert default_tracking_uri("/x/y") == "sqlite:////x/y/kdx_runs/mlflow.db"


# ================================================================ sweetspot.py


def test_status_counts_lists_the_excluded(df):
    from analysis import status_counts

    ans = status_counts(df)
    s1 = ans.by_student[S1]
    n_completed = len(CELL_VAL) - 1 + len(GRID) + len(BEST_VAL) + len(BASE_SEEDS)
    assert s1["completed"] == n_completed
    for status, *_ in LOSERS:
        assert s1[status] == 1
    assert ans.by_student["all"]["total"] == len(df)
    assert sorted(ans.details["status"]) == sorted(s for s, *_ in LOSERS)


def test_capacity_curve_rises_then_falls(df):
    from analysis import capacity_curve

    ans = capacity_curve(df)
    t = ans.table[ans.table["student"] == S1]
    assert t["teacher"].tolist() == ["t1", "t2", "t3", "t4"]            # ordered by size
    best = {tch: max(v for (tt, _), v in CELL_VAL.items() if tt == tch) for tch in TEACHERS}
    assert t["val_acc"].tolist() == pytest.approx([best[x] for x in ["t1", "t2", "t3", "t4"]])
    assert t["capacity_ratio"].tolist() == pytest.approx([2, 8, 32, 128])
    t3 = t[t["teacher"] == "t3"].iloc[0]
    assert t3["val_acc_mean"] == pytest.approx(np.mean(BEST_VAL))
    assert t3["err"] == pytest.approx(np.std(BEST_VAL, ddof=1))
    assert t3["n_seeds"] == len(BEST_VAL)
    assert t3["test_acc"] == pytest.approx(BEST_TEST[0])
    assert (t3["temperature"], t3["alpha"], t3["teacher_stop_epoch"]) == (4, .9, 20)
    f = ans.by_student[S1]
    assert f["sweet_spot_teacher"] == "t3" and f["shape"] == "rises then falls"
    assert f["falls_after"] == "t4"
    assert f["rise_to_peak"] == pytest.approx(best["t3"] - best["t1"])
    assert f["fall_from_peak"] == pytest.approx(best["t3"] - best["t4"])
    assert f["most_accurate_teacher"] == "t4" and f["best_is_most_accurate"] is False
    assert f["baseline_val_acc"] == pytest.approx(np.mean(BASE_VAL))
    assert ans.by_student[S2]["shape"] == "rises" and ans.by_student[S2]["sweet_spot_teacher"] == "t3"


def test_curve_shapes_on_small_frames():
    from analysis import capacity_curve

    for vals, shape in (([.5, .6, .7], "rises"), ([.7, .6, .5], "falls"), ([.5, .7, .6], "rises then falls"),
                        ([.6, .6, .6], "flat"), ([.6], "single teacher")):
        f = frame([{"teacher": f"t{i}", "teacher_params": 10.0 ** (i + 2), "val_acc": v} for i, v in enumerate(vals)])
        assert capacity_curve(f).by_student["s"]["shape"] == shape, vals


def test_stop_epoch_table(df):
    from analysis import stop_epoch_table

    ans = stop_epoch_table(df)
    f = ans.by_student[S1]
    assert f["best_stop_by_teacher"] == {"t1": 30, "t2": 20, "t3": 20, "t4": 10}
    assert (f["best_full"]["teacher"], f["best_full"]["val_acc"]) == ("t3", pytest.approx(CELL_VAL[("t3", 30)]))
    best_full = max(v for (t, s), v in CELL_VAL.items() if s == TEACHER_EPOCHS)
    expected = sorted((t, s) for (t, s), v in CELL_VAL.items() if s != TEACHER_EPOCHS and v > best_full)
    assert expected == [("t3", 20), ("t4", 10)]
    assert f["early_beats_best_full"] is True
    assert sorted((w["teacher"], w["teacher_stop_epoch"]) for w in f["early_winners"]) == expected
    assert f["largest_teacher"] == "t4" and f["largest_teacher_early_beats_best_full"] is True
    t = ans.table[ans.table["student"] == S1]
    assert len(t) == len(CELL_VAL)
    assert t["full"].sum() == len(TEACHERS)
    cell = t[(t["teacher"] == "t2") & (t["teacher_stop_epoch"] == 30)].iloc[0]
    assert cell["val_acc"] == pytest.approx(CELL_VAL[("t2", 30)])     # the failed .97 run is not there


def test_temperature_alpha_map(df):
    from analysis import temperature_alpha_map

    ans = temperature_alpha_map(df)
    f = ans.by_student[S1]
    assert f["scope"] == "sweet_spot" and f["teacher"] == "t3" and f["teacher_stop_epoch"] == 20
    t = ans.table[ans.table["student"] == S1]
    cells = {**GRID, (4, .9): np.mean(BEST_VAL)}
    assert len(t) == len(cells)
    for (T, a), m in cells.items():
        row = t[(t["T_lo"] == T) & (t["alpha_lo"] == a)].iloc[0]
        assert row["mean"] == pytest.approx(m), (T, a)
    assert (f["best_cell"]["temperature"], f["best_cell"]["alpha"]) == ("4", "0.9")
    assert f["best_cell"]["n"] == len(BEST_VAL)
    assert f["cell_mean_range"] == pytest.approx(max(cells.values()) - min(cells.values()))
    top = sorted(list(GRID.values()) + BEST_VAL, reverse=True)[:5]
    assert f["top_k_spread"] == pytest.approx(top[0] - top[-1])
    assert f["flat"] is (top[0] - top[-1] <= 0.01)
    assert f["temperature_marginal"]["1"] == pytest.approx(np.mean([GRID[(1, a)] for a in (.1, .5, .9)]))


def test_temperature_alpha_bins_continuous_values():
    from analysis import temperature_alpha_map

    rng = np.random.default_rng(0)
    T = rng.uniform(1, 20, 40)
    a = rng.uniform(0, 1, 40)
    f = frame([{"temperature": x, "alpha": y, "val_acc": 0.5 + 0.1 * y, "teacher": f"t{i % 20}"}
               for i, (x, y) in enumerate(zip(T, a))])
    ans = temperature_alpha_map(f, n_bins=4)
    t = ans.table
    assert t["n"].sum() == 40 and t["T_bin"].nunique() <= 4 and t["alpha_bin"].nunique() <= 4
    assert ans.by_student["s"]["scope"] == "all"
    # the best cell is in the top alpha bin (val_acc grows with alpha by construction)
    assert t.loc[t["mean"].idxmax(), "alpha_hi"] == pytest.approx(a.max())


def test_kd_gain_welch_matches_scipy(df):
    from analysis import kd_gain

    ans = kd_gain(df)
    for metric, kd_vals, base_vals in (("val_acc", BEST_VAL, BASE_VAL), ("test_acc", BEST_TEST, BASE_TEST)):
        st = ans.by_student[S1][metric]
        ref = stats.ttest_ind(kd_vals, base_vals, equal_var=False)
        ci = ref.confidence_interval(0.95)
        d, lo, hi, p = welch_by_hand(kd_vals, base_vals)
        assert st["test"] == "Welch t"
        assert st["diff"] == pytest.approx(np.mean(kd_vals) - np.mean(base_vals)) == pytest.approx(d)
        assert (st["ci_low"], st["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
        assert (st["ci_low"], st["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
        assert st["p_value"] == pytest.approx(ref.pvalue) == pytest.approx(p)
        assert st["n_kd"] == 5 and st["n_base"] == 5
        assert st["verdict"].startswith("gain")
    cfg = ans.by_student[S1]["config"]
    assert (cfg["teacher"], cfg["teacher_stop_epoch"], cfg["temperature"], cfg["alpha"]) == ("t3", 20, 4, .9)
    # a 90% interval is narrower
    st90 = kd_gain(df, confidence=0.90).by_student[S1]["val_acc"]
    ci90 = stats.ttest_ind(BEST_VAL, BASE_VAL, equal_var=False).confidence_interval(0.90)
    assert (st90["ci_low"], st90["ci_high"]) == (pytest.approx(ci90.low), pytest.approx(ci90.high))


def test_kd_gain_paired_when_same_seeds(df):
    from analysis import kd_gain

    st = kd_gain(df).by_student[S2]["val_acc"]
    ref = stats.ttest_rel(S2_BEST_VAL, S2_BASE_VAL)
    ci = ref.confidence_interval(0.95)
    diffs = np.subtract(S2_BEST_VAL, S2_BASE_VAL)
    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert st["test"] == "paired t"
    assert st["diff"] == pytest.approx(diffs.mean())
    assert (st["ci_low"], st["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert st["ci_low"] == pytest.approx(diffs.mean() - half)
    assert st["p_value"] == pytest.approx(ref.pvalue)
    assert st["p_value_welch"] == pytest.approx(stats.ttest_ind(S2_BEST_VAL, S2_BASE_VAL, equal_var=False).pvalue)


def test_confirmation_runs_stay_out_of_the_search_sections(df):
    """A confirmation seed answers only the confirmed cells: planted confirm runs of the best config (and
    CE confirm runs) that would win every choice and move every mean leave the search's answers as they were."""
    from analysis import capacity_curve, kd_gain, sweet_spot

    best = df[(df["student"] == S1) & (df["teacher"] == "t3") & np.isclose(df["val_acc"].astype(float), BEST_VAL[0])]
    base = df[(df["student"] == S1) & (df["kind"] == tr.KIND_BASELINE)]
    assert len(best) == 1 and len(base) == len(BASE_SEEDS)
    fresh = pd.concat([best.assign(seed=str(100 + i), val_acc=.99, test_acc=.99, run_id=f"c{i}") for i in range(4)]
                      + [base.assign(kind=tr.KIND_CONFIRM, val_acc=.10, test_acc=.10,
                                     run_id=[f"b{i}" for i in range(len(base))])])
    fresh["kind"] = tr.KIND_CONFIRM
    both = pd.concat([df, fresh], ignore_index=True)
    g0, g1 = kd_gain(df).by_student[S1]["val_acc"], kd_gain(both).by_student[S1]["val_acc"]
    assert (g1["n_kd"], g1["n_base"], g1["diff"]) == (g0["n_kd"], g0["n_base"], pytest.approx(g0["diff"]))
    assert g1["diff"] == pytest.approx(np.mean(BEST_VAL) - np.mean(BASE_VAL))
    s0, s1 = sweet_spot(df), sweet_spot(both)
    pd.testing.assert_frame_equal(s0, s1)
    assert s1.loc[s1["student"] == S1, "val_acc"].item() == pytest.approx(BEST_VAL[0])
    pd.testing.assert_frame_equal(capacity_curve(df).table, capacity_curve(both).table)


def test_kd_gain_single_seed_says_not_enough_seeds(df):
    from analysis import kd_gain

    st = kd_gain(df).by_student[S3]["val_acc"]
    assert st["diff"] == pytest.approx(.55 - .50)
    assert math.isnan(st["ci_low"]) and math.isnan(st["p_value"]) and st["test"] is None
    assert "not enough seeds" in st["verdict"]


def test_kd_gain_overlapping_arms_are_flagged():
    from analysis import kd_gain

    kd_vals, base_vals = [.70, .74, .72], [.69, .73, .715]
    f = frame([{"seed": s, "val_acc": v} for s, v in enumerate(kd_vals)]
              + [{"seed": 10 + s, "val_acc": v, "teacher": "none", "method": "ce", "kind": "baseline",
                  "teacher_params": math.nan, "temperature": math.nan, "alpha": math.nan}
                 for s, v in enumerate(base_vals)])
    st = kd_gain(f).by_student["s"]["val_acc"]
    ci = stats.ttest_ind(kd_vals, base_vals, equal_var=False).confidence_interval(0.95)
    assert (st["ci_low"], st["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert ci.low < 0 < ci.high
    assert st["arms_overlap"] is True
    assert st["verdict"].startswith("inconclusive") and "overlap" in st["verdict"]


def test_diagnostics_vs_teacher_size(df):
    from analysis import diagnostics

    ans = diagnostics(df)
    t = ans.table[ans.table["student"] == S1]
    assert t["kd_agreement"].tolist() == pytest.approx([AGREE[x] for x in ["t1", "t2", "t3", "t4"]])
    assert t["train_kd"].tolist() == pytest.approx([KD_LOSS[x] for x in ["t1", "t2", "t3", "t4"]])
    f = ans.by_student[S1]
    x = list(TEACHERS.values())
    rho = stats.spearmanr(x, [AGREE[k] for k in TEACHERS]).statistic
    assert f["spearman_agreement_vs_params"] == pytest.approx(rho)
    assert f["spearman_agreement_vs_params"] == pytest.approx(-1.0)
    assert f["spearman_kd_loss_vs_params"] == pytest.approx(1.0)
    assert f["lowest_agreement_teacher"] == "t4"


def test_sweet_spot_uses_final_val_acc_only(df):
    from analysis import sweet_spot

    sp = sweet_spot(df).set_index("student")
    r = sp.loc[S1]
    # not t2@10 (best_val_acc .90), not t2@20 (test .95), not any non-completed run
    assert (r["teacher"], r["teacher_stop_epoch"], r["temperature"], r["alpha"]) == ("t3", 20, 4, .9)
    assert r["val_acc"] == pytest.approx(BEST_VAL[0]) and r["test_acc"] == pytest.approx(BEST_TEST[0])
    assert r["val_acc_mean"] == pytest.approx(np.mean(BEST_VAL)) and r["n_seeds"] == 5
    assert r["baseline_val_acc"] == pytest.approx(np.mean(BASE_VAL))
    r2 = sp.loc[S2]
    assert (r2["teacher"], r2["alpha"]) == ("t3", .5) and r2["val_acc"] == pytest.approx(max(S2_BEST_VAL))
    assert sp.loc[S3]["teacher"] == "t1"


def test_param_importance_on_runs(df):
    from analysis import param_importance

    a1 = param_importance(df, seed=0)
    f = a1.by_student[S1]
    assert f["note"] is None
    assert set(f["importances"]) == {"temperature", "alpha", "teacher_params", "teacher_stop_epoch"}
    assert sum(f["importances"].values()) == pytest.approx(1.0)
    assert all(v >= 0 for v in f["importances"].values())
    assert param_importance(df, seed=0).by_student[S1]["importances"] == f["importances"]   # seeded
    assert "not enough completed trials" in a1.by_student[S3]["note"] and a1.by_student[S3]["importances"] == {}


def test_param_importance_finds_the_planted_driver():
    from analysis import param_importance

    rng = np.random.default_rng(1)
    rows = [{"temperature": float(rng.uniform(1, 20)), "alpha": float(a), "val_acc": 0.5 + 0.4 * float(a)}
            for a in rng.uniform(0, 1, 30)]
    imp = param_importance(frame(rows), seed=0).by_student["s"]["importances"]
    assert set(imp) == {"temperature", "alpha"}
    assert imp["alpha"] > 0.8 > imp["temperature"]


# ================================================================ one source of truth: configs from what was logged

EXP2 = "one_source_of_truth"
TT_VAL = {2: .80, 3: .78}     # S1, t3@20, T=4, alpha=.9, seed 0: the two runs differ only in teacher_temperature
LR_VAL = {0.05: .70, 0.1: .72}  # S2, t1@30, seed 0: the two runs differ only in student.lr
SEED_VAL = [.60, .62]         # S3, t2@30: one config, seeds 0 and 1
NEW_AXIS = "student.ema_decay"  # a param no list in kdx names: it keys configs all the same


def one_truth_trials() -> list[dict]:
    out = [_trial(teacher="t3", stop=20, val=v, params={"teacher_temperature": tt}, metrics={"train_hint": .3})
           for tt, v in TT_VAL.items()]
    out += [_trial(student=S2, student_params=S2_PARAMS, teacher="t1", stop=30, val=v, params={"student.lr": lr})
            for lr, v in LR_VAL.items()]
    out += [_trial(student=S3, student_params=300, teacher="t2", stop=30, seed=seed, val=v, params={NEW_AXIS: .99})
            for seed, v in enumerate(SEED_VAL)]
    return out


@pytest.fixture(scope="module")
def truth(store):
    """The trials of EXP2, logged to the same SQLite store and read back with `load_trials`."""
    from analysis import load_trials

    log_experiment(store, EXP2, "artifacts2", one_truth_trials())
    return load_trials(EXP2, store["uri"])


def log_experiment(store, name: str, artifacts: str, trials: list[dict]) -> str:
    """A second experiment in the store's database: a search parent run and `trials` under it; its id."""
    client = store["client"]
    exp_id = client.create_experiment(name, artifact_location=(store["dir"] / artifacts).as_uri())
    parent = client.create_run(exp_id, run_name="search", tags={tr.ROLE_TAG: tr.ROLE_SEARCH})
    for i, t in enumerate(trials):
        _log_trial(client, exp_id, parent.info.run_id, i, t)
    return parent.info.run_id


def test_load_trials_keeps_every_logged_param_and_metric(truth):
    from analysis import config_columns, param_columns

    assert pd.api.types.is_float_dtype(truth["student.lr"])
    assert sorted(truth["student.lr"].unique()) == [0.05, 0.1]
    assert pd.api.types.is_float_dtype(truth["teacher_temperature"])
    assert truth.loc[truth["student"] == S2, "teacher_temperature"].isna().all()          # "none" -> NaN
    assert (truth["student.schedule"] == "cosine").all()                                  # not a number: as logged
    assert pd.api.types.is_float_dtype(truth[NEW_AXIS]) and truth[NEW_AXIS].notna().sum() == len(SEED_VAL)
    assert pd.api.types.is_float_dtype(truth["train_hint"])                               # a method's loss term
    assert truth.loc[truth["teacher_temperature"] == 2, "train_hint"].tolist() == pytest.approx([.3])
    params = param_columns(truth)
    assert set(params) == set(tr.TRIAL_PARAMS) | {NEW_AXIS}                               # params only, no metric
    assert set(config_columns(truth)) == set(params) - {tr.SEED_PARAM, *tr.DERIVED_PARAMS}


def test_runs_differing_in_one_logged_value_are_not_pooled(truth):
    """Regression (issue "one source of truth"): a hand-written config key pooled these as seeds."""
    from analysis.sweetspot import capacity_curve, completed, summary

    c = completed(truth)
    assert c.loc[c["student"] == S1, "config"].nunique() == len(TT_VAL)
    assert c.loc[c["student"] == S2, "config"].nunique() == len(LR_VAL)
    assert c.loc[c["student"] == S3, "config"].nunique() == 1                           # two seeds, one config
    cap = capacity_curve(truth).table.set_index("student")
    assert cap.loc[S1, "n_seeds"] == 1 and cap.loc[S1, "val_acc_mean"] == pytest.approx(TT_VAL[2])
    assert math.isnan(cap.loc[S1, "val_acc_std"])
    assert cap.loc[S2, "n_seeds"] == 1 and cap.loc[S2, "val_acc_mean"] == pytest.approx(LR_VAL[0.1])
    assert cap.loc[S3, "n_seeds"] == 2 and cap.loc[S3, "val_acc_mean"] == pytest.approx(np.mean(SEED_VAL))
    assert cap.loc[S3, "val_acc_std"] == pytest.approx(np.std(SEED_VAL, ddof=1))
    students = {s["student"]: s for s in summary(truth)["students"]}
    assert students[S1]["n_seeds"] == 1 and students[S1]["val_acc_mean"] == pytest.approx(TT_VAL[2])
    assert students[S1]["other_config"] == {"teacher_temperature": 2}                    # the searched value, shown
    assert students[S2]["n_seeds"] == 1 and students[S2]["other_config"] == {"student.lr": 0.1}
    assert students[S3]["n_seeds"] == 2 and students[S3]["other_config"] == {}


def test_cell_configs_keep_configs_apart_by_every_logged_value(truth):
    from analysis import cell_configs, config_columns

    cells = ["student", "teacher_temperature", "student.lr", NEW_AXIS]  # one cell per distinct config here
    configs, missing = cell_configs(truth, cells)
    assert missing == [] and len(configs) == len(TT_VAL) + len(LR_VAL) + 1               # S3's two seeds: one config
    for c in configs:
        assert list(c) == config_columns(truth) + ["from_status"]                        # no seed, no derived params
        assert c["from_status"] == "completed"
    assert sorted(c["teacher_temperature"] for c in configs if c["student"] == S1) == sorted(TT_VAL)
    assert sorted(c["student.lr"] for c in configs if c["student"] == S2) == sorted(LR_VAL)
    (s3,) = [c for c in configs if c["student"] == S3]
    assert s3[NEW_AXIS] == pytest.approx(.99) and s3["teacher"] == "t2"
    first = next(c for c in configs if c["teacher_temperature"] == 2)
    assert {k: first[k] for k in ("dataset", "student", "teacher", "teacher_stop_epoch", "method", "temperature",
                                  "alpha", "kd_stop_epoch", "epochs", "epsilon", NEW_AXIS)} == {
        "dataset": "mnist1d", "student": S1, "teacher": "t3", "teacher_stop_epoch": 20, "method": "kd",
        "temperature": 4, "alpha": .9, "kd_stop_epoch": None, "epochs": EPOCHS, "epsilon": None, NEW_AXIS: None}
    assert type(first["teacher_stop_epoch"]) is int and first["student.schedule"] == "cosine"
    # per student only: each student's best config, by val_acc (or the lowest, with mode "min")
    best, _ = cell_configs(truth, ["student"])
    assert {c["student"]: c["teacher_temperature"] for c in best}[S1] == 2
    assert {c["student"]: c["student.lr"] for c in best}[S2] == 0.1
    worst, _ = cell_configs(truth, ["student"], mode="min")
    assert {c["student"]: c["student.lr"] for c in worst}[S2] == 0.05


def test_a_frame_read_back_from_csv_keys_configs_the_same(truth, tmp_path):
    from analysis import cell_configs, completed, config_columns

    truth.to_csv(tmp_path / "trials.csv", index=False)
    back = pd.read_csv(tmp_path / "trials.csv")
    assert config_columns(back) == config_columns(truth)
    assert completed(back)["config"].tolist() == completed(truth)["config"].tolist()
    assert ([c["student"] for c in cell_configs(back, ["student", "student.lr"])[0]]
            == [c["student"] for c in cell_configs(truth, ["student", "student.lr"])[0]])


def test_best_trial_ties_go_to_the_first_logged():
    from analysis import best_trial

    f = frame([{"teacher": "a", "val_acc": .7}, {"teacher": "b", "val_acc": .8}, {"teacher": "c", "val_acc": .8}])
    assert best_trial(f, "val_acc")["teacher"] == "b"                                     # frame order
    f["start_time"] = pd.to_datetime([3, 2, 1], unit="s", utc=True)
    assert best_trial(f, "val_acc")["teacher"] == "c"                                     # logged first
    assert best_trial(f, "val_acc", mode="min")["teacher"] == "a"


def test_param_importance_takes_every_varied_config_param():
    from analysis import param_importance

    rng = np.random.default_rng(2)
    schedule = rng.choice(["cosine", "step"], 30)
    f = frame([{"val_acc": .5 + (.3 if s == "cosine" else 0) + .01 * float(rng.standard_normal())} for s in schedule])
    f["student.schedule"], f["student.lr"] = schedule, rng.uniform(.01, .1, len(f))
    f["teacher"] = ["t1", "t2"] * (len(f) // 2)     # same teacher_params: the size axis cannot tell them apart
    imp = param_importance(f, seed=0).by_student["s"]["importances"]
    assert set(imp) == {"student.schedule", "student.lr", "teacher"}
    assert imp["student.schedule"] > .5


# ================================================================ cells.py: the confirmed answer, scripted

CONFIRMED_EXP = "capacity_gap_confirmed"
CONFIRM_SEEDS = [100, 101, 102, 103, 104]
CONFIRM_NOISE = np.array([.01, -.02, .015, 0., -.005])   # a per-seed effect every arm shares (pairing)
# cell -> (test_acc level, per-seed jitter); val_acc = test_acc + .01. t3@20 is the best; t4@10 lies within
# the noise of it (paired differences .005 + [.01, -.012, .008, -.009, .003]); t2@20 is clearly worse
CONFIRM_CELLS = {("t3", 20): (.84, np.array([.005, -.006, .004, -.0045, .0015])),
                 ("t4", 10): (.835, np.array([-.005, .006, -.004, .0045, -.0015])),
                 ("t2", 20): (.75, np.array([0., .004, -.003, .002, -.001]))}
CONFIRM_CE = .70


def confirm_trials() -> list[dict]:
    """The confirmation stage of a search of S1: every cell's config over fresh seeds, the CE baseline with
    the same seeds, and one search trial of a cell that was never confirmed (t1@30)."""
    out = [_trial(teacher="t1", stop=30, val=.70)]
    for (teacher, stop), (level, jitter) in CONFIRM_CELLS.items():
        out += [_trial(teacher=teacher, stop=stop, seed=seed, kind=tr.KIND_CONFIRM, val=level + n + j + .01,
                       test=level + n + j) for seed, n, j in zip(CONFIRM_SEEDS, CONFIRM_NOISE, jitter)]
    out += [_trial(teacher=None, seed=seed, kind=tr.KIND_CONFIRM, method="ce", val=CONFIRM_CE + n + .01,
                   test=CONFIRM_CE + n) for seed, n in zip(CONFIRM_SEEDS, CONFIRM_NOISE)]
    return out


@pytest.fixture(scope="module")
def confirmed_store(store):
    """A second experiment in the store's database: a search whose confirmation stage ran."""
    store["client"].set_terminated(log_experiment(store, CONFIRMED_EXP, "confirmed", confirm_trials()), "FINISHED")
    return {"uri": store["uri"], "experiment": CONFIRMED_EXP}


def test_load_answer_is_the_confirmed_cells_of_the_logged_runs(confirmed_store):
    import analysis
    from analysis import confirmed_cells, load_answer, load_trials

    assert {"confirmed_cells", "load_answer"} <= set(analysis.__all__)
    ans = load_answer(confirmed_store["experiment"], confirmed_store["uri"])
    direct = confirmed_cells(load_trials(confirmed_store["experiment"], confirmed_store["uri"]), 0.95)
    pd.testing.assert_frame_equal(ans.table, direct.table)
    assert json.dumps(ans.by_student, sort_keys=True) == json.dumps(direct.by_student, sort_keys=True)

    f = ans.by_student[S1]
    assert f["confirmed"] and f["n_cells"] == len(CONFIRM_CELLS) and f["unconfirmed"] == 1
    assert (f["best"]["teacher"], f["best"]["teacher_stop_epoch"], f["best"]["n_seeds"]) == ("t3", 20, 5)
    assert f["best"]["test_mean"] == pytest.approx(np.mean(.84 + CONFIRM_NOISE))
    assert sorted(f["sweet_spot"]) == ["teacher=t3, teacher_stop_epoch=20", "teacher=t4, teacher_stop_epoch=10"]
    assert [s["label"] for s in f["separated"]] == ["teacher=t2, teacher_stop_epoch=20"]
    gain = f["kd_gain"]["test_acc"]           # paired over the 5 shared seeds: the shared noise cancels
    d = (.84 + CONFIRM_CELLS[("t3", 20)][1]) - CONFIRM_CE
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert gain["test"] == "paired t" and gain["diff"] == pytest.approx(d.mean())
    assert (gain["ci_low"], gain["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    t = ans.table.set_index("teacher")
    assert t.loc["t1", "status"] == "not confirmed yet" and bool(t.loc["t4", "in_sweet_spot"])
    assert not bool(t.loc["t2", "in_sweet_spot"])
    assert load_answer(confirmed_store["experiment"], confirmed_store["uri"], confidence=0.5).by_student[S1][
        "confidence"] == 0.5


# ================================================================ report.py, commands.py


def test_write_report_and_attach(store, df, tmp_path):
    from analysis import attach_to_parent, write_report

    paths = write_report(df, tmp_path / "out", "synthetic report")
    for key in ("markdown", "html", "csv", "summary", "capacity_curve", "stop_epoch_heatmap", "temperature_alpha",
                "kd_gain_forest", "diagnostics"):
        assert Path(paths[key]).is_file() and Path(paths[key]).stat().st_size > 0, key
    for key in ("capacity_curve", "stop_epoch_heatmap", "temperature_alpha", "kd_gain_forest", "diagnostics"):
        assert Path(paths[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = Path(paths["markdown"]).read_text()
    for heading in ("## Answer", "## Search summary (search runs, not confirmed)", "## 1. Trials by status", "## 2. Capacity gap", "## 3. Teacher stop epoch",
                    "## 4. Temperature and alpha", "## 5. KD gain", "## 6. Diagnostics", "## 7. Parameter importance",
                    "## 8. Method notes"):
        assert heading in md
    assert "rises then falls" in md and "not enough seeds" in md
    assert "is not the best teacher" in md
    page = Path(paths["html"]).read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page
    assert_balanced_html(page)
    for heading in ("Answer", "Search summary (search runs, not confirmed)", "1. Trials by status", "5. KD gain over the CE-only baseline"):
        assert f">{heading}</h2>" in page
    for name in ("capacity_curve.png", "stop_epoch_heatmap.png", "temperature_alpha.png", "kd_gain_forest.png"):
        assert f'src="{name}"' in page
    csv = pd.read_csv(paths["csv"])
    assert len(csv) == len(df) and set(csv["run_id"]) == set(df["run_id"])
    summ = json.loads(Path(paths["summary"]).read_text())
    assert {s["student"] for s in summ["students"]} == {S1, S2, S3}

    run_id = attach_to_parent(paths, EXP, store["uri"])
    assert run_id == store["parent"]
    listed = {Path(a.path).name for a in store["client"].list_artifacts(run_id, "analysis")}
    assert listed == {Path(p).name for p in paths.values()}


def test_cli_analyze_prints_summary_and_json(store, tmp_path, capsys):
    from kdx.cli import main

    out = tmp_path / "cli_out"
    rc = main(["analyze", EXP, "--tracking-uri", store["uri"], "--out", str(out), "--json"])
    text = capsys.readouterr().out
    assert rc == 0
    lines = text.strip().splitlines()
    result = json.loads(lines[-1])
    assert "NaN" not in lines[-1] and "Infinity" not in lines[-1]
    assert f"student {S1}: teacher t3 (stop epoch 20 of 30), T=4, alpha=0.9" in text
    assert "Welch t" in text and "not enough seeds" in text
    s1 = {s["student"]: s for s in result["students"]}[S1]
    assert (s1["teacher"], s1["teacher_stop_epoch"], s1["temperature"], s1["alpha"]) == ("t3", 20, 4, .9)
    assert s1["val_acc"] == pytest.approx(BEST_VAL[0]) and s1["test_acc"] == pytest.approx(BEST_TEST[0])
    g = s1["kd_gain"]["val_acc"]
    ci = stats.ttest_ind(BEST_VAL, BASE_VAL, equal_var=False).confidence_interval(0.95)
    assert (g["ci_low"], g["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    s3 = {s["student"]: s for s in result["students"]}[S3]
    assert s3["kd_gain"]["val_acc"]["ci_low"] is None           # NaN -> null
    assert result["trials"]["pruned"] == 1 and result["parent_run_id"] == store["parent"]
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    listed = {Path(a.path).name for a in store["client"].list_artifacts(store["parent"], "analysis")}
    assert "report.html" in listed and "trials.csv" in listed


def test_cli_analyze_unknown_experiment(tmp_path, monkeypatch, capsys):
    from kdx.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["analyze", "missing_search"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("kdx: error: experiment: got 'missing_search'; no MLflow experiment of that name at URI "
                          f"sqlite:///{tmp_path.resolve()}/kdx_runs/mlflow.db")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "kdx_runs").exists()


def test_html_renders_headless(df, tmp_path):
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("chromium not installed: apt-get install chromium to run the HTML render check")
    from analysis import write_report

    paths = write_report(df, tmp_path / "render", "render check")
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
                    Path(paths["html"]).resolve().as_uri()], check=True, timeout=120, capture_output=True)
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ================================================================ helpers for pure-frame tests


def frame(rows: list[dict]) -> pd.DataFrame:
    """A trials frame (as load_trials returns) from partial rows; defaults: completed KD runs of student 's'."""
    from analysis.runs import TRIAL_COLUMNS

    base = {c: math.nan for c in TRIAL_COLUMNS}
    base |= {"status": tr.COMPLETED, "kind": tr.KIND_SEARCH, "dataset": "d", "student": "s", "teacher": "t",
             "method": "kd", "teacher_stop_epoch": 30.0, "teacher_epochs": 30.0, "temperature": 4.0, "alpha": 0.9,
             "seed": 0.0, "teacher_params": 1e4, "student_params": 1e3, "capacity_ratio": 10.0, "epochs": 5.0,
             "test_acc": 0.5, "epochs_done": 5}
    out = []
    for i, r in enumerate(rows):
        row = base | {"run_id": f"r{i}", "run_name": f"r{i}"} | r
        out.append(row)
    return pd.DataFrame(out, columns=list(TRIAL_COLUMNS))


def test_report_on_thin_frames_says_so(tmp_path):
    from analysis import write_report

    cases = {
        "empty": (frame([]), "No completed distilled trials yet"),
        "baseline_only": (frame([{"teacher": "none", "method": "ce", "kind": "baseline", "val_acc": .5,
                                  "teacher_params": math.nan}]), "No completed distilled trials yet"),
        "pruned_only": (frame([{"status": "pruned", "val_acc": .9}]), "1 pruned"),
        "no_baseline": (frame([{"val_acc": .6}, {"val_acc": .7, "seed": 1.0}]), "no completed CE baseline runs"),
    }
    for name, (f, phrase) in cases.items():
        paths = write_report(f, tmp_path / name, name)
        md = Path(paths["markdown"]).read_text()
        assert phrase in md, name
        assert Path(paths["html"]).is_file() and Path(paths["csv"]).is_file()


def assert_balanced_html(page: str) -> None:
    """Every opened element is closed in order (void elements excepted): a stand-in for a browser."""
    from html.parser import HTMLParser

    void = {"meta", "img", "br", "hr", "link", "input"}

    class Checker(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack = []

        def handle_starttag(self, tag, attrs):
            if tag not in void:
                self.stack.append(tag)

        def handle_endtag(self, tag):
            assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
            self.stack.pop()

    c = Checker()
    c.feed(page)
    c.close()
    assert c.stack == []


def test_teachers_whose_trials_never_completed_are_named_not_plotted(tmp_path):
    """ASHA may stop every trial of a large teacher: it is off the curve, and the report says so."""
    from analysis import capacity_curve, write_report

    rows = [{"teacher": "t1", "teacher_params": 1e3, "val_acc": .5}, {"teacher": "t2", "teacher_params": 1e4, "val_acc": .6},
            {"teacher": "t9", "teacher_params": 1e6, "status": "pruned", "val_acc": .41, "epochs_done": 2},
            {"teacher": "t9", "teacher_params": 1e6, "status": "pruned", "val_acc": .44, "epochs_done": 3},
            {"teacher": "t9", "teacher_params": 1e6, "status": "diverged", "val_acc": .1, "epochs_done": 1}]
    ans = capacity_curve(frame(rows))
    f = ans.by_student["s"]
    assert f["teachers"] == ["t1", "t2"] and f["shape"] == "rises"
    assert f["teachers_not_completed"] == [{"teacher": "t9", "n_trials": 3, "statuses": {"pruned": 2, "diverged": 1},
                                            "best_val_acc": .44, "at_epoch": 3}]
    paths = write_report(frame(rows), tmp_path, "t")
    text = open(paths["markdown"]).read()
    assert "Not on the curve: `t9` had 3 trials and none completed (2 pruned, 1 diverged)" in text
