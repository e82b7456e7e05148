"""`kdx confirm NAME`: the analysis picks the best configurations from MLflow (by validation only),
the trainables re-run them over several seeds with the CE baseline (trainables/confirm.py)."""

from __future__ import annotations

import os

import yaml

from explorer.cli import command, print_json
from explorer.errors import KdxError


def _confirm_args(p):
    p.add_argument("name", metavar="NAME", help="the search's name (its MLflow experiment)")
    p.add_argument("--address", default=None, help="join a running Ray cluster")
    p.add_argument("--storage", default=None, help="Ray results and teacher store: a shared path or URI")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: SQLite under ./kdx_runs)")
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--json", action="store_true", help="last line: the outcome as one JSON object")


def confirmation_of(name: str, loc):
    """What `kdx confirm NAME` confirms: (the search's spec, its text, the configs, the cells without
    one), from the search's parent run in MLflow at `loc.tracking_uri`."""
    from mlflow.tracking import MlflowClient

    from analysis.configs import cell_configs
    from analysis.runs import find_parent_run, load_trials
    from explorer.spec import parse_spec

    parent = find_parent_run(name, loc.tracking_uri)
    if parent is None:
        raise KdxError(f"NAME: got {name!r}; no `kdx search` parent run in that experiment at "
                       f"{loc.tracking_uri}; run the search first.")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    path = MlflowClient(tracking_uri=loc.tracking_uri).download_artifacts(parent.info.run_id, "spec.yaml")
    with open(path) as f:
        text = f.read()
    spec = parse_spec(yaml.safe_load(text))
    configs, missing = cell_configs(load_trials(name, loc.tracking_uri), spec.cell_params(),
                                    spec.search.metric, spec.search.mode)
    if not configs:
        raise KdxError(f"NAME: got {name!r}; the search has no completed distilled trials to confirm yet.")
    return spec, text, configs, missing


@command("confirm", "re-run every cell's best config and the CE baseline with the spec's fresh seeds", _confirm_args)
def cmd_confirm(args):
    from trainables.confirm import run_confirm
    from trainables.search import check_tracking, locations

    loc = locations(args.storage, args.tracking_uri)
    check_tracking(loc.tracking_uri)
    spec, text, configs, missing = confirmation_of(args.name, loc)
    for cell in missing:
        statuses = cell.pop("statuses")
        print("  not confirmed (no completed search trial): " + ", ".join(f"{k}={v}" for k, v in cell.items())
              + " (" + ", ".join(f"{n} {s}" for s, n in statuses.items()) + ")")
    outcome = run_confirm(spec, text, configs, spec.confirm.seeds, loc, address=args.address,
                          max_concurrent=args.max_concurrent)
    if args.json:
        print_json(vars(outcome))
    return 3 if outcome.interrupted else 0
