"""`kdx confirm`: re-run the best configurations of a search over several seeds.

A search gives each configuration one seed, and ASHA compares early epochs, so its winner is
partly luck. Confirmation re-runs the K best completed configurations (chosen by validation
accuracy only) and the CE-only baseline with S seeds each, as fresh, unpruned trials through the
same Ray machinery, logged to the same experiment under the same parent run with `kdx.kind=confirm`,
so the analysis can give mean, std and an interval over seeds (the seeds' tables use 5 seeds).
"""

from __future__ import annotations

import math
import os

import yaml

from explorer.errors import KdxError
from explorer.spec import parse_spec
from explorer.tracking import COMPLETED, KIND_CONFIRM, KIND_SEARCH, NO_TEACHER, absolute_tracking_uri

from .plan import make_plan
from .search import check_tracking, locations, points_setup, run_experiments

# The searchable values that make up one configuration (the seed is what confirmation varies).
CONFIG_KEYS = ("teacher", "teacher_stop_epoch", "method", "temperature", "alpha", "kd_stop_epoch")


def _value(v):
    """A value from the analysis frame back to what a trial config holds (NaN -> None, 4.0 -> 4)."""
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if v.is_integer():
            return int(v)
    return v


def best_configs(trials, top: int, metric: str = "val_acc", mode: str = "max") -> list[dict]:
    """The `top` best distinct configurations among completed KD trials, by final `metric`."""
    done = trials[(trials["status"] == COMPLETED) & (trials["kind"] == KIND_SEARCH)]
    done = done[done["teacher"] != NO_TEACHER].sort_values(metric, ascending=(mode == "min"))
    configs: list[dict] = []
    for _, row in done.iterrows():
        cfg = {k: _value(row[k]) for k in CONFIG_KEYS if k in row}
        cfg = {k: v for k, v in cfg.items() if v is not None or k == "kd_stop_epoch"}
        if cfg not in configs:
            configs.append(cfg)
        if len(configs) == top:
            break
    return configs


def run_confirm(name: str, *, top: int = 3, seeds: int = 5, tracking_uri: str | None = None,
                storage: str | None = None, address: str | None = None, max_concurrent: int | None = None, out=print):
    from analysis.runs import find_parent_run, load_trials
    from mlflow.tracking import MlflowClient

    for flag, v, low in (("--top", top, 1), ("--seeds", seeds, 2)):
        if v < low:
            raise KdxError(f"{flag}: got {v}; allowed: a whole number >= {low}.")
    loc = locations(storage, tracking_uri)
    uri = absolute_tracking_uri(loc.tracking_uri)
    check_tracking(uri)
    parent = find_parent_run(name, uri)
    if parent is None:
        raise KdxError(f"NAME: got {name!r}; no `kdx search` parent run in that experiment at {uri}; run the search first.")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    spec_text = MlflowClient(tracking_uri=uri).download_artifacts(parent.info.run_id, "spec.yaml")
    with open(spec_text) as f:
        text = f.read()
    spec = parse_spec(yaml.safe_load(text))
    configs = best_configs(load_trials(name, uri), top, spec.search.metric, spec.search.mode)
    if not configs:
        raise KdxError(f"NAME: got {name!r}; the search has no completed distilled trials to confirm yet.")
    seed_list = list(range(seeds))
    points = [cfg | {"seed": s} for cfg in configs for s in seed_list]
    points += [{"method": "ce", "teacher": NO_TEACHER, "seed": s} for s in seed_list]
    plan = make_plan(spec, loc.store_root)
    out(f"confirm {name!r}: {len(configs)} config(s) + the CE baseline x {seeds} seeds = {len(points)} trials")
    for cfg in configs:
        out("  " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
    setup = points_setup(KIND_CONFIRM, f"{name}__confirm_top{top}_s{seeds}", points)
    # resume=True: running the same confirmation again restores it (finished trials are not rerun).
    return run_experiments(spec, text, plan, loc, [setup], address=address, resume=True,
                           max_concurrent=max_concurrent, out=out, what="confirmation of")
