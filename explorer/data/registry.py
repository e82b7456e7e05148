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

Names with a prefix resolve through a family registered for the prefix (`register_prefix`), as model
names resolve by pattern: `torchvision:<Class>` is any of the torchvision classification datasets kdx
reads from `data_dir` in torchvision's layout (explorer/data/torchvision_sets.py). `dataset_info(name)`
is the one lookup for both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from torch import Tensor

from explorer.data.augment import AUGMENTATIONS
from explorer.errors import KdxError, bad_value

__all__ = ["DatasetInfo", "DATASETS", "register_dataset", "register_prefix", "dataset_info", "dataset_names",
           "listed_datasets", "cache_dir", "check_data_present", "download_missing"]

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


@dataclass(frozen=True)
class _Prefix:
    resolve: Callable[[str], DatasetInfo]  # the name after the prefix -> its DatasetInfo (KdxError if unknown)
    allowed: str  # how the family's names are spelled in the "unknown dataset" sentence
    examples: tuple[str, ...]  # the names `kdx datasets` lists


_PREFIXES: dict[str, _Prefix] = {}
_RESOLVED: dict[str, DatasetInfo] = {}


def register_prefix(prefix: str, allowed: str, examples: Iterable[str]) -> Callable:
    """Decorator: datasets named `<prefix>:<rest>` resolve through `resolve(rest) -> DatasetInfo`."""
    if prefix in _PREFIXES:
        raise ValueError(f"dataset prefix {prefix!r} is already registered.")

    def register(resolve: Callable[[str], DatasetInfo]) -> Callable[[str], DatasetInfo]:
        _PREFIXES[prefix] = _Prefix(resolve, allowed, tuple(examples))
        return resolve
    return register


def dataset_names() -> list[str]:
    """The registered names, and for each prefix family how its names are spelled."""
    return sorted(DATASETS) + [p.allowed for p in _PREFIXES.values()]


def listed_datasets() -> list[DatasetInfo]:
    """What `kdx datasets` lists: every registered dataset, then each prefix family's examples."""
    return list(DATASETS.values()) + [dataset_info(n) for p in _PREFIXES.values() for n in p.examples]


def dataset_info(name) -> DatasetInfo:
    """The dataset called `name`: a registered one, or one a prefix family resolves (once per name);
    KdxError naming `dataset` and what is allowed."""
    if isinstance(name, str) and name in DATASETS:
        return DATASETS[name]
    if isinstance(name, str) and name in _RESOLVED:
        return _RESOLVED[name]
    prefix, sep, rest = name.partition(":") if isinstance(name, str) else ("", "", "")
    if not sep or prefix not in _PREFIXES:
        raise bad_value("dataset", name, f"allowed: {', '.join(dataset_names())}")
    _RESOLVED[name] = info = _PREFIXES[prefix].resolve(rest)
    return info


def check_data_present(spec) -> None:
    """The data of an on-disk dataset is where `spec` says, or is to be downloaded there: checked
    without loading it, before any compute; KdxError naming `dataset.<field>`."""
    info = dataset_info(spec.dataset)
    if info.check is not None:
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


def download_missing(spec, title: str, folder, missing: Callable[[], list[str]], download: Callable[[], None],
                     allowed: str) -> None:
    """With `download: true` and files `missing()`: fetch them (`download()`), then refuse in one sentence
    naming data_dir if some are still missing. Nothing happens when every file is there."""
    if not missing():
        return
    download()
    left = missing()
    if left:
        raise bad_value("data_dir", spec.data_dir, f"the {title} download left it incomplete (missing "
                        f"{', '.join(left)} in {folder}/); allowed: {allowed}")


def normalise_(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return x.sub_(mean).div_(std)

