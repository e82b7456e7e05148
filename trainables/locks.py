"""The cluster-wide teacher build lock, on the Ray side, injected into `explorer.teachers.store.TeacherStore`.

explorer knows no cluster: its store takes a lock provider (`key -> context manager`), and by
default uses a file lock on local and shared-filesystem roots. Object stores (s3://, gs://,
hdfs://...) have no locks, so on a Ray cluster a named Ray actor (`kdx_teacher_locks`, namespace
"kdx", detached, 0 CPUs) acts as a cluster-wide lock registry, and `store_lock` hands
`ray_key_lock` to the stores that build on Ray workers.

Holders renew a lease every few seconds; a holder that dies loses the lock once the lease runs out
(`RAY_LOCK_LEASE_S`), so a crashed build never blocks others for long. Limit: two independent Ray
clusters sharing one bucket are not coordinated (each has its own registry) and may both build the
same teacher; the writes stay atomic, so the result is still a consistent teacher, just built twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from typing import Callable, Iterator

import ray

from explorer.errors import KdxError, bad_value
from explorer.storage import is_local

__all__ = ["LOCK_ACTOR_NAME", "LOCK_ACTOR_NAMESPACE", "LOCK_KINDS", "RAY_LOCK_LEASE_S", "lock_registry",
           "ray_key_lock", "store_lock"]

log = logging.getLogger("kdx.locks")

LOCK_ACTOR_NAME = "kdx_teacher_locks"
LOCK_ACTOR_NAMESPACE = "kdx"
RAY_LOCK_LEASE_S = 30.0
LOCK_KINDS = ("auto", "file", "ray")


class _LockRegistry:
    """The body of the named Ray actor that serves as a cluster-wide lock table (one lease per key)."""

    def __init__(self):
        self.held: dict[str, tuple[str, float]] = {}

    def acquire(self, key: str, token: str, lease_s: float) -> bool:
        now = time.monotonic()
        cur = self.held.get(key)
        if cur is None or cur[1] < now or cur[0] == token:
            self.held[key] = (token, now + lease_s)
            return True
        return False

    def renew(self, key: str, token: str, lease_s: float) -> bool:
        cur = self.held.get(key)
        if cur is None or cur[0] != token:
            return False
        self.held[key] = (token, time.monotonic() + lease_s)
        return True

    def release(self, key: str, token: str) -> bool:
        cur = self.held.get(key)
        if cur is not None and cur[0] == token:
            del self.held[key]
            return True
        return False

    def holders(self) -> dict:
        now = time.monotonic()
        return {k: v[0] for k, v in self.held.items() if v[1] >= now}


def lock_registry():
    """The cluster's lock-registry actor (created on first use; needs `ray.init()` first)."""
    return (ray.remote(num_cpus=0, max_restarts=-1)(_LockRegistry)
            .options(name=LOCK_ACTOR_NAME, namespace=LOCK_ACTOR_NAMESPACE, get_if_exists=True,
                     lifetime="detached")
            .remote())


def _log_wait(key: str) -> None:
    log.info("teacher %s is being built by another process; waiting for it", key)


@contextlib.contextmanager
def ray_key_lock(key: str, lease_s: float = RAY_LOCK_LEASE_S, timeout: float | None = None,
                 on_wait: Callable[[str], None] | None = _log_wait) -> Iterator[None]:
    """Hold the cluster-wide lock of `key` (lease renewed in the background while held).

    A lock provider for `TeacherStore(root, lock=ray_key_lock)`. `on_wait(key)` is called once when
    the lock is held by someone else. Raises TimeoutError when `timeout` seconds pass without it."""
    actor = lock_registry()
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    start, delay, waited = time.monotonic(), 0.05, False
    while not ray.get(actor.acquire.remote(key, token, lease_s)):
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"lock of teacher {key} not acquired within {timeout} s")
        if not waited and on_wait is not None:
            on_wait(key)
        waited = True
        time.sleep(delay)
        delay = min(1.0, delay * 2)
    stop = threading.Event()

    def renew():
        while not stop.wait(lease_s / 4):
            try:
                if not ray.get(actor.renew.remote(key, token, lease_s)):
                    log.warning("lost the lock of teacher %s (lease expired or lock registry restarted)", key)
                    return
            except Exception as e:  # registry unreachable: keep building, the writes stay atomic
                log.warning("could not renew the lock of teacher %s: %s", key, e)

    t = threading.Thread(target=renew, name=f"kdx-lock-{key}", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=5)
        with contextlib.suppress(Exception):
            ray.get(actor.release.remote(key, token))


def store_lock(kind: str, root: str, check_ray: bool = True):
    """The lock provider to give `TeacherStore(root, lock=...)` for lock kind `kind`:

    * "auto": the Ray lock registry for roots that are not on a locally mounted filesystem (object
      stores) when Ray is running, else None (the store's default: a file lock per key locally; on
      an object store without Ray, a lock within the process and a warning);
    * "file": None (the file lock); only for local and shared-filesystem roots;
    * "ray": the Ray lock registry whatever the root (needs a running Ray unless `check_ray` is False,
      which validates `kind` on a driver that may start Ray later)."""
    if kind not in LOCK_KINDS:
        raise bad_value("lock", kind, "allowed: " + ", ".join(LOCK_KINDS))
    local = is_local(root)
    if kind == "file":
        if not local:
            raise bad_value("lock", kind, f"a file lock needs a local or shared-filesystem store, not {root}")
        return None
    if kind == "ray":
        if check_ray and not ray.is_initialized():
            raise KdxError("lock: 'ray' needs a running Ray (call ray.init() first).")
        return ray_key_lock
    return ray_key_lock if not local and ray.is_initialized() else None
