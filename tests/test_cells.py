"""The confirmed answers (analysis/cells.py) against independent computations written from the
formulas: Student-t intervals, paired differences, Holm's step-down correction; seeds counted once;
cells without a confirmed point shown as such; the words follow the intervals."""

import math

import numpy as np
import pytest
from cellframes import CE_LEVEL, LEVELS, NOISE, SEEDS, SPEC, ce, confirm_rows, frame, kd

from analysis.cells import confirmed_cells, headline_metrics, holm
from analysis.words import confirmed_words
from explorer.spec.search import parse_spec
from trainables.plan import make_plan

@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    return make_plan(parse_spec(SPEC), str(tmp_path_factory.mktemp("teachers")))


def t_interval(x):
    """Mean +- t(0.975, n-1) * s / sqrt(n), by hand."""
    x = np.asarray(x, float)
    half = {4: 2.7764451051977987}[len(x) - 1] * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def test_every_cell_point_is_a_seed_mean_with_its_interval(plan):
    df = frame(plan, confirm_rows())
    ans = confirmed_cells(df)
    t = ans.table.set_index(["teacher", "teacher_stop_epoch"])
    for (teacher, stop), level in LEVELS.items():
        jitter = np.array([0.0, 0.004, -0.003, 0.002, -0.001]) * (1 if teacher != "cnn1d_w16" else 3)
        m, lo, hi = t_interval(level + NOISE + jitter)
        row = t.loc[(teacher, stop)]
        assert row["n_seeds"] == 5 and row["status"] == "confirmed"
        assert (row["test_mean"], row["test_low"], row["test_high"]) == pytest.approx((m, lo, hi), abs=1e-12)
        gm, glo, ghi = t_interval(level + jitter - CE_LEVEL)  # paired: the shared noise cancels
        assert (row["gain_test"], row["gain_test_low"], row["gain_test_high"]) == pytest.approx((gm, glo, ghi), abs=1e-9)


def test_a_seed_is_counted_once(plan):
    rows = confirm_rows()
    dup = (kd("cnn1d_w8", 3, seed=100), "confirm", "completed", 0.10, 0.10)  # the same seed logged again
    df = frame(plan, rows + [dup])
    row = confirmed_cells(df).table.set_index(["teacher", "teacher_stop_epoch"]).loc[("cnn1d_w8", 3)]
    assert row["n_seeds"] == 5
    assert row["test_mean"] == pytest.approx(np.mean(LEVELS[("cnn1d_w8", 3)] + NOISE + [0, .004, -.003, .002, -.001]))


def test_sweet_spot_is_every_cell_not_significantly_worse_holm_corrected(plan):
    ans = confirmed_cells(frame(plan, confirm_rows()))
    f = ans.by_student["cnn1d_w4"]
    assert f["best"]["teacher"] == "cnn1d_w8" and f["best"]["teacher_stop_epoch"] == 3
    assert sorted(f["sweet_spot"]) == ["teacher=cnn1d_w16, teacher_stop_epoch=3", "teacher=cnn1d_w8, teacher_stop_epoch=3"]
    assert sorted(s["label"] for s in f["separated"]) == ["teacher=cnn1d_w32, teacher_stop_epoch=3",
                                                         "teacher=cnn1d_w8, teacher_stop_epoch=2"]
    # the worse-by interval of w32 is the paired val difference best - w32, by hand
    base_j = np.array([0.0, 0.004, -0.003, 0.002, -0.001])
    d = (0.70 + base_j) - (0.62 + base_j)
    w32 = next(s for s in f["separated"] if "w32" in s["label"])
    assert w32["worse_by"] == pytest.approx(d.mean())
    # KD gain of the best cell: paired over the 5 shared seeds
    g = f["kd_gain"]["test_acc"]
    m, lo, hi = t_interval(0.70 + base_j - CE_LEVEL)
    assert g["test"] == "paired t" and (g["diff"], g["ci_low"], g["ci_high"]) == pytest.approx((m, lo, hi))
    h = headline_metrics(ans)
    assert h["kd_gain_test_low"] == pytest.approx(lo) and h["best_n_seeds"] == 5 and h["sweet_spot_cells"] == 2


def test_the_answer_does_not_depend_on_the_order_the_runs_come_back_in(plan):
    """MLflow returns runs in whatever order: the answer (best cell, the sweet spot's listing, the separated
    cells, the words) is the same for every order of the same runs."""
    df = frame(plan, confirm_rows())
    want = confirmed_cells(df).by_student
    assert len(want["cnn1d_w4"]["sweet_spot"]) == 2  # an order to get wrong
    for seed in range(4):
        got = confirmed_cells(df.sample(frac=1.0, random_state=seed).reset_index(drop=True)).by_student
        assert got == want
        assert confirmed_words(got) == confirmed_words(want)


