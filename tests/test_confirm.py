"""`kdx confirm` re-runs the best configs at every searched value (regression: it used to key configs
on a fixed tuple, so a searched teacher_temperature was dropped and re-run at the method's default).

The trials frame here is what the analysis reads back from MLflow for trials that logged exactly the
params a search logs (`plan.settings`, formatted as the MLflow callback formats them)."""

import math

import pandas as pd
import pytest

from analysis.configs import cell_configs
from analysis.runs import param_values
from explorer.spec.search import parse_spec
from explorer.tracking import TRIAL_PARAMS
from trainables.confirm import confirm_points
from trainables.plan import make_plan

SPEC = {
    "name": "confirm_tt",
    "student": {"arch": {"choice": ["cnn1d_w4", "cnn1d_w8"]}, "lr": {"loguniform": [0.01, 0.2]}, "epochs": 3},
    "teachers": {"archs": ["cnn1d_w16"], "recipe": {"epochs": 3}},
    "distill": {"method": "kd", "temperature": 4.0, "teacher_temperature": {"uniform": [0.5, 4.0]}},
    "seeds": [0, 1],
}


def logged_frame(plan, points: list[dict], val_accs: list[float]) -> pd.DataFrame:
    rows = []
    for i, (point, val) in enumerate(zip(points, val_accs)):
        s = plan.settings(point)
        params = {k: "none" if s[k] is None else str(s[k]) for k in TRIAL_PARAMS}  # as MLflow holds them
        rows.append({"run_id": f"r{i}", "status": "completed", "kind": "search", "val_acc": val, "test_acc": val,
                     "start_time": pd.Timestamp(i, unit="s", tz="UTC")} | params)
    df = pd.DataFrame(rows)
    for c in TRIAL_PARAMS:
        df[c] = param_values(df[c])
    df.attrs["param_columns"] = list(TRIAL_PARAMS)
    return df


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    return make_plan(parse_spec(SPEC), str(tmp_path_factory.mktemp("teachers")))


def test_confirm_reruns_every_searched_value(plan):
    spec = plan.spec
    points = [{"teacher_temperature": 0.7, "student": "cnn1d_w8", "student.lr": 0.03, "seed": 0},
              {"teacher_temperature": 3.1, "student": "cnn1d_w8", "student.lr": 0.03, "seed": 0},
              {"teacher_temperature": 3.1, "student": "cnn1d_w4", "student.lr": 0.15, "seed": 1}]
    df = logged_frame(plan, points, [0.61, 0.70, 0.65])
    assert spec.cell_params() == ["student", "teacher", "teacher_stop_epoch"]  # every student has its own cells
    configs, missing = cell_configs(df, spec.cell_params(), "val_acc", "max")
    # each student's best (cnn1d_w4 first): w8's 0.70 run beats its 0.61 one at another teacher_temperature
    assert [(c["student"], c["teacher_temperature"]) for c in configs] == [("cnn1d_w4", 3.1), ("cnn1d_w8", 3.1)]
    assert missing == []
    out = confirm_points(spec, configs, [0, 1])
    kd = [p for p in out if p.get("method") != "ce"]
    assert len(kd) == 4 and {p["seed"] for p in kd} == {0, 1}
    settings = plan.settings(kd[2])
    # re-run at the searched values, not at the method's default (none) or the spec's first value
    assert settings["teacher_temperature"] == 3.1 and settings["method_params"]["teacher_temperature"] == 3.1
    assert settings["student"] == "cnn1d_w8" and math.isclose(settings["train"].lr, 0.03)
    second = plan.settings(kd[0])
    assert second["student"] == "cnn1d_w4" and math.isclose(second["train"].lr, 0.15)
    # one CE baseline per seed for each config's own student values
    base = [p for p in out if p.get("method") == "ce"]
    assert sorted((p["student"], p["student.lr"], p["seed"]) for p in base) == [
        ("cnn1d_w4", 0.15, 0), ("cnn1d_w4", 0.15, 1), ("cnn1d_w8", 0.03, 0), ("cnn1d_w8", 0.03, 1)]
    assert plan.settings(base[0])["train"].method == "ce"


