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

Each build task logs one MLflow run (when `tracking_uri` is given): tags `kdx.role=teacher` and
`teacher_key`, the flattened recipe as params, per-epoch metrics (step = epoch); the run always
ends, FINISHED or FAILED. Ray must be initialised by the caller (local or cluster).
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass

import ray

from explorer.errors import KdxError, bad_value
from explorer.store import (TeacherRecipe, TeacherRecord, TeacherStore, check_stop_epochs,
                            default_store_root)
from explorer.tracking import ROLE_TAG, ROLE_TEACHER, TEACHER_KEY_TAG, absolute_tracking_uri

__all__ = ["ZooResult", "build_zoo", "default_store_root", "flatten"]

log = logging.getLogger("kdx.zoo")

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


# ------------------------------------------------------------------ MLflow logging of one build


class _TeacherRun:
    """One MLflow run for one build attempt, through an MlflowClient with an explicit URI."""

    def __init__(self, tracking_uri: str, experiment_id: str, recipe: TeacherRecipe, stop_epochs: list[int]):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        key = recipe.key()
        tags = {ROLE_TAG: ROLE_TEACHER, TEACHER_KEY_TAG: key, "teacher_label": recipe.label(),
                "arch": recipe.train.arch, "dataset": recipe.data.dataset}
        run = self.client.create_run(experiment_id, run_name=f"teacher {recipe.label()} {key}", tags=tags)
        self.run_id = run.info.run_id
        params = flatten(recipe.canonical()) | {"teacher_key": key, "stop_epochs": ",".join(map(str, stop_epochs))}
        items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, epoch) for k, v in metrics.items()
                 if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)]
        try:
            self.client.log_batch(self.run_id, metrics=items)
        except Exception as e:  # a tracking hiccup must not throw away a teacher being trained
            log.warning("could not log epoch %d of MLflow run %s: %s", epoch, self.run_id, e)

    def end(self, status: str, **tags) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v)[:5000])
        self.client.set_terminated(self.run_id, status)

    def discard(self) -> None:
        self.client.delete_run(self.run_id)


def _build_one(recipe: TeacherRecipe, stop_epochs: list[int], store_root: str, lock: str,
               tracking_uri: str | None, experiment_id: str | None, cpus: float) -> dict:
    """Body of one build task. A KdxError is returned (not raised) so that Ray does not retry it."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    store = TeacherStore(store_root, lock=lock)
    record = store.complete(recipe, stop_epochs)
    if record is not None:  # built meanwhile by someone else
        return {"status": REUSED, "record": record}
    run = _TeacherRun(tracking_uri, experiment_id, recipe, stop_epochs) if tracking_uri else None
    try:
        record, built = store.ensure(recipe, stop_epochs, on_epoch=run.log_epoch if run else None)
    except KdxError as e:
        if run:
            run.end("FAILED", error=str(e))
        return {"status": FAILED, "error": str(e)}
    except BaseException as e:
        if run:
            try:
                run.end("FAILED", error=f"{type(e).__name__}: {e}")
            except Exception:  # the original error matters more
                log.warning("could not end MLflow run %s", run.run_id)
        raise
    if run:
        if built:
            run.end("FINISHED", stop_epochs=",".join(map(str, record.stop_epochs)))
        else:
            run.discard()  # another process built it while we waited for the lock
    return {"status": BUILT if built else REUSED, "record": record}


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
    store = TeacherStore(store_root, lock=lock)
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
        experiment_id = None
        if tracking_uri:
            experiment_id = _experiment_id(tracking_uri, experiment or DEFAULT_TEACHER_EXPERIMENT)
        task = _build_remote.options(num_cpus=cpus_per_teacher, num_gpus=gpus_per_teacher, max_retries=retries,
                                     retry_exceptions=True)
        # Distilled teachers need their parent first: a teacher starts as soon as its parent (if any,
        # and if it is being built here) has finished; teachers whose parent failed fail without running.
        waiting = list(todo)
        refs = {}

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
                ref = task.remote(recipe, sorted(stops), store.root, lock, tracking_uri, experiment_id,
                                  cpus_per_teacher)
                refs[ref] = key

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
                    out = {"status": FAILED, "error": _describe(e)}
                results[key] = ZooResult(key, recipe.label(), out["status"], out.get("record"), out.get("error"),
                                         tuple(sorted(stops)))
            before = set(refs)
            launch_ready()
            pending += [r for r in refs if r not in before]
    return [results[key] for key in merged]


def _experiment_id(tracking_uri: str, name: str) -> str:
    """Get or create the experiment once, in the driver (tasks only write runs into it)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id