def test_holm_matches_the_step_down_rule_by_hand():
    p = [0.01, 0.04, 0.03, float("nan")]
    # m = 4 comparisons (the NaN counts): sorted 0.01*4, 0.03*3, 0.04*2, running maximum
    assert holm(p)[:3] == pytest.approx([0.04, 0.09, 0.09]) and math.isnan(holm(p)[3])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_indistinguishable_cells_are_said_to_be_so(plan):
    rows = []
    for teacher in ("cnn1d_w8", "cnn1d_w16"):
        for seed, n in zip(SEEDS, NOISE):
            j = 0.02 * ((seed + (teacher == "cnn1d_w16")) % 2 - 0.5)  # noise that does not favour either
            rows.append((kd(teacher, 3, seed=seed), "confirm", "completed", 0.7 + n + j, 0.7 + n + j))
    for seed, n in zip(SEEDS, NOISE):
        rows.append((ce(seed), "confirm", "completed", 0.7 + n, 0.7 + n))
    ans = confirmed_cells(frame(plan, rows))
    f = ans.by_student["cnn1d_w4"]
    assert len(f["sweet_spot"]) == 2 and not f["separated"]
    words = " ".join(confirmed_words(ans.by_student))
    assert "cannot be separated" in words and "rises" not in words and "falls" not in words
    assert "inconclusive" in words or "interval includes 0" in words


def test_cells_without_a_confirmed_point_say_why(plan):
    rows = confirm_rows() + [
        (kd("cnn1d_w32", 2, t=12.0, a=0.95), "search", "pruned", 0.11, 0.1),
        (kd("cnn1d_w16", 2, t=10.0, a=0.9, seed=1), "search", "diverged", math.nan, math.nan),
        (kd("cnn1d_w16", 2, t=14.0, a=0.9, seed=0), "search", "diverged", math.nan, math.nan),
    ]
    params = {"teachers": "cnn1d_w8,cnn1d_w16,cnn1d_w32,cnn1d_w64", "teacher_stop_epochs": "2,3"}
    t = confirmed_cells(frame(plan, rows, params)).table.set_index(["teacher", "teacher_stop_epoch"])
    assert t.loc[("cnn1d_w32", 2), "status"] == "not confirmed yet"  # `kdx confirm` takes its best pruned trial
    assert t.loc[("cnn1d_w16", 2), "status"] == "search: 2 diverged"
    assert t.loc[("cnn1d_w64", 2), "status"] == t.loc[("cnn1d_w64", 3), "status"] == "not tried"
    assert len(t) == 8  # 4 confirmed + 4 without a point, none twice


def test_without_confirmation_the_words_say_the_numbers_are_leads(plan):
    rows = [(kd("cnn1d_w8", 3, seed=0), "search", "completed", 0.7, 0.7)]
    ans = confirmed_cells(frame(plan, rows))
    assert not ans.by_student["cnn1d_w4"]["confirmed"] and headline_metrics(ans) == {}
    assert "no confirmed cells yet" in confirmed_words(ans.by_student)[0]


def test_the_confirmation_takes_each_cells_best_trial_pruned_only_cells_included(plan):
    from analysis.configs import cell_configs

    rows = [(kd("cnn1d_w8", 3, t=2.0, seed=0), "search", "completed", 0.6, 0.6),
            (kd("cnn1d_w8", 3, t=4.0, seed=1), "search", "completed", 0.7, 0.5),  # best on val, not on test
            (kd("cnn1d_w8", 3, t=8.0, seed=0), "search", "pruned", 0.9, 0.9),  # a pruned trial never beats a completed one
            (kd("cnn1d_w16", 3, t=8.0, seed=0), "search", "pruned", 0.30, 0.3),
            (kd("cnn1d_w16", 3, t=6.0, seed=1), "search", "pruned", 0.35, 0.3),
            (kd("cnn1d_w32", 3, t=6.0, seed=1), "search", "diverged", math.nan, math.nan),
            (kd("cnn1d_w32", 2, t=3.0, seed=0), "confirm", "completed", 0.99, 0.99)]  # confirm runs are not candidates
    configs, missing = cell_configs(frame(plan, rows), ["teacher", "teacher_stop_epoch"])
    assert [(c["teacher"], c["teacher_stop_epoch"], c["temperature"], c["from_status"]) for c in configs] == [
        ("cnn1d_w16", 3, 6.0, "pruned"), ("cnn1d_w8", 3, 4.0, "completed")]
    assert missing == [{"teacher": "cnn1d_w32", "teacher_stop_epoch": 3, "statuses": {"diverged": 1}}]



def test_a_config_with_several_seeds_is_ranked_by_their_mean(plan):
    """A fused search trial (`search.fuse_seeds`) logs one run per seed: its config competes with its
    mean, so one lucky seed does not make a config the cell's best."""
    from analysis.configs import cell_configs

    rows = [(kd("cnn1d_w8", 3, t=2.0, seed=0), "search", "completed", 0.90, 0.9),  # the best single run...
            (kd("cnn1d_w8", 3, t=2.0, seed=1), "search", "completed", 0.50, 0.5),  # ...of a config whose mean is 0.70
            (kd("cnn1d_w8", 3, t=4.0, seed=0), "search", "completed", 0.76, 0.7),
            (kd("cnn1d_w8", 3, t=4.0, seed=1), "search", "completed", 0.74, 0.7)]
    configs, _ = cell_configs(frame(plan, rows), ["teacher", "teacher_stop_epoch"])
    assert [c["temperature"] for c in configs] == [4.0]
