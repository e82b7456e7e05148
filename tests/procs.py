"""Start real servers for tests and stop exactly the processes started, by PID (never by name)."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """PIDs of every process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_tree(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process we started, then whatever it started that is still alive; SIGKILL stragglers."""
    pids = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if _alive(pid):
                os.kill(pid, sig)
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)


@contextlib.contextmanager
def mlflow_server(tmp_path: Path, wait_s: float = 120):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend under `tmp_path`); yields its URI once
    /health answers, and stops exactly that process tree afterwards. Without MLflow's job runner (seven
    more processes, for GenAI jobs that no test uses)."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + wait_s
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        yield uri
    finally:
        stop_tree(server)


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, wait_s: float = 120):
    """A real single-node Ray cluster (`ray start --head --block`) that `kdx ... --address` can join; yields
    (address, env): the env a joining process needs (RAY_AUTH_MODE set as the head's, Ray 2.60's token
    auth). Stops exactly that process tree afterwards. Its temp dir is a short one under /tmp (Ray's Unix
    sockets do not fit pytest's long tmp paths), so no `ray_current_cluster` file lands in /tmp/ray."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="kdx-ray-", dir="/tmp")
    env = {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    log_path = Path(temp_dir) / "head.log"
    with open(log_path, "w") as log:
        head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}",
                                 f"--num-cpus={num_cpus}", "--include-dashboard=false",
                                 f"--temp-dir={temp_dir}", "--disable-usage-stats", "--block"],
                                env=os.environ | env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + wait_s
        while "Ray runtime started" not in log_path.read_text():
            assert head.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", env
    finally:
        stop_tree(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
