"""The MNIST family from `data_dir`: MNIST, Fashion-MNIST and KMNIST as the four idx files of LeCun's
format, registered with `register_dataset` (`mnist`) and through `torchvision:<Class>`
(explorer/data/torchvision_sets.py) like CIFAR.

torchvision keeps each as `<data_dir>/<Class>/raw/` (train-images-idx3-ubyte, train-labels-idx1-ubyte,
t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte), extracted or still gzipped (`.gz`). The files are also
found directly in `data_dir`, as Debian's `dataset-fashion-mnist` installs them
(`/usr/share/datasets/fashion-mnist/*.gz`). They are read here directly (a small header check, no md5
sums), so a small locally made dataset in the same format loads too, and the gzipped files need no
extracting (torchvision's own check without `download` wants them extracted); `download=True` fetches
the archive with torchvision (md5-checked) only when files are missing.

Inputs are (1, 28, 28) float32 in [0, 1], normalised: `mnist` with MNIST's usual training-set mean and
std (0.1307, 0.3081); `torchvision:*` with the mean and std of the official training images, computed
when loaded. The MLP family flattens them to 784 (seed 003's 784-1200-1200-10 and 784-400-10). No
augmentation (seed 003 trains its MLPs on the plain images).

`check_present` is the dataset's `check`, as for CIFAR: the spec (`kdx validate`, `kdx search`) and
the data flags (`kdx train`, `kdx teachers build`) run it before any compute; the loader runs it too.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from explorer.data.condition import DataSpec
from explorer.data.registry import Loader, download_missing, normalise_, register_dataset
from explorer.errors import KdxError, bad_value

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# The official MNIST training set's per-class counts (60,000 images), for checks made before loading.
TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
_MAGIC = {1: 0x00000801, 3: 0x00000803}  # idx: unsigned bytes, 1 (labels) or 3 (images) dimensions


@dataclass(frozen=True)
class IdxSet:
    """One member of the MNIST family: torchvision's class name (its folder) and, where fixed, the
    normalisation (None: the official training images' own mean and std)."""

    tv_class: str
    title: str
    mean_std: tuple[float, float] | None = None

    @property
    def folder(self) -> Path:
        return Path(self.tv_class) / "raw"


MNIST = IdxSet("MNIST", "MNIST", (0.1307, 0.3081))
FAMILY = {s.tv_class: s for s in (IdxSet("MNIST", "MNIST"), IdxSet("FashionMNIST", "Fashion-MNIST"),
                                  IdxSet("KMNIST", "KMNIST"))}


def _path(root: Path, ds: IdxSet, name: str) -> Path | None:
    """The extracted file, else its .gz, in torchvision's folder, else directly in `root`; else None."""
    for base in (root / ds.folder, root):
        for p in (base / name, base / f"{name}.gz"):
            if p.is_file():
                return p
    return None


def _missing(root: Path, ds: IdxSet) -> list[str]:
    return [n for pair in FILES.values() for n in pair if _path(root, ds, n) is None]


def read_idx(path: Path, ndim: int, title: str = "MNIST") -> np.ndarray:
    """An idx file of unsigned bytes with `ndim` dimensions (gzipped or not); KdxError naming data_dir."""
    def corrupt(why: str) -> KdxError:
        return KdxError(f"data_dir: the {title} file {str(path)!r} is unreadable ({why}); replace it with a fresh "
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


def _read_split(root: Path, ds: IdxSet, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split's images as (N, 1, 28, 28) float32 in [0, 1] (not normalised yet) and its labels."""
    images_name, labels_name = FILES[split]
    images = read_idx(_path(root, ds, images_name), 3, ds.title)
    labels = read_idx(_path(root, ds, labels_name), 1, ds.title)
    where = repr(str(_path(root, ds, images_name).parent))
    if images.shape[1:] != (28, 28):
        raise KdxError(f"data_dir: the {ds.title} images in {where} are {images.shape[1:]}, not 28x28; allowed: "
                       f"torchvision's {ds.tv_class} files.")
    if len(images) != len(labels) or (len(labels) and labels.max() > 9):
        raise KdxError(f"data_dir: the {ds.title} {split} files in {where} disagree ({len(images)} images, "
                       f"{len(labels)} labels, labels 0-9 expected); allowed: torchvision's {ds.tv_class} files.")
    x = torch.from_numpy(images.copy()).to(torch.float32).div_(255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def check_present(ds: IdxSet, spec: DataSpec) -> None:
    """`spec.data_dir` holds the idx files (in <Class>/raw/ or directly), or download is asked for and the
    directory can be made; else KdxError naming data_dir."""
    allowed = (f"allowed: a directory that holds {ds.folder}/ (torchvision's layout) or the four idx files "
               "themselves, extracted or .gz, or download: true (--download) to fetch them there")
    if not spec.data_dir:
        raise bad_value("data_dir", spec.data_dir, f"{ds.title} is read from disk; {allowed}")
    root = Path(spec.data_dir).expanduser()
    missing = _missing(root, ds)
    if not missing:
        return
    if spec.download:
        made = next(p for p in (root.absolute(), *root.absolute().parents) if p.exists())
        if not made.is_dir() or not os.access(made, os.W_OK | os.X_OK):
            raise bad_value("data_dir", spec.data_dir, f"{ds.title} is to be downloaded there, but {str(made)!r} "
                            "is not a directory this user can write; allowed: a writable location")
        return
    if len(missing) < 4:
        raise bad_value("data_dir", spec.data_dir, f"the {ds.title} data in it is incomplete (missing "
                        f"{', '.join(missing)}); allowed: all four idx files, or download: true (--download) "
                        "to fetch them")
    why = "no such directory" if not root.exists() else "not a directory" if not root.is_dir() else \
        f"no {ds.folder}/ idx files in it"
    raise bad_value("data_dir", spec.data_dir, f"no {ds.title} data found there ({why}); {allowed}")


def _download(root: Path, ds: IdxSet) -> None:
    import torchvision.datasets as tvd

    try:
        root.mkdir(parents=True, exist_ok=True)
        getattr(tvd, ds.tv_class)(root=str(root), train=False, download=True)  # fetches and extracts all four
    except (RuntimeError, OSError, ValueError) as e:  # URLError is an OSError
        raise KdxError(f"download: could not fetch {ds.title} into {str(root)!r} ({type(e).__name__}: {e}); check "
                       f"the network, or copy the four idx files into {ds.folder}/ there and run without "
                       "--download.") from None


def idx_loader(ds: IdxSet) -> Loader:
    """The loader of one MNIST-family dataset: (train_x, train_y, test_x, test_y), normalised."""
    def load(spec: DataSpec):
        check_present(ds, spec)
        root = Path(spec.data_dir).expanduser()
        download_missing(spec, ds.title, ds.folder, lambda: _missing(root, ds), lambda: _download(root, ds),
                         "the four idx files there")
        train_x, train_y = _read_split(root, ds, "train")
        test_x, test_y = _read_split(root, ds, "test")
        mean, std = ds.mean_std or (train_x.mean().item(), train_x.std().item())
        return (normalise_(train_x, torch.tensor(mean), torch.tensor(std)), train_y,
                normalise_(test_x, torch.tensor(mean), torch.tensor(std)), test_y)
    return load


load_mnist = register_dataset(
    "mnist", "MNIST from data_dir (torchvision's MNIST/raw/ idx files; 60,000 train / 10,000 test)", 10, (1, 28, 28),
    check=lambda spec: check_present(MNIST, spec), class_counts=TRAIN_COUNTS)(idx_loader(MNIST))
