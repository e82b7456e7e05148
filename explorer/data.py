"""Datasets, data conditions (label noise, class imbalance, omitted classes), batching and augmentation.

Design
------
* A dataset lives as one float32 tensor per split (already normalised) plus an int64 label tensor.
  `Splits.to(device)` moves everything to the training device once; batching (`iterate_batches`)
  and augmentation (`augment_batch`) are tensor ops on that device. No DataLoader, no per-sample
  Python in the hot loop.
* Every random choice is seeded. Each step below uses its own `torch.Generator`, seeded from
  `split_seed` and the step's name, so changing one condition never reshuffles another step.
* The test split is never used to choose anything: normalisation statistics come from the
  official training set, and the validation split (used for model selection) is carved from it.

How `load_splits` builds the splits (the order matters)
------------------------------------------------------
1. The dataset's loader returns the official train and test sets (normalised CPU tensors).
2. A stratified validation split is carved from the official training set with `split_seed`:
   for each class c with count n_c, `max(1, round(val_fraction * n_c))` samples are held out
   (Python's `round`, half to even; nothing when val_fraction == 0; never the whole class when it
   has 2 or more samples). Which samples: the first ones of that class in a seeded random
   permutation. Val keeps the clean labels and all classes.
3. On the remaining train split, in this order:
   a. `omit_classes`: every sample of those classes is dropped (train only; val/test keep them).
   b. power-law imbalance (`imbalance_gamma`): the remaining classes, in index order, are ranked
      c = 1..K and class c keeps the first n_c of its samples in a seeded permutation, with
      n_c = round(a / (b + (c - 1) ** gamma)),  b = (K - 1) ** gamma * min / (max - min),  a = max * b,
      so that n_1 = imbalance_max and n_K = imbalance_min. (Seed paper 000, section IV-C, follows
      Dong et al.; its OCR text reads "(c - 1)^-gamma", which would make class 1 empty: we use the
      form that gives the stated largest and smallest class counts.) imbalance_max defaults to the
      smallest per-class count available in the train split.
   c. symmetric label noise (`label_noise` = sigma): each train label, with probability sigma, is
      replaced by a class drawn uniformly from all classes present in the train split (all classes
      unless some are omitted; an omitted class never reappears through noise). As in seed paper
      000 section IV-B the draw may land on the true class, so the observed flip rate is
      sigma * (K - 1) / K. `train_clean_y` keeps the labels before noise.

Datasets (see `DATASETS`)
-------------------------
* `mnist1d`: generated offline by the `mnist1d` package with its default arguments (the standard
  4000 train / 1000 test, length 40, seed 42); the raw arrays are cached as an .npz file under the
  cache directory (`data_dir`, else $KDX_CACHE, else ~/.cache/kdx), written atomically.
* `digits`: scikit-learn's bundled 8x8 digits; it has no official test split, so a FIXED stratified
  20 % test split with seed 0 (independent of split_seed) is used.
* `cifar10` / `cifar100`: the standard python-version archive extracted in `data_dir`
  (cifar-10-batches-py/ or cifar-100-python/). The batch files are read here directly with a
  restricted unpickler that only rebuilds plain containers and numpy arrays (it cannot run code);
  their structure (shapes, dtype, label range) is checked instead of torchvision's md5 sums, so a
  small locally made dataset in the same format loads too. `download=True` fetches the archive
  with torchvision (which verifies the archive's md5) only when the files are missing.
* `fake`: small synthetic images with learnable class structure, for tests.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import numbers
import os
import pickle
import random
import tempfile
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from .errors import KdxError, bad_value

__all__ = [
    "DataCondition", "DataSpec", "Splits", "DatasetInfo", "DATASETS", "load_splits", "dataset_names",
    "augment_batch", "iterate_batches",
]

# Bump when a change here alters the data a given DataSpec produces (part of DataSpec.identity()).
DATA_VERSION = 1

AUGMENTATIONS = ("none", "crop_flip")


# ----------------------------------------------------------------------------- small helpers
def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _derived_seed(seed: int, step: str) -> int:
    """A stable 63-bit seed for one named random step, so the steps do not share a stream."""
    digest = hashlib.sha256(f"kdx-data/{step}/{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _generator(seed: int, step: str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(_derived_seed(seed, step))
    return g


def _take_first_per_class(y: Tensor, counts_to_take: Tensor, generator: torch.Generator
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


def _stratified_holdout(y: Tensor, num_classes: int, fraction: float, generator: torch.Generator
                        ) -> tuple[Tensor, Tensor]:
    """(keep, holdout) indices; holdout has max(1, round(fraction * n_c)) of each class c (0 if
    fraction == 0), capped at n_c - 1 for classes with at least 2 samples."""
    counts = torch.bincount(y, minlength=num_classes).tolist()
    hold = []
    for n_c in counts:
        k = 0
        if fraction > 0 and n_c > 0:
            k = max(1, round(fraction * n_c))
            if n_c >= 2:
                k = min(k, n_c - 1)
        hold.append(k)
    held, kept = _take_first_per_class(y, torch.tensor(hold, dtype=torch.int64), generator)
    return kept, held


def power_law_counts(num_classes: int, gamma: float, largest: int, smallest: int) -> list[int]:
    """n_c = round(a / (b + (c-1)**gamma)), c = 1..K, with n_1 = largest and n_K = smallest."""
    if num_classes == 1 or largest == smallest:
        return [int(largest)] * num_classes
    b = (num_classes - 1) ** gamma * smallest / (largest - smallest)
    a = largest * b
    return [int(round(a / (b + (c - 1) ** gamma))) for c in range(1, num_classes + 1)]


def _normalise_(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return x.sub_(mean).div_(std)


# ----------------------------------------------------------------------------- condition and spec
@dataclass(frozen=True)
class DataCondition:
    """How the TRAIN split is degraded; val and test stay clean. See the module docstring for the order."""

    label_noise: float = 0.0
    imbalance_gamma: float | None = None
    imbalance_max: int | None = None
    imbalance_min: int | None = None
    omit_classes: tuple[int, ...] = ()

    def __post_init__(self):
        # YAML and argparse give lists; keep the dataclass hashable.
        if isinstance(self.omit_classes, (list, set, frozenset, range)):
            object.__setattr__(self, "omit_classes", tuple(sorted(self.omit_classes))
                               if isinstance(self.omit_classes, (set, frozenset)) else tuple(self.omit_classes))

    def validate(self, num_classes: int) -> None:
        """Raise KdxError (one sentence: field, value, what is allowed) for a bad value."""
        s = self.label_noise
        if not _is_real(s) or not (0.0 <= float(s) < 1.0):  # also rejects NaN
            raise bad_value("label_noise", s, "allowed: a number in [0, 1)")
        g = self.imbalance_gamma
        if g is not None and (not _is_real(g) or not math.isfinite(g) or g <= 0):
            raise bad_value("imbalance_gamma", g, "allowed: a finite number > 0, or null for no imbalance")
        for name in ("imbalance_max", "imbalance_min"):
            v = getattr(self, name)
            if v is None:
                continue
            if g is None:
                raise bad_value(name, v, "allowed only together with imbalance_gamma")
            if not _is_int(v) or v < 1:
                raise bad_value(name, v, "allowed: an integer >= 1")
        if g is not None and self.imbalance_min is None:
            raise bad_value("imbalance_min", None, "required (an integer >= 1) when imbalance_gamma is set")
        if (self.imbalance_max is not None and self.imbalance_min is not None
                and self.imbalance_min > self.imbalance_max):
            raise bad_value("imbalance_min", self.imbalance_min,
                            f"allowed: at most imbalance_max ({self.imbalance_max})")
        om = self.omit_classes
        if not isinstance(om, tuple) or not all(_is_int(c) for c in om):
            raise bad_value("omit_classes", om, "allowed: a list of integer class ids")
        bad = [c for c in om if not 0 <= c < num_classes]
        if bad:
            raise bad_value("omit_classes", om, f"allowed: class ids in [0, {num_classes})")
        if len(set(om)) != len(om):
            raise bad_value("omit_classes", om, "allowed: distinct class ids")
        if len(set(om)) >= num_classes:
            raise bad_value("omit_classes", om, f"allowed: at most {num_classes - 1} of the {num_classes} classes")

    def is_clean(self) -> bool:
        return self.label_noise == 0 and self.imbalance_gamma is None and not self.omit_classes

    def identity(self) -> dict:
        return {
            "label_noise": float(self.label_noise),
            "imbalance_gamma": None if self.imbalance_gamma is None else float(self.imbalance_gamma),
            "imbalance_max": None if self.imbalance_max is None else int(self.imbalance_max),
            "imbalance_min": None if self.imbalance_min is None else int(self.imbalance_min),
            "omit_classes": sorted(int(c) for c in self.omit_classes),
        }


@dataclass(frozen=True)
class DataSpec:
    """Which data: the dataset, where it lives, the validation split and the train condition."""

    dataset: str
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    split_seed: int = 0
    condition: DataCondition = DataCondition()

    def __post_init__(self):
        if isinstance(self.condition, Mapping):
            known = {f.name for f in fields(DataCondition)}
            unknown = sorted(set(self.condition) - known)
            if unknown:
                raise bad_value("condition", unknown[0], f"allowed keys: {', '.join(sorted(known))}")
            object.__setattr__(self, "condition", DataCondition(**self.condition))

    def validate(self) -> None:
        """Check everything that can be checked without loading data (KdxError on a bad value)."""
        if self.dataset not in DATASETS:
            raise bad_value("dataset", self.dataset, f"allowed: {', '.join(dataset_names())}")
        vf = self.val_fraction
        if not _is_real(vf) or not (0.0 <= float(vf) < 1.0):
            raise bad_value("val_fraction", vf, "allowed: a number in [0, 1)")
        if not _is_int(self.split_seed) or self.split_seed < 0:
            raise bad_value("split_seed", self.split_seed, "allowed: an integer >= 0")
        if not isinstance(self.condition, DataCondition):
            raise bad_value("condition", self.condition, "allowed: a DataCondition")
        self.condition.validate(DATASETS[self.dataset].num_classes)

    def identity(self) -> dict:
        """Everything that determines the data, without data_dir/download (for hashing recipes)."""
        return {
            "dataset": self.dataset,
            "val_fraction": float(self.val_fraction),
            "split_seed": int(self.split_seed),
            "condition": self.condition.identity(),
            "data_version": DATA_VERSION,
        }


@dataclass
class Splits:
    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    augment: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    train_clean_y: Tensor

    _TENSORS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "train_clean_y")

    def to(self, device) -> "Splits":
        """A new Splits with every tensor on `device` (no copy for tensors already there)."""
        return replace(self, **{k: getattr(self, k).to(device) for k in self._TENSORS})

    def __repr__(self) -> str:
        return (f"Splits({self.name!r}, classes={self.num_classes}, shape={self.input_shape}, "
                f"augment={self.augment!r}, train={len(self.train_y)}, val={len(self.val_y)}, "
                f"test={len(self.test_y)}, device={self.train_x.device})")


Loader = Callable[[DataSpec], tuple[Tensor, Tensor, Tensor, Tensor]]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    num_classes: int
    input_shape: tuple[int, ...]
    augment: str
    loader: Loader  # spec -> (train_x, train_y, test_x, test_y): CPU, float32 normalised, int64 labels


# ----------------------------------------------------------------------------- mnist1d
MNIST1D_FILE_VERSION = 1


def cache_dir(spec: DataSpec | None = None) -> Path:
    """Where generated data is cached: spec.data_dir, else $KDX_CACHE, else ~/.cache/kdx."""
    if spec is not None and spec.data_dir:
        return Path(spec.data_dir).expanduser()
    env = os.environ.get("KDX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kdx"


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


def _mnist1d_cache_path(spec: DataSpec, args: dict) -> Path:
    key = json.dumps({"args": args, "v": MNIST1D_FILE_VERSION}, sort_keys=True)
    return cache_dir(spec) / f"mnist1d_{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as e:  # a read-only cache dir only costs regeneration next time
        warnings.warn(f"could not cache MNIST-1D at {str(path)!r} ({e})")


def _load_mnist1d(spec: DataSpec):
    args = _mnist1d_args()
    path = _mnist1d_cache_path(spec, args)
    arrays = _read_mnist1d_cache(path)
    if arrays is None:
        arrays = _generate_mnist1d(args)
        _write_atomic_npz(path, arrays)
    train_x = torch.from_numpy(arrays["x"]).to(torch.float32).unsqueeze(1)
    test_x = torch.from_numpy(arrays["x_test"]).to(torch.float32).unsqueeze(1)
    mean, std = train_x.mean(), train_x.std()
    return (_normalise_(train_x, mean, std), torch.from_numpy(arrays["y"]).to(torch.int64),
            _normalise_(test_x, mean, std), torch.from_numpy(arrays["y_test"]).to(torch.int64))


# ----------------------------------------------------------------------------- digits
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0


def _load_digits(spec: DataSpec):
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    d = load_digits()
    x = torch.from_numpy(d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(d.target.astype(np.int64))
    train_idx, test_idx = _stratified_holdout(y, 10, DIGITS_TEST_FRACTION,
                                              _generator(DIGITS_TEST_SEED, "digits-test"))
    train_x, test_x = x[train_idx], x[test_idx]
    mean, std = train_x.mean(), train_x.std()
    return (_normalise_(train_x, mean, std), y[train_idx], _normalise_(test_x, mean, std), y[test_idx])


# ----------------------------------------------------------------------------- CIFAR
@dataclass(frozen=True)
class _CifarFormat:
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tv_class: str


_CIFAR = {
    "cifar10": _CifarFormat("CIFAR-10", "cifar-10-batches-py",
                            tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels", 10,
                            (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR10"),
    "cifar100": _CifarFormat("CIFAR-100", "cifar-100-python", ("train",), ("test",), "fine_labels", 100,
                             (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "CIFAR100"),
}


def _numpy_reconstruct():
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    return multiarray._reconstruct, getattr(multiarray, "scalar", None)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a CIFAR batch file cannot run code."""

    def find_class(self, module, name):
        reconstruct, scalar = _numpy_reconstruct()
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("_codecs", "encode"): _codecs_encode,
        }
        if scalar is not None:
            allowed[("numpy.core.multiarray", "scalar")] = scalar
            allowed[("numpy._core.multiarray", "scalar")] = scalar
        try:
            return allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    """What protocol-2 pickles of `bytes` call: only the latin1 round trip is allowed."""
    import codecs
    if encoding not in ("latin1", "latin-1") or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(obj, encoding, errors)


