"""Which embedded default can answer its own question? The precision study behind the quickstart.

The procedure, fixed before any run (issue 10, "an embedded default that resolves its question"):

* Candidates: a dataset size (`mnist1d`: 3,600 train after the 10 % validation split; `mnist1d_20k`:
  14,400) x a student (`cnn1d_w4`, the old default, 338 parameters, no batch norm; `cnn1dbn_w4`,
  the same with batch norm; `cnn1dbn_w8`). The teachers are the student's family at widths 8, 16,
  32, 64 (16..128 for the w8 student), one seed each, 30 epochs, their final epoch.
* Per candidate: the CE student over seeds 0..4, and KD from every teacher at the seeds' usual
  T=4, alpha=0.9 (seed 000 Table I) over the same seeds, so the KD gain is paired per seed.
  The recipe is the quickstart's (30 epochs, SGD lr 0.05 cosine, batch 128, wd 5e-4).
* The criterion is precision only, never which teacher wins or the curve's shape:
  `precision = max(CE test 95 % half-width, median over teachers of the paired-gain 95 % half-width)`
  (Student's t, 4 degrees of freedom). Among the candidates whose confirmation stage fits the
  quickstart's time (`run_seconds`: the mean wall time of one student run on one core), the one
  with the smallest `precision` is the default; a tie (within 0.002) goes to the cheaper one.

Run: `python benchmarks/default_study.py` (about 20 minutes on 2 cores; `--quick` for a 2-seed,
5-epoch smoke run). It prints one row per candidate and writes benchmarks/results/default_study.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CANDIDATES = [  # (dataset, student, teacher widths); the family of the teachers is the student's
    ("mnist1d", "cnn1d_w4", (8, 16, 32, 64)),
    ("mnist1d", "cnn1dbn_w4", (8, 16, 32, 64)),
    ("mnist1d", "cnn1dbn_w8", (16, 32, 64, 128)),
    ("mnist1d_20k", "cnn1d_w4", (8, 16, 32, 64)),
    ("mnist1d_20k", "cnn1dbn_w4", (8, 16, 32, 64)),
    ("mnist1d_20k", "cnn1dbn_w8", (16, 32, 64, 128)),
]
T, ALPHA = 4.0, 0.9


def _family(student: str) -> str:
    return student.rsplit("_w", 1)[0]


def _splits(dataset: str):
    from explorer.data.condition import DataSpec
    from explorer.data.splits import load_splits

    return load_splits(DataSpec(dataset=dataset, val_fraction=0.1, split_seed=0))


def _run(job: dict) -> dict:
    """One training run in a worker process (one thread): returns its test/val accuracy and seconds."""
    import torch

    from explorer.config import Recipe
    from explorer.training.loop import Trainer, load_state, save_state
    from explorer.models import build_model

    torch.set_num_threads(1)
    splits = _splits(job["dataset"])
    recipe = Recipe(epochs=job["epochs"])
    teacher = None
    if job["teacher"]:
        teacher = build_model(job["teacher"], splits.num_classes, splits.input_shape)
        teacher.load_state_dict(load_state(job["teacher_path"]))
    method = "kd" if teacher is not None else "ce"
    params = {"temperature": T, "alpha": ALPHA} if teacher is not None else {}
    cfg = recipe.train_config(job["arch"], job["seed"], method, params)
    start = time.perf_counter()
    trainer = Trainer(cfg, splits, device="cpu", teacher=teacher)
    last = trainer.run()[-1]
    seconds = time.perf_counter() - start
    if job.get("save"):
        save_state(trainer.model.state_dict(), job["save"])
    return job | {"test_acc": last["test_acc"], "val_acc": last["val_acc"], "seconds": seconds}


def half_width(values: list[float]) -> float:
    from scipy import stats

    n = len(values)
    return float(stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / n ** 0.5) if n >= 2 else float("nan")


def study(seeds: list[int], epochs: int, workers: int, out_dir: Path) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for dataset in sorted({c[0] for c in CANDIDATES}):
        _splits(dataset)  # generate and cache once, before the workers start
    with ProcessPoolExecutor(workers) as pool:
        teacher_jobs = [{"dataset": d, "arch": f"{_family(s)}_w{w}", "seed": 0, "epochs": epochs, "teacher": None,
                         "save": str(out_dir / f"{d}_{_family(s)}_w{w}.pt")}
                        for d, s, widths in CANDIDATES for w in widths]
        unique = {j["save"]: j for j in teacher_jobs}
        teachers = {r["save"]: r for r in pool.map(_run, unique.values())}
        student_jobs = []
        for d, s, widths in CANDIDATES:
            for seed in seeds:
                student_jobs.append({"dataset": d, "arch": s, "seed": seed, "epochs": epochs, "teacher": None})
                for w in widths:
                    path = str(out_dir / f"{d}_{_family(s)}_w{w}.pt")
                    student_jobs.append({"dataset": d, "arch": s, "seed": seed, "epochs": epochs,
                                         "teacher": f"{_family(s)}_w{w}", "teacher_path": path})
        runs = list(pool.map(_run, student_jobs))
    rows = []
    for d, s, widths in CANDIDATES:
        mine = [r for r in runs if r["dataset"] == d and r["arch"] == s]
        ce = {r["seed"]: r["test_acc"] for r in mine if r["teacher"] is None}
        gains, teacher_rows = [], []
        for w in widths:
            name = f"{_family(s)}_w{w}"
            kd = {r["seed"]: r["test_acc"] for r in mine if r["teacher"] == name}
            diff = [kd[k] - ce[k] for k in seeds]
            gains.append(half_width(diff))
            t = teachers[str(out_dir / f"{d}_{name}.pt")]
            teacher_rows.append({"teacher": name, "teacher_test": t["test_acc"], "kd_mean": statistics.mean(kd.values()),
                                 "gain_mean": statistics.mean(diff), "gain_hw": half_width(diff)})
        ce_hw = half_width(list(ce.values()))
        rows.append({"dataset": d, "student": s, "ce_mean": statistics.mean(ce.values()),
                     "ce_sd": statistics.stdev(ce.values()), "ce_hw": ce_hw,
                     "gain_hw_median": statistics.median(gains),
                     "precision": max(ce_hw, statistics.median(gains)),
                     "run_seconds": statistics.mean(r["seconds"] for r in mine), "teachers": teacher_rows})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 seeds, 5 epochs: a smoke run, not a result")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    seeds, epochs = ([0, 1], 5) if args.quick else (list(range(5)), 30)
    out = Path(args.out)
    rows = study(seeds, epochs, args.workers, out / "default_study_teachers")
    print(f"{'dataset':<12} {'student':<11} {'CE test':>13} {'CE hw':>6} {'gain hw (median)':>17} "
          f"{'precision':>9} {'s/run':>6}")
    for r in rows:
        print(f"{r['dataset']:<12} {r['student']:<11} {r['ce_mean']:.3f} ± {r['ce_sd']:.3f} {r['ce_hw']:6.3f} "
              f"{r['gain_hw_median']:17.3f} {r['precision']:9.3f} {r['run_seconds']:6.1f}")
        for t in r["teachers"]:
            print(f"    {t['teacher']:<12} teacher {t['teacher_test']:.3f}  KD {t['kd_mean']:.3f}  "
                  f"gain {t['gain_mean']:+.3f} ± {t['gain_hw']:.3f}")
    (out / ("default_study_quick.json" if args.quick else "default_study.json")).write_text(
        json.dumps({"seeds": seeds, "epochs": epochs, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
