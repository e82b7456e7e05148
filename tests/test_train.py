"""The one training loop: learning, determinism, exact resume, divergence, schedules, CLI errors."""

import json

import pytest
import torch

from explorer.config import SCHEDULES, TrainConfig
from explorer.data.condition import DataSpec
from explorer.data.splits import load_splits
from explorer.training.loop import Trainer, load_state, save_state
from explorer.training.members import Diverged
from kdx.cli import main


@pytest.fixture(scope="module")
def mnist1d():
    return load_splits(DataSpec("mnist1d"))


@pytest.fixture(scope="module")
def fake():
    return load_splits(DataSpec("fake"))


def test_kdx_train_beats_chance_and_prints_json(capsys):
    rc = main(["train", "--dataset", "mnist1d", "--student", "cnn1d_w16", "--epochs", "6", "--json"])
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["val_acc"] > 0.35 and result["test_acc"] > 0.35  # chance is 0.10
    for key in ("train_loss", "train_ce", "train_kd", "val_acc", "val_loss", "test_acc", "epoch_seconds",
                "samples_per_second"):
        assert key in result
    assert sum("epoch" in line for line in out[:-1]) >= 6  # per-epoch progress


def test_same_seed_same_numbers_on_cpu(mnist1d):
    runs = []
    for _ in range(2):
        t = Trainer(TrainConfig("cnn1d_w8", epochs=2, seed=3), mnist1d, "cpu")
        runs.append([(m["train_loss"], m["val_acc"]) for m in t.run()])
    assert runs[0] == runs[1]
    other = Trainer(TrainConfig("cnn1d_w8", epochs=2, seed=4), mnist1d, "cpu").run()
    assert [(m["train_loss"], m["val_acc"]) for m in other] != runs[0]


def test_restored_run_continues_bit_for_bit(fake, tmp_path):
    """Crop/flip augmentation draws from the saved generator: a resumed run matches an unbroken one."""
    cfg = TrainConfig("resnet8", epochs=3, batch_size=64, lr=0.05, schedule="multistep", milestones=(2,), seed=1)
    full = Trainer(cfg, fake, "cpu")
    full.run()
    part = Trainer(cfg, fake, "cpu")
    part.train_epoch()
    save_state(part.state_dict(), tmp_path / "s.pt")
    resumed = Trainer(cfg, fake, "cpu")
    resumed.load_state_dict(load_state(tmp_path / "s.pt"))
    assert resumed.epoch == 1
    resumed.run()
    assert [m["train_loss"] for m in resumed.history] == [m["train_loss"] for m in full.history]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_kd_student_against_teacher_reports_agreement(mnist1d):
    teacher = Trainer(TrainConfig("cnn1d_w16", epochs=2), mnist1d, "cpu")
    teacher.run()
    cfg = TrainConfig("cnn1d_w4", epochs=2, method="kd", method_params={"alpha": 0.5, "temperature": 4.0,
                                                                         "kd_stop_epoch": 2})
    student = Trainer(cfg, mnist1d, "cpu", teacher=teacher.model)
    hist = student.run()
    assert hist[0]["train_kd"] > 0 and hist[1]["train_kd"] == 0.0  # KD off from epoch 2 on
    assert 0 <= hist[-1]["kd_agreement"] <= 1 and hist[-1]["teacher_val_acc"] == teacher.history[-1]["val_acc"]


def test_precomputed_teacher_logits_equal_live_teacher(mnist1d):
    """Without augmentation the teacher runs once over the train set; the numbers must not change."""
    teacher = Trainer(TrainConfig("cnn1d_w8", epochs=1), mnist1d, "cpu")
    teacher.run()
    cfg = TrainConfig("cnn1d_w4", epochs=1, method="kd")
    a = Trainer(cfg, mnist1d, "cpu", teacher=teacher.model)
    b = Trainer(cfg, mnist1d, "cpu", teacher=teacher.model)
    b.signal.views = None  # force the per-batch teacher path
    assert a.run()[0]["train_loss"] == pytest.approx(b.run()[0]["train_loss"], rel=1e-6)


def test_nan_loss_stops_with_diverged(mnist1d):
    t = Trainer(TrainConfig("cnn1d_w8", epochs=3, lr=1e6, momentum=0.9), mnist1d, "cpu")
    with pytest.raises(Diverged, match="epoch 1"):
        t.run()


def test_early_stop_schedule_is_seed_004s():
    """n=35: LR x0.2 every floor((35-5)/3) = 10 epochs (seed 004 section 5.5)."""
    cfg = TrainConfig("cnn1d_w4", epochs=35, schedule="early_stop")
    factors = [SCHEDULES["early_stop"](cfg, e) for e in range(35)]
    assert factors[:10] == [1.0] * 10 and factors[10] == pytest.approx(0.2)
    assert factors[20] == pytest.approx(0.04) and factors[34] == pytest.approx(0.008)
    cfg = TrainConfig("cnn1d_w4", epochs=10, schedule="multistep", milestones=(3, 6), lr_gamma=0.1)
    assert [round(SCHEDULES["multistep"](cfg, e), 6) for e in (0, 2, 3, 5, 6, 9)] == [1, 1, 0.1, 0.1, 0.01, 0.01]


@pytest.mark.parametrize("argv,words", [
    (["--student", "resnet19"], ["architecture", "resnet19"]),
    (["--dataset", "imagenet", "--student", "cnn1d_w4"], ["dataset", "imagenet"]),
    (["--student", "cnn1d_w4", "--teacher", "cnn1d_w8", "--alpha", "1.5"], ["alpha", "1.5"]),
    (["--student", "cnn1d_w4", "--teacher", "cnn1d_w8", "--temperature", "0"], ["temperature", "0"]),
    (["--student", "cnn1d_w4", "--teacher", "cnn1d_w8", "--kd-stop-epoch", "9", "--epochs", "5"],
     ["kd_stop_epoch", "9"]),
    (["--student", "cnn1d_w4", "--method", "kd"], ["teacher", "kd"]),
    (["--student", "cnn1d_w4", "--epochs", "0"], ["epochs", "0"]),
    (["--student", "cnn1d_w4", "--label-noise", "1.2"], ["label_noise", "1.2"]),
    (["--student", "cnn1d_w4", "--teacher", "cnn1d_w8", "--teacher-seed", "-1"], ["seed", "-1"]),
    (["--dataset", "torchvision:Places365", "--student", "cnn2d_w4"], ["dataset", "torchvision:Places365",
                                                                      "torchvision:FashionMNIST"]),
    (["--dataset", "torchvision:FashionMNIST", "--data-dir", "/nonexistent/kdx", "--student", "cnn2d_w4"],
     ["data_dir", "/nonexistent/kdx", "FashionMNIST/raw/"]),
    (["--student", "cnn1d_w4", "--train-per-class", "0"], ["train_per_class", "0"]),
])
def test_bad_train_flags_give_one_sentence(argv, words, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("kdx: error:")
    for w in words:
        assert w in err


def test_models_and_datasets_listings(capsys):
    assert main(["models", "--num-classes", "100", "--json"]) == 0
    rows = {r["arch"]: r["params"] for r in json.loads(capsys.readouterr().out)["models"]}
    assert rows["resnet20"] == 278_324 and rows["wrn_40_2"] == 2_255_156
    assert main(["datasets", "--json"]) == 0
    names = {d["name"] for d in json.loads(capsys.readouterr().out)["datasets"]}
    assert {"mnist1d", "digits", "cifar10", "cifar100", "fake"} <= names