def _read_cifar_file(path: Path, fmt: _CifarFormat, dir_hint: str) -> tuple[np.ndarray, np.ndarray]:
    def corrupt(why: str) -> KdxError:
        why = " ".join(why.split())
        return KdxError(f"data_dir: the {fmt.title} file {str(path)!r} is unreadable ({why}); "
                        f"replace {dir_hint} with a fresh copy of the extracted python-version archive "
                        f"(or delete it and pass --download).")

    try:
        with open(path, "rb") as f:
            entry = _RestrictedUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except OSError as e:
        raise corrupt(e.strerror or type(e).__name__) from None
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ...
        raise corrupt(f"{type(e).__name__}: {e}") from None
    if not isinstance(entry, dict):
        raise corrupt("not a dict of arrays")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or fmt.label_key not in entry:
        raise corrupt(f"missing the 'data' or '{fmt.label_key}' entry")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise corrupt("'data' is not a uint8 array of shape (N, 3072)")
    try:
        labels = np.asarray(entry[fmt.label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise corrupt(f"'{fmt.label_key}' is not a list of integers") from None
    if len(labels) != len(data):
        raise corrupt(f"{len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= fmt.num_classes):
        raise corrupt(f"labels outside [0, {fmt.num_classes})")
    return data, labels


def _cifar_missing(root: Path, fmt: _CifarFormat) -> list[str]:
    base = root / fmt.folder
    return [n for n in fmt.train_files + fmt.test_files if not (base / n).is_file()]


def _download_cifar(root: Path, fmt: _CifarFormat) -> None:
    import torchvision.datasets as tvd

    try:
        root.mkdir(parents=True, exist_ok=True)
        # Downloads and extracts the archive (md5-checked), then loads the small test set once.
        getattr(tvd, fmt.tv_class)(root=str(root), train=False, download=True)
    except (RuntimeError, OSError, ValueError) as e:  # URLError is an OSError
        raise KdxError(f"download: could not fetch {fmt.title} into {str(root)!r} ({type(e).__name__}: {e}); "
                       f"check the network, or copy the extracted python-version archive there "
                       f"and run without --download.") from None


def _cifar_loader(key: str) -> Loader:
    fmt = _CIFAR[key]

    def load(spec: DataSpec):
        if not spec.data_dir:
            raise bad_value("data_dir", spec.data_dir,
                            f"{key} needs a directory that holds {fmt.folder}/ (pass --data-dir, "
                            f"and --download to fetch the data)")
        root = Path(spec.data_dir).expanduser()
        missing = _cifar_missing(root, fmt)
        if missing and spec.download:
            _download_cifar(root, fmt)
            missing = _cifar_missing(root, fmt)
        if missing:
            if len(missing) == len(fmt.train_files) + len(fmt.test_files):
                raise KdxError(f"data_dir: no {fmt.title} data found at {str(root)!r} (expected {fmt.folder}/); "
                               f"pass --download to fetch it, or copy the extracted python-version archive there.")
            raise KdxError(f"data_dir: the {fmt.title} data at {str(root / fmt.folder)!r} is incomplete "
                           f"(missing {', '.join(missing)}); pass --download to fetch it again, or copy the "
                           f"extracted python-version archive there.")
        hint = repr(str(root / fmt.folder))
        mean = torch.tensor(fmt.mean).view(1, 3, 1, 1)
        std = torch.tensor(fmt.std).view(1, 3, 1, 1)

        def read(files):
            parts = [_read_cifar_file(root / fmt.folder / n, fmt, hint) for n in files]
            data = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
            labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
            # Row layout: 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 image.
            x = torch.from_numpy(data).view(-1, 3, 32, 32).to(torch.float32).div_(255.0)
            return _normalise_(x, mean, std), torch.from_numpy(labels)

        train_x, train_y = read(fmt.train_files)
        test_x, test_y = read(fmt.test_files)
        return train_x, train_y, test_x, test_y

    return load


# ----------------------------------------------------------------------------- fake
FAKE_SEED = 1234
FAKE_TRAIN, FAKE_TEST, FAKE_CLASSES, FAKE_SHAPE = 1000, 200, 10, (3, 16, 16)


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
    return _normalise_(train_x, mean, std), train_y, _normalise_(test_x, mean, std), test_y


# ----------------------------------------------------------------------------- registry
DATASETS: dict[str, DatasetInfo] = {
    "mnist1d": DatasetInfo("mnist1d", "MNIST-1D, generated offline (4000 train / 1000 test, length 40)",
                           10, (1, 40), "none", _load_mnist1d),
    "digits": DatasetInfo("digits", "scikit-learn 8x8 digits (fixed stratified 20% test split, seed 0)",
                          10, (1, 8, 8), "none", _load_digits),
    "cifar10": DatasetInfo("cifar10", "CIFAR-10 from data_dir (cifar-10-batches-py/)",
                           10, (3, 32, 32), "crop_flip", _cifar_loader("cifar10")),
    "cifar100": DatasetInfo("cifar100", "CIFAR-100 from data_dir (cifar-100-python/)",
                            100, (3, 32, 32), "crop_flip", _cifar_loader("cifar100")),
    "fake": DatasetInfo("fake", "synthetic 10-class 3x16x16 images (1000 train / 200 test), for tests",
                        FAKE_CLASSES, FAKE_SHAPE, "crop_flip", _load_fake),
}


def dataset_names() -> list[str]:
    return sorted(DATASETS)


# ----------------------------------------------------------------------------- load_splits
def _apply_condition(x: Tensor, y: Tensor, num_classes: int, spec: DataSpec) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 3a-3c of the module docstring on the train split: returns (x, noisy y, clean y)."""
    cond = spec.condition
    present = [c for c in range(num_classes) if c not in set(cond.omit_classes)]
    if cond.omit_classes:
        keep = ~torch.isin(y, torch.tensor(sorted(cond.omit_classes), dtype=torch.int64))
        x, y = x[keep], y[keep]

    if cond.imbalance_gamma is not None:
        counts = torch.bincount(y, minlength=num_classes)
        available = [int(counts[c]) for c in present]
        largest = cond.imbalance_max if cond.imbalance_max is not None else min(available)
        if cond.imbalance_min > largest:
            raise bad_value("imbalance_min", cond.imbalance_min,
                            f"allowed: at most imbalance_max ({largest}, the smallest per-class train count "
                            f"after the validation split)")
        wanted = power_law_counts(len(present), float(cond.imbalance_gamma), largest, cond.imbalance_min)
        for cls, n_c, avail in zip(present, wanted, available):
            if n_c > avail:
                raise bad_value("imbalance_max", cond.imbalance_max,
                                f"class {cls} would need {n_c} training samples but only {avail} are available "
                                f"after the validation split; lower imbalance_max or val_fraction")
        per_class = torch.zeros(num_classes, dtype=torch.int64)
        per_class[present] = torch.tensor(wanted, dtype=torch.int64)
        keep_idx, _ = _take_first_per_class(y, per_class, _generator(spec.split_seed, "imbalance"))
        x, y = x[keep_idx], y[keep_idx]

    clean_y = y.clone()
    if cond.label_noise > 0:
        g = _generator(spec.split_seed, "label_noise")
        # Draw both for every sample so a larger sigma corrupts a superset of the samples.
        u = torch.rand(len(y), generator=g)
        choice = torch.randint(0, len(present), (len(y),), generator=g)
        new = torch.tensor(present, dtype=torch.int64)[choice]
        y = torch.where(u < float(cond.label_noise), new, y)
    return x, y, clean_y


def load_splits(spec: DataSpec) -> Splits:
    """Load `spec.dataset`, carve the stratified val split, apply the train condition (module docstring)."""
    spec.validate()
    info = DATASETS[spec.dataset]
    train_x, train_y, test_x, test_y = info.loader(spec)
    k = info.num_classes

    keep, val = _stratified_holdout(train_y, k, float(spec.val_fraction), _generator(spec.split_seed, "val_split"))
    val_x, val_y = train_x[val], train_y[val]
    tr_x, tr_y = train_x[keep], train_y[keep]
    tr_x, tr_y, tr_clean = _apply_condition(tr_x, tr_y, k, spec)
    return Splits(
        name=info.name, num_classes=k, input_shape=tuple(info.input_shape), augment=info.augment,
        train_x=tr_x.contiguous(), train_y=tr_y, val_x=val_x.contiguous(), val_y=val_y,
        test_x=test_x.contiguous(), test_y=test_y, train_clean_y=tr_clean,
    )


# ----------------------------------------------------------------------------- batches and augmentation
def _reflect(i: Tensor, n: int) -> Tensor:
    """Map positions in [-(n-1), 2(n-1)] to [0, n) by reflection without repeating the edge."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def augment_batch(x: Tensor, generator: torch.Generator | None, padding: int = 4) -> Tensor:
    """Random crop of the `padding`-pixel REFLECT-padded image, then a random horizontal flip.

    `x` is (N, C, H, W) on any device; offsets (0..2*padding each way) and flips are drawn per
    sample from `generator`, which must live on x.device. One gather, no padded copy: the output
    pixel (h, w) of sample n reads x at the reflected position of (dy_n - p + h, dx_n - p + w'),
    where w' = W - 1 - w when the sample is flipped. Same shape and dtype; `x` is not modified.
    """
    if x.dim() != 4:
        raise bad_value("x", tuple(x.shape), "allowed: a batch of images of shape (N, C, H, W)")
    n, c, h, w = x.shape
    if not _is_int(padding) or padding < 0 or (n and padding >= min(h, w)):
        raise bad_value("padding", padding, f"allowed: an integer in [0, {min(h, w)}) for {h}x{w} images")
    if n == 0:
        return x.clone()
    dev = x.device
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    flip = torch.randint(0, 2, (n,), generator=generator, device=dev).bool()
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = _reflect(dy[:, None] - padding + ar_h, h)                                # (N, H)
    cols = _reflect(dx[:, None] - padding + torch.where(flip[:, None], w - 1 - ar_w, ar_w), w)  # (N, W)
    n_idx = torch.arange(n, device=dev)[:, None, None, None]
    c_idx = torch.arange(c, device=dev)[None, :, None, None]
    return x[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]


def iterate_batches(x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator | None = None,
                    shuffle: bool = True, augment: str = "none") -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of (x, y) batches; every sample exactly once, the last partial batch kept.

    The permutation comes from torch.randperm on x.device with `generator`; with augment ==
    "crop_flip" each batch goes through `augment_batch` with the same generator.
    """
    if not _is_int(batch_size) or batch_size < 1:
        raise bad_value("batch_size", batch_size, "allowed: an integer >= 1")
    if augment not in AUGMENTATIONS:
        raise bad_value("augment", augment, f"allowed: {', '.join(AUGMENTATIONS)}")
    if len(x) != len(y):
        raise bad_value("y", f"{len(y)} labels", f"allowed: one label per sample ({len(x)})")
    n = len(x)
    order = torch.randperm(n, generator=generator, device=x.device) if shuffle else None
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            xb, yb = x[idx], y[idx.to(y.device)]
        if augment == "crop_flip":
            xb = augment_batch(xb, generator)
        yield xb, yb
