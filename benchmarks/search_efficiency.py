"""Search efficiency (issue 11, benchmark d): the quickstart's ASHA + TPE search against the exhaustive
grid over the same space, as the best validation accuracy reached against the student-epochs spent.

* The grid: every teacher x stop-epoch cell of `searches/quickstart.yaml` x T in GRID_T x alpha in
  GRID_ALPHA, each trained whole (30 epochs) with the search's seed, with kdx's `Trainer` and the
  search's own teachers (from the teacher store the search built), in the search's trial order. It is
  run once: its result is kept in `benchmarks/results/search_grid.json` and reused unless `--regrid`.
* The search: the KD trials of a finished quickstart search (its MLflow store; `--runs DIR`, the
  `kdx_runs` directory of a `scripts/quickstart` run, or, without it, a fresh `kdx search` in a
  temporary directory), in start order, each costing the epochs it ran (a pruned trial fewer). The CE
  baselines are left out of both.

Prints the search's curve (cumulative student-epochs -> best final val_acc so far among its completed
trials) and where it comes within 1 point of the grid's best, as a fraction of the grid's epochs.

    .venv/bin/python benchmarks/search_efficiency.py [--runs kdx_runs] [--regrid]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPEC = ROOT / "searches" / "quickstart.yaml"
GRID_T = (1.0, 2.0, 4.0, 8.0, 16.0)  # the searched loguniform [1, 16] at powers of two
GRID_ALPHA = (0.1, 0.325, 0.55, 0.775, 1.0)  # the searched uniform [0.1, 1] at five even steps
GRID_FILE = ROOT / "benchmarks" / "results" / "search_grid.json"
WITHIN = 0.01


def run_grid(runs: Path) -> dict:
    import torch

    from explorer.data.splits import load_splits
    from explorer.spec.search import load_spec
    from explorer.teachers.store import TeacherStore
    from explorer.training.loop import Trainer
    from trainables.plan import make_plan, teacher_slot

    torch.set_num_threads(1)
    spec, _ = load_spec(SPEC)
    plan = make_plan(spec, str(runs / "teachers"))
    store = TeacherStore(plan.store_root)
    splits = load_splits(spec.data_spec())
    rows, start = [], time.perf_counter()
    cells = list(itertools.product(spec.teachers.entries(), spec.teachers.stops()))
    for (teacher, stop), T, alpha in itertools.product(cells, GRID_T, GRID_ALPHA):
        point = {"teacher": teacher, "teacher_stop_epoch": stop, "temperature": T, "alpha": alpha, "seed": spec.seeds[0]}
        settings = plan.settings(point)
        model = store.teacher(plan.teacher_keys[teacher_slot(teacher, stop)], stop)[0]
        last = Trainer(settings["train"], splits, device="cpu", teacher=model).run()[-1]
        rows.append(point | {"epochs": last["epoch"], "val_acc": last["val_acc"], "test_acc": last["test_acc"]})
        print(f"grid {len(rows)}/{len(cells) * len(GRID_T) * len(GRID_ALPHA)}: {teacher}@{stop} T={T} "
              f"alpha={alpha} val {last['val_acc']:.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    return {"spec": str(SPEC.relative_to(ROOT)), "T": GRID_T, "alpha": GRID_ALPHA, "runs": rows,
            "seconds": round(time.perf_counter() - start, 1)}


def search_curve(runs: Path) -> list[dict]:
    from analysis.runs import load_trials

    df = load_trials("quickstart", f"sqlite:///{runs / 'mlflow.db'}")
    df = df[df["kind"] == "search"].sort_values("start_time")
    spent, best, curve = 0, None, []
    for _, r in df.iterrows():
        spent += int(r["epochs_done"])
        if r["status"] == "completed" and (best is None or r["val_acc"] > best):
            best = float(r["val_acc"])
        curve.append({"student_epochs": spent, "best_val_acc": best, "status": r["status"]})
    return curve


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, help="kdx_runs directory of a finished quickstart search (default: run one)")
    p.add_argument("--regrid", action="store_true", help="run the grid again instead of reading search_grid.json")
    a = p.parse_args(argv)
    runs = a.runs
    if runs is None:
        cwd = Path(tempfile.mkdtemp(prefix="kdx_search_eff_"))
        kdx = str(Path(sys.executable).with_name("kdx"))
        subprocess.run([kdx, "search", str(SPEC)], cwd=cwd, check=True, capture_output=True)
        runs = cwd / "kdx_runs"
    if a.regrid or not GRID_FILE.exists():
        GRID_FILE.write_text(json.dumps(run_grid(runs.resolve()), indent=1) + "\n")
    grid = json.loads(GRID_FILE.read_text())
    grid_best = max(r["val_acc"] for r in grid["runs"])
    grid_epochs = sum(r["epochs"] for r in grid["runs"])
    curve = search_curve(runs)
    print(f"grid: {len(grid['runs'])} configs, {grid_epochs} student-epochs, best val_acc {grid_best:.4f}")
    print(f"{'trial':>5} {'epochs':>7} {'% of grid':>9} {'best val':>9} {'status':>10}")
    for i, c in enumerate(curve, 1):
        best = "-" if c["best_val_acc"] is None else f"{c['best_val_acc']:.4f}"
        print(f"{i:5d} {c['student_epochs']:7d} {c['student_epochs'] / grid_epochs:9.1%} {best:>9} {c['status']:>10}")
    reached = next((c for c in curve if c["best_val_acc"] is not None and c["best_val_acc"] >= grid_best - WITHIN), None)
    if reached is None:
        print(f"the search never came within {WITHIN} of the grid's best")
    else:
        print(f"within {WITHIN} of the grid's best after {reached['student_epochs']} student-epochs, "
              f"{reached['student_epochs'] / grid_epochs:.1%} of the grid's")
    out = {"grid_configs": len(grid["runs"]), "grid_student_epochs": grid_epochs, "grid_best_val_acc": grid_best,
           "search_curve": curve, "within": WITHIN,
           "reached_at_student_epochs": None if reached is None else reached["student_epochs"]}
    (ROOT / "benchmarks" / "results" / "search_efficiency.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
