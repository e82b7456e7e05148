"""Reaching the outside world before any compute: the Ray cluster (`--address`), what its nodes can
give (resources), and the MLflow store (creation under a lock, runs orphaned by a killed process).

Every kdx command that starts or joins Ray calls `check_address` first: it resolves the host and
checks that a Ray GCS (a gRPC server) answers at the port within seconds, so an address that is
wrong, closed or drops packets is one sentence, never a hang in `ray.init` or a pile of Ray warnings.
This module imports neither Ray nor MLflow at import time (the checks run before those imports).

Run owners: every MLflow run kdx opens carries `owner_tags()` (host, pid, the pid's start time and
a heartbeat time). `close_orphaned_runs` ends, as KILLED, the runs left RUNNING by a kdx process of
this host that is gone (SIGKILL, power loss), so no run stays RUNNING forever. On a shared tracking
store (a server, a database) the owner renews the heartbeat of its open runs every minute
(`heartbeat`), so a run of another host whose heartbeat stopped 15 minutes ago is closed too.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import os
import socket
import threading
import time
from pathlib import Path

from explorer.errors import KdxError, bad_value

__all__ = ["check_address", "check_cluster_resources", "close_orphaned_runs", "owner_alive", "owner_tags",
           "prepare_tracking", "quiet_ray_logs", "heartbeat", "OPEN_RUNS", "HEARTBEAT_TAG",
           "OWNER_HOST_TAG", "OWNER_PID_TAG", "OWNER_START_TAG"]

GCS_PORT, CLIENT_PORT = 6379, 10001  # Ray's defaults: `ray start --head` and the Ray Client server
ADDRESS_FORMS = ("allowed: leave it out (or 'local') for a Ray on this machine, 'auto' for the cluster this "
                 "machine runs, HOST:PORT of a cluster's head (port 6379 by default), or ray://HOST:PORT "
                 "(Ray Client, port 10001 by default)")
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


# ------------------------------------------------------------------ the cluster address


def _split(text: str, default_port: int, flag: str, given: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":") if text.count(":") == 1 or text.startswith("[") else ("", "", "")
    if not sep:
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise bad_value(flag, given, ADDRESS_FORMS)
    return host, int(port)


def _auto_address() -> tuple[str | None, str]:
    """What 'auto' means to Ray: RAY_ADDRESS, else the cluster file of the latest `ray start` here."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env not in ("auto", "local"):
        return env, "RAY_ADDRESS"
    tmp = os.environ.get("RAY_TMPDIR", "/tmp")
    path = Path(tmp) / "ray" / "ray_current_cluster"
    try:
        text = path.read_text().strip()
    except OSError:
        return None, str(path)
    return (text or None), str(path)


