"""Tests for explorer/data/condition.py, explorer/data/registry.py and explorer/data/augment.py: splits, conditions,
datasets (and their registry) and augmentation.

Expected values are computed here independently (numpy, explicit slicing), not with the
module's own helpers. Nothing is downloaded.
"""

import math
import pickle
import time

import numpy as np
import pytest
import torch

from explorer.data import builtin
from explorer.data import registry as DS
from explorer.data.augment import augment_batch
from explorer.data.condition import DataCondition, DataSpec
from explorer.data.registry import DATASETS, dataset_names, register_dataset
from explorer.data.splits import Splits, load_splits
from explorer.errors import KdxError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _rows_as_set(x: torch.Tensor) -> set:
    return {tuple(r) for r in x.flatten(1).numpy().round(5).tolist()}


# ----------------------------------------------------------------------------- registry / spec
def test_registry_and_names():
    assert dataset_names() == sorted(["mnist1d", "mnist1d_10k", "mnist1d_20k", "digits", "cifar10", "cifar100", "mnist",
                                      "fake"]) + ["torchvision:<MNIST|FashionMNIST|KMNIST|CIFAR10|CIFAR100|SVHN|STL10>"]
    for name, info in DATASETS.items():
        assert info.name == name
        assert info.augment in ("none", "crop_flip")
    assert DATASETS["mnist1d"].input_shape == (1, 40)
    assert DATASETS["digits"].input_shape == (1, 8, 8)
    assert DATASETS["cifar10"].input_shape == (3, 32, 32) and DATASETS["cifar10"].augment == "crop_flip"
    assert DATASETS["cifar100"].num_classes == 100


def test_register_dataset_plugin(monkeypatch):
    # a plugin registers where it is defined and goes through the same load_splits as the built-ins
    monkeypatch.setattr(DS, "DATASETS", dict(DS.DATASETS))  # keep the real registry untouched (dataset_info reads it)

    @DS.register_dataset("toy3", "three classes of constant vectors", 3, (1, 5))
    def _toy(spec):
        x = torch.arange(60, dtype=torch.float32)[:, None, None].expand(60, 1, 5).contiguous()
        y = torch.arange(60) % 3
        return x, y, x[:9].clone(), y[:9].clone()

    assert "toy3" in DS.dataset_names() and DS.DATASETS["toy3"].loader is _toy
    s = load_splits(DataSpec("toy3", val_fraction=0.1, condition=DataCondition(omit_classes=(2,))))
    assert s.input_shape == (1, 5) and s.augment == "none" and s.num_classes == 3
    assert np.array_equal(np.bincount(s.val_y.numpy(), minlength=3), [2, 2, 2])
    assert len(s.train_y) == 36 and not (s.train_y == 2).any()
    with pytest.raises(ValueError, match="toy3.*already registered"):
        DS.register_dataset("toy3", "again", 3, (1, 5))
    with pytest.raises(ValueError, match="mixup"):
        DS.register_dataset("toy4", "bad augment", 3, (1, 5), augment="mixup")
    assert register_dataset is DS.register_dataset


def test_identity_excludes_location_and_tracks_condition():
    a = DataSpec("fake", data_dir="/a", download=True)
    b = DataSpec("fake", data_dir="/b", download=False)
    assert a.identity() == b.identity()
    assert "data_dir" not in str(a.identity()) and "download" not in a.identity()
    c = DataSpec("fake", condition=DataCondition(label_noise=0.2))
    assert c.identity() != a.identity()
    assert DataSpec("fake", split_seed=1).identity() != a.identity()
    # the same condition written differently is the same identity
    assert (DataSpec("fake", condition=DataCondition(omit_classes=[7, 3])).identity()
            == DataSpec("fake", condition=DataCondition(omit_classes=(3, 7))).identity())
    import json
    json.dumps(c.identity())  # hashable as JSON


def test_is_clean():
    assert DataCondition().is_clean()
    assert not DataCondition(label_noise=0.1).is_clean()
    assert not DataCondition(imbalance_gamma=1.0, imbalance_min=5).is_clean()
    assert not DataCondition(omit_classes=(1,)).is_clean()


