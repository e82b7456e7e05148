"""CIFAR-10 and CIFAR-100 from `data_dir`, registered with `register_dataset` like every dataset.

The data is the extracted python-version archive, torchvision's on-disk format (`cifar-10-batches-py/`
with data_batch_1..5 and test_batch; `cifar-100-python/` with train and test), read with a restricted
unpickler that cannot run code; the structure (shapes, dtype, label range) is checked instead of md5
sums, so a small locally made dataset in the same format loads too. `download=True` fetches the archive
with torchvision (md5-checked) only when files are missing.

`check_present` is the dataset's `check`: a data_dir that holds the files, or one they can be
downloaded into with download: true. The spec (`kdx validate`, `kdx search`) and the data flags
(`kdx train`, `kdx teachers build`) run it before any compute; the loader runs it first too.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from explorer.data.condition import DataSpec
from explorer.data.registry import Loader, download_missing, normalise_, register_dataset
from explorer.errors import KdxError, bad_value


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
    per_class: int  # the official training set is balanced: this many images of every class


_CIFAR = {
    "cifar10": _CifarFormat("CIFAR-10", "cifar-10-batches-py",
                            tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels", 10,
                            (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR10", 5000),
    "cifar100": _CifarFormat("CIFAR-100", "cifar-100-python", ("train",), ("test",), "fine_labels", 100,
                             (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "CIFAR100", 500),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a CIFAR batch file cannot run code."""

    def find_class(self, module, name):
        try:
            from numpy._core import multiarray
        except ImportError:  # numpy < 2
            from numpy.core import multiarray
        allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                   ("_codecs", "encode"): _codecs_encode}
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[(mod, "_reconstruct")] = multiarray._reconstruct
            if getattr(multiarray, "scalar", None) is not None:
                allowed[(mod, "scalar")] = multiarray.scalar
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


def check_present(key: str, spec: DataSpec) -> None:
    """`spec.data_dir` holds dataset `key`'s files, or download is asked for and the directory can be
    made; else KdxError naming data_dir (or download)."""
    fmt = _CIFAR[key]
    allowed = (f"allowed: a directory that holds {fmt.folder}/ (the extracted python-version archive), or "
               f"download: true (--download) to fetch it there")
    if not spec.data_dir:
        raise bad_value("data_dir", spec.data_dir, f"{key} is read from disk; {allowed}")
    root = Path(spec.data_dir).expanduser()
    missing = _cifar_missing(root, fmt)
    if not missing:
        return
    if spec.download:  # fetched before training: the directory must be one this user can make
        made = next(p for p in (root.absolute(), *root.absolute().parents) if p.exists())
        if not made.is_dir() or not os.access(made, os.W_OK | os.X_OK):
            raise bad_value("data_dir", spec.data_dir, f"{fmt.title} is to be downloaded there, but {str(made)!r} "
                            "is not a directory this user can write; allowed: a writable location")
        return
    if len(missing) < len(fmt.train_files) + len(fmt.test_files):
        raise bad_value("data_dir", spec.data_dir, f"the {fmt.title} data in it is incomplete (missing "
                        f"{', '.join(missing)} in {fmt.folder}/); allowed: a complete copy of the extracted "
                        f"python-version archive, or download: true (--download) to fetch it again")
    why = "no such directory" if not root.exists() else "not a directory" if not root.is_dir() else \
        f"no {fmt.folder}/ in it"
    raise bad_value("data_dir", spec.data_dir, f"no {fmt.title} data found there ({why}); {allowed}")


def _cifar_loader(key: str) -> Loader:
    fmt = _CIFAR[key]

    def load(spec: DataSpec):
        check_present(key, spec)
        root = Path(spec.data_dir).expanduser()
        download_missing(spec, fmt.title, fmt.folder, lambda: _cifar_missing(root, fmt),
                         lambda: _download_cifar(root, fmt), "a copy of the extracted python-version archive there")
        hint = repr(str(root / fmt.folder))
        mean = torch.tensor(fmt.mean).view(1, 3, 1, 1)
        std = torch.tensor(fmt.std).view(1, 3, 1, 1)

        def read(files):
            parts = [_read_cifar_file(root / fmt.folder / n, fmt, hint) for n in files]
            data = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
            labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
            # Row layout: 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 image.
            x = torch.from_numpy(data).view(-1, 3, 32, 32).to(torch.float32).div_(255.0)
            return normalise_(x, mean, std), torch.from_numpy(labels)

        train_x, train_y = read(fmt.train_files)
        test_x, test_y = read(fmt.test_files)
        return train_x, train_y, test_x, test_y

    return load


for _key, _fmt in _CIFAR.items():
    register_dataset(_key, f"{_fmt.title} from data_dir ({_fmt.folder}/)", _fmt.num_classes, (3, 32, 32),
                     "crop_flip", check=lambda spec, key=_key: check_present(key, spec),
                     class_counts=(_fmt.per_class,) * _fmt.num_classes)(_cifar_loader(_key))