def _probe(host: str, port: int, timeout_s: float) -> str | None:
    """None when a gRPC (HTTP/2) server answers at host:port within `timeout_s`; else why not."""
    deadline = time.monotonic() + timeout_s
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:  # name resolution has no timeout of its own
        infos = pool.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM).result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        return f"the host name {host!r} did not resolve within {timeout_s:.0f} s"
    except OSError as e:
        return f"the host name {host!r} does not resolve ({e.strerror or e})"
    finally:
        pool.shutdown(wait=False)
    last = "no address"
    for family, kind, proto, _, addr in infos:
        left = deadline - time.monotonic()
        if left <= 0:
            return f"nothing answered within {timeout_s:.0f} s"
        try:
            with socket.socket(family, kind, proto) as s:
                s.settimeout(left)
                s.connect(addr)
                s.sendall(_H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # preface + empty SETTINGS
                s.settimeout(max(0.1, deadline - time.monotonic()))
                head = s.recv(9)
            if len(head) >= 4 and head[3] == 0x04:  # the server's SETTINGS frame: an HTTP/2 (gRPC) server
                return None
            return "something listens there, but it is not a Ray cluster (no gRPC answer)"
        except socket.timeout:
            last = f"nothing answered within {timeout_s:.0f} s"
        except OSError as e:
            last = e.strerror or str(e) or type(e).__name__
    return last.lower()


@contextlib.contextmanager
def _stderr_silenced():
    """Ray's C++ client logs each failed attempt to fd 2; the user gets kdx's one sentence instead."""
    saved = os.dup(2)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _gcs_problem(address: str, timeout_s: float) -> str | None:
    """None when the Ray GCS at `address` answers a cluster-id request within `timeout_s`; else why not.
    (Something that speaks HTTP/2, such as a proxy, passes `_probe` but not this.)"""
    import ray._raylet

    answer: dict = {}

    def ask():
        try:
            ray._raylet.GcsClient(address=address, cluster_id=None)
            answer["ok"] = True
        except Exception as e:  # RpcError, ConnectionError...
            answer["error"] = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__

    with _stderr_silenced():
        t = threading.Thread(target=ask, name="kdx-gcs-probe", daemon=True)
        t.start()
        t.join(timeout_s)
    if answer.get("ok"):
        return None
    if "AuthToken" in answer.get("error", "") or "Unauthenticated" in answer.get("error", ""):
        mode = os.environ.get("RAY_AUTH_MODE", "disabled")
        return (f"a Ray cluster is there but refused this process: it uses token authentication and here "
                f"RAY_AUTH_MODE is {mode!r}; set RAY_AUTH_MODE=token as the cluster's processes have it (and "
                "RAY_AUTH_TOKEN when the cluster's token is not in ~/.ray/auth_token)")
    if "error" in answer:
        return f"it is not a Ray cluster's GCS: {answer['error'][:160]}"
    return f"no Ray GCS answered within {timeout_s:.0f} s"


def check_address(address: str | None, flag: str = "--address", timeout_s: float = 4.0) -> str:
    """The address to give `ray.init`, after checking that a Ray cluster answers there; one sentence
    (KdxError) naming `flag`, the value and the allowed forms when not, within about `timeout_s`."""
    if address is None or address.strip() in ("", "local"):
        return "local"
    given = address.strip()
    if given == "auto":
        found, source = _auto_address()
        if found is None:
            raise KdxError(f"{flag}: got 'auto'; no Ray cluster runs on this machine (no RAY_ADDRESS and no "
                           f"{source}); start one with `ray start --head`, give HOST:PORT, or leave the flag out "
                           "for a Ray on this machine.")
        where = f"'auto' ({found} from {source})"
        text = found
    else:
        where, text = repr(given), given
    if text.startswith("ray://"):
        host, port = _split(text[len("ray://"):].rstrip("/"), CLIENT_PORT, flag, given)
    elif "://" in text:
        raise bad_value(flag, given, ADDRESS_FORMS)
    else:
        host, port = _split(text, GCS_PORT, flag, given)
    if text.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise bad_value(flag, given, "a ray:// address needs the Ray Client (pip install 'ray[client]'); "
                        "or give the head's HOST:PORT (port 6379) from a node of the cluster")
    why = _probe(host, port, timeout_s)
    if why is None and not text.startswith("ray://"):
        why = _gcs_problem(f"{host}:{port}", timeout_s)
    if why is not None:
        raise KdxError(f"{flag}: got {where}; no Ray cluster answered at {host}:{port} ({why}); start the cluster "
                       "(`ray start --head` on its head node), fix the address, or leave the flag out for a Ray "
                       "on this machine.")
    return given


# ------------------------------------------------------------------ what the cluster can give


def check_cluster_resources(needs: list[tuple[str, str, float]]) -> None:
    """`needs`: (field, "CPU" or "GPU", amount) per kind of task; refused in one sentence when no alive
    node of the connected cluster has that much of it (the task would wait forever). Ray must be up."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for field, res, want in needs:
        most = max((n.get(res, 0) for n in nodes), default=0)
        if want and want > most:
            raise KdxError(f"{field}: got {want:g}; this cluster's largest node has {most:g} {res}s; ask for at "
                           "most that many, or join a cluster with larger nodes (--address).")


# ------------------------------------------------------------------ the MLflow store

OWNER_HOST_TAG, OWNER_PID_TAG, OWNER_START_TAG = "kdx.owner.host", "kdx.owner.pid", "kdx.owner.pid_start"
HEARTBEAT_TAG = "kdx.owner.heartbeat"  # unix time; renewed every HEARTBEAT_EVERY_S on a shared tracking store
HEARTBEAT_EVERY_S, HEARTBEAT_STALE_S = 60.0, 900.0
OPEN_RUNS: set[str] = set()  # runs this process keeps RUNNING (the heartbeat renews them)
_prepared: set[str] = set()


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


def prepare_tracking(uri: str) -> None:
    """Create (or migrate) a SQLite tracking store under a file lock, once per process: MLflow's
    schema creation is not safe when two processes open a fresh store at the same moment."""
    if not uri.startswith("sqlite:///") or uri in _prepared:
        return
    import filelock
    from mlflow.tracking import MlflowClient

    db = uri[len("sqlite:///"):]
    with filelock.FileLock(f"{db}.lock", timeout=120):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    _prepared.add(uri)


def open_experiment(client, name: str, out=print):
    """The experiment `name` (None when it does not exist yet), its runs orphaned by a killed kdx
    process of this host closed first."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        close_orphaned_runs(client, exp.experiment_id, out)
    return exp


def refuse_rerun(client, exp, name: str, resume: bool, fresh: bool) -> None:
    """A search is never silently redone: an experiment that has a search needs --resume or --fresh;
    one whose search is running now (its owner lives on this host) is refused either way."""
    from explorer.tracking import ROLE_SEARCH, ROLE_TAG

    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = '{ROLE_SEARCH}'",
                              order_by=["start_time DESC"], max_results=1) if exp else []
    if not runs:
        return
    last = runs[0]
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(last.info.start_time / 1000))
    if last.info.status == "RUNNING" and owner_alive(last.data.tags):
        raise KdxError(f"name: got {name!r}; a search of this experiment is running now (pid "
                       f"{last.data.tags[OWNER_PID_TAG]}, started {started}); wait for it to end or stop it first.")
    if not resume and not fresh:
        raise KdxError(f"name: got {name!r}; the experiment already has a search ({last.info.status}, started "
                       f"{started}); continue it with --resume, or give --fresh to start another one.")