@pytest.mark.parametrize("kwargs, field", [
    (dict(label_noise=1.0), "label_noise"),
    (dict(label_noise=-0.1), "label_noise"),
    (dict(label_noise=float("nan")), "label_noise"),
    (dict(label_noise="0.2"), "label_noise"),
    (dict(imbalance_gamma=0.0, imbalance_min=5), "imbalance_gamma"),
    (dict(imbalance_gamma=-1.0, imbalance_min=5), "imbalance_gamma"),
    (dict(imbalance_gamma=1.0), "imbalance_min"),
    (dict(imbalance_gamma=1.0, imbalance_min=0), "imbalance_min"),
    (dict(imbalance_gamma=1.0, imbalance_max=10, imbalance_min=20), "imbalance_min"),
    (dict(imbalance_gamma=1.0, imbalance_max=0, imbalance_min=1), "imbalance_max"),
    (dict(imbalance_min=5), "imbalance_min"),
    (dict(omit_classes=(10,)), "omit_classes"),
    (dict(omit_classes=(-1,)), "omit_classes"),
    (dict(omit_classes=tuple(range(10))), "omit_classes"),
])
def test_bad_condition_values(kwargs, field):
    cond = DataCondition(**kwargs)
    with pytest.raises(KdxError) as e:
        cond.validate(10)
    msg = str(e.value)
    assert msg.startswith(f"{field}:"), msg
    assert msg.count("\n") == 0 and msg.endswith(".")
    # the same error surfaces from load_splits before anything is loaded
    with pytest.raises(KdxError, match=field):
        load_splits(DataSpec("fake", condition=cond))


@pytest.mark.parametrize("kwargs, field", [
    (dict(dataset="nope"), "dataset"),
    (dict(dataset="fake", val_fraction=1.0), "val_fraction"),
    (dict(dataset="fake", val_fraction=-0.1), "val_fraction"),
    (dict(dataset="fake", split_seed=-1), "split_seed"),
])
def test_bad_spec_values(kwargs, field):
    with pytest.raises(KdxError) as e:
        load_splits(DataSpec(**kwargs))
    assert str(e.value).startswith(f"{field}: got {kwargs[field]!r};")


def test_condition_from_mapping():
    spec = DataSpec("fake", condition={"label_noise": 0.2, "omit_classes": [1, 2]})
    assert spec.condition == DataCondition(label_noise=0.2, omit_classes=(1, 2))
    with pytest.raises(KdxError, match="condition"):
        DataSpec("fake", condition={"label_nosie": 0.2})


# ----------------------------------------------------------------------------- split
def test_split_determinism():
    a = load_splits(DataSpec("fake", split_seed=3))
    b = load_splits(DataSpec("fake", split_seed=3))
    c = load_splits(DataSpec("fake", split_seed=4))
    for k in Splits._TENSORS:
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert not torch.equal(a.val_x, c.val_x)
    assert torch.equal(a.test_x, c.test_x) and torch.equal(a.test_y, c.test_y)
    # train + val is a partition of the official training set
    full_x = DATASETS["fake"].loader(DataSpec("fake"))[0]
    assert len(a.train_x) + len(a.val_x) == len(full_x)
    assert _rows_as_set(a.train_x).isdisjoint(_rows_as_set(a.val_x))
    assert _rows_as_set(a.train_x) | _rows_as_set(a.val_x) == _rows_as_set(full_x)


def test_splits_dtypes_and_to():
    s = load_splits(DataSpec("fake"))
    assert s.train_x.dtype == torch.float32 and s.train_y.dtype == torch.int64
    assert s.train_x.shape[1:] == (3, 16, 16) and s.input_shape == (3, 16, 16)
    assert s.augment == "crop_flip" and s.num_classes == 10 and s.name == "fake"
    t = s.to("cpu")
    assert isinstance(t, Splits) and torch.equal(t.val_y, s.val_y)
    assert "train=900" in repr(s)


