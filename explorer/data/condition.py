"""The data conditions (label noise, class imbalance, omitted classes) and the DataSpec that names the
data; `explorer.data.splits.load_splits` turns a DataSpec into train / val / test tensors as described
here. The datasets are plugins (explorer/data/registry.py); batched on-device augmentation is
explorer/data/augment.py.

Design
------
* A dataset lives as one float32 tensor per split (already normalised) plus an int64 label tensor.
  `Splits.to(device)` moves everything to the training device once; batching (index slices of a
  device permutation, in the training loop) and augmentation (`augment_batch`) are tensor ops on
  that device. No DataLoader, no per-sample Python in the hot loop.
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
   b. `train_per_class` (when set): the train split keeps the first n of each class in a seeded
      permutation (its own step), a balanced subset that makes a large dataset fit a CPU budget; the
      validation split is carved first, so it does not shrink with it. A class with fewer than n samples
      left is refused, at validate where the official per-class counts are registered.
3. On the remaining train split, in this order:
   a. `omit_classes`: every sample of those classes is dropped (train only; val/test keep them).
   b. power-law imbalance (`imbalance_gamma`): the remaining classes, in index order, are ranked
      c = 1..K and class c keeps the first n_c of its samples in a seeded permutation, with
      n_c = round(a / (b + (c - 1) ** gamma)),  b = (K - 1) ** gamma * min / (max - min),  a = max * b,
      so that n_1 = imbalance_max and n_K = imbalance_min. (Seed paper 000, section IV-C, follows
      Dong et al.; its OCR text reads "(c - 1)^-gamma", which would make class 1 empty: we use the
      form that gives the stated largest and smallest class counts.) imbalance_max defaults to the
      smallest per-class count available in the train split.
      Seed 000's scale (Table VI: max 5000, min 250 of CIFAR-10's 5000 per class) does not fit after
      a validation split (10% leaves 4500 per class). kdx's route keeps the seed's max/min RATIO (20):
      leave imbalance_max out (4500) and set imbalance_min to 225. Scaling both ends by the same
      factor leaves b unchanged and scales a, so every class count is the seed's times 0.9 (up to
      rounding): the same class distribution, 10% smaller, as every kdx CIFAR run is. Keeping the
      seed's min (250) instead would change the ratio to 18 and so the shape. A max that cannot fit
      is refused (`imbalance_counts`) in one sentence giving the largest max that fits and the
      imbalance_min that keeps the asked ratio; at validate for datasets whose official per-class
      counts are registered (CIFAR, MNIST), else when the data is loaded. Trainers log the class
      counts actually used (`class_count_max`, `class_count_min`).
   c. symmetric label noise (`label_noise` = sigma): each train label, with probability sigma, is
      replaced by a class drawn uniformly from all classes present in the train split (all classes
      unless some are omitted; an omitted class never reappears through noise). As in seed paper
      000 section IV-B the draw may land on the true class, so the observed flip rate is
      sigma * (K - 1) / K. `train_clean_y` keeps the labels before noise.

The teachers' data (`DataSpec.teacher_condition`, a spec's `teachers.data_condition`): `same` (the
default) trains a run's teachers on this DataSpec, condition and all; `clean` on the same dataset,
validation split and split seed with no condition (`DataSpec.teacher_data()`), so a teacher sees every
class while its student's split lacks the omitted ones (seed 003 section 4.1). A teacher's recipe keeps
the DataSpec it trains on (`TeacherRecipe` applies `teacher_data()`), so its store key follows.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from typing import Mapping

from explorer.data.registry import dataset_info
from explorer.data.sampling import holdout_counts
from explorer.errors import bad_value

# Bump when a change here alters the data a given DataSpec produces (part of DataSpec.identity()).
DATA_VERSION = 1


# ----------------------------------------------------------------------------- small helpers
def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def power_law_counts(num_classes: int, gamma: float, largest: int, smallest: int) -> list[int]:
    """n_c = round(a / (b + (c-1)**gamma)), c = 1..K, with n_1 = largest and n_K = smallest."""
    if num_classes == 1 or largest == smallest:
        return [int(largest)] * num_classes
    b = (num_classes - 1) ** gamma * smallest / (largest - smallest)
    a = largest * b
    return [int(round(a / (b + (c - 1) ** gamma))) for c in range(1, num_classes + 1)]


def imbalance_counts(cond: "DataCondition", present: list[int], available: list[int], val_fraction: float) -> list[int]:
    """Step 3b's per-class counts for the `present` classes, which have `available` samples each after
    the validation split; KdxError (imbalance_max or imbalance_min) when they cannot be met."""
    fits = min(available)
    largest = cond.imbalance_max if cond.imbalance_max is not None else fits
    split = f"after the validation split (val_fraction {val_fraction:g})" if val_fraction else "in the training set"
    if cond.imbalance_min > largest:
        raise bad_value("imbalance_min", cond.imbalance_min,
                        f"allowed: at most imbalance_max ({largest}, the smallest per-class train count {split})")
    wanted = power_law_counts(len(present), float(cond.imbalance_gamma), largest, cond.imbalance_min)
    for cls, n_c, avail in zip(present, wanted, available):
        if n_c > avail:
            ratio = largest / cond.imbalance_min
            raise bad_value("imbalance_max", cond.imbalance_max,
                            f"class {cls} would need {n_c} training samples but only {avail} are left {split}; "
                            f"allowed: at most {fits} (the default when imbalance_max is left out), or a smaller "
                            f"val_fraction; to keep the max/min ratio of {ratio:g}, leave imbalance_max out and set "
                            f"imbalance_min: {max(1, round(fits / ratio))}")
    return wanted


def check_train_per_class(n: int, available: list[int]) -> None:
    """Step 2b can take `n` of every class from a train split with `available` samples per class."""
    if n > min(available):
        cls = available.index(min(available))
        raise bad_value("train_per_class", n, f"class {cls} has only {min(available)} training samples after the "
                        f"validation split; allowed: at most {min(available)}, or null for the whole train split")


# The data a run's teachers train on (`DataSpec.teacher_condition`; a spec's `teachers.data_condition`).
TEACHER_CONDITIONS = {
    "same": "the student's data, its condition included",
    "clean": "the clean train split: the same dataset and validation split, no label noise, imbalance or omitted classes",
}


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
    """Which data: the dataset, where it lives, the validation split and the train condition; and which
    data this run's teachers train on (`teacher_condition`, one of TEACHER_CONDITIONS; module docstring)."""

    dataset: str
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    split_seed: int = 0
    condition: DataCondition = DataCondition()
    teacher_condition: str = "same"
    train_per_class: int | None = None  # a balanced subset of the train split (step 2b), None: all of it

    def __post_init__(self):
        if isinstance(self.condition, Mapping):
            known = {f.name for f in fields(DataCondition)}
            unknown = sorted(set(self.condition) - known)
            if unknown:
                raise bad_value("condition", unknown[0], f"allowed keys: {', '.join(sorted(known))}")
            object.__setattr__(self, "condition", DataCondition(**self.condition))

    def validate(self) -> None:
        """Check everything that can be checked without loading data (KdxError on a bad value)."""
        info = dataset_info(self.dataset)
        vf = self.val_fraction
        if not _is_real(vf) or not (0.0 <= float(vf) < 1.0):
            raise bad_value("val_fraction", vf, "allowed: a number in [0, 1)")
        if not _is_int(self.split_seed) or not 0 <= self.split_seed <= 2**32 - 1:
            raise bad_value("split_seed", self.split_seed, "allowed: an integer from 0 to 2**32 - 1")
        if not isinstance(self.condition, DataCondition):
            raise bad_value("condition", self.condition, "allowed: a DataCondition")
        self._check_train_per_class(info.class_counts, float(vf))
        self.condition.validate(info.num_classes)
        if self.teacher_condition not in TEACHER_CONDITIONS:
            raise bad_value("teacher_condition", self.teacher_condition, f"allowed: {', '.join(TEACHER_CONDITIONS)}")
        cond = self.condition
        if cond.imbalance_gamma is not None and info.class_counts is not None:  # the official counts: before loading
            left = [n - h for n, h in zip(info.class_counts, holdout_counts(list(info.class_counts), float(vf)))]
            present = [c for c in range(info.num_classes) if c not in set(cond.omit_classes)]
            imbalance_counts(cond, present, [left[c] for c in present], float(vf))

    def _check_train_per_class(self, class_counts, vf: float) -> None:
        n = self.train_per_class
        if n is None:
            return
        if not _is_int(n) or n < 1:
            raise bad_value("train_per_class", n, "allowed: an integer >= 1, or null for the whole train split")
        if class_counts is not None:  # the official counts: checked before loading
            check_train_per_class(n, [c - h for c, h in zip(class_counts, holdout_counts(list(class_counts), vf))])

    def teacher_data(self) -> "DataSpec":
        """The DataSpec this run's teachers train on: this one (`same`), or (`clean`) the same dataset,
        validation split and split seed without a data condition."""
        if self.teacher_condition == "same":
            return self
        return replace(self, condition=DataCondition(), teacher_condition="same")

    def identity(self) -> dict:
        """Everything that determines the data, without data_dir/download (for hashing recipes) and without
        teacher_condition (it decides other runs' data: a teacher's recipe holds `teacher_data()`)."""
        return {
            "dataset": self.dataset,
            "val_fraction": float(self.val_fraction),
            "split_seed": int(self.split_seed),
            "condition": self.condition.identity(),
            "data_version": DATA_VERSION,
        } | ({} if self.train_per_class is None else {"train_per_class": int(self.train_per_class)})
