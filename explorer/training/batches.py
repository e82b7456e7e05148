"""The batch source, chosen once at setup: an epoch's batches from the members' data order, each with
its images. On augmented data a batch's images are one of each sample's fixed views when the teacher's
logits on them are kept (explorer/teachers/views.py; drawn from each member's own generator), else a
fresh random crop and flip; on plain data the images themselves. Index slices of a device permutation
and tensor ops on the device: no DataLoader, no per-sample Python."""

from __future__ import annotations

from typing import Iterator

from torch import Tensor


class BatchSource:
    def __init__(self, splits, members, views, batch_size: int):
        self.splits, self.members, self.batch_size = splits, members, batch_size
        if splits.augment != "crop_flip":
            self.images = lambda xb, idx: xb
        elif views is not None:
            self.images = lambda xb, idx: views.draw(idx, members.draw_generators)
        else:
            self.images = lambda xb, idx: members.augment(xb)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(idx, images, labels) per batch: (B,) indices for one run, (S, B) for S fused members."""
        s = self.splits
        for idx in self.members.order(len(s.train_y)).split(self.batch_size, dim=-1):
            yield idx, self.images(s.train_x[idx], idx), s.train_y[idx]
