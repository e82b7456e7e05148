"""Training speed of kdx's loop against a plain PyTorch KD reference, measured in the same run.

The reference is how KD code is commonly written: a DataLoader over the same training tensors,
per-sample torchvision augmentation in the Dataset (for images), the teacher run on every batch
under `torch.no_grad()`, the same models, optimiser, batch size and loss. kdx keeps the data on
the device, augments whole batches with tensor ops, runs the teacher in inference mode (once per
run when the data is not augmented), and keeps loss sums on the device.

    .venv/bin/python benchmarks/train_speed.py [--device cuda] [--epochs 3] [--only TEXT] [--json]

Prints samples/s for both and the ratio kdx / reference, per setting, and what one 200-epoch run of
the student takes at kdx's rate (extrapolated from the timed epochs; the teacher's one-off pass comes
on top). The CIFAR-10-shaped setting (issue 11's GPU check, `benchmarks/gpu_checks.sh`; 50,000
samples, `benchmarks/shapes.py`) runs on CPU only when `--only` names it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.shapes import CIFAR10_TRAIN, splits_of  # noqa: E402
from explorer.methods import kd_kl  # noqa: E402
from explorer.models import build_model  # noqa: E402
from explorer.config import TrainConfig  # noqa: E402
from explorer.training.loop import Trainer

SETTINGS = {
    # name: dataset, image side (None: as loaded), training samples (None: as loaded), teacher, student, batch size
    "mnist1d cnn1d_w64 -> cnn1d_w4": ("mnist1d", None, None, "cnn1d_w64", "cnn1d_w4", 128),
    "fake 3x16x16 (crop+flip) resnet20 -> resnet8": ("fake", None, None, "resnet20", "resnet8", 128),
    "CIFAR-10-shaped 3x32x32 (crop+flip) resnet56 -> resnet20": ("fake", 32, CIFAR10_TRAIN, "resnet56", "resnet20", 128),
}
GPU_SETTINGS = ("CIFAR-10-shaped 3x32x32 (crop+flip) resnet56 -> resnet20",)


class AugmentedImages(Dataset):
    """Per-sample augmentation, as torchvision pipelines do it (reflect-padded crop + flip)."""

    def __init__(self, x, y):
        from torchvision.transforms import v2

        self.x, self.y = x, y
        size = x.shape[-1]
        self.t = v2.Compose([v2.RandomCrop(size, padding=4, padding_mode="reflect"), v2.RandomHorizontalFlip()])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.t(self.x[i]), self.y[i]


def reference_epoch(student, teacher, opt, loader, device, alpha=0.9, T=4.0) -> int:
    student.train()
    n = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            t = teacher(x)
        s = student(x)
        loss = (1 - alpha) * F.cross_entropy(s, y) + alpha * kd_kl(s, t, T)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(y)
        _ = loss.item()  # per-batch logging, as reference scripts do
    return n


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(name, dataset, side, samples, t_arch, s_arch, batch, epochs, device) -> dict:
    splits = splits_of(dataset, side, samples)
    torch.manual_seed(0)
    teacher = build_model(t_arch, splits.num_classes, splits.input_shape).to(device).eval()
    # kdx
    cfg = TrainConfig(s_arch, epochs=epochs + 1, batch_size=batch, method="kd", schedule="constant")
    trainer = Trainer(cfg, splits, device, teacher=teacher)
    trainer.train_epoch()  # warm-up (and kdx's one-off teacher pass over unaugmented data)
    kdx_s = sum(timed(trainer.train_epoch, device) for _ in range(epochs))
    n_train = len(splits.train_y)
    # reference
    torch.manual_seed(0)
    student = build_model(s_arch, splits.num_classes, splits.input_shape).to(device)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y = splits.train_x.cpu(), splits.train_y.cpu()
    ds = AugmentedImages(x, y) if splits.augment == "crop_flip" else TensorDataset(x, y)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, pin_memory=device.type == "cuda")
    reference_epoch(student, teacher, opt, loader, device)  # warm-up
    ref_s = sum(timed(lambda: reference_epoch(student, teacher, opt, loader, device), device) for _ in range(epochs))
    kdx_rate, ref_rate = n_train * epochs / kdx_s, n_train * epochs / ref_s
    return {"setting": name, "device": str(device), "epochs": epochs, "train_samples": n_train,
            "kdx_samples_per_s": round(kdx_rate), "reference_samples_per_s": round(ref_rate),
            "ratio": round(kdx_rate / ref_rate, 2), "kdx_200_epochs_s": round(200 * n_train / kdx_rate, 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--only", action="append", help="run only settings whose name contains this text")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    for name, setting in SETTINGS.items():
        if args.only and not any(o in name for o in args.only) or (
                not args.only and name in GPU_SETTINGS and device.type == "cpu"):
            continue
        r = bench(name, *setting, args.epochs, device)
        print(json.dumps(r) if args.json else
              f"{r['setting']:<48} {r['device']:<5} kdx {r['kdx_samples_per_s']:>9,} samples/s   "
              f"reference {r['reference_samples_per_s']:>9,} samples/s   ratio {r['ratio']:.2f}x   "
              f"200 epochs at kdx's rate {r['kdx_200_epochs_s']:,.0f} s", flush=True)


if __name__ == "__main__":
    main()
