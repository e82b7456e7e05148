"""Seeded sampling the data steps share: one generator per named step, the first n of each class in a
seeded permutation, and the stratified holdout (the validation split; digits' fixed test split)."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


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
