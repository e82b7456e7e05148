"""Real images end to end: a small search on Fashion-MNIST (Debian's dataset-fashion-mnist, read as
`torchvision:FashionMNIST` from the folder it installs), confirmed and analysed, on the session's Ray
and a real SQLite MLflow. scripts/test installs the package where it can; without it this test says why
it skips. The loaders' own tests use small files they write (tests/test_torchvision_sets.py)."""

import json
from pathlib import Path

import pytest
import yaml
from kdxrun import by_role, kdx, runs_of, sqlite_uri

FASHION = Path("/usr/share/datasets/fashion-mnist")
SPEC = {
    "name": "fashion_small",
    "dataset": {"name": "torchvision:FashionMNIST", "data_dir": str(FASHION), "train_per_class": 60},
    "student": {"arch": "cnn2d_w2", "epochs": 3, "lr": 0.05, "batch_size": 64, "schedule": "cosine"},
    "teachers": {"archs": ["cnn2d_w8"], "stop_epochs": [1, 3],
                 "recipe": {"epochs": 3, "lr": 0.05, "batch_size": 64, "schedule": "cosine"}},
    "distill": {"temperature": 4.0, "alpha": 0.9},
    "seeds": [0],
    "baseline": True,
    "search": {"algorithm": "grid", "num_samples": 1, "max_concurrent": 2, "asha": None},  # both stop epochs
    "resources": {"trial": {"cpus": 1}, "teacher": {"cpus": 1}},
    "confirm": {"seeds": [100, 101], "cells": ["teacher_stop_epoch"]},
}


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST is not installed at {FASHION} (apt-get install dataset-fashion-mnist; "
                           "scripts/test installs it where it can)")
def test_a_search_on_fashion_mnist_is_confirmed_and_analysed(tmp_path, shared_ray):
    spec = tmp_path / "fashion_small.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    for args in (("search", spec), ("confirm", "fashion_small")):
        proc = kdx(tmp_path, *args, "--json", *shared_ray.args, env=shared_ray.env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _, runs = runs_of(sqlite_uri(tmp_path), "fashion_small")
    (teacher,) = by_role(runs, "teacher")
    assert teacher.data.tags["dataset"] == "torchvision:FashionMNIST"
    # 600 real training images: a 2-D CNN learns far above chance (0.1) in three epochs
    assert teacher.data.metrics["val_acc"] > 0.5, teacher.data.metrics
    trials = by_role(runs, "trial")
    assert trials and all(r.data.tags["status"] == "completed" for r in trials)
    proc = kdx(tmp_path, "analyze", "fashion_small", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])["confirmed"]["cnn2d_w2"]
    assert answer["confirmed"] and answer["n_cells"] == 2 and answer["min_seeds"] == 2
