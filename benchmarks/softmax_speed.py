"""kdx's `log_softmax` / `cross_entropy` (explorer/methods/losses.py) against torch's, side by side in one run.

On CPU, torch's log-softmax over a short last dimension (fewer than 16 classes) takes a slow path; kdx
moves the classes to the front first for those. For each class count and row count (128: one batch;
1024: 8 fused members' batches) this times forward and backward of both, checks that the values are
the same, and prints the ratio.

    .venv/bin/python benchmarks/softmax_speed.py [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer.methods.losses import cross_entropy  # noqa: E402


def timed(loss, x0: torch.Tensor, y: torch.Tensor, reps: int) -> float:
    def step():
        x = x0.clone().requires_grad_(True)
        loss(x, y).backward()
    for _ in range(10):
        step()
    start = time.perf_counter()
    for _ in range(reps):
        step()
    return (time.perf_counter() - start) / reps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (a Ray trial with cpus: 1 has one)")
    p.add_argument("--reps", type=int, default=300)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"{'classes':>7} {'rows':>5} {'torch us':>9} {'kdx us':>7} {'ratio':>6}  same values")
    for classes in (2, 10, 15, 16, 100):
        for rows in (128, 1024):
            x, y = torch.randn(rows, classes), torch.randint(0, classes, (rows,))
            same = torch.equal(F.cross_entropy(x, y), cross_entropy(x, y))
            plain, kdx = timed(F.cross_entropy, x, y, a.reps), timed(cross_entropy, x, y, a.reps)
            print(f"{classes:7d} {rows:5d} {plain * 1e6:9.1f} {kdx * 1e6:7.1f} {plain / kdx:5.2f}x  {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
