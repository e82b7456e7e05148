"""torchvision's classification datasets by name: `dataset: {name: "torchvision:<Class>", data_dir: ...}`.

The data is read from `data_dir` as torchvision lays it out (what `torchvision.datasets.<Class>(root=
data_dir, download=True)` leaves there), by kdx's own readers: no md5 sums, so a small locally made
copy in the same format loads too, and nothing is imported from torchvision unless `download: true`.

| name                     | layout under data_dir                        | shape   | augment   |
|--------------------------|----------------------------------------------|---------|-----------|
| torchvision:MNIST        | MNIST/raw/ (the four idx files)              | 1x28x28 | none      |
| torchvision:FashionMNIST | FashionMNIST/raw/                            | 1x28x28 | none      |
| torchvision:KMNIST       | KMNIST/raw/                                  | 1x28x28 | none      |
| torchvision:CIFAR10      | cifar-10-batches-py/ (explorer/data/cifar.py)| 3x32x32 | crop_flip |
| torchvision:CIFAR100     | cifar-100-python/                            | 3x32x32 | crop_flip |
| torchvision:SVHN         | train_32x32.mat, test_32x32.mat              | 3x32x32 | none      |
| torchvision:STL10        | stl10_binary/{train,test}_{X,y}.bin          | 3x96x96 | crop_flip |

The MNIST family's idx files may be extracted or .gz, and may also lie directly in data_dir, as
Debian's `dataset-fashion-mnist` installs them (explorer/data/mnist.py).

Class counts and input shapes are the datasets' own (the table); each loader checks that the files
agree. The MNIST family, SVHN and STL10 are normalised with the mean and std of their official
training images, per channel, computed when loaded; CIFAR with its usual constants, as `cifar10`.
SVHN's label 10 is the digit 0, as torchvision maps it; STL10's labels 1-10 become 0-9 and its
unlabelled split is not read. SVHN keeps its digits unflipped (no augmentation)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from explorer.data import mnist
from explorer.data.condition import DataSpec
from explorer.data.registry import DATASETS, DatasetInfo, normalise_, register_prefix
from explorer.errors import KdxError, bad_value

PREFIX = "torchvision"
CLASSES = ("MNIST", "FashionMNIST", "KMNIST", "CIFAR10", "CIFAR100", "SVHN", "STL10")
_BALANCED = {"FashionMNIST": 6000, "KMNIST": 6000, "STL10": 500}  # per-class counts of the official train sets


def _standardise(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both splits normalised with the training images' per-channel mean and std."""
    dims = [0] + list(range(2, train_x.dim()))
    mean = train_x.mean(dims, keepdim=True)
    std = train_x.std(dims, keepdim=True).clamp_min(1e-6)
    return normalise_(train_x, mean, std), normalise_(test_x, mean, std)


def _need(spec: DataSpec, title: str, files: list[Path], layout: str) -> None:
    """The files are there; else KdxError naming data_dir (these are read from disk only)."""
    allowed = f"allowed: a directory that holds {layout} (torchvision's layout for {title})"
    if not spec.data_dir:
        raise bad_value("data_dir", spec.data_dir, f"{title} is read from disk; {allowed}")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise bad_value("data_dir", spec.data_dir, f"no complete {title} data there (missing {', '.join(missing)}); "
                        f"{allowed}")


# ------------------------------------------------------------------------------------- SVHN
def _svhn_files(spec: DataSpec) -> list[Path]:
    root = Path(spec.data_dir or ".").expanduser()
    return [root / "train_32x32.mat", root / "test_32x32.mat"]


def _svhn_check(spec: DataSpec) -> None:
    _need(spec, "SVHN", _svhn_files(spec), "train_32x32.mat and test_32x32.mat")


def _read_svhn(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    except Exception as e:  # a truncated or foreign .mat: scipy raises several kinds
        raise KdxError(f"data_dir: the SVHN file {str(path)!r} is unreadable ({type(e).__name__}: {e}); replace "
                       "it with a fresh copy.") from None
    if x.dtype != np.uint8 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y) or \
            (len(y) and (y.min() < 1 or y.max() > 10)):
        raise KdxError(f"data_dir: the SVHN file {str(path)!r} is not 32x32x3xN uint8 images with labels 1-10; "
                       "allowed: torchvision's SVHN files.")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))).to(torch.float32).div_(255.0)
    return images, torch.from_numpy(y % 10)  # 10 is the digit 0


