"""How a fused model's time per member falls with its number of members (issue 11; the default of
`confirm.members_per_trial`).

One KD trainer per size S (S seeds of the quickstart's student, cnn1dbn_w8, against a cnn1dbn_w64
teacher on MNIST-1D; S=1 is a solo run), on one CPU thread as a Ray trial has. Each round times one
training epoch of every trainer in turn, so load on the host hits all alike; it prints the median
epoch time per member for each S, and each one's speed-up over the solo run.

    .venv/bin/python benchmarks/fused_members.py [--sizes 1 12 24 48 96] [--reps 3]

Writes benchmarks/results/fused_members.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fused_speed import teacher_of  # noqa: E402
from benchmarks.shapes import splits_of  # noqa: E402
from explorer.config import TrainConfig  # noqa: E402
from explorer.training.loop import Trainer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 12, 24, 48, 96])
    p.add_argument("--reps", type=int, default=3, help="timed rounds (after one warm-up round)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    splits = splits_of("mnist1d", None, None, device)
    teacher = teacher_of("cnn1dbn_w64", splits, device)
    cfg = TrainConfig("cnn1dbn_w8", epochs=a.reps + 1, method="kd", batch_size=128,
                      method_params={"temperature": 4.0, "alpha": 0.9})
    trainers = {s: Trainer(cfg, splits, device, teacher=teacher, members=list(range(s)) if s > 1 else None)
                for s in a.sizes}
    times = {s: [] for s in a.sizes}
    for rep in range(a.reps + 1):  # the first round warms up
        for s, tr in trainers.items():
            seconds = tr.train_epoch()["epoch_seconds"]
            if rep:
                times[s].append(seconds / s)
    solo = statistics.median(times[min(a.sizes)])
    out = []
    for s in a.sizes:
        ms = statistics.median(times[s]) * 1000
        out.append({"members": s, "ms_per_member_epoch": round(ms, 1), "speedup_over_smallest": round(solo * 1000 / ms, 2)})
        print(f"{s:4d} members: {ms:6.1f} ms per member-epoch, {solo * 1000 / ms:5.2f}x the {min(a.sizes)}-member rate",
              flush=True)
    path = ROOT / "benchmarks" / "results" / "fused_members.json"
    path.write_text(json.dumps({"setting": "mnist1d cnn1dbn_w8 kd, teacher cnn1dbn_w64, 1 thread",
                                "rounds": a.reps, "sizes": out}, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