@pytest.mark.parametrize("frac", [0.1, 0.25, 0.0])
def test_val_split_is_stratified_digits(frac):
    s = load_splits(DataSpec("digits", val_fraction=frac, split_seed=1))
    counts = np.bincount(np.concatenate([s.train_y.numpy(), s.val_y.numpy()]), minlength=10)
    expected = np.round(frac * counts).astype(int)
    if frac > 0:
        expected = np.maximum(expected, 1)
    assert np.array_equal(np.bincount(s.val_y.numpy(), minlength=10), expected)
    assert len(s.train_y) + len(s.val_y) + len(s.test_y) == 1797
    assert s.val_x.shape[1:] == (1, 8, 8)


def test_digits_test_split_fixed_and_stratified():
    a = load_splits(DataSpec("digits", split_seed=0))
    b = load_splits(DataSpec("digits", split_seed=5))
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    from sklearn.datasets import load_digits
    y = load_digits().target
    assert np.array_equal(np.bincount(a.test_y.numpy(), minlength=10), np.round(0.2 * np.bincount(y)).astype(int))
    assert abs(float(torch.cat([a.train_x, a.val_x]).mean())) < 1e-4


# ----------------------------------------------------------------------------- conditions
def test_label_noise_rate_and_clean_eval_splits():
    sigma = 0.4
    clean = load_splits(DataSpec("fake", split_seed=2))
    noisy = load_splits(DataSpec("fake", split_seed=2, condition=DataCondition(label_noise=sigma)))
    # val and test untouched, clean labels kept for train, same samples
    for k in ("val_x", "val_y", "test_x", "test_y", "train_x"):
        assert torch.equal(getattr(clean, k), getattr(noisy, k)), k
    assert torch.equal(noisy.train_clean_y, clean.train_y)
    n, k = len(noisy.train_y), noisy.num_classes
    rate = (noisy.train_y != noisy.train_clean_y).float().mean().item()
    p = sigma * (k - 1) / k
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n), (rate, p)
    assert noisy.train_y.min() >= 0 and noisy.train_y.max() < k
    # deterministic
    again = load_splits(DataSpec("fake", split_seed=2, condition=DataCondition(label_noise=sigma)))
    assert torch.equal(again.train_y, noisy.train_y)
    other = load_splits(DataSpec("fake", split_seed=3, condition=DataCondition(label_noise=sigma)))
    assert not torch.equal(other.train_y != other.train_clean_y, noisy.train_y != noisy.train_clean_y)


def _power_law(k, gamma, mx, mn):
    b = (k - 1) ** gamma * mn / (mx - mn)
    a = mx * b
    c = np.arange(1, k + 1, dtype=np.float64)
    return np.round(a / (b + (c - 1) ** gamma)).astype(int)


@pytest.mark.parametrize("gamma", [0.2, 1.0, 2.0])
def test_imbalance_counts(gamma):
    cond = DataCondition(imbalance_gamma=gamma, imbalance_max=90, imbalance_min=5)
    s = load_splits(DataSpec("fake", condition=cond))
    counts = np.bincount(s.train_y.numpy(), minlength=10)
    assert np.array_equal(counts, _power_law(10, gamma, 90, 5))
    assert counts[0] == 90 and counts[-1] == 5
    assert np.all(np.diff(counts) <= 0)
    clean = load_splits(DataSpec("fake"))
    assert _rows_as_set(s.train_x) <= _rows_as_set(clean.train_x)  # a subset of the clean train split
    assert torch.equal(s.val_y, clean.val_y) and torch.equal(s.test_y, clean.test_y)


def test_imbalance_default_max_and_omitted_ranking():
    # default max = smallest available train count (90 per class on fake); class 2 omitted,
    # so the ranking runs over the 9 remaining classes in index order
    cond = DataCondition(imbalance_gamma=1.0, imbalance_min=4, omit_classes=(2,))
    s = load_splits(DataSpec("fake", condition=cond))
    counts = np.bincount(s.train_y.numpy(), minlength=10)
    expected = _power_law(9, 1.0, 90, 4)
    assert counts[2] == 0
    assert np.array_equal(np.delete(counts, 2), expected)


