"""torchvision's classification datasets by name (`torchvision:<Class>`), read from data_dir in
torchvision's layout by explorer/data/torchvision_sets.py; small files each test writes
(tests/datafiles.py), checked against the arrays written."""

import json

import numpy as np
import pytest
import torch
from datafiles import fake_mnist, fake_stl10, fake_svhn
from kdxrun import kdx

from explorer.data.registry import check_data_present, dataset_info
from explorer.data.section import parse_dataset
from explorer.data.splits import load_splits
from explorer.errors import KdxError


def _unit(x: np.ndarray) -> torch.Tensor:
    """The bytes as floats in [0, 1] (each test then standardises with the training images' own mean and std)."""
    return torch.from_numpy(x.astype(np.float32) / 255.0)


@pytest.mark.parametrize("name,folder,gz", [("FashionMNIST", "FashionMNIST/raw", True),  # torchvision's layout
                                            ("KMNIST", "KMNIST/raw", False),
                                            ("FashionMNIST", ".", True)])  # flat, as Debian installs it
def test_the_mnist_family_reads_gzipped_or_extracted_idx_files_in_either_layout(tmp_path, name, folder, gz):
    parts = fake_mnist(tmp_path, n_train=50, n_test=20, gz_test=gz, gz_train=gz, folder=folder)
    spec = parse_dataset({"name": f"torchvision:{name}", "data_dir": str(tmp_path), "val_fraction": 0.2})
    check_data_present(spec)
    s = load_splits(spec)
    assert (s.name, s.num_classes, s.input_shape, s.augment) == (f"torchvision:{name}", 10, (1, 28, 28), "none")
    assert len(s.train_y) + len(s.val_y) == 50 and len(s.test_y) == 20
    train = _unit(parts["train"][0])
    mean, std = train.mean().item(), train.std().item()
    expect = (_unit(parts["t10k"][0]) - mean) / std
    assert torch.allclose(s.test_x[:, 0], expect, atol=1e-5)
    assert torch.equal(s.test_y, torch.from_numpy(parts["t10k"][1].astype(np.int64)))


def test_svhn_reads_its_mat_files_with_10_as_the_digit_0(tmp_path):
    parts = fake_svhn(tmp_path)
    s = load_splits(parse_dataset({"name": "torchvision:SVHN", "data_dir": str(tmp_path), "val_fraction": 0.0}))
    assert (s.num_classes, s.input_shape, len(s.train_y), len(s.test_y)) == (10, (3, 32, 32), 30, 10)
    x, y = parts["test"]
    assert torch.equal(s.test_y, torch.from_numpy(y.reshape(-1).astype(np.int64) % 10))
    train = _unit(parts["train"][0].transpose(3, 2, 0, 1))
    mean, std = train.mean((0, 2, 3), keepdim=True), train.std((0, 2, 3), keepdim=True)
    assert torch.allclose(s.test_x, (_unit(x.transpose(3, 2, 0, 1)) - mean) / std, atol=1e-5)


def test_stl10_reads_its_column_major_binaries(tmp_path):
    parts = fake_stl10(tmp_path)
    s = load_splits(parse_dataset({"name": "torchvision:STL10", "data_dir": str(tmp_path), "val_fraction": 0.0}))
    assert (s.input_shape, s.augment, len(s.train_y), len(s.test_y)) == ((3, 96, 96), "crop_flip", 20, 10)
    images, labels = parts["test"]
    assert torch.equal(s.test_y, torch.from_numpy(labels.astype(np.int64) - 1))
    train = _unit(parts["train"][0])
    mean, std = train.mean((0, 2, 3), keepdim=True), train.std((0, 2, 3), keepdim=True)
    assert torch.allclose(s.test_x, (_unit(images) - mean) / std, atol=1e-5)


def test_cifar_by_its_torchvision_name_is_the_cifar_dataset():
    tv, ours = dataset_info("torchvision:CIFAR10"), dataset_info("cifar10")
    assert tv.name == "torchvision:CIFAR10" and tv.loader is ours.loader and tv.num_classes == 10
    assert dataset_info("torchvision:CIFAR100").num_classes == 100


@pytest.mark.parametrize("fields,words", [
    ({"name": "torchvision:ImageNet"}, ["dataset.name: got 'torchvision:ImageNet'", "torchvision:FashionMNIST"]),
    ({"name": "torchvision"}, ["dataset.name: got 'torchvision'", "torchvision:<MNIST|FashionMNIST"]),
    ({"name": "torchvision:FashionMNIST", "data_dir": "/nonexistent/kdx"},
     ["dataset.data_dir: got '/nonexistent/kdx'", "no such directory", "FashionMNIST/raw/"]),
    ({"name": "torchvision:SVHN", "data_dir": "."}, ["dataset.data_dir", "missing train_32x32.mat, test_32x32.mat"]),
    ({"name": "torchvision:STL10"}, ["dataset.data_dir: got None", "stl10_binary/"]),
])
def test_a_dataset_kdx_cannot_read_is_one_sentence(fields, words):
    with pytest.raises(KdxError) as e:
        check_data_present(parse_dataset(fields))
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_a_corrupt_file_is_one_sentence(tmp_path):
    fake_mnist(tmp_path, folder="KMNIST/raw", gz_test=False)
    (tmp_path / "KMNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03short")
    with pytest.raises(KdxError, match=r"^data_dir: the KMNIST file .* is unreadable \(not an idx file"):
        load_splits(parse_dataset({"name": "torchvision:KMNIST", "data_dir": str(tmp_path)}))


def test_kdx_datasets_lists_the_torchvision_names(tmp_path):
    proc = kdx(tmp_path, "datasets", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])["datasets"]}
    assert rows["torchvision:FashionMNIST"]["input_shape"] == [1, 28, 28]
    assert rows["torchvision:STL10"]["input_shape"] == [3, 96, 96] and "mnist1d" in rows