@contextlib.contextmanager
def heartbeat(uri: str):
    """While the block runs, renew the heartbeat tag of OPEN_RUNS every HEARTBEAT_EVERY_S, so another
    host can tell a live owner from a dead one. Only for shared stores (a server or a database): a
    SQLite store lives on one host, where the owner's pid decides (and a second writer thread would
    contend for SQLite's lock)."""
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        yield
        return
    from mlflow.tracking import MlflowClient

    stop = threading.Event()

    def beat():
        client = MlflowClient(tracking_uri=uri)
        while not stop.wait(HEARTBEAT_EVERY_S):
            for run_id in list(OPEN_RUNS):
                with contextlib.suppress(Exception):  # a hiccup must not stop the search
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
    from explorer.tracking import INTERRUPTED, ROLE_TAG, ROLE_TRIAL, STATUS_TAG

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


# ------------------------------------------------------------------ Ray's own noise


# Tune's own messages that kdx says better: trial files missing after a Ctrl-C (three copies, one per
# ExperimentAnalysis), "Resume experiment with: Tuner.restore(...)" (kdx says --resume), state writes.
NOISY_LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis", "ray.tune.impl.tuner_internal",
                 "ray.tune.execution.experiment_state", "ray.tune.execution.tune_controller")


@contextlib.contextmanager
def quiet_ray_logs():
    """While kdx runs and reads Tune experiments, Tune's warnings are not shown (errors still are)."""
    import logging

    loggers = [logging.getLogger(n) for n in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
