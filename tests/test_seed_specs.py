"""The seed-reproduction specs: the full-size ones validate; their CPU-sized variants run end to end."""

from pathlib import Path

import pytest
from kdxrun import kdx
from mlflow.tracking import MlflowClient

from explorer.spec.search import load_spec

ROOT = Path(__file__).resolve().parents[1]
FULL = sorted((ROOT / "searches").glob("seed*.yaml"))


@pytest.mark.parametrize("path", FULL, ids=[p.stem for p in FULL])
def test_full_size_seed_specs_validate(path):
    spec, text = load_spec(path)
    assert "table" in text.lower()  # each names the table it reproduces
    assert spec.dataset.name in ("cifar10", "cifar100", "mnist")


def search(tmp_path, name, ray):
    """The small spec `name` searched on the session's Ray cluster `ray` (conftest.shared_ray); its
    (trial runs, teacher runs)."""
    proc = kdx(tmp_path, "search", ROOT / "tests" / "specs" / name, "--json", *ray.args, env=ray.env)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'kdx_runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(Path(name).stem)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("kdx.role") == "trial"], [
        r for r in runs if r.data.tags.get("kdx.role") == "teacher"]


def test_seed001_small_kd_takd_mkd_generations_reversed(tmp_path, shared_ray):
    trials, teachers = search(tmp_path, "seed001_small.yaml", shared_ray)
    assert len(trials) == 5 + 1  # five teacher entries + the CE baseline
    by_teacher = {r.data.params["teacher"]: r.data.params for r in trials}
    assert by_teacher["cnn1d_w8<cnn1d_w16"]["teacher_kind"] == "distilled"
    assert by_teacher["cnn1d_w8^1"]["teacher_chain"].count("<") == 1
    assert by_teacher["cnn1d_w16+cnn1d_w16:s1"]["teacher_kind"] == "ensemble"
    assert float(by_teacher["cnn1d_w2"]["capacity_ratio"]) < 1  # reversed KD
    assert by_teacher["none"]["method"] == "ce"
    # each distinct teacher built once: w16, w8<w16, w16:s1, w8, w8^1, w2
    assert len(teachers) == 6 and all(r.info.status == "FINISHED" for r in teachers)
    assert all(r.data.tags["status"] == "completed" for r in trials)
    # the analysis takes capacity ratios below 1, ensembles and chains
    proc = kdx(tmp_path, "analyze", "seed001_small")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_seed003_small_method_axis(tmp_path, shared_ray):
    trials, teachers = search(tmp_path, "seed003_teacher_free_small.yaml", shared_ray)
    methods = {r.data.params["method"]: r.data.params for r in trials}
    assert set(methods) == {"tf_kd_reg", "tf_kd_self", "ls", "dml", "ckm", "wsl"}
    assert methods["ls"]["epsilon"] == "0.1" and methods["ls"]["teacher"] == "none"
    assert methods["ckm"]["teacher_temperature"] == "0.7" and methods["dml"]["cohort"] == "2"
    assert methods["tf_kd_self"]["teacher"] == "cnn1d_w4"
    assert all(r.data.tags["status"] == "completed" for r in trials)


def test_seed003_reversed_small_teacher_smaller_than_student(tmp_path, shared_ray):
    trials, teachers = search(tmp_path, "seed003_reversed_small.yaml", shared_ray)
    by_teacher = {r.data.params["teacher"]: r.data.params for r in trials}
    assert set(by_teacher) == {"cnn1d_w4", "none"}  # the reversed-KD trial + the CE baseline
    rekd = by_teacher["cnn1d_w4"]
    assert rekd["method"] == "kd" and rekd["student"] == "cnn1d_w16"
    assert 0 < float(rekd["capacity_ratio"]) < 1  # the teacher is smaller than the student
    assert by_teacher["none"]["method"] == "ce"
    assert len(teachers) == 1 and teachers[0].info.status == "FINISHED"
    assert all(r.data.tags["status"] == "completed" for r in trials)


def test_seed004_sequential_small_generations_and_chain(tmp_path, shared_ray):
    trials, teachers = search(tmp_path, "seed004_sequential_small.yaml", shared_ray)
    assert len(trials) == 4 + 1  # four teacher entries + the CE baseline
    by_teacher = {r.data.params["teacher"]: r for r in trials}
    assert all(r.data.tags["status"] == "completed" for r in trials)
    # each distinct teacher built once: w8, w8^1, w8^2, w16, w8<w16
    keys = [r.data.tags["teacher_key"] for r in teachers]
    assert len(teachers) == 5 and len(set(keys)) == 5, keys
    assert all(r.info.status == "FINISHED" for r in teachers)
    parent = {r.data.tags["teacher_key"]: r.data.params["parent_key"] for r in teachers}
    assert sorted(parent.values()).count("none") == 2  # the scratch w8 and w16
    # born-again generations: w8^2 <- w8^1 <- w8, each link recorded in the recipe
    gen = by_teacher["cnn1d_w8^2"].data.params
    assert gen["teacher_kind"] == "distilled"
    chain = gen["teacher_chain"].split("<")
    assert len(chain) == 3 and chain[0] == by_teacher["cnn1d_w8^2"].data.tags["teacher_key"]
    assert [parent[k] for k in chain] == chain[1:] + ["none"]
    assert chain[-1] == by_teacher["cnn1d_w8"].data.tags["teacher_key"]  # generation 0 is the scratch w8
    # large -> medium -> small: the medium teacher's parent is the large (w16) teacher the large -> small row uses
    takd = by_teacher["cnn1d_w8<cnn1d_w16"].data.params
    assert takd["teacher_kind"] == "distilled"
    medium, large = takd["teacher_chain"].split("<")
    assert parent[medium] == large == by_teacher["cnn1d_w16"].data.tags["teacher_key"] and parent[large] == "none"
    for name in ("cnn1d_w8", "cnn1d_w16"):
        assert by_teacher[name].data.params["teacher_kind"] == "plain"
        assert by_teacher[name].data.params["teacher_chain"] == by_teacher[name].data.tags["teacher_key"]
    assert by_teacher["none"].data.params["method"] == "ce"
    assert by_teacher["none"].data.params["teacher_chain"] == "none"