def test_confirm_fuses_the_seeds_of_configs_where_it_pays(plan, tmp_path):
    """confirm.fuse auto: a config's seeds are one fused trial for 1-D CNNs on CPU; not for resnets on CPU
    (slower there, benchmarks/fused_speed.py), nor for methods that cannot fuse, nor with fuse: false."""
    spec = plan.spec
    config = {"teacher_temperature": 3.1, "student": "cnn1d_w8", "student.lr": 0.03}
    out = confirm_points(spec, [config], [5, 6], plan)
    assert out == [config | {"seed": 5, "members": [5, 6]},
                   {"student": "cnn1d_w8", "student.lr": 0.03, "method": "ce", "teacher": "none", "seed": 5,
                    "members": [5, 6]}]
    off = make_plan(parse_spec(SPEC | {"confirm": {"seeds": [5, 6], "fuse": False}}), str(tmp_path))
    assert [p["seed"] for p in confirm_points(off.spec, [config], [5, 6], off)] == [5, 6, 5, 6]
    images = {"name": "img", "dataset": {"name": "fake"}, "student": {"arch": "resnet8", "epochs": 2},
              "teachers": {"archs": ["resnet14"], "recipe": {"epochs": 2}}, "distill": {"method": "kd"}, "seeds": [0]}
    for fuse, fused in (("auto", False), (True, True)):
        p = make_plan(parse_spec(images | {"confirm": {"seeds": [5, 6], "fuse": fuse}}), str(tmp_path))
        assert all(("members" in q) == fused for q in confirm_points(p.spec, [{}], [5, 6], p)), fuse
    bss = make_plan(parse_spec(SPEC | {"distill": {"method": "bss"}}), str(tmp_path))
    points = confirm_points(bss.spec, [{"student": "cnn1d_w8", "student.lr": 0.03}], [5, 6], bss)
    assert [("members" in q, q.get("method")) for q in points] == [(False, None), (False, None), (True, "ce")]


def test_confirm_fuses_configs_of_one_student_recipe_up_to_members_per_trial(tmp_path):
    """Configs that differ only in what a fused member may have of its own (lr, T, teacher temperature)
    share a trial, each member its own point; up to confirm.members_per_trial members (a config's seeds
    never split); another student architecture, or the CE baseline's method, is another trial."""
    a = {"teacher_temperature": 3.1, "student": "cnn1d_w8", "student.lr": 0.03}
    b = {"teacher_temperature": 0.7, "student": "cnn1d_w8", "student.lr": 0.1}
    c = {"teacher_temperature": 1.5, "student": "cnn1d_w4", "student.lr": 0.03}
    d = {"teacher_temperature": 2.0, "student": "cnn1d_w8", "student.lr": 0.05}
    p = make_plan(parse_spec(SPEC | {"confirm": {"seeds": [5, 6]}}), str(tmp_path))
    out = confirm_points(p.spec, [a, b, c, d], [5, 6], p)
    assert out[0] == a | {"seed": 5, "members": [a | {"seed": 5}, a | {"seed": 6}, b | {"seed": 5}, b | {"seed": 6},
                                                  d | {"seed": 5}, d | {"seed": 6}]}
    assert out[1] == c | {"seed": 5, "members": [5, 6]}
    assert [q.get("method") for q in out[2:]] == ["ce", "ce"]  # the baselines at lr 0.03, 0.1, 0.05 share one
    assert [m["student.lr"] for m in out[2]["members"]] == [0.03, 0.03, 0.1, 0.1, 0.05, 0.05] and len(out) == 4
    capped = make_plan(parse_spec(SPEC | {"confirm": {"seeds": [5, 6], "members_per_trial": 5}}), str(tmp_path))
    groups = [[(m["teacher_temperature"], m["seed"]) for m in q["members"]] if isinstance(q["members"][0], dict)
              else [(q["teacher_temperature"], s) for s in q["members"]]
              for q in confirm_points(capped.spec, [a, b, c, d], [5, 6], capped)[:3]]
    assert groups == [[(3.1, 5), (3.1, 6), (0.7, 5), (0.7, 6)], [(1.5, 5), (1.5, 6)], [(2.0, 5), (2.0, 6)]]
    # each member trains its own config: plan.settings of its point
    from trainables.plan import member_points
    settings = [p.settings(m) for m in member_points(out[0])]
    assert [(s["teacher_temperature"], s["train"].lr, s["seed"]) for s in settings] == [
        (3.1, 0.03, 5), (3.1, 0.03, 6), (0.7, 0.1, 5), (0.7, 0.1, 6), (2.0, 0.05, 5), (2.0, 0.05, 6)]


def test_confirm_does_not_fuse_trials_that_run_evaluate_attacks(plan, tmp_path):
    """The attacks of `evaluate:` run on one model: such configs' seeds stay separate trials (and the
    settings that only tune an attack, robust_restarts, do not turn fusing off by themselves)."""
    config = {"teacher_temperature": 3.1, "student": "cnn1d_w8", "student.lr": 0.03}
    for evaluate, fused in (({"robust_restarts": 3}, True), ({"robust": True}, False), ({"transfer": True}, False)):
        p = make_plan(parse_spec(SPEC | {"evaluate": evaluate}), str(tmp_path))
        assert all(("members" in q) == fused for q in confirm_points(p.spec, [config], [5, 6], p)), evaluate
