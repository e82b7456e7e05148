"""Run owners: every MLflow run kdx opens carries `owner_tags()` (host, pid, the pid's start time and
a heartbeat time), so a run whose owner is gone can be told from one that is still being written.

`close_orphaned_runs` ends, as KILLED, the runs left RUNNING by a kdx process of this host that is gone
(SIGKILL, power loss), so no run stays RUNNING forever. On a shared tracking store (a server, a
database) the owner renews the heartbeat of its open runs every minute (`heartbeat`), so a run of
another host whose heartbeat stopped 15 minutes ago is closed too. Which runs are open is read from
the store (RUNNING runs whose owner tags name this process): no list of them is kept in memory.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

from explorer.tracking import INTERRUPTED, ROLE_TAG, ROLE_TRIAL, STATUS_TAG

OWNER_HOST_TAG, OWNER_PID_TAG, OWNER_START_TAG = "kdx.owner.host", "kdx.owner.pid", "kdx.owner.pid_start"
HEARTBEAT_TAG = "kdx.owner.heartbeat"  # unix time; renewed every HEARTBEAT_EVERY_S on a shared tracking store
HEARTBEAT_EVERY_S, HEARTBEAT_STALE_S = 60.0, 900.0


def _pid_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot; None when it is gone or unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has ended


def owner_tags() -> dict[str, str]:
    """Tags that name the process owning a run (this one), so a dead owner can be recognised."""
    return {OWNER_HOST_TAG: socket.gethostname(), OWNER_PID_TAG: str(os.getpid()),
            OWNER_START_TAG: _pid_start(os.getpid()) or "unknown", HEARTBEAT_TAG: str(int(time.time()))}


def _owner_state(tags: dict) -> str:
    """'alive' or 'dead' for a run owned by a process of this host (its pid), or of another host whose
    heartbeat stopped over HEARTBEAT_STALE_S ago; 'unknown' otherwise (no owner tags: an older kdx)."""
    if tags.get(OWNER_HOST_TAG) != socket.gethostname() or not tags.get(OWNER_PID_TAG, "").isdigit():
        beat = tags.get(HEARTBEAT_TAG, "")
        stale = beat.isdigit() and time.time() - int(beat) > HEARTBEAT_STALE_S
        return "dead" if stale and tags.get(OWNER_HOST_TAG) else "unknown"
    pid = int(tags[OWNER_PID_TAG])
    if pid == os.getpid():
        return "alive"
    start = _pid_start(pid)
    if start is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "dead"
        except PermissionError:
            return "alive"
        return "dead" if Path("/proc").is_dir() else "alive"  # /proc would have shown a live pid
    if tags.get(OWNER_START_TAG) not in (None, "unknown", start):
        return "dead"  # the pid now belongs to another process
    return "alive"


def owner_alive(tags: dict) -> bool:
    """True when the run's owner is a live process of this host."""
    return _owner_state(tags) == "alive"


def own_open_runs(client, experiment_id: str) -> list[str]:
    """The RUNNING runs of the experiment that this process owns (its host, pid and pid start time)."""
    me = owner_tags()
    found = client.search_runs([experiment_id], max_results=5000, filter_string=(
        f"attributes.status = 'RUNNING' and tags.`{OWNER_HOST_TAG}` = '{me[OWNER_HOST_TAG]}' and "
        f"tags.`{OWNER_PID_TAG}` = '{me[OWNER_PID_TAG]}'"))
    return [r.info.run_id for r in found if r.data.tags.get(OWNER_START_TAG) == me[OWNER_START_TAG]]


@contextlib.contextmanager
def heartbeat(uri: str, experiment_id: str, every_s: float = HEARTBEAT_EVERY_S):
    """While the block runs, renew every `every_s` the heartbeat tag of the experiment's runs this
    process owns and keeps RUNNING, so another host can tell a live owner from a dead one. Only for
    shared stores (a server or a database): a SQLite store lives on one host, where the owner's pid
    decides (and a second writer thread would contend for SQLite's lock)."""
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        yield
        return
    from mlflow.tracking import MlflowClient

    stop = threading.Event()

    def beat():
        client = MlflowClient(tracking_uri=uri)
        while not stop.wait(every_s):
            with contextlib.suppress(Exception):  # a hiccup must not stop the search
                for run_id in own_open_runs(client, experiment_id):
                    client.set_tag(run_id, HEARTBEAT_TAG, str(int(time.time())))

    t = threading.Thread(target=beat, name="kdx-heartbeat", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()


def close_orphaned_runs(client, experiment_id: str, out=print) -> int:
    """End as KILLED every RUNNING run of the experiment whose owner (a kdx process of this host) is
    dead; trial runs also get status tag `interrupted`. Says so in one line; returns how many."""
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)
    dead = [r for r in runs if _owner_state(r.data.tags) == "dead"]
    for r in dead:
        if r.data.tags.get(ROLE_TAG) == ROLE_TRIAL:
            client.set_tag(r.info.run_id, STATUS_TAG, INTERRUPTED)
        client.set_terminated(r.info.run_id, "KILLED")
    if dead:
        pids = sorted({r.data.tags[OWNER_PID_TAG] for r in dead}, key=int)
        roles: dict[str, int] = {}
        for r in dead:
            role = r.data.tags.get(ROLE_TAG, "other")
            roles[role] = roles.get(role, 0) + 1
        out(f"closed {len(dead)} run(s) left RUNNING by killed kdx process(es) (pid {', '.join(pids)}): "
            + ", ".join(f"{n} {k}" for k, n in sorted(roles.items())) + " -> KILLED")
    return len(dead)
