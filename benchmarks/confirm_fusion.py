"""The quickstart's confirmation with each config's seeds as one fused trial, against the cells' configs
sharing fused trials (`confirm.members_per_trial`), side by side on copies of one search (issue 11).

It runs the quickstart search (`kdx search searches/quickstart.yaml`) once in a temporary directory,
copies the result twice, and runs the confirmation in each copy, one after the other, each in its own
process with its own local Ray:

* per config: `members_per_trial` = the number of confirmation seeds, so each config's seeds are one
  trial (kdx before configs could share a fused model);
* shared: the spec's `members_per_trial` (24: two configs of 12 seeds per trial).

It prints each one's wall time (Ray start included), its trials' time in and out of training and
evaluation, the ratio of the wall times, the confirmed answer of each (best cell, KD gain), and how far
any member's final val and test accuracy moved between the two. A fused member equals its solo run
within float tolerance over a few steps (tests/test_fused.py), but a grouped convolution over 24
members may round differently from one over 12, and over 30 epochs such differences grow: a member's
final accuracy is then another draw from its seed-to-seed spread, not the same number. Run:
`.venv/bin/python benchmarks/confirm_fusion.py [--spec searches/quickstart.yaml]`.
Writes benchmarks/results/confirm_fusion.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.trial_overhead import breakdown  # noqa: E402
KDX = str(Path(sys.executable).with_name("kdx"))


def confirm_in(cwd: Path, name: str, per_config: bool) -> None:
    """The body of one variant, run in its own process: `kdx confirm NAME` with members_per_trial overridden."""
    os.chdir(cwd)
    from kdx.confirm import confirmation_of
    from trainables.confirm import run_confirm
    from trainables.search import check_tracking, locations

    loc = locations()
    check_tracking(loc.tracking_uri)
    spec, text, configs, _ = confirmation_of(name, loc)
    if per_config:
        confirm = spec.confirm.model_copy(update={"members_per_trial": len(spec.confirm.seeds)})
        spec = spec.model_copy(update={"confirm": confirm})
    run_confirm(spec, text, configs, spec.confirm.seeds, loc)


def answer(cwd: Path, name: str) -> dict:
    """The confirmed answer: the best cell and its KD gain on test accuracy, per student."""
    from analysis.cells import confirmed_cells
    from analysis.runs import load_trials

    out = {}
    trials = load_trials(name, f"sqlite:///{cwd / 'kdx_runs' / 'mlflow.db'}")
    for student, s in confirmed_cells(trials).by_student.items():
        g = s["kd_gain"]["test_acc"]
        out[student] = {"best": s["best"]["label"],
                        "kd_gain_test": [round(g[k], 4) for k in ("diff", "ci_low", "ci_high")]}
    return out


def member_scores(cwd: Path, name: str) -> dict[tuple, tuple[float, float]]:
    """(val_acc, test_acc) of every confirmation run, keyed by its config and seed params."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'kdx_runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.`kdx.kind` = 'confirm'", max_results=10000)
    keys = ("method", "teacher", "teacher_stop_epoch", "temperature", "alpha", "seed")
    return {tuple(r.data.params.get(k) for k in keys): (r.data.metrics["val_acc"], r.data.metrics["test_acc"])
            for r in runs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default=str(ROOT / "searches" / "quickstart.yaml"))
    p.add_argument("--variant", choices=["per_config", "shared"], help=argparse.SUPPRESS)
    p.add_argument("--cwd", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    name = yaml.safe_load(Path(a.spec).read_text())["name"]
    if a.variant:
        confirm_in(Path(a.cwd), name, a.variant == "per_config")
        return 0
    env = os.environ | {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    with tempfile.TemporaryDirectory(prefix="kdx-confirm-fusion-") as tmp:
        base = Path(tmp) / "search"
        base.mkdir()
        subprocess.run([KDX, "search", str(Path(a.spec).resolve())], cwd=base, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        out = {}
        for variant in ("per_config", "shared"):
            cwd = Path(tmp) / variant
            shutil.copytree(base, cwd)
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--spec", a.spec, "--variant", variant, "--cwd", str(cwd)],
                                  env=env, check=True, capture_output=True, text=True)
            wall = time.perf_counter() - start
            line = next(x for x in proc.stdout.splitlines() if x.startswith(f"confirm {name!r}"))
            split = breakdown(cwd, name, "confirm")
            out[variant] = {"wall_s": round(wall, 1), "plan": line, "scores": member_scores(cwd, name),
                            "answer": answer(cwd, name), **{k: round(v, 3) for k, v in split.items()}}
            print(f"{variant}: {wall:.1f} s; {line}; trials {split['trial_seconds']:.1f} s, of which training "
                  f"{split['train_seconds']:.1f} s and evaluation {split['eval_seconds']:.1f} s; "
                  f"answer {out[variant]['answer']}", flush=True)
    per, shared = out["per_config"]["scores"], out["shared"]["scores"]
    assert per.keys() == shared.keys(), "the two confirmations ran different members"
    diffs = [abs(x - y) for k in per for x, y in zip(per[k], shared[k])]
    moved = sum(d > 0 for d in diffs[::2])
    ratio = out["per_config"]["wall_s"] / out["shared"]["wall_s"]
    print(f"shared fused trials: {ratio:.2f}x faster; of {len(per)} member runs, {moved} ended at another val "
          f"accuracy; val/test accuracy differences: mean {sum(diffs) / len(diffs):.4f}, largest {max(diffs):.4f}")
    result = {"spec": os.path.relpath(a.spec, ROOT), "members": len(per), "ratio": round(ratio, 2),
              "members_moved": moved, "mean_accuracy_difference": sum(diffs) / len(diffs),
              "largest_accuracy_difference": max(diffs),
              **{v: {k: x for k, x in out[v].items() if k != "scores"} for v in out}}
    path = ROOT / "benchmarks" / "results" / "confirm_fusion.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
