"""Any recipe field is a search axis with no code change: tests/specs/student_axes.yaml searches the
student's architecture (choice) and learning rate (loguniform) with T, end to end on local Ray and
MLflow; the analysis keys configs by both, and DKD's own loss terms reach MLflow."""

import json
import math
from pathlib import Path

import pytest
from kdxrun import kdx

from analysis.runs import load_trials
from analysis.sweetspot import completed, config_columns

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def searched(tmp_path_factory, shared_ray):
    cwd = tmp_path_factory.mktemp("student_axes")
    proc = kdx(cwd, "search", ROOT / "tests" / "specs" / "student_axes.yaml", "--json", *shared_ray.args,
               env=shared_ray.env)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return cwd, f"sqlite:///{cwd / 'kdx_runs' / 'mlflow.db'}", json.loads(proc.stdout.strip().splitlines()[-1])


def test_searched_student_values_are_logged_and_key_configs(searched):
    cwd, uri, outcome = searched
    assert outcome["trials"] == {"completed": 4 + 2}  # 4 searched, a CE baseline per student arch
    df = load_trials("student_axes", uri)
    search = df[df["kind"] == "search"]
    assert set(search["student"]) == {"cnn1d_w4", "cnn1d_w8"}  # both points_to_evaluate ran
    assert search["student.lr"].between(0.01, 0.2).all() and search["student.lr"].nunique() >= 3
    # each searched trial is its own config: arch, lr, the teachers' lr and T are all config columns
    assert {"student", "student.lr", "teachers.recipe.lr", "temperature"} <= set(config_columns(df))
    assert set(search["teachers.recipe.lr"]) <= {0.05, 0.1} and base_has_no_teacher_lr(df)
    done = completed(df[df["kind"] == "search"])
    assert done["config"].nunique() == len(done) == 4
    # the two trials at lr 0.05 and T 4 differ only in the architecture: still two configs
    pair = done[(done["student.lr"] == 0.05) & (done["temperature"] == 4.0)]
    assert set(pair["student"]) == {"cnn1d_w4", "cnn1d_w8"} and pair["config"].nunique() == 2
    # DKD's own loss terms are metrics of every KD trial; every method hyperparameter is a param
    assert (search["train_tckd"] > 0).all() and (search["train_nckd"] > 0).all()
    assert (search["beta"] == 8.0).all() and search["branches"].isna().all()
    # the CE baselines: one per student architecture, at the middle of the searched lr range
    base = df[df["kind"] == "baseline"]
    assert sorted(base["student"]) == ["cnn1d_w4", "cnn1d_w8"]
    assert all(math.isclose(lr, math.sqrt(0.01 * 0.2)) for lr in base["student.lr"])
    assert outcome["best"]["student.lr"] == pytest.approx(
        done.loc[done["val_acc"].idxmax(), "student.lr"])


def base_has_no_teacher_lr(df) -> bool:
    return df.loc[df["kind"] == "baseline", "teachers.recipe.lr"].isna().all()


def test_each_teacher_variant_is_built_once(searched):
    from mlflow.tracking import MlflowClient

    _, uri, _ = searched
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("student_axes")
    teachers = client.search_runs([exp.experiment_id], filter_string="tags.`kdx.role` = 'teacher'")
    assert sorted(float(r.data.params["train.lr"]) for r in teachers) == [0.05, 0.1]


def test_analysis_answers_per_student_architecture(searched):
    cwd, uri, _ = searched
    proc = kdx(cwd, "analyze", "student_axes", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(s["student"] for s in summary["students"]) == ["cnn1d_w4", "cnn1d_w8"]
    df = load_trials("student_axes", uri)
    for s in summary["students"]:
        rows = completed(df[(df["student"] == s["student"]) & (df["teacher"] != "none")])
        assert s["val_acc"] == pytest.approx(rows["val_acc"].max())