def test_imbalance_too_large_max():
    cond = DataCondition(imbalance_gamma=1.0, imbalance_max=95, imbalance_min=5)
    with pytest.raises(KdxError) as e:
        load_splits(DataSpec("fake", condition=cond))
    assert str(e.value).startswith("imbalance_max: got 95") and "90" in str(e.value)
    with pytest.raises(KdxError, match="imbalance_min"):
        load_splits(DataSpec("fake", condition=DataCondition(imbalance_gamma=1.0, imbalance_min=95)))


def test_omitted_classes_train_only():
    cond = DataCondition(omit_classes=(3, 7), label_noise=0.5)
    s = load_splits(DataSpec("fake", condition=cond))
    for y in (s.train_y, s.train_clean_y):
        assert not torch.isin(y, torch.tensor([3, 7])).any()
    for y in (s.val_y, s.test_y):
        assert (y == 3).any() and (y == 7).any()
    assert len(s.train_y) == 900 - 2 * 90
    assert s.num_classes == 10


# ----------------------------------------------------------------------------- mnist1d
@pytest.fixture(scope="module")
def mnist1d_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("kdx_cache")
    state = np.random.get_state()
    t0 = time.perf_counter()
    s = load_splits(DataSpec("mnist1d", data_dir=str(d)))
    first = time.perf_counter() - t0
    after = np.random.get_state()
    assert np.array_equal(state[1], after[1]) and state[2] == after[2]  # global RNG untouched
    return d, s, first


def test_mnist1d_shapes_and_cache(mnist1d_dir, monkeypatch):
    d, s, first = mnist1d_dir
    assert s.input_shape == (1, 40) and s.augment == "none"
    assert len(s.train_y) + len(s.val_y) == 4000 and len(s.test_y) == 1000
    assert s.train_x.shape[1:] == (1, 40) and s.test_x.dtype == torch.float32
    full = torch.cat([s.train_x, s.val_x])
    assert abs(full.mean().item()) < 1e-4 and abs(full.std().item() - 1) < 1e-3
    files = list(d.glob("mnist1d_*.npz"))
    assert len(files) == 1 and not list(d.glob("*.tmp"))
    assert files[0].stat().st_mode & 0o044 == 0o044  # readable by others (shared cache)
    # the second load must come from the cache: generation is disabled
    monkeypatch.setattr(builtin, "_generate_mnist1d", lambda args: (_ for _ in ()).throw(AssertionError("regenerated")))
    t0 = time.perf_counter()
    s2 = load_splits(DataSpec("mnist1d", data_dir=str(d)))
    assert time.perf_counter() - t0 < 1.0
    for k in Splits._TENSORS:
        assert torch.equal(getattr(s, k), getattr(s2, k)), k
    # stratified val, checked against the raw cached labels
    with np.load(files[0]) as z:
        y_raw = z["y"]
        assert z["x"].shape == (4000, 40) and z["x_test"].shape == (1000, 40)
    expected = np.maximum(np.round(0.1 * np.bincount(y_raw, minlength=10)), 1).astype(int)
    assert np.array_equal(np.bincount(s.val_y.numpy(), minlength=10), expected)


def test_mnist1d_corrupt_cache_regenerates(mnist1d_dir, tmp_path):
    d, s, _ = mnist1d_dir
    src = next(d.glob("mnist1d_*.npz"))
    (tmp_path / src.name).write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable"):
        s2 = load_splits(DataSpec("mnist1d", data_dir=str(tmp_path)))
    assert torch.equal(s2.test_x, s.test_x)
    with np.load(tmp_path / src.name) as z, np.load(src) as ref:  # rewritten with good data
        assert all(np.array_equal(z[k], ref[k]) for k in ("x", "y", "x_test", "y_test"))