def test_seed000_online_small_kd_dml_one(tmp_path, shared_ray):
    trials, teachers = search(tmp_path, "seed000_online_small.yaml", shared_ray)
    assert all(r.data.tags["status"] == "completed" for r in trials)
    methods = {r.data.params["method"]: r.data.params for r in trials}
    assert set(methods) == {"kd", "dml", "one", "ce"} and len(trials) == 4
    assert methods["kd"]["teacher"] == "cnn1d_w16"
    for online in ("dml", "one"):  # trained without the teacher
        assert methods[online]["teacher"] == "none" and methods[online]["teacher_chain"] == "none"
    assert len(teachers) == 1 and teachers[0].info.status == "FINISHED"  # built for kd only
    # every method hyperparameter is a param of every trial: the method's own value, "none" elsewhere
    assert methods["one"]["branches"] == "3" and methods["dml"]["cohort"] == "2"
    assert methods["kd"]["branches"] == "none" and methods["one"]["cohort"] == "none"


@pytest.mark.parametrize("name,methods,students", [
    ("seed000_methods_small.yaml", {"kd", "bss", "fitnet", "at", "sp", "rkd_d", "rkd_a", "rkd_da"}, {"cnn1d_w4", "cnn1d_w8"}),
    ("seed001_feature_small.yaml", {"kd", "rkd_da", "sfd", "oh", "ab", "uda", "fsp"}, {"resnet8"}),
])
def test_feature_method_specs_small_run_every_method(tmp_path, name, methods, students, shared_ray):
    """The CPU variants of seed 000 table III and seed 001 table 3: every method trains inside a search,
    per student, with its own loss terms logged, beside the CE baseline."""
    trials, teachers = search(tmp_path, name, shared_ray)
    assert len(teachers) == 1 and teachers[0].info.status == "FINISHED"
    assert all(r.data.tags["status"] == "completed" for r in trials)
    got = {(r.data.params["method"], r.data.params["student"]) for r in trials}
    assert got == {(m, s) for m in methods | {"ce"} for s in students}
    term = {"kd": "kd", "bss": "bss", "fitnet": "hint", "at": "at", "sp": "sp", "rkd_d": "rkd_d", "rkd_a": "rkd_a",
            "rkd_da": "rkd_a", "sfd": "sfd", "oh": "oh", "ab": "ab", "uda": "kd_ra", "fsp": "fsp", "ce": "ce"}
    for r in trials:
        assert f"train_{term[r.data.params['method']]}" in r.data.metrics, r.data.params["method"]
    if name.startswith("seed000"):  # evaluate.transfer: every distilled trial measured it, the baseline not
        for r in trials:
            assert ("transfer_samples" in r.data.metrics) == (r.data.params["method"] != "ce")
        assert any(r.data.metrics.get("transfer_samples", 0) > 0 for r in trials)
        proc = kdx(tmp_path, "analyze", "seed000_methods_small")
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = (tmp_path / "kdx_runs" / "seed000_methods_small" / "analysis" / "report.md").read_text()
        assert "## Adversarial transferability" in report and "(1 seed)" in report


def test_seed003_adversarial_small_robust_accuracy(tmp_path, shared_ray):
    """Seed 003 table 5 shrunk: adversarially trained (PGD-2) and clean students, robust accuracy logged by
    every trial and reported per cell. A robust sample is one the model gets right clean and attacked, so
    neither robust accuracy can exceed the clean one."""
    trials, teachers = search(tmp_path, "seed003_adversarial_small.yaml", shared_ray)
    assert len(trials) == 3 * 2 + 2  # 3 methods x adversarial_steps {0, 2}, and a CE baseline for each
    assert all(r.data.tags["status"] == "completed" for r in trials)
    assert {r.data.params["student.adversarial_steps"] for r in trials} == {"0", "2"}
    for r in trials:
        m = r.data.metrics
        assert 0 <= m["robust_acc_pgd"] <= m["test_acc"] and 0 <= m["robust_acc_pgd50"] <= m["test_acc"]
    (teacher,) = teachers  # the AT teacher: tf_kd_self's S^p
    assert teacher.data.params["train.adversarial.steps"] == "2"  # in its recipe, hence in its store key
    proc = kdx(tmp_path, "analyze", "seed003_adversarial_small")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "kdx_runs" / "seed003_adversarial_small" / "analysis" / "report.md").read_text()
    assert "## Robust accuracy (seed 003 section 4.4, table 5)" in report
    assert report.count("adversarial_steps 2 (1 seed)") == 4  # ce, kd, tf_kd_reg, tf_kd_self
