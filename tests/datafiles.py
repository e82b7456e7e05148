"""Small datasets in the on-disk formats kdx reads, written by tests: the MNIST family's idx files
(extracted or gzipped, in torchvision's folder or flat), SVHN's .mat files and STL10's binaries."""

import gzip
from pathlib import Path

import numpy as np


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    """An idx file of unsigned bytes (LeCun's format, as torchvision keeps it)."""
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = head + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def fake_mnist(root: Path, n_train: int = 60, n_test: int = 20, gz_test: bool = True, folder="MNIST/raw",
               gz_train: bool = False) -> dict:
    """The four idx files of an MNIST-family dataset under `root / folder` (random images, labels
    cycling 0-9); the parts written, by file prefix."""
    rng = np.random.default_rng(0)
    parts = {"train": (rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10),
             "t10k": (rng.integers(0, 256, (n_test, 28, 28)), np.arange(n_test) % 10)}
    for split, (x, y) in parts.items():
        gz = gz_test if split == "t10k" else gz_train
        write_idx(root / folder / f"{split}-images-idx3-ubyte", x, gz)
        write_idx(root / folder / f"{split}-labels-idx1-ubyte", y, gz)
    return parts


def fake_svhn(root: Path, n_train: int = 30, n_test: int = 10) -> dict:
    """train_32x32.mat and test_32x32.mat as torchvision's SVHN reads them: X (32, 32, 3, N) uint8,
    y (N, 1) with labels 1-10 (10 is the digit 0)."""
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    parts = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n)).astype(np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)
        root.mkdir(parents=True, exist_ok=True)
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        parts[split] = (x, y)
    return parts


def fake_stl10(root: Path, n_train: int = 20, n_test: int = 10) -> dict:
    """stl10_binary/{train,test}_{X,y}.bin: images stored column-major per channel, labels 1-10."""
    rng = np.random.default_rng(2)
    parts = {}
    (root / "stl10_binary").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 3, 96, 96)).astype(np.uint8)  # (N, C, H, W)
        labels = (np.arange(n) % 10 + 1).astype(np.uint8)
        images.transpose(0, 1, 3, 2).tofile(root / "stl10_binary" / f"{split}_X.bin")
        labels.tofile(root / "stl10_binary" / f"{split}_y.bin")
        parts[split] = (images, labels)
    return parts
