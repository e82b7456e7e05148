"""The dataset plugins: each loader registers itself (`register_dataset`) where it is defined.

A loader returns the OFFICIAL train and test sets as normalised CPU tensors (float32 inputs, int64
labels); `explorer.data.load_splits` does the rest (validation split, data condition) the same way
for every dataset, so adding one is a single decorated function here, with no list to update.

* `mnist1d` (`_10k`, `_20k`): generated offline by the `mnist1d` package with its default arguments
  (5000 samples, 80/20 train/test, length 40, seed 42; 10,000 or 20,000 samples), cached as .npz.
* `digits`: scikit-learn's bundled 8x8 digits with a FIXED stratified 20 % test split (seed 0,
  independent of split_seed), since it has no official one.
* `cifar10` / `cifar100`: the extracted python-version archive in `data_dir` (explorer/cifar.py,
  registered the same way, from its own module).
* `mnist`: torchvision's on-disk MNIST (`<data_dir>/MNIST/raw/`, the idx files; explorer/mnist.py).
* `fake`: small synthetic images with learnable class structure, for tests.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import Tensor

from .augment import AUGMENTATIONS
from .errors import KdxError
from .storage import Storage

if TYPE_CHECKING:  # only for annotations: explorer.data imports this module, not the reverse
    from .data import DataSpec

__all__ = ["DatasetInfo", "DATASETS", "register_dataset", "dataset_names", "cache_dir", "check_data_present"]

# ----------------------------------------------------------------------------- registry
Loader = Callable[["DataSpec"], tuple[Tensor, Tensor, Tensor, Tensor]]


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
    check: Callable[["DataSpec"], None] | None = None
    # the official training set's per-class counts where they are fixed (CIFAR, MNIST): a data condition that
    # cannot fit them (imbalance_max above what the validation split leaves) is refused at validate, not load
    class_counts: tuple[int, ...] | None = None


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(name: str, description: str, num_classes: int, input_shape: tuple[int, ...],
                     augment: str = "none", check: Callable[["DataSpec"], None] | None = None,
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


def check_data_present(spec: DataSpec) -> None:
    """The data of an on-disk dataset is where `spec` says, or is to be downloaded there: checked
    without loading it, before any compute; KdxError naming `dataset.<field>`."""
    info = DATASETS.get(spec.dataset)
    if info is not None and info.check is not None:
        try:
            info.check(spec)
        except KdxError as e:
            raise KdxError(f"dataset.{e}") from None


def cache_dir(spec: DataSpec | None = None) -> Path:
    """Where generated data is cached: spec.data_dir, else $KDX_CACHE, else ~/.cache/kdx."""
    if spec is not None and spec.data_dir:
        return Path(spec.data_dir).expanduser()
    env = os.environ.get("KDX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kdx"


# ----------------------------------------------------- seeded sampling (explorer.data uses it too)
def step_generator(seed: int, step: str) -> torch.Generator:
    """A generator for one named random step, seeded with a stable 63-bit hash of (seed, step), so
    the steps never share a stream and changing one condition never reshuffles another."""
    digest = hashlib.sha256(f"kdx-data/{step}/{int(seed)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def take_first_per_class(y: Tensor, counts_to_take: Tensor, generator: torch.Generator
                         ) -> tuple[Tensor, Tensor]:
    """Split indices of `y` per class: class c gives the first `counts_to_take[c]` of its samples in a
    seeded random permutation. Returns (taken, rest), both sorted ascending. Vectorised."""
    n = len(y)
    num_classes = len(counts_to_take)
    perm = torch.randperm(n, generator=generator)
    y_perm = y[perm]
    order = torch.argsort(y_perm, stable=True)  # grouped by class, permutation order inside a class
    idx_sorted, y_sorted = perm[order], y_perm[order]
    counts = torch.bincount(y, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[y_sorted]
    take = rank < counts_to_take[y_sorted]
    return idx_sorted[take].sort().values, idx_sorted[~take].sort().values


def stratified_holdout(y: Tensor, num_classes: int, fraction: float, generator: torch.Generator
                       ) -> tuple[Tensor, Tensor]:
    """(keep, holdout) indices; holdout has max(1, round(fraction * n_c)) of each class c (0 if
    fraction == 0), capped at n_c - 1 for classes with at least 2 samples."""
    hold = holdout_counts(torch.bincount(y, minlength=num_classes).tolist(), fraction)
    held, kept = take_first_per_class(y, torch.tensor(hold, dtype=torch.int64), generator)
    return kept, held


def holdout_counts(counts: list[int], fraction: float) -> list[int]:
    """How many samples of each class (with `counts[c]` samples) `stratified_holdout` holds out."""
    return [0 if fraction <= 0 or n_c == 0 else min(max(1, round(fraction * n_c)), max(n_c - 1, 1))
            for n_c in counts]


def normalise_(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return x.sub_(mean).div_(std)


# ----------------------------------------------------------------------------- mnist1d
MNIST1D_FILE_VERSION = 1


def _mnist1d_args() -> dict:
    from mnist1d.data import get_dataset_args  # imported lazily: it pulls in matplotlib

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # not used by generation, and we never download
    return args


def _generate_mnist1d(args: dict) -> dict[str, np.ndarray]:
    """Run the package's procedural generator (no network). It reseeds the global `random` and
    `numpy.random` states; we restore them so loading data has no side effects on other code."""
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {"x": np.asarray(d["x"]), "y": np.asarray(d["y"]),
            "x_test": np.asarray(d["x_test"]), "y_test": np.asarray(d["y_test"])}


def _read_mnist1d_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
    except FileNotFoundError:
        return None
    except Exception as e:  # truncated / corrupt file: regenerate
        warnings.warn(f"ignoring unreadable MNIST-1D cache {str(path)!r} ({e}); regenerating it")
        return None
    ok = (arrays["x"].ndim == 2 and arrays["x_test"].ndim == 2 and len(arrays["x"]) == len(arrays["y"])
          and len(arrays["x_test"]) == len(arrays["y_test"]))
    return arrays if ok else None


def _write_atomic_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the .npz atomically (explorer.storage: a temporary name, then a rename)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        store = Storage(str(path.parent))
        store.makedirs(str(path.parent))
        store.write_atomic(str(path), buf.getvalue())
    except OSError as e:  # a read-only cache dir only costs regeneration next time
        warnings.warn(f"could not cache MNIST-1D at {str(path)!r} ({e})")


def _mnist1d_loader(num_samples: int) -> Loader:
    """A loader of MNIST-1D with `num_samples` samples (the package's 80/20 train/test split)."""

    def load(spec: DataSpec):
        args = _mnist1d_args() | {"num_samples": num_samples}
        key = json.dumps({"args": args, "v": MNIST1D_FILE_VERSION}, sort_keys=True)
        path = cache_dir(spec) / f"mnist1d_{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
        arrays = _read_mnist1d_cache(path)
        if arrays is None:
            _write_atomic_npz(path, arrays := _generate_mnist1d(args))
        train_x = torch.from_numpy(arrays["x"]).to(torch.float32).unsqueeze(1)
        test_x = torch.from_numpy(arrays["x_test"]).to(torch.float32).unsqueeze(1)
        mean, std = train_x.mean(), train_x.std()
        return (normalise_(train_x, mean, std), torch.from_numpy(arrays["y"]).to(torch.int64),
                normalise_(test_x, mean, std), torch.from_numpy(arrays["y_test"]).to(torch.int64))
    return load


# The package's default size, and larger draws from the same generator (benchmarks/default_study.py).
for _name, _n in (("mnist1d", 5000), ("mnist1d_10k", 10000), ("mnist1d_20k", 20000)):
    register_dataset(_name, f"MNIST-1D, generated offline ({_n * 4 // 5} train / {_n // 5} test, length 40)",
                     10, (1, 40))(_mnist1d_loader(_n))


# ----------------------------------------------------------------------------- digits
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0


@register_dataset("digits", "scikit-learn 8x8 digits (fixed stratified 20% test split, seed 0)", 10, (1, 8, 8))
def _load_digits(spec: DataSpec):
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    d = load_digits()
    x = torch.from_numpy(d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(d.target.astype(np.int64))
    train_idx, test_idx = stratified_holdout(y, 10, DIGITS_TEST_FRACTION,
                                             step_generator(DIGITS_TEST_SEED, "digits-test"))
    train_x, test_x = x[train_idx], x[test_idx]
    mean, std = train_x.mean(), train_x.std()
    return (normalise_(train_x, mean, std), y[train_idx], normalise_(test_x, mean, std), y[test_idx])


# ----------------------------------------------------------------------------- CIFAR and MNIST
importlib.import_module(".cifar", __package__)  # registers cifar10 and cifar100 (explorer/cifar.py)
importlib.import_module(".mnist", __package__)  # registers mnist (explorer/mnist.py)


# ----------------------------------------------------------------------------- fake
FAKE_SEED = 1234
FAKE_TRAIN, FAKE_TEST, FAKE_CLASSES, FAKE_SHAPE = 1000, 200, 10, (3, 16, 16)


@register_dataset("fake", "synthetic 10-class 3x16x16 images (1000 train / 200 test), for tests",
                  FAKE_CLASSES, FAKE_SHAPE, "crop_flip")
def _load_fake(spec: DataSpec):
    """Each class is a fixed smooth, left-right symmetric prototype (so crop/flip keep the class)
    plus Gaussian noise. Exactly balanced: 100 train and 20 test samples per class."""
    g = torch.Generator().manual_seed(FAKE_SEED)
    c, h, w = FAKE_SHAPE
    low = torch.randn(FAKE_CLASSES, c, 4, 4, generator=g)
    protos = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    protos = 0.5 * (protos + protos.flip(-1))
    protos = protos / protos.std(dim=(1, 2, 3), keepdim=True)

    def make(n):
        y = (torch.arange(n) % FAKE_CLASSES)[torch.randperm(n, generator=g)]
        x = protos[y] + 1.5 * torch.randn(n, c, h, w, generator=g)
        return x, y

    train_x, train_y = make(FAKE_TRAIN)
    test_x, test_y = make(FAKE_TEST)
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True)
    return normalise_(train_x, mean, std), train_y, normalise_(test_x, mean, std), test_y
