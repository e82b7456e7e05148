"""Distilled teachers: TAKD chains and born-again generations in the spec, the plan and the store."""

import json

import pytest

from explorer.errors import KdxError
from explorer.spec.search import parse_spec
from explorer.teachers.entries import parse_teacher, teacher_kind
from explorer.teachers.store import TeacherStore
from explorer.training.build import ensure_teacher
from trainables.plan import make_plan


def spec_dict(**teachers):
    return {
        "name": "chains",
        "student": {"arch": "cnn1d_w4", "epochs": 2},
        "teachers": {"archs": ["cnn1d_w8"], "recipe": {"epochs": 2}} | teachers,
        "distill": {"method": "kd"},
        "search": {"algorithm": "grid", "num_samples": 1, "asha": None},
    }


def test_parse_teacher_syntax():
    assert parse_teacher("cnn1d_w8", 0) == [[("cnn1d_w8", 0)]]
    assert parse_teacher("cnn1d_w4<cnn1d_w8<cnn1d_w16", 0) == [[("cnn1d_w4", 0), ("cnn1d_w8", 0), ("cnn1d_w16", 0)]]
    assert parse_teacher("cnn1d_w8^2", 5) == [[("cnn1d_w8", 7), ("cnn1d_w8", 6), ("cnn1d_w8", 5)]]
    assert parse_teacher("cnn1d_w8+cnn1d_w8:s1", 0) == [[("cnn1d_w8", 0)], [("cnn1d_w8", 1)]]
    assert teacher_kind(parse_teacher("a1" if False else "cnn1d_w8^1", 0)) == "distilled"
    assert teacher_kind(parse_teacher("cnn1d_w8+cnn1d_w16", 0)) == "ensemble"
    for bad in ("cnn1d_w8<", "nope", "cnn1d_w8^x", "cnn1d_w8:1"):
        with pytest.raises(KdxError, match="teachers.archs: got"):
            parse_teacher(bad, 0)


def test_spec_errors_name_the_field():
    with pytest.raises(KdxError, match=r"teachers.archs: got \['cnn1d_w8<nope'\]; 'nope' is not an architecture"):
        parse_spec(spec_dict(archs=["cnn1d_w8<nope"]))
    d = spec_dict(archs=["cnn1d_w8"])
    d["distill"] = {"method": "takd"}
    with pytest.raises(KdxError, match="distill.method: got 'takd' with teacher 'cnn1d_w8'; method 'takd' takes distilled"):
        parse_spec(d)
    d["distill"] = {"method": "tf_kd_self"}
    with pytest.raises(KdxError, match="own architecture"):
        parse_spec(d)
    with pytest.raises(KdxError, match="teachers.distill.method: got 'ls'"):
        parse_spec(spec_dict(distill={"method": "ls"}))
    with pytest.raises(KdxError, match="teachers.distill.alpha: got 2"):
        parse_spec(spec_dict(distill={"method": "kd", "alpha": 2}))


def test_plan_records_chains_and_generations():
    spec = parse_spec(spec_dict(archs=["cnn1d_w8<cnn1d_w16", "cnn1d_w8"], generations=2))
    assert spec.teachers.entries() == ["cnn1d_w8<cnn1d_w16", "cnn1d_w8", "cnn1d_w8^1", "cnn1d_w8^2"]
    plan = make_plan(spec, "/tmp/unused")
    # distinct teachers: w16, w8<w16, w8 (gen 0), gen 1, gen 2 (gen 0 shared by the plain entry)
    assert len(plan.recipes) == 5
    chain = plan.teacher_chains["cnn1d_w8^2@2"].split("<")
    assert len(chain) == 3 and chain[-1] == plan.teacher_keys["cnn1d_w8@2"]
    for head, parent in zip(chain, chain[1:]):
        assert plan.recipes[head].parent_key == parent
        assert plan.recipes[head].train.method == "kd"
    assert plan.recipes[chain[-1]].parent_key is None and plan.recipes[chain[-1]].train.method == "ce"
    assert [plan.recipes[k].train.seed for k in chain] == [2, 1, 0]
    assert plan.teacher_kinds == {"cnn1d_w8<cnn1d_w16": "distilled", "cnn1d_w8": "plain",
                                  "cnn1d_w8^1": "distilled", "cnn1d_w8^2": "distilled"}
    s = plan.settings({"teacher": "cnn1d_w8<cnn1d_w16", "teacher_stop_epoch": 2, "seed": 0})
    assert s["teacher_kind"] == "distilled" and s["teacher_chain"].count("<") == 1
    assert s["temperature"] == 4.0 and s["alpha"] == 0.9 and s["epsilon"] is None


def test_plan_ensemble_and_reversed_kd():
    d = spec_dict(archs=["cnn1d_w8+cnn1d_w8:s1+cnn1d_w8:s2", "cnn1d_w2"])
    plan = make_plan(parse_spec(d), "/tmp/unused")
    s = plan.settings({"teacher": "cnn1d_w8+cnn1d_w8:s1+cnn1d_w8:s2", "teacher_stop_epoch": 2, "seed": 0})
    assert s["teacher_kind"] == "ensemble" and len(s["teacher_key"].split(",")) == 3
    from explorer.models import build_model, count_params
    assert s["teacher_params"] == 3 * count_params(build_model("cnn1d_w8", 10, (1, 40)))  # ensembles: the sum
    rev = plan.settings({"teacher": "cnn1d_w2", "teacher_stop_epoch": 2, "seed": 0})
    assert rev["capacity_ratio"] < 1  # reversed KD: a teacher smaller than the student
    free = plan.settings({"method": "tf_kd_reg", "teacher": "cnn1d_w2", "teacher_stop_epoch": 2, "seed": 0})
    assert free["teacher"] == "none" and free["delta"] == 0.9 and free["capacity_ratio"] is None


def test_takd_chain_and_generations_build_each_teacher_once(tmp_path):
    spec = parse_spec(spec_dict(archs=["cnn1d_w4<cnn1d_w8", "cnn1d_w4"], generations=1))
    plan = make_plan(spec, str(tmp_path))
    store = TeacherStore(str(tmp_path))
    with pytest.raises(KdxError, match="parent_key: got .*build the parent first"):
        chained = next(r for r in plan.recipes.values() if r.parent_key)
        ensure_teacher(store, chained, [])
    built = []
    for key, recipe in plan.recipes.items():  # the plan lists parents before children
        rec, was_built = ensure_teacher(store, recipe, plan.stops[key])
        built.append(was_built)
        assert rec.key == key
    assert built == [True] * 4  # w8, w4<w8, w4, w4^1
    assert [ensure_teacher(store, r, plan.stops[k])[1] for k, r in plan.recipes.items()] == [False] * 4
    for key, recipe in plan.recipes.items():
        on_disk = json.loads((tmp_path / key / "recipe.json").read_text())["recipe"]
        assert on_disk["parent_key"] == recipe.parent_key
        if recipe.parent_key:
            assert on_disk["train"]["method"] == "kd" and recipe.parent_key in plan.recipes
    assert "<" in store.get(plan.teacher_keys["cnn1d_w4^1@2"]).label
