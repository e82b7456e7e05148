"""Does training on V fixed teacher views cost student accuracy? (issue 11, part 3: the trade-off)

The procedure, fixed before any run:

* Data: `digits16`, registered here: scikit-learn's 8x8 digits (the one real image dataset available
  offline on this machine; 1,295 train / 143 val / 359 test) upsampled to 1x16x16, with crop+flip
  like CIFAR. The registered `fake` dataset (3x16x16) is too easy to tell anything: every student
  reaches 100 % test accuracy. With `--dataset cifar10 --data-dir DIR` the study runs on CIFAR-10.
* Teacher: resnet20, trained once (CE, live crops) in a temporary teacher store, its final epoch.
* Students: resnet8, KD (T=4, alpha=0.9), the quickstart recipe otherwise (SGD lr 0.05 cosine,
  batch 128, wd 5e-4), seeds 0..S-1, for each `views` in {4, 16, live (0: a fresh random crop per
  epoch, the teacher run on every batch; "all")}. Every student loads its teacher from the store as
  a trial does, so each V's table is built by the first seed and read by the others.
* Reported per V: the final-epoch test accuracy, mean +- 95 % half-width (Student's t over seeds),
  and the paired difference to live (same seed: same initialisation) with its 95 % interval.
  "Within seed noise" means that interval contains 0; it says nothing finer than the interval's width.

    .venv/bin/python benchmarks/view_study.py [--seeds 4] [--epochs 25] [--threads 1] [--quick]

Writes benchmarks/results/view_study.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explorer.data.condition import DataSpec  # noqa: E402
from explorer.data.registry import DATASETS, register_dataset
from explorer.data.splits import load_splits
from explorer.teachers.recipe import TeacherRecipe  # noqa: E402
from explorer.teachers.store import TeacherStore  # noqa: E402
from explorer.training.build import ensure_teacher
from explorer.config import TrainConfig  # noqa: E402
from explorer.training.loop import Trainer

VIEWS = (4, 16, 0)  # 0 = live augmentation ("all")
TEACHER, STUDENT, T, ALPHA = "resnet20", "resnet8", 4.0, 0.9


def _digits16(spec: DataSpec):
    """scikit-learn's digits, upsampled (bilinear) from 8x8 to 16x16."""
    train_x, train_y, test_x, test_y = DATASETS["digits"].loader(spec)
    up = lambda x: F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).contiguous()  # noqa: E731
    return up(train_x), train_y, up(test_x), test_y


if "digits16" not in DATASETS:
    register_dataset("digits16", "scikit-learn digits upsampled to 1x16x16, crop+flip (benchmarks/view_study.py)",
                     10, (1, 16, 16), "crop_flip")(_digits16)


def half_width(values: list[float]) -> float:
    from scipy import stats

    n = len(values)
    return float(stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / n ** 0.5) if n >= 2 else float("nan")


def label(v: int) -> str:
    return "live" if v == 0 else f"V={v}"


def study(data: DataSpec, seeds: list[int], epochs: int, teacher_epochs: int, root: str, device: str) -> dict:
    splits = load_splits(data)
    store = TeacherStore(root)
    start = time.perf_counter()
    rec, _ = ensure_teacher(store, TeacherRecipe(data, TrainConfig(TEACHER, epochs=teacher_epochs, seed=0)), splits=splits,
                          device=device)
    teacher_s = time.perf_counter() - start
    runs = {v: {} for v in VIEWS}
    seconds = {v: [] for v in VIEWS}
    setup = {v: [] for v in VIEWS}
    for seed in seeds:
        for v in VIEWS:  # interleaved, so machine load hits every V alike
            model, _ = store.teacher(rec.key)  # its table is kept in the store (the first seed of a V builds it)
            cfg = TrainConfig(STUDENT, epochs=epochs, seed=seed, method="kd", views=v,
                              method_params={"temperature": T, "alpha": ALPHA})
            start = time.perf_counter()
            tr = Trainer(cfg, splits, device, teacher=model)
            setup[v].append(time.perf_counter() - start)  # the first seed of a V builds its table here
            hist = tr.run()
            runs[v][seed] = hist[-1]["test_acc"]
            seconds[v].append(sum(h["epoch_seconds"] for h in hist))
            print(f"seed {seed} {label(v):>5}: test {hist[-1]['test_acc']:.3f} (val {hist[-1]['val_acc']:.3f}), "
                  f"{seconds[v][-1]:.1f}s training, {setup[v][-1]:.1f}s setup", flush=True)
    live = runs[0]
    rows = []
    for v in VIEWS:
        accs = [runs[v][s] for s in seeds]
        row = {"views": label(v), "test_mean": statistics.mean(accs), "test_hw": half_width(accs),
               "test_sd": statistics.stdev(accs) if len(accs) > 1 else float("nan"), "test": accs,
               "train_seconds_mean": statistics.mean(seconds[v]), "setup_seconds": setup[v]}
        if v:
            diff = [runs[v][s] - live[s] for s in seeds]
            hw = half_width(diff)
            row |= {"diff_vs_live": statistics.mean(diff), "diff_hw": hw,
                    "within_seed_noise": bool(abs(statistics.mean(diff)) <= hw)}
        rows.append(row)
    return {"dataset": data.dataset, "teacher": TEACHER, "teacher_epochs": teacher_epochs,
            "teacher_test_acc": rec.checkpoints[rec.epochs]["test_acc"], "teacher_build_s": round(teacher_s, 1),
            "student": STUDENT, "epochs": epochs, "seeds": seeds, "T": T, "alpha": ALPHA, "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--epochs", type=int, default=25, help="student epochs")
    p.add_argument("--teacher-epochs", type=int, default=25)
    p.add_argument("--dataset", default="digits16")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--quick", action="store_true", help="2 seeds, 3 epochs: a smoke run, not a result")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared 2-core machine)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    seeds, epochs, t_epochs = ((list(range(2)), 3, 3) if args.quick
                               else (list(range(args.seeds)), args.epochs, args.teacher_epochs))
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        res = study(DataSpec(args.dataset, data_dir=args.data_dir), seeds, epochs, t_epochs, root, args.device)
    res["wall_s"] = round(time.perf_counter() - start, 1)
    res["threads"] = args.threads
    res["command"] = "benchmarks/view_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"\n{res['dataset']}: {TEACHER} teacher (test {res['teacher_test_acc']:.3f}) -> {STUDENT}, "
          f"{epochs} epochs, seeds {seeds[0]}..{seeds[-1]}; wall {res['wall_s']}s")
    for r in res["rows"]:
        extra = (f"  vs live {r['diff_vs_live']:+.3f} ± {r['diff_hw']:.3f} "
                 f"({'within' if r['within_seed_noise'] else 'outside'} seed noise)" if "diff_vs_live" in r else "")
        print(f"  {r['views']:>5}: test {r['test_mean']:.3f} ± {r['test_hw']:.3f} (sd {r['test_sd']:.3f}), "
              f"{r['train_seconds_mean']:.1f}s training{extra}")
    out = Path(args.out or ROOT / "benchmarks" / "results" / ("view_study_quick.json" if args.quick else "view_study.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
