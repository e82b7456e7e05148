"""The dataset registry: each loader registers itself (`register_dataset`) where it is defined.

A loader returns the OFFICIAL train and test sets as normalised CPU tensors (float32 inputs, int64
labels); `explorer.data.splits.load_splits` does the rest (validation split, data condition) the same
way for every dataset, so adding one is a single decorated function, with no list to update.

The plugins (registered on `import explorer.data`):
* `mnist1d` (`_10k`, `_20k`): generated offline by the `mnist1d` package with its default arguments
  (5000 samples, 80/20 train/test, length 40, seed 42; 10,000 or 20,000 samples), cached as .npz
  (explorer/data/builtin.py).
* `digits`: scikit-learn's bundled 8x8 digits with a FIXED stratified 20 % test split (seed 0,
  independent of split_seed), since it has no official one (builtin.py).
* `cifar10` / `cifar100`: the extracted python-version archive in `data_dir` (explorer/data/cifar.py).
* `mnist`: torchvision's on-disk MNIST (`<data_dir>/MNIST/raw/`, the idx files; explorer/data/mnist.py).
* `fake`: small synthetic images with learnable class structure, for tests (builtin.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import Tensor

from explorer.data.augment import AUGMENTATIONS
from explorer.errors import KdxError

__all__ = ["DatasetInfo", "DATASETS", "register_dataset", "dataset_names", "cache_dir", "check_data_present"]

# ----------------------------------------------------------------------------- registry
Loader = Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]  # a DataSpec -> the official splits


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    num_classes: int
    input_shape: tuple[int, ...]
    augment: str
    loader: Loader  # spec -> (train_x, train_y, test_x, test_y): CPU, float32 normalised, int64 labels
    # on-disk datasets: spec -> None or KdxError naming the field (`data_dir: ...`), the data present (or
    # to be downloaded) checked without loading it; the spec and the flags are checked with it before compute
    check: Callable[..., None] | None = None
    # the official training set's per-class counts where they are fixed (CIFAR, MNIST): a data condition that
    # cannot fit them (imbalance_max above what the validation split leaves) is refused at validate, not load
    class_counts: tuple[int, ...] | None = None


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(name: str, description: str, num_classes: int, input_shape: tuple[int, ...],
                     augment: str = "none", check: Callable[..., None] | None = None,
                     class_counts: tuple[int, ...] | None = None) -> Callable[[Loader], Loader]:
    """Decorator: register `loader` as dataset `name` (its class count, per-sample input shape, the
    augmentation the training loop applies, one of `AUGMENTATIONS`, for data read from disk the
    `check` that it is there, and the official training set's per-class counts where they are fixed).
    A name registers once, so a plugin can never silently replace another."""
    if name in DATASETS:
        raise ValueError(f"dataset {name!r} is already registered ({DATASETS[name].description}).")
    if augment not in AUGMENTATIONS:
        raise ValueError(f"dataset {name!r}: augment {augment!r} is not one of {', '.join(AUGMENTATIONS)}.")
    if class_counts is not None and len(class_counts) != num_classes:
        raise ValueError(f"dataset {name!r}: {len(class_counts)} class counts for {num_classes} classes.")

    def register(loader: Loader) -> Loader:
        DATASETS[name] = DatasetInfo(name, description, int(num_classes), tuple(input_shape), augment, loader, check,
                                     None if class_counts is None else tuple(int(c) for c in class_counts))
        return loader
    return register


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def check_data_present(spec) -> None:
    """The data of an on-disk dataset is where `spec` says, or is to be downloaded there: checked
    without loading it, before any compute; KdxError naming `dataset.<field>`."""
    info = DATASETS.get(spec.dataset)
    if info is not None and info.check is not None:
        try:
            info.check(spec)
        except KdxError as e:
            raise KdxError(f"dataset.{e}") from None


def cache_dir(spec=None) -> Path:
    """Where generated data is cached: spec.data_dir, else $KDX_CACHE, else ~/.cache/kdx."""
    if spec is not None and spec.data_dir:
        return Path(spec.data_dir).expanduser()
    env = os.environ.get("KDX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kdx"


def normalise_(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return x.sub_(mean).div_(std)

