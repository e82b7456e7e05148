"""Where a trial's time goes: training and evaluation vs everything else, kdx's settings against the
naive ones, measured side by side in one run (issue 11, "trial overhead").

Two real `kdx search` runs of one small spec (MNIST-1D, cnn1dbn_w8 student, one teacher, no ASHA,
so both run the same epochs), each in its own directory with its own local Ray and SQLite MLflow:

* naive: a new worker process per trial (`search.reuse_actors: false`), a report to Tune after every
  epoch (`search.report_seconds: 0`) and a checkpoint of the full trainer state with each
  (`search.checkpoint_seconds: 0`);
* kdx: worker processes reused by the next trial, a report at ASHA rungs, at the last epoch and at
  most every 5 s in between (each carrying the epochs since the last), checkpoints at the last epoch
  (and at ASHA rungs and at most every 30 s).

For each it prints the search's wall time (Ray start included, the teacher build not: a first run
builds the teacher both reuse), the sum of the trials' MLflow run durations, the time in the
training loop (`epoch_seconds`) and in evaluation (`eval_seconds`), and their fraction of the trial
time. Run: `.venv/bin/python benchmarks/trial_overhead.py [--trials 12] [--epochs 15]`; with
`--quickstart kdx_runs` it gives the same fraction, per kind of trial, for a finished `scripts/quickstart`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
KDX = str(Path(sys.executable).with_name("kdx"))


def spec(name: str, trials: int, epochs: int, **search) -> dict:
    return {
        "name": name, "dataset": {"name": "mnist1d", "val_fraction": 0.1},
        "student": {"arch": "cnn1dbn_w8", "epochs": epochs},
        "teachers": {"archs": ["cnn1dbn_w16"], "recipe": {"epochs": epochs}},
        "distill": {"method": "kd", "temperature": {"loguniform": [1.0, 16.0]}, "alpha": {"uniform": [0.1, 1.0]}},
        "seeds": [0], "baseline": False,
        "search": {"algorithm": "random", "num_samples": trials, "max_concurrent": 2, "asha": None} | search,
    }


def run(cwd: Path, name: str, data: dict) -> float:
    path = cwd / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    start = time.perf_counter()
    proc = subprocess.run([KDX, "search", str(path)], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"kdx search {name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def breakdown(cwd: Path, name: str, kind: str | None = None) -> dict:
    """Trial time (MLflow run durations) against the time in the training loop and in evaluation, over
    the trials of `kind` (all when None). The member runs of a fused trial (same trial_id) share its
    time and its epochs: each trial counts once, through its first run."""
    from mlflow.tracking import MlflowClient

    from analysis.runs import load_histories, load_trials

    uri = f"sqlite:///{cwd / 'kdx_runs' / 'mlflow.db'}"
    df = load_trials(name, uri)
    df = df if kind is None else df[df["kind"] == kind]
    df = df.drop_duplicates("trial_id")
    hist = load_histories(name, uri, metrics=("epoch_seconds", "eval_seconds"), run_ids=list(df["run_id"]))
    client = MlflowClient(tracking_uri=uri)
    wall = sum((client.get_run(r).info.end_time - client.get_run(r).info.start_time) / 1000 for r in df["run_id"])
    train = float(hist.loc[hist["metric"] == "epoch_seconds", "value"].sum())
    evals = float(hist.loc[hist["metric"] == "eval_seconds", "value"].sum())
    return {"trials": len(df), "trial_seconds": wall, "train_seconds": train, "eval_seconds": evals,
            "fraction_in_training_and_eval": (train + evals) / wall if wall else float("nan")}


def quickstart(runs: Path) -> int:
    """Benchmark (a): the fraction on a finished quickstart (`--runs kdx_runs` of `scripts/quickstart`)."""
    print(f"{'kind':9} {'trials':>6} {'trial s':>8} {'train s':>8} {'eval s':>7} {'in train+eval':>14}")
    for kind in ("search", "baseline", "confirm", None):
        r = breakdown(runs.parent, "quickstart", kind)
        kind = kind or "all"
        print(f"{kind:9} {r['trials']:6d} {r['trial_seconds']:8.1f} {r['train_seconds']:8.1f} {r['eval_seconds']:7.1f} "
              f"{r['fraction_in_training_and_eval']:13.0%}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quickstart", type=Path, metavar="KDX_RUNS",
                   help="instead: the fraction on a finished quickstart's kdx_runs directory")
    args = p.parse_args(argv)
    if args.quickstart:
        return quickstart(args.quickstart.resolve())
    cwd = Path(tempfile.mkdtemp(prefix="kdx_overhead_"))
    os.environ.setdefault("KDX_CACHE", str(Path.home() / ".cache" / "kdx"))
    run(cwd, "warmup", spec("warmup", 1, args.epochs))  # builds the shared teacher once
    settings = {"naive": {"reuse_actors": False, "checkpoint_seconds": 0, "report_seconds": 0}, "kdx": {}}
    rows = {}
    for label, search in settings.items():
        seconds = run(cwd, label, spec(label, args.trials, args.epochs, **search))
        rows[label] = {"search_seconds": seconds} | breakdown(cwd, label)
    print(f"{args.trials} trials x {args.epochs} epochs, 2 at a time ({cwd})")
    print(f"{'':6} {'search s':>9} {'trial s':>8} {'train s':>8} {'eval s':>7} {'in train+eval':>14}")
    for label, r in rows.items():
        print(f"{label:6} {r['search_seconds']:9.1f} {r['trial_seconds']:8.1f} {r['train_seconds']:8.1f} "
              f"{r['eval_seconds']:7.1f} {r['fraction_in_training_and_eval']:13.0%}")
    print(f"search wall time, naive / kdx: {rows['naive']['search_seconds'] / rows['kdx']['search_seconds']:.2f}x")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
