"""MNIST from `data_dir`, in torchvision's on-disk format, registered with `register_dataset` like CIFAR.

torchvision keeps MNIST as the four idx files of LeCun's archive in `<data_dir>/MNIST/raw/`
(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte),
extracted or still gzipped (`.gz`). They are read here directly (a small header check, no md5 sums),
so a small locally made dataset in the same format loads too; `download=True` fetches the archive
with torchvision (md5-checked) only when files are missing.

Inputs are (1, 28, 28) float32 in [0, 1], normalised with MNIST's usual training-set mean and std
(0.1307, 0.3081); the MLP family flattens them to 784 (seed 003's 784-1200-1200-10 and 784-400-10).
No augmentation (seed 003 trains its MLPs on the plain images).

`check_present` is the dataset's `check`, as for CIFAR: the spec (`kdx validate`, `kdx search`) and
the data flags (`kdx train`, `kdx teachers build`) run it before any compute; the loader runs it too.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from explorer.data.condition import DataSpec
from explorer.data.registry import normalise_, register_dataset
from explorer.errors import KdxError, bad_value

FOLDER = Path("MNIST") / "raw"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MEAN, STD = 0.1307, 0.3081
# The official training set's per-class counts (60,000 images), for checks made before loading.
TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
_MAGIC = {1: 0x00000801, 3: 0x00000803}  # idx: unsigned bytes, 1 (labels) or 3 (images) dimensions


def _path(root: Path, name: str) -> Path | None:
    """The extracted file, else its .gz, else None."""
    for p in (root / FOLDER / name, root / FOLDER / f"{name}.gz"):
        if p.is_file():
            return p
    return None


def _missing(root: Path) -> list[str]:
    return [n for pair in FILES.values() for n in pair if _path(root, n) is None]


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes with `ndim` dimensions (gzipped or not); KdxError naming data_dir."""
    def corrupt(why: str) -> KdxError:
        return KdxError(f"data_dir: the MNIST file {str(path)!r} is unreadable ({why}); replace it with a fresh "
                        "copy of the idx file (or delete it and pass --download).")
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise corrupt(f"{type(e).__name__}: {e}") from None
    head = 4 + 4 * ndim
    if len(raw) < head or int.from_bytes(raw[:4], "big") != _MAGIC[ndim]:
        raise corrupt(f"not an idx file of unsigned bytes with {ndim} dimension{'s' if ndim > 1 else ''}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - head != int(np.prod(shape)):
        raise corrupt(f"{len(raw) - head} bytes of data for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(shape)


def _read_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_name, labels_name = FILES[split]
    images, labels = read_idx(_path(root, images_name), 3), read_idx(_path(root, labels_name), 1)
    where = repr(str(root / FOLDER))
    if images.shape[1:] != (28, 28):
        raise KdxError(f"data_dir: the MNIST images in {where} are {images.shape[1:]}, not 28x28; allowed: "
                       "torchvision's MNIST files.")
    if len(images) != len(labels) or (len(labels) and labels.max() > 9):
        raise KdxError(f"data_dir: the MNIST {split} files in {where} disagree ({len(images)} images, {len(labels)} "
                       "labels, labels 0-9 expected); allowed: torchvision's MNIST files.")
    x = torch.from_numpy(images.copy()).to(torch.float32).div_(255.0).unsqueeze(1)
    return normalise_(x, torch.tensor(MEAN), torch.tensor(STD)), torch.from_numpy(labels.astype(np.int64))


def check_present(spec: DataSpec) -> None:
    """`spec.data_dir` holds MNIST/raw/ (the idx files), or download is asked for and the directory can be
    made; else KdxError naming data_dir."""
    allowed = ("allowed: a directory that holds MNIST/raw/ (torchvision's layout: the four idx files, extracted "
               "or .gz), or download: true (--download) to fetch them there")
    if not spec.data_dir:
        raise bad_value("data_dir", spec.data_dir, f"mnist is read from disk; {allowed}")
    root = Path(spec.data_dir).expanduser()
    missing = _missing(root)
    if not missing:
        return
    if spec.download:
        made = next(p for p in (root.absolute(), *root.absolute().parents) if p.exists())
        if not made.is_dir() or not os.access(made, os.W_OK | os.X_OK):
            raise bad_value("data_dir", spec.data_dir, f"MNIST is to be downloaded there, but {str(made)!r} is not "
                            "a directory this user can write; allowed: a writable location")
        return
    if len(missing) < 4:
        raise bad_value("data_dir", spec.data_dir, f"the MNIST data in it is incomplete (missing {', '.join(missing)} "
                        f"in MNIST/raw/); allowed: all four idx files, or download: true (--download) to fetch them")
    why = "no such directory" if not root.exists() else "not a directory" if not root.is_dir() else \
        "no MNIST/raw/ idx files in it"
    raise bad_value("data_dir", spec.data_dir, f"no MNIST data found there ({why}); {allowed}")


def _download(root: Path) -> None:
    import torchvision.datasets as tvd

    try:
        root.mkdir(parents=True, exist_ok=True)
        tvd.MNIST(root=str(root), train=False, download=True)  # fetches and extracts all four files
    except (RuntimeError, OSError, ValueError) as e:  # URLError is an OSError
        raise KdxError(f"download: could not fetch MNIST into {str(root)!r} ({type(e).__name__}: {e}); check the "
                       "network, or copy the four idx files into MNIST/raw/ there and run without --download.") from None


@register_dataset("mnist", "MNIST from data_dir (torchvision's MNIST/raw/ idx files; 60,000 train / 10,000 test)",
                  10, (1, 28, 28), check=check_present, class_counts=TRAIN_COUNTS)
def load_mnist(spec: DataSpec):
    check_present(spec)
    root = Path(spec.data_dir).expanduser()
    if _missing(root):  # download: true
        _download(root)
        missing = _missing(root)
        if missing:
            raise bad_value("data_dir", spec.data_dir, f"the MNIST download left it incomplete (missing "
                            f"{', '.join(missing)} in MNIST/raw/); allowed: the four idx files there")
    train_x, train_y = _read_split(root, "train")
    test_x, test_y = _read_split(root, "test")
    return train_x, train_y, test_x, test_y
