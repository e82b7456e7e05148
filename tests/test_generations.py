"""Seed 004 table 4: born-again generations vs scratch ensembles, from a tiny teacher store."""

import json

import numpy as np
import pytest
import torch

from analysis.generations import ROWS, compare_generations, generation_plan
from explorer.data.splits import load_splits
from explorer.errors import KdxError
from explorer.spec.search import parse_spec
from explorer.teachers.store import TeacherStore
from explorer.training.build import ensure_teacher
from kdx.cli import main

SPEC = {
    "name": "gens_tiny",
    "dataset": {"name": "mnist1d"},
    "student": {"arch": "mlp_32x1", "epochs": 2},
    "teachers": {"archs": ["mlp_32x1"], "generations": 2, "seed": 0,
                 "recipe": {"epochs": 2, "lr": 0.05, "schedule": "cosine"},
                 "distill": {"method": "kd", "temperature": 4.0, "alpha": 0.9}},
    "distill": {"method": "kd"},
    "search": {"algorithm": "grid", "num_samples": 1, "asha": None},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The 2-generation chain and the 3 scratch seeds, built with TeacherStore.ensure in plan order."""
    root = str(tmp_path_factory.mktemp("teachers"))
    spec = parse_spec(SPEC)
    plan, keys = generation_plan(spec, root)
    store = TeacherStore(root)
    for key, recipe in plan.recipes.items():  # parents before children
        ensure_teacher(store, recipe, plan.stops[key], device="cpu")
    return spec, root, plan, keys


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_keys_are_the_plans(built):
    spec, root, plan, keys = built
    gens, scratch = keys["generations"], keys["scratch"]
    assert len(gens) == 3 and len(scratch) == 3 and gens[0] == scratch[0]
    assert len(set(gens) | set(scratch)) == 5  # gen 0 is the first scratch model
    # the chain: generation k is distilled from generation k - 1 and has seed k
    for k, key in enumerate(gens):
        r = plan.recipes[key]
        assert r.train.seed == k and r.parent_key == (gens[k - 1] if k else None)
        assert r.train.method == ("kd" if k else "ce")
    assert [plan.recipes[k].train.seed for k in scratch] == [0, 1, 2]
    assert all(plan.recipes[k].train.method == "ce" and plan.recipes[k].parent_key is None for k in scratch)
    # the same keys as a search spec naming those entries computes
    from trainables.plan import make_plan
    d = json.loads(json.dumps(SPEC))
    d["teachers"] |= {"archs": ["mlp_32x1", "mlp_32x1^2", "mlp_32x1:s2"], "generations": 0}
    other = make_plan(parse_spec(d), root)
    assert other.teacher_keys["mlp_32x1^2@2"] == gens[2] and other.teacher_keys["mlp_32x1:s2@2"] == scratch[2]


def test_compare_generations_matches_an_independent_computation(built):
    spec, root, plan, keys = built
    df = compare_generations(root, spec, device="cpu")
    assert list(df["model"]) == list(ROWS)
    assert list(df["n_models"]) == [1, 1, 3, 3]
    assert df.set_index("model").loc["generations_ensemble", "members"] == "mlp_32x1+mlp_32x1^1+mlp_32x1^2"
    assert df.set_index("model").loc["scratch_ensemble", "members"] == "mlp_32x1+mlp_32x1:s1+mlp_32x1:s2"

    splits = load_splits(spec.data_spec())
    store = TeacherStore(root)

    def probs(key, x):
        model, _ = store.load_model(key, None, "cpu")
        with torch.no_grad():
            return softmax(model.eval()(x).double().numpy())

    def acc(members, x, y):
        mean = np.mean([probs(k, x) for k in members], axis=0)
        return float(np.mean(mean.argmax(1) == y.numpy()))

    gens, scratch = keys["generations"], keys["scratch"]
    want = {"scratch": gens[:1], "last_generation": gens[-1:], "generations_ensemble": gens,
            "scratch_ensemble": scratch}
    for r in df.itertuples():
        assert r.val_acc == pytest.approx(acc(want[r.model], splits.val_x, splits.val_y), abs=1e-6)  # float32 mean of 0/1; one sample is 1/len(y)
        assert r.test_acc == pytest.approx(acc(want[r.model], splits.test_x, splits.test_y), abs=1e-6)  # float32 mean of 0/1; one sample is 1/len(y)
        assert 0.1 < r.val_acc <= 1  # trained models beat chance


def test_missing_models_are_named(built, tmp_path):
    spec = built[0]
    with pytest.raises(KdxError, match=r"missing 5 of the 5 models .*mlp_32x1\^1.*kdx generations SPEC --build"):
        compare_generations(str(tmp_path), spec)
    # three generations need one more chain link and one more scratch seed than are built
    with pytest.raises(KdxError, match=r"missing 2 of the 7 models .*\(mlp_32x1\^3, mlp_32x1:s3\)"):
        compare_generations(built[1], spec, generations=3)
    with pytest.raises(KdxError, match="arch: got 'nope'"):
        compare_generations(built[1], spec, arch="nope")


def test_kdx_generations_cli(built, tmp_path, capsys):
    spec, root, _, _ = built
    path = tmp_path / "gens.yaml"
    import yaml
    path.write_text(yaml.safe_dump(SPEC))
    assert main(["generations", str(path), "--store", root, "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["model"] for r in out["rows"]] == list(ROWS)
    assert main(["generations", str(path), "--store", str(tmp_path / "empty"), "--device", "cpu"]) == 2
    assert "kdx generations SPEC --build" in capsys.readouterr().err


def test_kdx_generations_build(tmp_path, capsys):
    import yaml
    path = tmp_path / "gens.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    store = tmp_path / "store"
    argv = ["generations", str(path), "--store", str(store), "--generations", "1", "--build", "--device", "cpu",
            "--json"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sum(line.startswith("building ") for line in lines) == 3  # gen 0, gen 1, scratch seed 1
    out = json.loads(lines[-1])
    assert [r["n_models"] for r in out["rows"]] == [1, 1, 2, 2]
    assert main(argv) == 0 and "building " not in capsys.readouterr().out  # nothing left to build
