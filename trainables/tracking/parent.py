"""A search's parent run: the search's identity in MLflow.

`kdx search` creates it in the experiment named after the spec, with role `search` (the tag the
analysis finds it by), the search's params, its spec and plan, and where its files are (its storage
root, `STORAGE_TAG`). Every trial run is its child. `kdx search --resume` and `kdx confirm` find it
again by experiment and role (the latest) and attach to it, reading the search's storage from it:
a confirmation never opens a parent of its own, whatever flags it is given."""

from __future__ import annotations

import time

from explorer.errors import KdxError
from explorer.tracking import ROLE_SEARCH, ROLE_TAG, latest_search

from ..locations import Locations, locations
from .owners import OWNER_PID_TAG, owner_alive, owner_tags
from .store import experiment_id

STORAGE_TAG = "kdx.storage"  # the search's storage root: its Ray results and teacher store lie under it
RAY_EXPERIMENT_TAG = "kdx.ray_experiment"  # where Ray Tune keeps the search's experiment
SPEC_NAME_TAG = "kdx.spec_name"


def find_search(client, name: str, tracking_uri: str, run_id: str | None = None):
    """The parent run of the search `name`: run `run_id` when given, else the experiment's latest;
    refused in one sentence when there is none."""
    exp = client.get_experiment_by_name(name)
    run = latest_search(client, exp.experiment_id if exp else None) if run_id is None else client.get_run(run_id)
    if run is None or run.data.tags.get(ROLE_TAG) != ROLE_SEARCH:
        raise KdxError(f"NAME: got {name!r}; no `kdx search` parent run in that experiment at {tracking_uri}; "
                       "run the search first (or give the --tracking-uri it used).")
    return run


def refuse_rerun(last, name: str, resume: bool, fresh: bool) -> None:
    """A search is never silently redone: an experiment whose latest search is `last` needs --resume or
    --fresh; one whose search is running now (its owner lives on this host) is refused either way."""
    if last is None:
        return
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(last.info.start_time / 1000))
    if last.info.status == "RUNNING" and owner_alive(last.data.tags):
        raise KdxError(f"name: got {name!r}; a search of this experiment is running now (pid "
                       f"{last.data.tags[OWNER_PID_TAG]}, started {started}); wait for it to end or stop it first.")
    if not resume and not fresh:
        raise KdxError(f"name: got {name!r}; the experiment already has a search ({last.info.status}, started "
                       f"{started}); continue it with --resume, or give --fresh to start another one.")


def search_locations(parent, storage: str | None, tracking_uri: str) -> Locations:
    """Where the search of `parent` keeps its files: the storage root it recorded; a `--storage` that
    names another is refused in one sentence. A search of an older kdx recorded none: the flags say."""
    given = locations(storage, tracking_uri)
    recorded = parent.data.tags.get(STORAGE_TAG)
    if recorded is None:
        return given
    if storage is not None and given.root != recorded:
        name = parent.data.tags.get(SPEC_NAME_TAG, "?")
        raise KdxError(f"--storage: got {storage!r}; the search {name!r} keeps its results and teachers under "
                       f"{recorded} (its parent run says so); leave --storage out, or give that.")
    return locations(recorded, tracking_uri)


def search_params(spec, plan) -> dict[str, str]:
    """The params of a search's parent run (the analysis reads them as `parent_params`)."""
    values = {"dataset": plan.dataset, "student": plan.student, "student_params": plan.student_params,
              "teachers": ",".join(spec.teachers.archs), "teacher_stop_epochs": ",".join(map(str, spec.teachers.stops())),
              "algorithm": spec.search.algorithm, "num_samples": spec.search.num_samples,
              "searched": ",".join(spec.searched_axes()) or "none", "seeds": ",".join(map(str, spec.seeds)),
              "baseline": spec.baseline, "n_teachers": len(plan.recipes),
              "confirm_seeds": ",".join(map(str, spec.confirm.seeds)), "confirm_cells": ",".join(spec.cell_params())}
    return {k: str(v) for k, v in values.items()}


class ParentRun:
    """The parent run a command's trials go under: a new search's (created by `open`), or an existing
    search's (`run_id`: reopened by `open`, for `--resume` and `kdx confirm`). Ended by `close`."""

    def __init__(self, tracking_uri: str, run_id: str | None = None):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri, self.run_id = tracking_uri, run_id

    def open(self, spec, spec_text: str, plan, loc: Locations) -> tuple[str, str]:
        """(experiment id, parent run id), the run RUNNING and owned by this process."""
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            for k, v in owner_tags().items():
                self.client.set_tag(self.run_id, k, v)
            return self.client.get_run(self.run_id).info.experiment_id, self.run_id
        from mlflow.entities import Param

        exp_id = experiment_id(self.client, spec.name, self.tracking_uri)
        tags = {ROLE_TAG: ROLE_SEARCH, RAY_EXPERIMENT_TAG: loc.experiment_path(spec.name), SPEC_NAME_TAG: spec.name,
                STORAGE_TAG: loc.root, **owner_tags()}
        run = self.client.create_run(exp_id, run_name=f"{spec.name} search {time.strftime('%Y-%m-%d %H:%M')}",
                                     tags=tags)
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in search_params(spec, plan).items()])
        self.client.log_text(self.run_id, spec_text, "spec.yaml")
        self.client.log_dict(self.run_id, {"teacher_keys": plan.teacher_keys, "fixed": plan.fixed}, "plan.json")
        return exp_id, self.run_id

    def close(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)


def check_resumable(parent, loc: Locations, name: str) -> None:
    """`--resume` continues the Ray experiment the parent run recorded: refused in one sentence when
    these locations put it elsewhere (a search of an older kdx, whose `--storage` held experiments
    directly, not under `ray_results/`)."""
    recorded = parent.data.tags.get(RAY_EXPERIMENT_TAG)
    here = loc.experiment_path(name)
    if recorded and recorded != here:
        raise KdxError(f"--resume: the search {name!r} keeps its Ray results at {recorded}, laid out by an older "
                       f"kdx, not at {here}; move that folder there to continue it, or start anew with --fresh.")
