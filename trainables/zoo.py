"""The teacher zoo: every teacher a search needs, built once, in parallel, as Ray tasks.

`build_zoo(requests, store_root)` takes (TeacherRecipe, stop epochs) pairs. Teachers already
complete in the store (every asked stop epoch and the final one kept, checksums good) are reported
"reused" at once, without launching a task. The others become Ray tasks (`cpus_per_teacher`,
`gpus_per_teacher`: fractions allowed, so several small teachers can share a GPU) that call
`TeacherStore.ensure`, which holds the key's lock, so the same teacher asked for by several
processes or nodes is still built once. A task that fails (exception, out of memory, killed
worker) is retried `retries` times, resuming from the last checkpoint the store committed; after
the last retry its teacher is reported "failed" with the cause while the other teachers carry on.
A bad recipe (a KdxError, e.g. missing data) is deterministic and is reported without retries.

Tasks only build: each returns, as plain data, its record and the per-epoch metrics it trained (with
their times). The driver writes MLflow, as tasks finish (`ray.wait`), when `tracking_uri` is given:
one run per teacher built or failed here, with tags `kdx.role=teacher` and `teacher_key`, the
flattened recipe as params, per-epoch metrics (step = epoch), start and end times of the build, and
an end status FINISHED or FAILED (tag `error`). So MLflow has one writer (a SQLite store is not
written from every node), workers need no route to the tracking server, and a worker killed mid-build
leaves no run stuck RUNNING: the driver records its failure. A teacher reused (already complete, or
built meanwhile by another process) gets no new run: the run of the build that made it stands.
Ray must be initialised by the caller (local or cluster).

Locks: a task's store gets the lock `trainables.locks.store_lock(lock, root)` chooses: by default
("auto") the store's file lock on local and shared-filesystem roots, the Ray lock registry on object
stores.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import ray

from explorer.errors import KdxError, bad_value
from explorer.store import (TeacherRecipe, TeacherRecord, TeacherStore, check_stop_epochs,
                            default_store_root)
from explorer.tracking import ROLE_TAG, ROLE_TEACHER, TEACHER_KEY_TAG, absolute_tracking_uri

from .connect import close_orphaned_runs, owner_tags, prepare_tracking
from .locks import store_lock

__all__ = ["ZooResult", "build_zoo", "default_store_root", "flatten"]

log = logging.getLogger("kdx.zoo")
# The experiment kind MLflow 3 records for classic ML (runs table) experiments. MLflow 3.17's UI picks its
# view from the page address instead (`?workflowType=machine_learning`, printed by `kdx search`).
CLASSIC_VIEW = {"mlflow.experimentKind": "custom_model_development"}


def classic_page(experiment_id: str, run_id: str | None = None) -> str:
    """The UI address (after the server's root) of an experiment, or one of its runs, in the classic view."""
    return f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "") + "?workflowType=machine_learning"

DEFAULT_TEACHER_EXPERIMENT = "kdx_teachers"
BUILT, REUSED, FAILED = "built", "reused", "failed"


@dataclass
class ZooResult:
    key: str
    label: str
    status: str  # "built" | "reused" | "failed"
    record: TeacherRecord | None
    error: str | None
    stop_epochs: tuple[int, ...] = ()


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """{'train': {'lr': 0.1}} -> {'train.lr': '0.1'} (MLflow params are strings)."""
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, name + ".")
        elif isinstance(v, (list, tuple)):
            out[name] = ",".join(map(str, v)) if v else "[]"
        else:
            out[name] = "none" if v is None else str(v)
    return out


# ------------------------------------------------------------------ one build (a Ray task)


def _ms() -> int:
    return int(time.time() * 1000)


