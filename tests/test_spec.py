"""Search specs: the quickstart is valid; each bad spec is refused with one sentence naming the field."""

import copy
from pathlib import Path

import pytest
import yaml

from explorer.errors import KdxError
from explorer.spec.search import load_spec, parse_spec
from kdx.cli import main

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "searches" / "quickstart.yaml").read_text())


def with_change(path: str, value):
    spec = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = spec
    for p in parents:
        node = node.setdefault(p, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return spec


DELETE = object()

BAD = [
    # (field changed, new value, words the message must contain)
    ("colour", "blue", ["colour", "unknown key"]),
    ("student.arch", "resnet19", ["student.arch", "resnet19"]),
    ("student.epochs", "ten", ["student.epochs", "ten"]),
    ("student.epochs", 0, ["student.epochs", "0"]),
    ("distill.alpha", 1.5, ["alpha", "1.5", "<= 1"]),
    ("distill.alpha", {"uniform": [0.2, 1.2]}, ["alpha", "1.2"]),
    ("distill.temperature", 0, ["temperature", "0"]),
    ("distill.temperature", {"choice": []}, ["distill.temperature", "empty"]),
    ("distill.temperature", {"uniform": [5, 2]}, ["distill.temperature", "low < high"]),
    ("distill.temperature", {"grid": [1, 4]}, ["distill.temperature", "grid", "optuna"]),
    ("distill.method", "hinton", ["distill.method", "hinton", "allowed"]),
    ("distill.method", {"uniform": [0, 1]}, ["distill.method", "uniform"]),
    ("distill.kd_stop_epoch", 31, ["kd_stop_epoch", "31"]),
    ("teachers.stop_epochs", [10, 40], ["teachers", "40", "1..30"]),
    ("teachers.stop_epochs", [], ["stop_epochs", "empty"]),
    ("teachers.archs", [], ["teachers.archs"]),
    ("teachers.archs", ["cnn1dbn_w16", "wrn_17_2"], ["teachers.archs", "wrn_17_2"]),
    ("confirm.seeds", [0, 1001], ["confirm.seeds", "counted twice"]),
    ("dataset.name", "imagenet", ["dataset.name", "imagenet", "mnist1d"]),
    ("dataset.label_noise", 1.0, ["dataset.label_noise", "1.0"]),
    ("search.algorithm", "bayes", ["search.algorithm", "bayes"]),
    ("search.asha.grace_period", 50, ["grace_period", "50"]),
    ("search.points_to_evaluate", [{"temperature": 4.0, "alpha": 0.9, "teacher": "cnn1dbn_w16", "teacher_stop_epoch": 30,
                                    "alhpa": 0.5}], ["points_to_evaluate[0].alhpa", "alpha"]),
    ("search.points_to_evaluate", [{"temperature": 4.0, "alpha": 1.5, "teacher": "cnn1dbn_w16", "teacher_stop_epoch": 30,
                                    }], ["points_to_evaluate[0].alpha", "1.5", "[0.1, 1.0]"]),
    ("search.points_to_evaluate", [{"temperature": 4.0, "alpha": 0.9, "teacher": "wrn_16_2", "teacher_stop_epoch": 30,
                                    }], ["points_to_evaluate[0].teacher", "wrn_16_2"]),
    ("search.points_to_evaluate", [{"temperature": 4.0, "alpha": 0.9}], ["points_to_evaluate[0]", "missing"]),
    ("teachers.recipe.lr", {"uniform": [0.01, 0.1]}, ["teachers.recipe.lr", "choice or a grid"]),
    ("teachers.recipe.lr", {"choice": [0.1, -1]}, ["teachers.recipe.lr", "-1"]),
    ("student.lr", {"choice": [0.1, 0]}, ["student.lr", "0"]),
    ("student.arch", {"choice": ["cnn1d_w4", "resnet19"]}, ["student.arch", "resnet19"]),
    ("student.epochs", {"choice": [10, 20]}, ["student.epochs", "fixed"]),
    ("seeds", [], ["seeds"]),
    ("name", "my search!", ["name", "my search!"]),
    ("student", DELETE, ["student", "missing"]),
]


@pytest.mark.parametrize("path,value,words", BAD, ids=[f"{p}={'<deleted>' if v is DELETE else repr(v)}"[:40] for p, v, _ in BAD])
def test_bad_spec_is_one_sentence(path, value, words):
    with pytest.raises(KdxError) as e:
        parse_spec(with_change(path, value))
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


def test_quickstart_is_valid_and_searches_the_papers_axes():
    spec, text = load_spec(ROOT / "searches" / "quickstart.yaml")
    assert spec.name == "quickstart" and "temperature" in text
    axes = spec.searched_axes()
    assert {"temperature", "alpha", "teacher", "teacher_stop_epoch"} <= set(axes)
    assert len(spec.teachers.archs) >= 4 and len(spec.teachers.stops()) >= 2
    # the answer comes from the confirmation stage: 5 fresh seeds per teacher x stop cell
    assert len(spec.confirm.seeds) >= 5 and not set(spec.confirm.seeds) & set(spec.seeds)
    assert spec.cell_params() == ["teacher", "teacher_stop_epoch"]
    assert len(spec.teacher_configs()) == len(spec.teachers.archs) * len(spec.teachers.stops())


def test_early_stop_form_gives_one_recipe_per_stop_epoch():
    data = with_change("teachers", {"archs": ["cnn1d_w8"], "stop_epochs": [35, 50],
                                    "early_stop_schedule": True, "recipe": {"epochs": 80}})
    data["search"] = dict(data["search"], points_to_evaluate=[])  # the quickstart's points name other teachers
    spec = parse_spec(data)
    cfgs = spec.teacher_configs()
    assert [(c.epochs, c.schedule) for _, _, c in cfgs] == [(35, "early_stop"), (50, "early_stop")]


def test_grid_algorithm_makes_lists_grid_axes():
    spec = copy.deepcopy(BASE)
    spec["search"] = {"algorithm": "grid"}
    spec["distill"] = {"temperature": {"grid": [1, 4]}, "alpha": 0.5}
    s = parse_spec(spec)
    assert {k: a.kind for k, a in s.searched_axes().items()} == {
        "temperature": "grid", "teacher": "grid", "teacher_stop_epoch": "grid"}


def test_cli_validate(tmp_path, capsys):
    assert main(["validate", str(ROOT / "searches" / "quickstart.yaml")]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_change("distill.alpha", 2)))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdx: error: ") and "alpha" in err and len(err.splitlines()) == 1
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    assert main(["validate", str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_a_two_stage_methods_init_epochs_count_on_the_trial_clock():
    """ASHA's max_t is the student's epochs plus the longest init stage in the space (FitNet, FSP, AB)."""
    spec = yaml.safe_load((ROOT / "tests" / "specs" / "tiny.yaml").read_text())
    assert parse_spec(spec).trial_epochs() == 4
    spec["distill"] = {"method": "fitnet", "init_epochs": {"choice": [2, 5]}}
    assert parse_spec(spec).trial_epochs() == 4 + 5
    spec["distill"] = {"method": {"choice": ["kd", "fitnet"]}}
    assert parse_spec(spec).trial_epochs() == 4 + 100  # fitnet's default init stage (seed 000 section III)