def test_mnist1d_default_cache_dir_from_env(mnist1d_dir, tmp_path, monkeypatch):
    d, s, _ = mnist1d_dir
    src = next(d.glob("mnist1d_*.npz"))
    (tmp_path / src.name).write_bytes(src.read_bytes())
    monkeypatch.setenv("KDX_CACHE", str(tmp_path))
    monkeypatch.setattr(builtin, "_generate_mnist1d", lambda args: (_ for _ in ()).throw(AssertionError("regenerated")))
    s2 = load_splits(DataSpec("mnist1d"))
    assert torch.equal(s2.test_x, s.test_x)


def test_mnist1d_noise_rate(mnist1d_dir):
    # 3600 train samples: sharp enough to tell sigma*(K-1)/K = 0.54 from sigma = 0.6
    d, _, _ = mnist1d_dir
    sigma = 0.6
    s = load_splits(DataSpec("mnist1d", data_dir=str(d), condition=DataCondition(label_noise=sigma)))
    n, k = len(s.train_y), 10
    p = sigma * (k - 1) / k
    rate = (s.train_y != s.train_clean_y).float().mean().item()
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n), (rate, p)
    # corrupted labels are spread over the other classes
    wrong = s.train_y[s.train_y != s.train_clean_y]
    assert np.bincount(wrong.numpy(), minlength=10).min() > 0.5 * len(wrong) / 10


# ----------------------------------------------------------------------------- CIFAR
def _cifar_images(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _dump(path, obj, bytes_keys):
    if bytes_keys:
        obj = {k.encode(): v for k, v in obj.items()}
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_tiny_cifar10(root, per_batch=20, n_test=20, bytes_keys=False):
    """The standard on-disk format: what torchvision reads with pickle.load(f, encoding="latin1").
    (The original files were written by Python 2, whose str keys load as str under latin1, or as
    bytes such as b'data' under encoding="bytes"; bytes_keys=True writes the latter form.)"""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    raw = {}
    for i in range(1, 6):
        x = _cifar_images(per_batch, i)
        y = [int(v) for v in np.arange(per_batch) % 10]
        _dump(base / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "data": x,
                                          "labels": y, "filenames": [f"{j}.png" for j in range(per_batch)]},
              bytes_keys)
        raw[f"data_batch_{i}"] = (x, y)
    xt = _cifar_images(n_test, 99)
    yt = [int(v) for v in (np.arange(n_test) * 3) % 10]
    _dump(base / "test_batch", {"batch_label": "testing batch 1 of 1", "data": xt, "labels": yt}, bytes_keys)
    raw["test_batch"] = (xt, yt)
    _dump(base / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per_batch,
                                  "num_vis": 3072}, bytes_keys)
    return raw


CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465])
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616])


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar10_tiny_local(tmp_path, bytes_keys):
    raw = write_tiny_cifar10(tmp_path, bytes_keys=bytes_keys)
    s = load_splits(DataSpec("cifar10", data_dir=str(tmp_path), val_fraction=0.1))
    assert s.input_shape == (3, 32, 32) and s.augment == "crop_flip" and s.num_classes == 10
    assert len(s.train_y) + len(s.val_y) == 100 and len(s.test_y) == 20
    assert np.array_equal(np.bincount(s.val_y.numpy(), minlength=10), np.ones(10, int))
    assert s.train_x.dtype == torch.float32 and s.train_x.shape[1:] == (3, 32, 32)
    # layout and normalisation, pixel by pixel, with explicit indexing of the raw rows
    xt, yt = raw["test_batch"]
    assert s.test_y.tolist() == yt
    i, c, h, w = 7, 2, 5, 30
    expected = (xt[i, c * 1024 + h * 32 + w] / 255.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
    assert s.test_x[i, c, h, w].item() == pytest.approx(expected, abs=1e-5)
    img = xt.reshape(-1, 3, 32, 32).astype(np.float64) / 255.0
    img = (img - CIFAR10_MEAN[None, :, None, None]) / CIFAR10_STD[None, :, None, None]
    np.testing.assert_allclose(s.test_x.numpy(), img, atol=1e-5)


def test_cifar10_matches_torchvision_reader(tmp_path, monkeypatch):
    """Our tiny files are read the way torchvision reads the real ones (md5 check bypassed here only)."""
    import torchvision.datasets.cifar as tvc
    write_tiny_cifar10(tmp_path)
    monkeypatch.setattr(tvc, "check_integrity", lambda *a, **k: True)
    tv = tvc.CIFAR10(root=str(tmp_path), train=False, download=False)
    ours = DATASETS["cifar10"].loader(DataSpec("cifar10", data_dir=str(tmp_path)))
    test_x = ours[2].numpy() * CIFAR10_STD[None, :, None, None] + CIFAR10_MEAN[None, :, None, None]
    np.testing.assert_allclose(test_x, tv.data.transpose(0, 3, 1, 2) / 255.0, atol=1e-5)
    assert ours[3].tolist() == list(tv.targets)


def test_cifar_missing_dir_message(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(KdxError) as e:
        load_splits(DataSpec("cifar10", data_dir=str(missing)))
    msg = str(e.value)
    assert msg.startswith("data_dir:") and str(missing) in msg and "cifar-10-batches-py" in msg
    assert "--download" in msg and msg.count("\n") == 0 and msg.count(". ") == 0
    assert e.value.__cause__ is None
    with pytest.raises(KdxError, match="data_dir"):
        load_splits(DataSpec("cifar10", data_dir=None))
    with pytest.raises(KdxError, match="cifar-100-python"):
        load_splits(DataSpec("cifar100", data_dir=str(missing)))


def test_cifar_incomplete_and_corrupt(tmp_path):
    write_tiny_cifar10(tmp_path)
    base = tmp_path / "cifar-10-batches-py"
    (base / "data_batch_3").unlink()
    with pytest.raises(KdxError, match="data_batch_3"):
        load_splits(DataSpec("cifar10", data_dir=str(tmp_path)))
    (base / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(KdxError, match="data_batch_3.*unreadable"):
        load_splits(DataSpec("cifar10", data_dir=str(tmp_path)))


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_tiny_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(str(marker)), b"labels": [0]}, f, protocol=2)
    with pytest.raises(KdxError, match="unreadable"):
        load_splits(DataSpec("cifar10", data_dir=str(tmp_path)))
    assert not marker.exists()


def test_cifar100_tiny_local(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    x = _cifar_images(300, 1)
    _dump(base / "train", {"data": x, "fine_labels": [i % 100 for i in range(300)],
                           "coarse_labels": [i % 20 for i in range(300)]}, True)
    _dump(base / "test", {"data": _cifar_images(100, 2), "fine_labels": list(range(100)),
                          "coarse_labels": [i % 20 for i in range(100)]}, True)
    s = load_splits(DataSpec("cifar100", data_dir=str(tmp_path)))
    assert s.num_classes == 100 and len(s.val_y) == 100 and len(s.train_y) == 200
    assert sorted(s.test_y.tolist()) == list(range(100))


# ----------------------------------------------------------------------------- augmentation
def _gen(device, seed):
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


@pytest.mark.parametrize("device", DEVICES)
def test_augment_is_exact_reflect_crop_or_flip(device):
    n, c, h, w, p = 300, 2, 7, 9, 3
    x = torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w)  # all values distinct
    x_before = x.clone()
    out = augment_batch(x.to(device), _gen(device, 0), padding=p)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device.type == device
    out = out.cpu().numpy()
    assert torch.equal(x, x_before)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect")
    seen_dy, seen_dx, seen_flip = set(), set(), set()
    for i in range(n):
        matches = []
        for dy in range(2 * p + 1):
            for dx in range(2 * p + 1):
                crop = padded[i, :, dy:dy + h, dx:dx + w]
                if np.array_equal(out[i], crop):
                    matches.append((dy, dx, False))
                if np.array_equal(out[i], crop[:, :, ::-1]):
                    matches.append((dy, dx, True))
        assert len(matches) == 1, (i, matches)
        dy, dx, fl = matches[0]
        seen_dy.add(dy), seen_dx.add(dx), seen_flip.add(fl)
    assert seen_dy == set(range(2 * p + 1)) and seen_dx == set(range(2 * p + 1)) and seen_flip == {False, True}


@pytest.mark.parametrize("device", DEVICES)
def test_augment_determinism(device):
    x = torch.randn(64, 3, 16, 16, device=device)
    a = augment_batch(x, _gen(device, 5))
    b = augment_batch(x, _gen(device, 5))
    c = augment_batch(x, _gen(device, 6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    flips_only = augment_batch(x, _gen(device, 1), padding=0)
    same = (flips_only == x).flatten(1).all(1)
    flipped = (flips_only == x.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all()) and bool(same.any()) and bool(flipped.any())


def test_augment_bad_input():
    with pytest.raises(KdxError, match="padding"):
        augment_batch(torch.zeros(2, 1, 4, 4), _gen("cpu", 0), padding=4)
    with pytest.raises(KdxError):
        augment_batch(torch.zeros(2, 40), _gen("cpu", 0))


def test_larger_mnist1d_draws_come_from_the_same_generator(tmp_path):
    """`mnist1d_10k` is the package's generator with 10,000 samples: the same 80/20 split and length."""
    big = DATASETS["mnist1d_10k"].loader(DataSpec(dataset="mnist1d_10k", data_dir=str(tmp_path)))
    small = DATASETS["mnist1d"].loader(DataSpec(dataset="mnist1d", data_dir=str(tmp_path)))
    assert [t.shape[0] for t in big] == [8000, 8000, 2000, 2000]
    assert [t.shape[0] for t in small] == [4000, 4000, 1000, 1000]
    assert big[0].shape[1:] == small[0].shape[1:] == (1, 40)
    assert len(list(tmp_path.glob("mnist1d_*.npz"))) == 2  # each size cached under its own key


def test_train_per_class_takes_a_balanced_seeded_subset_and_leaves_validation_alone():
    full = load_splits(DataSpec("mnist1d"))
    sub = load_splits(DataSpec("mnist1d", train_per_class=100))
    assert torch.bincount(sub.train_y).tolist() == [100] * 10
    assert torch.equal(sub.val_x, full.val_x) and torch.equal(sub.test_x, full.test_x)
    rows = {tuple(r) for r in full.train_x.flatten(1).tolist()}  # every kept sample is a train sample
    assert all(tuple(r) in rows for r in sub.train_x.flatten(1).tolist())
    again = load_splits(DataSpec("mnist1d", train_per_class=100))
    other = load_splits(DataSpec("mnist1d", train_per_class=100, split_seed=1))
    assert torch.equal(again.train_x, sub.train_x) and not torch.equal(other.train_y, sub.train_y)
    # the key of a teacher's data changes only when the subset is asked for
    assert "train_per_class" not in DataSpec("mnist1d").identity()
    assert DataSpec("mnist1d", train_per_class=100).identity()["train_per_class"] == 100
    with pytest.raises(KdxError, match=r"^train_per_class: got 1000; class \d has only \d+ training samples"):
        load_splits(DataSpec("mnist1d", train_per_class=1000))


def test_a_download_that_leaves_files_missing_is_one_sentence_naming_data_dir():
    from explorer.data.registry import download_missing

    files, fetched = {"a"}, []
    spec = DataSpec("mnist", data_dir="/data")
    download_missing(spec, "MNIST", "MNIST/raw", lambda: sorted({"a"} - files), lambda: fetched.append(1), "x")
    assert fetched == []  # nothing missing: nothing fetched
    files.clear()
    download_missing(spec, "MNIST", "MNIST/raw", lambda: sorted({"a"} - files), lambda: files.add("a"), "x")
    with pytest.raises(KdxError, match=r"^data_dir: got '/data'; the MNIST download left it incomplete "
                                       r"\(missing b in MNIST/raw/\); allowed: the four idx files there\.$"):
        download_missing(spec, "MNIST", "MNIST/raw", lambda: ["b"], lambda: None, "the four idx files there")
