"""Fused seeds against solo runs (issue 11, benchmark b), measured side by side in one run.

S members trained as one fused model (explorer/training/fused.py: `Trainer(..., members=seeds)`) against the same
S seeds trained one by one with the same `Trainer`. With `--configs` each member is a config of its own
(its own lr, and T and alpha for KD: several configs in one fused model), and so is its solo run; each
round then also times a fused model of the shared config, and `own_over_shared` is the fused epoch's
time with members' own settings over that one's (what per-member settings cost). Each round times one
fused epoch and one epoch of every solo trainer, in turn, so load on the host hits both alike; the ratio
is the solo trainers' summed epoch time over the fused epoch time (the throughput ratio), per round,
and its median.
`train` counts the training loop only (`epoch_seconds`); `wall` adds the per-epoch val/test evaluation.

    .venv/bin/python benchmarks/fused_speed.py [--members 8] [--reps 3] [--threads 1] [--device cuda] [--configs]

Writes benchmarks/results/fused_speed[_<device>].json. The default of one thread is a Ray trial's
(`resources.trial.cpus: 1`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.shapes import CIFAR10_TRAIN, splits_of  # noqa: E402
from explorer.models import build_model  # noqa: E402
from explorer.config import TrainConfig  # noqa: E402
from explorer.training.loop import Trainer

SETTINGS = {
    # name: dataset, image side (None: as loaded), training samples (None: as loaded), student, method, teacher
    "mnist1d cnn1d_w4 kd": ("mnist1d", None, None, "cnn1d_w4", "kd", "cnn1d_w64"),
    "mnist1d cnn1dbn_w8 kd (the quickstart's student)": ("mnist1d", None, None, "cnn1dbn_w8", "kd", "cnn1dbn_w64"),
    "fake 3x32x32 crop+flip resnet8 ce": ("fake", 32, None, "resnet8", "ce", None),
    # issue 11's GPU check (benchmarks/gpu_checks.sh); on CPU only when --only names it
    "CIFAR-10-shaped 3x32x32 crop+flip resnet20 ce": ("fake", 32, CIFAR10_TRAIN, "resnet20", "ce", None),
}
GPU_SETTINGS = ("CIFAR-10-shaped 3x32x32 crop+flip resnet20 ce",)


def teacher_of(arch: str | None, splits, device):
    if arch is None:
        return None
    torch.manual_seed(0)
    return build_model(arch, splits.num_classes, splits.input_shape).to(device).eval()


def member_configs(cfg: TrainConfig, members: int, own: bool) -> list[TrainConfig]:
    """The members' configs: seeds 0..S-1 of `cfg`, or with `own` each its own lr (0.025 to 0.2) and, for
    KD, its own T (1 to S) and alpha (0.5 upwards)."""
    def mine(s):
        if not own:
            return {"seed": s}
        hp = {"temperature": 1.0 + s, "alpha": 0.5 + 0.05 * s} if cfg.method == "kd" else {}
        return {"seed": s, "lr": 0.025 * 2 ** (s % 4), "method_params": hp}
    return [cfg.model_copy(update=mine(s)) for s in range(members)]


def bench(name: str, members: int, reps: int, device, own: bool = False) -> dict:
    dataset, side, samples, arch, method, teacher_arch = SETTINGS[name]
    splits = splits_of(dataset, side, samples, device)
    teacher = teacher_of(teacher_arch, splits, device)
    cfg = TrainConfig(arch, epochs=reps + 1, method=method, schedule="constant", batch_size=128,
                      method_params={"temperature": 4.0, "alpha": 0.9} if method == "kd" else {})
    configs = member_configs(cfg, members, own)
    fused = Trainer(configs[0], splits, device, teacher=teacher, members=configs)
    solos = [Trainer(c, splits, device, teacher=teacher) for c in configs]
    shared = Trainer(cfg, splits, device, teacher=teacher, members=member_configs(cfg, members, False)) if own else None
    rounds = []
    for rep in range(reps + 1):  # the first round warms up
        start = time.perf_counter()
        f = fused.train_epoch()
        f_wall = time.perf_counter() - start
        s_train = s_wall = 0.0
        for tr in solos:
            start = time.perf_counter()
            s_train += tr.train_epoch()["epoch_seconds"]
            s_wall += time.perf_counter() - start
        if rep:
            rounds.append({"fused_train_s": f["epoch_seconds"], "fused_wall_s": f_wall,
                           "solo_train_s": s_train, "solo_wall_s": s_wall})
            if shared is not None:
                rounds[-1]["shared_train_s"] = shared.train_epoch()["epoch_seconds"]
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    return {"setting": name + (" (own lr, T, alpha per member)" if own else ""), "members": members,
            "train_samples": len(splits.train_y), "device": str(device),
            "threads": torch.get_num_threads(),
            "solo_train_s": round(med["solo_train_s"], 3), "fused_train_s": round(med["fused_train_s"], 3),
            "train_ratio": round(statistics.median(r["solo_train_s"] / r["fused_train_s"] for r in rounds), 2),
            "wall_ratio": round(statistics.median(r["solo_wall_s"] / r["fused_wall_s"] for r in rounds), 2),
            **({"own_over_shared": round(statistics.median(r["fused_train_s"] / r["shared_train_s"]
                                                           for r in rounds), 2)} if own else {}),
            "rounds": [{k: round(v, 3) for k, v in r.items()} for r in rounds]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=8, help="S: seeds per fused model")
    p.add_argument("--reps", type=int, default=3, help="timed rounds (after one warm-up round)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (a Ray trial with cpus: 1 has one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", action="append", help="run only settings whose name contains this text")
    p.add_argument("--configs", action="store_true", help="each member its own lr (and T, alpha for KD)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    out = []
    for name in SETTINGS:
        if a.only and not any(o in name for o in a.only) or not a.only and name in GPU_SETTINGS and device.type == "cpu":
            continue
        r = bench(name, a.members, a.reps, device, a.configs)
        out.append(r)
        print(f"{r['setting']}: {a.members} solo epochs {r['solo_train_s']:.2f}s, fused {r['fused_train_s']:.2f}s: "
              f"train {r['train_ratio']:.2f}x, with eval {r['wall_ratio']:.2f}x"
              + (f"; its epoch takes {r['own_over_shared']:.2f}x the shared config's" if a.configs else ""), flush=True)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    path = ROOT / "benchmarks" / "results" / f"fused_speed{suffix}.json"
    done = {r["setting"] for r in out}  # a run with --only replaces its settings' rows, keeps the others
    kept = [r for r in json.loads(path.read_text()) if r["setting"] not in done] if path.exists() else []
    path.write_text(json.dumps(kept + out, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