def _load_svhn(spec: DataSpec):
    _svhn_check(spec)
    (train_x, train_y), (test_x, test_y) = map(_read_svhn, _svhn_files(spec))
    train_x, test_x = _standardise(train_x, test_x)
    return train_x, train_y, test_x, test_y


# ------------------------------------------------------------------------------------ STL10
def _stl_files(spec: DataSpec) -> list[Path]:
    root = Path(spec.data_dir or ".").expanduser() / "stl10_binary"
    return [root / f"{split}_{part}.bin" for split in ("train", "test") for part in ("X", "y")]


def _stl_check(spec: DataSpec) -> None:
    _need(spec, "STL10", _stl_files(spec), "stl10_binary/ with train_X.bin, train_y.bin, test_X.bin, test_y.bin")


def _read_stl(images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = np.fromfile(images, dtype=np.uint8), np.fromfile(labels, dtype=np.uint8).astype(np.int64)
    if len(x) != len(y) * 3 * 96 * 96 or (len(y) and (y.min() < 1 or y.max() > 10)):
        raise KdxError(f"data_dir: the STL10 files {str(images)!r} and {labels.name!r} disagree ({len(x)} bytes of "
                       f"images, {len(y)} labels; 3x96x96 images and labels 1-10 expected); allowed: torchvision's "
                       "STL10 files.")
    # Each image is stored column-major per channel, as torchvision reads it.
    x = torch.from_numpy(np.ascontiguousarray(x.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)))
    return x.to(torch.float32).div_(255.0), torch.from_numpy(y - 1)


def _load_stl(spec: DataSpec):
    _stl_check(spec)
    files = _stl_files(spec)
    (train_x, train_y), (test_x, test_y) = _read_stl(*files[:2]), _read_stl(*files[2:])
    train_x, test_x = _standardise(train_x, test_x)
    return train_x, train_y, test_x, test_y


# ---------------------------------------------------------------------------------- resolve
def _info(name: str, description: str, classes: int, shape: tuple, augment: str, loader, check,
          counts: tuple | None = None) -> DatasetInfo:
    return DatasetInfo(f"{PREFIX}:{name}", description, classes, shape, augment, loader, check, counts)


@register_prefix(PREFIX, allowed=f"{PREFIX}:<{'|'.join(CLASSES)}>", examples=[f"{PREFIX}:{c}" for c in CLASSES])
def resolve(name: str) -> DatasetInfo:
    """The DatasetInfo of `torchvision:<name>`; KdxError naming `dataset` for a class kdx does not read."""
    if name in mnist.FAMILY:
        ds = mnist.FAMILY[name]
        counts = mnist.TRAIN_COUNTS if name == "MNIST" else (_BALANCED[name],) * 10
        return _info(name, f"{ds.title} from data_dir ({ds.folder}/ or the idx files; torchvision's layout)", 10,
                     (1, 28, 28), "none", mnist.idx_loader(ds), lambda spec: mnist.check_present(ds, spec), counts)
    if name in ("CIFAR10", "CIFAR100"):  # explorer/data/cifar.py's entries, under this name
        return replace(DATASETS[name.lower()], name=f"{PREFIX}:{name}")
    if name == "SVHN":
        return _info(name, "SVHN from data_dir (train_32x32.mat, test_32x32.mat)", 10, (3, 32, 32), "none",
                     _load_svhn, _svhn_check)
    if name == "STL10":
        return _info(name, "STL10 from data_dir (stl10_binary/; the labelled splits)", 10, (3, 96, 96), "crop_flip",
                     _load_stl, _stl_check, (_BALANCED[name],) * 10)
    raise bad_value("dataset", f"{PREFIX}:{name}", f"allowed: {', '.join(f'{PREFIX}:{c}' for c in CLASSES)} (the "
                    "torchvision classification datasets kdx reads from data_dir)")
