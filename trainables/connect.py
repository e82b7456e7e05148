"""Reaching the Ray cluster before any compute: the address (`--address`), what its nodes can give
(resources), and Tune's own log noise. (The MLflow store: trainables/tracking/.)

Every kdx command that starts or joins Ray calls `check_address` first: it resolves the host and
checks that a Ray GCS (a gRPC server) answers at the port within seconds, so an address that is
wrong, closed or drops packets is one sentence, never a hang in `ray.init` or a pile of Ray warnings.
This module does not import Ray at import time (the checks run before that import).
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

__all__ = ["check_address", "check_cluster_resources", "quiet_ray_logs"]

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
