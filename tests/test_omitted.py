"""The omitted class (seed 003 section 4.1): a teacher on the clean split, a student whose split lacks a
class, per-class accuracy on it; MNIST in torchvision's on-disk format; imbalance at seed 000's scale."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from datafiles import fake_mnist
from kdxrun import kdx

from explorer.config import TrainConfig
from explorer.data.condition import DataCondition, DataSpec, power_law_counts
from explorer.data.mnist import MNIST, TRAIN_COUNTS
from explorer.data.registry import check_data_present
from explorer.data.section import parse_dataset
from explorer.data.splits import load_splits
from explorer.errors import KdxError
from explorer.spec.search import load_spec, parse_spec
from explorer.teachers.recipe import TeacherRecipe
from explorer.training.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "tests" / "specs" / "seed003_omitted_small.yaml"


# ------------------------------------------------------------------ MNIST on disk
def test_mnist_reads_torchvision_layout_plain_and_gzipped(tmp_path):
    parts = fake_mnist(tmp_path)
    spec = parse_dataset({"name": "mnist", "data_dir": str(tmp_path), "val_fraction": 0.2})
    check_data_present(spec)
    s = load_splits(spec)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10 and s.augment == "none"
    assert len(s.train_y) + len(s.val_y) == 60 and len(s.test_y) == 20
    x, y = parts["t10k"]
    assert torch.equal(s.test_y, torch.from_numpy(y.astype(np.int64)))
    mean, std = MNIST.mean_std
    expect = (torch.from_numpy(x.astype(np.float32)) / 255.0 - mean) / std
    assert torch.allclose(s.test_x[:, 0], expect, atol=1e-6)


@pytest.mark.parametrize("case,words", [
    ("none", ["dataset.data_dir: got None", "MNIST/raw/", "download: true"]),
    ("nonexistent", ["no such directory"]),
    ("empty", ["no MNIST/raw/ idx files in it"]),
    ("incomplete", ["incomplete", "t10k-labels-idx1-ubyte"]),
])
def test_missing_mnist_is_refused_in_one_sentence_naming_data_dir(tmp_path, case, words):
    data_dir = {"none": None, "nonexistent": str(tmp_path / "nope"), "empty": str(tmp_path)}.get(case)
    if case == "incomplete":
        fake_mnist(tmp_path, gz_test=False)
        (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
        data_dir = str(tmp_path)
    with pytest.raises(KdxError) as e:
        check_data_present(parse_dataset({"name": "mnist", "data_dir": data_dir}))
    msg = str(e.value)
    assert msg.startswith("dataset.data_dir: ") and "\n" not in msg and msg.endswith("."), msg
    assert all(w in msg for w in words), msg
    # download: true is allowed where the directory can be made
    check_data_present(parse_dataset({"name": "mnist", "data_dir": str(tmp_path / "new"), "download": True}))


def test_corrupt_mnist_file_names_it(tmp_path):
    fake_mnist(tmp_path, gz_test=False)
    bad = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 5)
    with pytest.raises(KdxError, match="data_dir: the MNIST file .*train-images-idx3-ubyte.* unreadable"):
        load_splits(DataSpec("mnist", data_dir=str(tmp_path)))


# ------------------------------------------------------------------ the teacher's data condition
def small_spec(**teachers) -> dict:
    data = yaml.safe_load(SMALL.read_text())
    data["teachers"] |= teachers
    return data


def test_clean_teacher_trains_on_the_clean_split_and_is_keyed_so():
    clean = parse_spec(small_spec())
    same = parse_spec(small_spec(data_condition="same"))
    assert clean.teachers.data_condition == "clean" and parse_spec(small_spec(data_condition="same")).data_spec() \
        .condition.omit_classes == (3,)
    (_, _, cfg), = clean.teacher_configs()
    r_clean, r_same = TeacherRecipe(clean.data_spec(), cfg), TeacherRecipe(same.data_spec(), cfg)
    assert r_clean.data.condition == DataCondition() and r_same.data.condition.omit_classes == (3,)
    assert r_clean.key() != r_same.key()
    # the clean teacher is the teacher of a spec without the condition: built once, reused by both
    plain = small_spec(data_condition="same")
    plain["dataset"].pop("omit_classes")
    assert TeacherRecipe(parse_spec(plain).data_spec(), cfg).key() == r_clean.key()
    # the student's data keeps the condition
    assert clean.data_spec().condition.omit_classes == (3,)
    assert load_splits(clean.data_spec()).train_y.bincount(minlength=10)[3] == 0


def test_trainer_logs_accuracy_on_the_classes_its_split_lacks():
    student_data = DataSpec("fake", condition=DataCondition(omit_classes=(2, 5)), teacher_condition="clean")
    cfg = TrainConfig("mlp_32x1", epochs=1, lr=0.05, batch_size=64)
    teacher = Trainer(cfg, load_splits(student_data.teacher_data()), "cpu")
    teacher.run()
    assert "val_acc_omitted" not in teacher.history[-1]  # the clean split has every class
    splits = load_splits(student_data)
    s = Trainer(cfg.model_copy(update={"method": "kd"}), splits, "cpu", teacher=teacher.model)
    m = s.train_epoch()
    for k in ("val_acc_omitted", "test_acc_omitted", "teacher_val_acc_omitted", "teacher_test_acc_omitted"):
        assert 0.0 <= m[k] <= 1.0, k
    mask = torch.isin(splits.test_y, torch.tensor([2, 5]))
    preds = teacher.model.eval()(splits.test_x).argmax(1)
    assert m["teacher_test_acc_omitted"] == pytest.approx((preds[mask] == splits.test_y[mask]).float().mean().item())
    base = Trainer(cfg, splits, "cpu").train_epoch()  # CE, no teacher: its own, no teacher's
    assert "test_acc_omitted" in base and "teacher_test_acc_omitted" not in base


# ------------------------------------------------------------------ imbalance at seed 000's scale
def test_seed000_max_is_refused_with_the_ratio_route_and_the_counts_used_are_logged():
    with pytest.raises(KdxError) as e:
        DataSpec("cifar10", condition=DataCondition(imbalance_gamma=0.2, imbalance_max=5000, imbalance_min=250)).validate()
    assert "at most 4500" in str(e.value) and "imbalance_min: 225" in str(e.value)
    DataSpec("cifar10", condition=DataCondition(imbalance_gamma=0.2, imbalance_min=225)).validate()
    # the ratio route is the seed's distribution scaled by 0.9
    for g in (0.2, 0.6, 1, 2):
        ours, seed = power_law_counts(10, g, 4500, 225), power_law_counts(10, g, 5000, 250)
        assert all(abs(a - 0.9 * b) <= 1 for a, b in zip(ours, seed)), (g, ours, seed)
    assert sum(TRAIN_COUNTS) == 60000
    # no registered counts (MNIST-1D): refused the same way when the data is loaded
    with pytest.raises(KdxError, match="imbalance_max: got 100000; .*at most"):
        load_splits(DataSpec("mnist1d", condition=DataCondition(imbalance_gamma=1.0, imbalance_max=100000,
                                                                 imbalance_min=10)))
    spec = DataSpec("fake", val_fraction=0.1, condition=DataCondition(imbalance_gamma=1.0, imbalance_min=9))
    m = Trainer(TrainConfig("mlp_32x1", epochs=1, batch_size=64), load_splits(spec), "cpu").train_epoch()
    assert (m["class_count_max"], m["class_count_min"]) == (90, 9)


def test_full_size_specs_validate():
    for name in ("seed003_omitted", "seed000_imbalance"):
        spec, text = load_spec(ROOT / "searches" / f"{name}.yaml")
        assert "Table" in text and spec.name == name
    assert spec.data_spec().condition.imbalance_max is None and spec.data_spec().condition.imbalance_min == 225


def test_kdx_train_refuses_an_unknown_teacher_data_condition(tmp_path):
    proc = kdx(tmp_path, "train", "--student", "cnn1d_w4", "--teacher", "cnn1d_w8", "--teacher-data-condition", "dirty",
               timeout=120)
    assert proc.returncode == 2 and "--teacher-data-condition: got 'dirty'; allowed: same" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ the CPU variant, a real search
def test_seed003_omitted_small_search(tmp_path, shared_ray):
    from mlflow.tracking import MlflowClient

    from analysis import load_trials
    from analysis.omitted import omitted_table, omitted_words

    proc = kdx(tmp_path, "search", SMALL, "--json", *shared_ray.args, env=shared_ray.env)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    uri = f"sqlite:///{tmp_path / 'kdx_runs' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("seed003_omitted_small").experiment_id], max_results=100)
    trials = [r for r in runs if r.data.tags.get("kdx.role") == "trial"]
    (teacher,) = [r for r in runs if r.data.tags.get("kdx.role") == "teacher"]
    # the teacher's split had every class: its recipe's data has no omitted class, it logged no omitted accuracy
    assert teacher.data.params["data.condition.omit_classes"] == "[]"
    assert "val_acc_omitted" not in teacher.data.metrics and "val_acc" in teacher.data.metrics
    spec = parse_spec(small_spec())
    (_, _, cfg), = spec.teacher_configs()
    assert teacher.data.tags["teacher_key"] == TeacherRecipe(spec.data_spec(), cfg).key()
    # every student's split lacked class 3: each logged its accuracy there; the KD ones their teacher's too
    assert len(trials) == 4 + 2 and all(r.data.tags["status"] == "completed" for r in trials)
    for r in trials:
        kd = r.data.params["method"] == "kd"
        assert {"val_acc_omitted", "test_acc_omitted"} <= set(r.data.metrics), r.data.metrics
        assert ("teacher_test_acc_omitted" in r.data.metrics) == kd
        if kd:
            assert r.data.tags["teacher_key"] == teacher.data.tags["teacher_key"]
    table = omitted_table(load_trials("seed003_omitted_small", uri))
    (row,) = table.itertuples()
    assert (row.method, row.n_seeds, row.base_seeds) == ("kd", 2, 2)
    assert np.isfinite(row.teacher_omitted) and np.isfinite(row.omitted_mean)
    assert "CE baseline" in omitted_words(table)[0]
