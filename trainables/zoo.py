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
one run per teacher built or failed here (trainables/tracking/teacher_runs.py). So MLflow has one writer (a SQLite store is not
written from every node), workers need no route to the tracking server, and a worker killed mid-build
leaves no run stuck RUNNING: the driver records its failure. A teacher reused (already complete, or
built meanwhile by another process) gets no new run: the run of the build that made it stands.
Ray must be initialised by the caller (local or cluster).

Locks: a task's store gets the lock `trainables.locks.store_lock(lock, root)` chooses: by default
("auto") the store's file lock on local and shared-filesystem roots, the Ray lock registry on object
stores.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass

import ray

from explorer.errors import KdxError, bad_value
from explorer.teachers.store import TeacherRecipe, TeacherRecord, TeacherStore, check_stop_epochs, default_store_root
from explorer.tracking import absolute_tracking_uri
from explorer.training.build import ensure_teacher

from .build_progress import BuildProgress
from .locks import store_lock
from .tracking.teacher_runs import TeacherRuns

__all__ = ["ZooResult", "build_zoo", "default_store_root"]

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


# ------------------------------------------------------------------ one build (a Ray task)


def _ms() -> int:
    return int(time.time() * 1000)


def _numbers(metrics: dict) -> dict[str, float]:
    """The metrics MLflow can take (plain numbers; `epoch` is the step, not a metric)."""
    return {k: float(v) for k, v in metrics.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _build_one(recipe: TeacherRecipe, stop_epochs: list[int], store_root: str, lock: str, cpus: float,
               reporter=None) -> dict:
    """Body of one build task: builds, logs nothing; returns plain data for the driver: `status`,
    `record`, `error`, `history` ([epoch, time in ms, {metric: value}] per epoch trained here),
    `started` and `ended` (ms). A KdxError is returned (not raised) so that Ray does not retry it.
    Each epoch trained is also told to `reporter` (trainables/build_progress.py) when there is one."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    started = _ms()
    store = TeacherStore(store_root, lock=store_lock(lock, store_root))
    record = store.complete(recipe, stop_epochs)
    if record is not None:  # built meanwhile by someone else
        return {"status": REUSED, "record": record}
    history: list = []
    key = recipe.key()

    def on_epoch(epoch, m):
        history.append([epoch, _ms(), _numbers(m)])
        if reporter is not None:
            reporter.put.remote(key, epoch)
    try:
        record, built = ensure_teacher(store, recipe, stop_epochs, on_epoch=on_epoch)
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


def _check_resources(cpus_per_teacher, gpus_per_teacher, retries) -> None:
    """What each build task asks of Ray, checked before any starts (KdxError naming the value)."""
    if isinstance(cpus_per_teacher, bool) or not isinstance(cpus_per_teacher, (int, float)) or not cpus_per_teacher > 0:
        raise bad_value("cpus_per_teacher", cpus_per_teacher, "allowed: a number > 0")
    if isinstance(gpus_per_teacher, bool) or not isinstance(gpus_per_teacher, (int, float)) or not gpus_per_teacher >= 0:
        raise bad_value("gpus_per_teacher", gpus_per_teacher, "allowed: a number >= 0 (fractions share a GPU)")
    if gpus_per_teacher > 1 and gpus_per_teacher != int(gpus_per_teacher):
        raise bad_value("gpus_per_teacher", gpus_per_teacher, "allowed: a fraction below 1 or a whole number")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise bad_value("retries", retries, "allowed: a whole number >= 0")


def _merge(requests: list[tuple[TeacherRecipe, list[int]]]) -> dict[str, tuple[TeacherRecipe, set[int]]]:
    """The distinct teachers of `requests` by store key, in request order, each recipe validated and the
    stop epochs of a recipe asked twice joined."""
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
    return merged


class _Builds:
    """The build tasks of one `build_zoo`: a teacher starts as soon as its parent (a distilled teacher's,
    when it is being built here too) has finished; a teacher whose parent failed fails without running.
    Each result goes to `results` (and MLflow, through `runs`) as its task ends."""

    def __init__(self, merged: dict, results: dict[str, ZooResult], task, store_root: str, lock: str, cpus: float,
                 runs: TeacherRuns | None, progress: BuildProgress | None):
        self.merged, self.results, self.task, self.runs, self.progress = merged, results, task, runs, progress
        self.args = (store_root, lock, cpus)
        self.waiting: list[str] = []
        self.refs: dict = {}  # task ref -> teacher key
        self.launched: dict = {}  # task ref -> when it was launched (ms)

    def launch_ready(self) -> None:
        for key in list(self.waiting):
            recipe, stops = self.merged[key]
            parent = recipe.parent_key
            if parent in self.merged and parent not in self.results:
                continue  # the parent is still being built
            self.waiting.remove(key)
            if parent in self.results and self.results[parent].status == FAILED:
                self.results[key] = ZooResult(key, recipe.label(), FAILED, None,
                                              f"its parent teacher {parent} failed", tuple(sorted(stops)))
                continue
            ref = self.task.remote(recipe, sorted(stops), *self.args,
                                   self.progress.reporter if self.progress else None)
            self.refs[ref], self.launched[ref] = key, _ms()

    def finish(self, ref) -> None:
        key = self.refs[ref]
        recipe, stops = self.merged[key]
        try:
            out = ray.get(ref)
        except Exception as e:  # the task's own error after its retries, or a lost worker/OOM
            log.debug("teacher %s failed:\n%s", key, traceback.format_exc())
            out = {"status": FAILED, "error": _describe(e), "started": self.launched[ref], "ended": _ms()}
        self.results[key] = ZooResult(key, recipe.label(), out["status"], out.get("record"), out.get("error"),
                                      tuple(sorted(stops)))
        if self.runs is not None and out["status"] != REUSED:
            self.runs.write(recipe, sorted(stops), out, built=out["status"] == BUILT)

    def run(self, todo: list[str]) -> None:
        """Build every teacher of `todo`, as tasks, until each has a result."""
        self.waiting = list(todo)
        self.launch_ready()
        pending = list(self.refs)
        while pending or self.waiting:
            if not pending:  # everything left waits on failed parents
                self.launch_ready()
                pending = [r for r in self.refs if self.refs[r] not in self.results]
                if not pending:
                    break
                continue
            ready, pending = ray.wait(pending, num_returns=1, timeout=self.progress.every_s if self.progress else None)
            for ref in ready:
                self.finish(ref)
            if self.progress:
                self.progress.poll(set(self.results), force=bool(ready))
            before = set(self.refs)
            self.launch_ready()
            pending += [r for r in self.refs if r not in before]


def build_zoo(requests: list[tuple[TeacherRecipe, list[int]]], store_root: str, *, cpus_per_teacher: float = 1,
              gpus_per_teacher: float = 0, retries: int = 2, tracking_uri: str | None = None,
              experiment: str | None = None, lock: str = "auto", out=None) -> list[ZooResult]:
    """Build every missing teacher of `requests` in parallel as Ray tasks; one ZooResult per distinct
    teacher, in request order (the same recipe asked twice is merged: union of its stop epochs).
    With `out`, the builds' progress is printed through it while they run (trainables/build_progress.py).

    Everything is validated before any task starts (KdxError). Ray must be initialised."""
    _check_resources(cpus_per_teacher, gpus_per_teacher, retries)
    merged = _merge(requests)
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
        runs = TeacherRuns(tracking_uri, experiment or DEFAULT_TEACHER_EXPERIMENT) if tracking_uri else None
        task = _build_remote.options(num_cpus=cpus_per_teacher, num_gpus=gpus_per_teacher, max_retries=retries,
                                     retry_exceptions=True)
        progress = BuildProgress({k: max(merged[k][1]) for k in todo}, {k: merged[k][0].label() for k in todo},
                                 out) if out else None
        try:
            _Builds(merged, results, task, store.root, lock, cpus_per_teacher, runs, progress).run(todo)
        finally:
            if progress:
                progress.close()
    return [results[key] for key in merged]