def _numbers(metrics: dict) -> dict[str, float]:
    """The metrics MLflow can take (plain numbers; `epoch` is the step, not a metric)."""
    return {k: float(v) for k, v in metrics.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _build_one(recipe: TeacherRecipe, stop_epochs: list[int], store_root: str, lock: str, cpus: float) -> dict:
    """Body of one build task: builds, logs nothing; returns plain data for the driver: `status`,
    `record`, `error`, `history` ([epoch, time in ms, {metric: value}] per epoch trained here),
    `started` and `ended` (ms). A KdxError is returned (not raised) so that Ray does not retry it."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    started = _ms()
    store = TeacherStore(store_root, lock=store_lock(lock, store_root))
    record = store.complete(recipe, stop_epochs)
    if record is not None:  # built meanwhile by someone else
        return {"status": REUSED, "record": record}
    history: list = []
    try:
        record, built = store.ensure(recipe, stop_epochs,
                                     on_epoch=lambda epoch, m: history.append([epoch, _ms(), _numbers(m)]))
    except KdxError as e:
        return {"status": FAILED, "error": str(e), "history": history, "started": started, "ended": _ms()}
    # Not built: another process built it while we waited for the lock (its run stands).
    return {"status": BUILT if built else REUSED, "record": record, "history": history, "started": started,
            "ended": _ms()}


_build_remote = ray.remote(_build_one)


def _describe(err: BaseException) -> str:
    """The cause of a failed task in one line (the user's error, not Ray's wrapper)."""
    cause = getattr(err, "cause", None)
    if isinstance(err, ray.exceptions.RayTaskError) and cause is not None:
        err = cause
    text = str(err).strip()
    if isinstance(err, ray.exceptions.RayError):
        first = text.splitlines()[0] if text else ""
        return f"{type(err).__name__}: {first}"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def build_zoo(requests: list[tuple[TeacherRecipe, list[int]]], store_root: str, *, cpus_per_teacher: float = 1,
              gpus_per_teacher: float = 0, retries: int = 2, tracking_uri: str | None = None,
              experiment: str | None = None, lock: str = "auto") -> list[ZooResult]:
    """Build every missing teacher of `requests` in parallel as Ray tasks; one ZooResult per distinct
    teacher, in request order (the same recipe asked twice is merged: union of its stop epochs).

    Everything is validated before any task starts (KdxError). Ray must be initialised."""
    if isinstance(cpus_per_teacher, bool) or not isinstance(cpus_per_teacher, (int, float)) or not cpus_per_teacher > 0:
        raise bad_value("cpus_per_teacher", cpus_per_teacher, "allowed: a number > 0")
    if isinstance(gpus_per_teacher, bool) or not isinstance(gpus_per_teacher, (int, float)) or not gpus_per_teacher >= 0:
        raise bad_value("gpus_per_teacher", gpus_per_teacher, "allowed: a number >= 0 (fractions share a GPU)")
    if gpus_per_teacher > 1 and gpus_per_teacher != int(gpus_per_teacher):
        raise bad_value("gpus_per_teacher", gpus_per_teacher, "allowed: a fraction below 1 or a whole number")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise bad_value("retries", retries, "allowed: a whole number >= 0")
    merged: dict[str, tuple[TeacherRecipe, set[int]]] = {}
    for recipe, stops in requests:
        if not isinstance(recipe, TeacherRecipe):
            raise bad_value("recipe", recipe, "allowed: a TeacherRecipe")
        recipe.validate()
        wanted = check_stop_epochs(list(stops), recipe.train.epochs)
        key = recipe.key()
        if key in merged:
            merged[key][1].update(wanted)
        else:
            merged[key] = (recipe, set(wanted))
    store_lock(lock, store_root, check_ray=False)  # a bad lock kind fails here, not in every task
    store = TeacherStore(store_root)  # the driver only reads: no lock
    tracking_uri = absolute_tracking_uri(tracking_uri)

    results: dict[str, ZooResult] = {}
    todo = []
    for key, (recipe, stops) in merged.items():
        record = store.complete(recipe, stops)
        if record is not None:
            results[key] = ZooResult(key, recipe.label(), REUSED, record, None, tuple(sorted(stops)))
        else:
            todo.append(key)
    if todo:
        if not ray.is_initialized():
            raise KdxError("build_zoo: Ray is not running; call ray.init() (or pass --address) first.")
        runs = _TeacherRuns(tracking_uri, experiment or DEFAULT_TEACHER_EXPERIMENT) if tracking_uri else None
        task = _build_remote.options(num_cpus=cpus_per_teacher, num_gpus=gpus_per_teacher, max_retries=retries,
                                     retry_exceptions=True)
        # Distilled teachers need their parent first: a teacher starts as soon as its parent (if any,
        # and if it is being built here) has finished; teachers whose parent failed fail without running.
        waiting = list(todo)
        refs, launched = {}, {}

        def launch_ready():
            for key in list(waiting):
                recipe, stops = merged[key]
                parent = recipe.parent_key
                if parent in merged and parent not in results:
                    continue  # the parent is still being built
                waiting.remove(key)
                if parent in results and results[parent].status == FAILED:
                    results[key] = ZooResult(key, recipe.label(), FAILED, None,
                                             f"its parent teacher {parent} failed", tuple(sorted(stops)))
                    continue
                ref = task.remote(recipe, sorted(stops), store.root, lock, cpus_per_teacher)
                refs[ref], launched[ref] = key, _ms()

        launch_ready()
        pending = list(refs)
        while pending or waiting:
            if not pending:  # everything left waits on failed parents
                launch_ready()
                pending = [r for r in refs if refs[r] not in results]
                if not pending:
                    break
                continue
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                key = refs[ref]
                recipe, stops = merged[key]
                try:
                    out = ray.get(ref)
                except Exception as e:  # the task's own error after its retries, or a lost worker/OOM
                    log.debug("teacher %s failed:\n%s", key, traceback.format_exc())
                    out = {"status": FAILED, "error": _describe(e), "started": launched[ref], "ended": _ms()}
                results[key] = ZooResult(key, recipe.label(), out["status"], out.get("record"), out.get("error"),
                                         tuple(sorted(stops)))
                if runs is not None and out["status"] != REUSED:
                    runs.write(recipe, sorted(stops), out)
            before = set(refs)
            launch_ready()
            pending += [r for r in refs if r not in before]
    return [results[key] for key in merged]


# ------------------------------------------------------------------ MLflow, on the driver


class _TeacherRuns:
    """Writes one MLflow run per teacher build from what its task returned, through an MlflowClient
    with an explicit URI. A tracking hiccup is logged, never raised: it must not throw away teachers."""

    def __init__(self, tracking_uri: str, experiment: str):
        from mlflow.tracking import MlflowClient

        prepare_tracking(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = experiment_id(self.client, experiment, tracking_uri)
        close_orphaned_runs(self.client, self.experiment_id, log.warning)

    def write(self, recipe: TeacherRecipe, stop_epochs: list[int], out: dict) -> None:
        from mlflow.entities import Metric, Param

        key, run_id = recipe.key(), None
        tags = {ROLE_TAG: ROLE_TEACHER, TEACHER_KEY_TAG: key, "teacher_label": recipe.label(),
                "arch": recipe.train.arch, "dataset": recipe.data.dataset, **owner_tags()}
        params = flatten(recipe.canonical()) | {"teacher_key": key, "stop_epochs": ",".join(map(str, stop_epochs))}
        try:
            run = self.client.create_run(self.experiment_id, start_time=out.get("started"), tags=tags,
                                         run_name=f"teacher {recipe.label()} {key}")
            run_id = run.info.run_id
            items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
            for i in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[i:i + 100])
            metrics = [Metric(name, value, ts, int(epoch)) for epoch, ts, values in out.get("history", [])
                       for name, value in values.items()]
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
            if out["status"] == BUILT:
                end = {"stop_epochs": ",".join(map(str, out["record"].stop_epochs))}
            else:
                end = {"error": out.get("error") or "unknown error"}
            for k, v in end.items():
                self.client.set_tag(run_id, k, str(v)[:5000])
            self.client.set_terminated(run_id, "FINISHED" if out["status"] == BUILT else "FAILED",
                                       end_time=out.get("ended"))
        except Exception as e:
            log.warning("could not write the MLflow run of teacher %s: %s", key, e)
            if run_id is not None:
                with contextlib.suppress(Exception):
                    self.client.set_terminated(run_id, "FAILED")


def experiment_id(client, name: str, tracking_uri: str) -> str:
    """Get or create the experiment (races with another process are fine). A new one is tagged as a
    classic ML experiment (`CLASSIC_VIEW`), and with a SQLite store keeps its artifacts beside
    the store file, never in the current directory (a server decides for itself)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    artifacts = None
    if tracking_uri.startswith("sqlite:///"):
        artifacts = (Path(tracking_uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifacts, tags=CLASSIC_VIEW)
    except MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id
