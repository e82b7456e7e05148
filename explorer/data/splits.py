"""The splits a DataSpec names: `load_splits` turns it into train / val / test tensors (the steps are
in explorer/data/condition.py's docstring), and `Splits` carries them to the training device."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from explorer.data.condition import DataSpec, check_train_per_class, imbalance_counts
from explorer.data.registry import dataset_info
from explorer.data.sampling import step_generator, stratified_holdout, take_first_per_class


@dataclass
class Splits:
    """One dataset's tensors after `load_splits`: the degraded train split (with its labels before
    noise in `train_clean_y`) and the clean val and test splits, plus what the trainer needs to know."""

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
        wanted = imbalance_counts(cond, present, [int(counts[c]) for c in present], float(spec.val_fraction))
        per_class = torch.zeros(num_classes, dtype=torch.int64)
        per_class[present] = torch.tensor(wanted, dtype=torch.int64)
        keep_idx, _ = take_first_per_class(y, per_class, step_generator(spec.split_seed, "imbalance"))
        x, y = x[keep_idx], y[keep_idx]

    clean_y = y.clone()
    if cond.label_noise > 0:
        g = step_generator(spec.split_seed, "label_noise")
        # Draw both for every sample so a larger sigma corrupts a superset of the samples.
        u = torch.rand(len(y), generator=g)
        choice = torch.randint(0, len(present), (len(y),), generator=g)
        new = torch.tensor(present, dtype=torch.int64)[choice]
        y = torch.where(u < float(cond.label_noise), new, y)
    return x, y, clean_y


def load_splits(spec: DataSpec) -> Splits:
    """Load `spec.dataset`, carve the stratified val split, apply the train condition (module docstring)."""
    spec.validate()
    info = dataset_info(spec.dataset)
    train_x, train_y, test_x, test_y = info.loader(spec)
    k = info.num_classes

    keep, val = stratified_holdout(train_y, k, float(spec.val_fraction),
                                   step_generator(spec.split_seed, "val_split"))
    val_x, val_y = train_x[val], train_y[val]
    tr_x, tr_y = train_x[keep], train_y[keep]
    if spec.train_per_class is not None:  # step 2b
        counts = torch.bincount(tr_y, minlength=k)
        check_train_per_class(int(spec.train_per_class), counts.tolist())
        subset, _ = take_first_per_class(tr_y, torch.full((k,), int(spec.train_per_class)),
                                         step_generator(spec.split_seed, "train_per_class"))
        tr_x, tr_y = tr_x[subset], tr_y[subset]
    tr_x, tr_y, tr_clean = _apply_condition(tr_x, tr_y, k, spec)
    return Splits(
        name=info.name, num_classes=k, input_shape=tuple(info.input_shape), augment=info.augment,
        train_x=tr_x.contiguous(), train_y=tr_y, val_x=val_x.contiguous(), val_y=val_y,
        test_x=test_x.contiguous(), test_y=test_y, train_clean_y=tr_clean,
    )
