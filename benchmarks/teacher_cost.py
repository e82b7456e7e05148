"""What the teacher costs a KD epoch, live and with the view table (issue 11, benchmark (c)).

A resnet8 student on the `fake` dataset (3x16x16 with crop+flip; `--size 32` upsamples it to
3x32x32), one epoch at a time, for resnet20, resnet56 and resnet110 teachers. Per teacher, three
trainers side by side in one run, their epochs interleaved (CE, KD live, KD cached, CE, ...) so that
load on the machine hits all three alike. Times are an epoch's training loop (`epoch_seconds`,
evaluation excluded, the same for all three), the median over the timed rounds; each ratio is the
median over rounds of the epoch's time over the CE epoch of the same round (paired, so a slow spell
of the machine cancels); the ratios of the fastest epochs are in the JSON too:

* CE: the student alone (live crop+flip);
* KD live (`views: 0`): the teacher runs on every batch;
* KD cached (`views: V`, default 16): the teacher's logits on V fixed views per sample come from
  its table; the student trains on the views drawn.

Reported: KD live / CE and KD cached / CE. The table's one-off cost is reported apart: its build
(V teacher passes over the training set, in a temporary teacher store) and its load by later
trials; `break_even_epochs` = build / (KD live - KD cached epoch), the student epochs of the whole
search after which the table has paid for itself. The teachers are untrained (cost does not depend
on the weights; their batch-norm statistics are set from the data).

    .venv/bin/python benchmarks/teacher_cost.py [--reps 8] [--views 16] [--size 16] [--threads N] [--device cpu]

Writes benchmarks/results/teacher_cost.json (or --out).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.shapes import splits_of  # noqa: E402
from explorer.models import build_model  # noqa: E402
from explorer.teachers.store import TeacherStore  # noqa: E402
from explorer.config import TrainConfig  # noqa: E402
from explorer.training.loop import Trainer
from explorer.teachers.views import StoredTeacher, stored_view_logits  # noqa: E402

TEACHERS = ("resnet20", "resnet56", "resnet110")
STUDENT = "resnet8"


def bench_teacher(arch: str, splits, views: int, reps: int, device, store: TeacherStore) -> dict:
    torch.manual_seed(0)
    teacher = build_model(arch, splits.num_classes, splits.input_shape).to(device)
    for m in teacher.modules():  # batch-norm statistics from the data: an untrained deep net's eval logits overflow
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches below
    with torch.no_grad():
        teacher(splits.train_x[:512])
    teacher.eval()
    key = hashlib.sha256(arch.encode()).hexdigest()[:16]  # a stand-in store key for an untrained teacher
    store.files.makedirs(store.files.join(key))
    start = time.perf_counter()
    stored_view_logits(store, key, 1, teacher, splits.train_x, views, True, splits.num_classes)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    stored_view_logits(store, key, 1, teacher, splits.train_x, views, True, splits.num_classes)
    load_s = time.perf_counter() - start
    teacher = StoredTeacher(teacher, store, key, 1)  # as a teacher from the store: trainers read its table

    def cfg(method, v):
        return TrainConfig(STUDENT, epochs=reps + 1, method=method, views=v, schedule="constant", seed=0)

    trainers = {"ce": Trainer(cfg("ce", views), splits, device),
                "kd_live": Trainer(cfg("kd", 0), splits, device, teacher=teacher),
                "kd_cached": Trainer(cfg("kd", views), splits, device, teacher=teacher)}
    assert trainers["kd_cached"].signal.views is not None and trainers["kd_live"].signal.views is None
    seconds = {k: [] for k in trainers}
    for rep in range(reps + 1):  # the first round warms up
        for name, tr in trainers.items():
            s = tr.train_epoch()["epoch_seconds"]
            if rep:
                seconds[name].append(s)
    best = {k: min(v) for k, v in seconds.items()}
    med = {k: statistics.median(v) for k, v in seconds.items()}

    def paired(name):  # the median over rounds of (this trainer's epoch / the CE epoch next to it)
        return round(statistics.median(a / c for a, c in zip(seconds[name], seconds["ce"])), 3)

    saved = med["kd_live"] - med["kd_cached"]
    return {"teacher": arch, "student": STUDENT, "views": views, "train_samples": len(splits.train_y),
            "ce_s": round(med["ce"], 3), "kd_live_s": round(med["kd_live"], 3), "kd_cached_s": round(med["kd_cached"], 3),
            "kd_live_over_ce": paired("kd_live"), "kd_cached_over_ce": paired("kd_cached"),
            "fastest_kd_live_over_ce": round(best["kd_live"] / best["ce"], 3),
            "fastest_kd_cached_over_ce": round(best["kd_cached"] / best["ce"], 3),
            "table_build_s": round(build_s, 2), "table_load_s": round(load_s, 3),
            "break_even_epochs": round(build_s / saved, 1) if saved > 0 else None,
            "epoch_seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=8, help="timed epochs per trainer (after one warm-up)")
    p.add_argument("--views", type=int, default=16)
    p.add_argument("--size", type=int, default=16, choices=(16, 32), help="image side (32: fake upsampled)")
    p.add_argument("--teachers", default=",".join(TEACHERS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "teacher_cost.json"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = splits_of("fake", args.size, device=device)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        store = TeacherStore(root)
        for arch in args.teachers.split(","):
            rows.append(bench_teacher(arch, splits, args.views, args.reps, device, store))
            r = rows[-1]
            print(f"{r['teacher']:<10} CE {r['ce_s']:.2f}s  KD live {r['kd_live_s']:.2f}s ({r['kd_live_over_ce']:.2f}x)  "
                  f"KD cached {r['kd_cached_s']:.2f}s ({r['kd_cached_over_ce']:.2f}x)  table: build "
                  f"{r['table_build_s']:.1f}s, load {r['table_load_s']:.2f}s, pays off after "
                  f"{r['break_even_epochs']} student epochs", flush=True)
    meta = {"device": str(device), "threads": torch.get_num_threads(), "size": args.size, "reps": args.reps,
            "command": "benchmarks/teacher_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(meta | {"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
