"""`kdx confirm NAME`: the analysis picks the best configurations from MLflow (by validation only),
the trainables re-run them over several seeds with the CE baseline (trainables/confirm.py)."""

from __future__ import annotations

import os

import yaml

from explorer.cli.commands import command, print_json
from explorer.errors import KdxError


def _confirm_args(p):
    p.add_argument("name", metavar="NAME", help="the search's name (its MLflow experiment)")
    p.add_argument("--address", default=None, help="join a running Ray cluster")
    p.add_argument("--storage", default=None, help="the search's storage (default: the one its parent run recorded)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: SQLite under ./kdx_runs)")
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--json", action="store_true", help="last line: the outcome as one JSON object")


def confirmation_of(name: str, loc, parent=None):
    """What `kdx confirm NAME` confirms: (the search's spec, its text, the configs, the cells without
    one), from the search's parent run in MLflow at `loc.tracking_uri` (`parent`: that run, when the
    caller has found it; else the experiment's latest search)."""
    from mlflow.tracking import MlflowClient

    from analysis.configs import cell_configs
    from analysis.runs import load_trials
    from explorer.spec.search import parse_spec
    from trainables.tracking.parent import find_search

    client = MlflowClient(tracking_uri=loc.tracking_uri)
    parent = parent or find_search(client, name, loc.tracking_uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    path = client.download_artifacts(parent.info.run_id, "spec.yaml")
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
    """The confirmation belongs to the search's parent run (the experiment's latest search), whatever the
    flags: it attaches to that run and takes the search's storage from it."""
    from mlflow.tracking import MlflowClient

    from trainables.confirm import run_confirm
    from trainables.locations import locations
    from trainables.tracking.parent import find_search, search_locations
    from trainables.tracking.store import check_tracking

    uri = locations(None, args.tracking_uri).tracking_uri
    check_tracking(uri)
    parent = find_search(MlflowClient(tracking_uri=uri), args.name, uri)
    loc = search_locations(parent, args.storage, uri)
    spec, text, configs, missing = confirmation_of(args.name, loc, parent)
    for cell in missing:
        statuses = cell.pop("statuses")
        print("  not confirmed (no completed search trial): " + ", ".join(f"{k}={v}" for k, v in cell.items())
              + " (" + ", ".join(f"{n} {s}" for s, n in statuses.items()) + ")")
    outcome = run_confirm(spec, text, configs, spec.confirm.seeds, loc, parent_id=parent.info.run_id,
                          address=args.address, max_concurrent=args.max_concurrent)
    if args.json:
        print_json(vars(outcome))
    return 3 if outcome.interrupted else 0
