"""The built-in datasets that need no files: MNIST-1D (generated offline), scikit-learn's digits and
`fake` (synthetic images for tests), each registered where it is defined (explorer/data/registry.py)."""

from __future__ import annotations

import hashlib
import io
import json
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from explorer.data.condition import DataSpec
from explorer.data.registry import Loader, cache_dir, normalise_, register_dataset
from explorer.data.sampling import step_generator, stratified_holdout
from explorer.storage import Storage

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
