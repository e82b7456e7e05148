"""Bad addresses, bad tracking URIs, flag errors: refused in one sentence, fast, by the real `kdx` command.
And the teacher store after a killed build, and `kdx train`'s teacher epochs (real processes, killed by PID).

The searches that start Ray (killed drivers, reruns, resources) are in tests/test_robustness_search.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kdxrun import KDX
from kdxrun import timed as kdx  # (completed process, seconds it took)
from procs import descendants, free_port, mlflow_server, stop_tree

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "specs" / "tiny.yaml")


def one_sentence(proc, starts: str) -> str:
    """The refusal: exit 2, one line on stderr starting with `kdx: error: <starts>`, no traceback."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"kdx: error: {starts}"), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


# ------------------------------------------------------------------ --address


@pytest.fixture(scope="module")
def dead_addresses():
    port = free_port()  # closed: nothing listens on it
    return {"unresolvable": "bogus:1", "closed port": f"127.0.0.1:{port}", "no route": "10.255.255.1:6379",
            "not a form": "http://example.org:6379"}


@pytest.mark.parametrize("case", ["unresolvable", "closed port", "no route", "not a form"])
def test_search_refuses_a_dead_address_in_one_sentence(tmp_path, dead_addresses, case):
    proc, took = kdx(tmp_path, "search", TINY, "--address", dead_addresses[case])
    line = one_sentence(proc, "--address: got ")
    assert dead_addresses[case] in line and "allowed" in line or "leave the flag out" in line
    assert took < 10, took
    assert not (tmp_path / "kdx_runs").exists()  # nothing started, nothing written


def test_an_http_server_is_not_a_ray_cluster(tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        proc, took = kdx(tmp_path, "search", TINY, "--address", f"127.0.0.1:{port}")
    finally:
        stop_tree(server)
    assert "not a Ray cluster" in one_sentence(proc, "--address: got ")
    assert took < 10, took


def test_auto_without_a_cluster(tmp_path):
    env = {"RAY_TMPDIR": str(tmp_path), "RAY_ADDRESS": ""}  # no cluster file there
    proc, took = kdx(tmp_path, "search", TINY, "--address", "auto", env=env)
    assert "no Ray cluster runs on this machine" in one_sentence(proc, "--address: got 'auto'")
    assert took < 10


@pytest.mark.parametrize("command", [["teachers", "build", "--arch", "cnn1d_w8"], ["confirm", "tiny"]])
def test_every_command_with_an_address_checks_it(tmp_path, command):
    proc, took = kdx(tmp_path, *command, "--address", "bogus:1")
    assert "'bogus:1'" in one_sentence(proc, "--address: got ")
    assert took < 10, took


def test_a_live_cluster_passes_the_check(tmp_path):
    """The check accepts a real Ray GCS (started here in a child process, stopped by PID)."""
    script = ("import ray, sys, time\nray.init(address='local', num_cpus=1, include_dashboard=False)\n"
              "print(ray.get_runtime_context().gcs_address, flush=True)\ntime.sleep(600)\n")
    head = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        address = head.stdout.readline().strip()
        assert address, "the child Ray did not start"
        check = [sys.executable, "-c", "import sys; from trainables.connect import check_address; "
                 "print(check_address(sys.argv[1]))", address]
        # Ray 2.60 starts a local cluster with token authentication: a process needs RAY_AUTH_MODE=token to join.
        out = subprocess.run(check, cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env=os.environ | {"RAY_AUTH_MODE": "token"})
        assert out.returncode == 0 and out.stdout.strip() == address, out.stderr[-2000:]
        out = subprocess.run(check, cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"})
        assert out.returncode == 1 and "RAY_AUTH_MODE=token" in out.stderr, out.stderr[-2000:]
    finally:
        stop_tree(head)


# ------------------------------------------------------------------ --tracking-uri


@pytest.mark.parametrize("command", [["search", TINY], ["analyze", "tiny"], ["confirm", "tiny"],
                                     ["teachers", "build", "--arch", "cnn1d_w8"]])
def test_a_nonsense_tracking_uri_lists_the_allowed_forms(tmp_path, command):
    proc, _ = kdx(tmp_path, *command, "--tracking-uri", "nonsense://x")
    line = one_sentence(proc, "--tracking-uri: got 'nonsense://x'")
    assert "sqlite:///" in line and "http(s)://" in line


@pytest.mark.parametrize("command", [["search", TINY], ["analyze", "tiny"]])
def test_a_dead_tracking_server_is_one_sentence_within_5_s(tmp_path, command):
    proc, took = kdx(tmp_path, *command, "--tracking-uri", "http://127.0.0.1:9")
    assert "no MLflow tracking server answered" in one_sentence(proc, "--tracking-uri: got 'http://127.0.0.1:9'")
    assert took < 5, took


def test_a_sqlite_store_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc, _ = kdx(tmp_path, "search", TINY, "--tracking-uri", f"sqlite:///{blocker}/sub/mlflow.db")
    assert "cannot be created" in one_sentence(proc, "--tracking-uri: got ")


# ------------------------------------------------------------------ flags


def test_flag_errors_come_back_fast(tmp_path):
    proc, took = kdx(tmp_path, "search", TINY, "--max-concurrent", "0")
    one_sentence(proc, "--max-concurrent: got 0")
    assert took < 2, took
    proc, took = kdx(tmp_path, "search", TINY, "--no-such-flag")
    assert "--no-such-flag" in one_sentence(proc, "search: unrecognized arguments") and took < 2, took
    proc, took = kdx(tmp_path, "search", TINY, "--resume", "--fresh")
    one_sentence(proc, "--fresh: ")
    assert took < 2, took


# A refusal of the arguments alone, run the way the `kdx` script runs main(); stdout: the heavy modules imported.
BEFORE_IMPORTS = ("import sys\nfrom kdx.cli import main\ntry:\n    code = main(sys.argv[1:])\n"
                  "except SystemExit as e:\n    code = e.code\n"
                  "print(','.join(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))\nsys.exit(code)\n")


@pytest.mark.parametrize("argv,starts", [
    (["train", "--bogus"], "train: the following arguments are required: --student"),
    (["train", "--student", "cnn1d_w4", "--bogus"], "train: unrecognized arguments: --bogus"),
    (["train", "--student", "cnn1d_w4", "--temperature", "hot"], "train: argument --temperature: invalid float"),
    (["teachers", "build", "--bogus"], "teachers build: the following arguments are required: --arch"),
    (["teachers", "build", "--arch", "cnn1d_w8", "--seeds", "x"], "teachers build: argument --seeds: got 'x'"),
    (["search", "does/not/exist.yaml"], "SPEC: got 'does/not/exist.yaml'; no such file"),
    (["validate", "does/not/exist.yaml"], "SPEC: got 'does/not/exist.yaml'; no such file"),
    (["validate", "."], "SPEC: got '.', a directory"),
    (["search", TINY, "--bogus"], "search: unrecognized arguments: --bogus"),
])
def test_argument_errors_are_one_sentence_before_torch_ray_or_mlflow(tmp_path, argv, starts):
    """Flags, commands and the spec's path are checked before torch, Ray or MLflow is imported (the flags
    that derive from the recipe, the dataset section and the methods come from explorer/cli/flags.py's rows)."""
    from explorer.cli.flags import CACHE, flag_rows, source_key

    flag_rows()  # the rows are cached (a fresh checkout computes them once, importing torch that time)
    assert json.loads(CACHE.read_text())["key"] == source_key()
    proc = subprocess.run([sys.executable, "-c", BEFORE_IMPORTS, *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    line = one_sentence(proc, starts)
    assert line.endswith("."), line
    assert proc.stdout.strip() == "", f"imported before refusing: {proc.stdout.strip()}"


def test_the_cached_flag_rows_are_the_definitions_own(tmp_path, monkeypatch):
    """The rows are a copy of the definitions, recomputed when the cache's key is not the sources' hash."""
    from explorer.cli import flags

    computed = json.loads(json.dumps(flags.compute_rows()))
    assert {r["name"] for r in computed["hparams"]} >= {"temperature", "alpha", "kd_stop_epoch"}
    stale = tmp_path / "kdx_flags.json"
    stale.write_text(json.dumps({"key": "stale", "rows": {"recipe": [], "dataset": [], "hparams": []}}))
    monkeypatch.setattr(flags, "CACHE", stale)
    monkeypatch.setattr(flags, "_rows", None)
    assert flags.flag_rows() == computed
    assert json.loads(stale.read_text()) == {"key": flags.source_key(), "rows": computed}


def test_negative_seeds_are_refused(tmp_path):
    proc, _ = kdx(tmp_path, "teachers", "build", "--arch", "cnn1d_w8", "--seeds", "-1")
    line = one_sentence(proc, "")
    assert "seed" in line and "-1" in line


def test_search_help_says_what_the_exit_status_means(tmp_path):
    proc, _ = kdx(tmp_path, "search", "--help")
    assert proc.returncode == 0
    text = proc.stdout
    assert "exit status" in text and "--fresh" in text
    for code in ("0", "2", "3", "4"):
        assert f"\n  {code}  " in text


# ------------------------------------------------------------------ kdx train and the teacher store


def test_train_gives_its_teacher_the_students_epochs_and_its_own_seed(tmp_path):
    """The teacher trains as long as the student unless --teacher-epochs says otherwise, and with
    --teacher-seed (0 unless given), never the student's --seed (12 student seeds share one teacher)."""
    store = tmp_path / "teachers"
    proc, _ = kdx(tmp_path, "train", "--student", "cnn1d_w4", "--teacher", "cnn1d_w8", "--epochs", "1", "--seed", "5",
                  "--store", str(store), "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch   1/1" in proc.stdout and "epoch   2/" not in proc.stdout
    assert json.loads(proc.stdout.strip().splitlines()[-1])["teacher_seed"] == 0
    (manifest,) = store.glob("*/manifest.json")
    recipe = json.loads(manifest.read_text())["recipe"]["train"]
    assert recipe["epochs"] == 1 and recipe["seed"] == 0
    proc, _ = kdx(tmp_path, "train", "--student", "cnn1d_w4", "--teacher", "cnn1d_w8", "--epochs", "1",
                  "--teacher-epochs", "2", "--teacher-seed", "3", "--store", str(store), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    recipes = sorted((r["epochs"], r["seed"]) for r in (json.loads(m.read_text())["recipe"]["train"]
                                                         for m in store.glob("*/manifest.json")))
    assert recipes == [(1, 0), (2, 3)]


def test_a_killed_build_is_listed_verified_and_collected(tmp_path):
    """SIGKILL a teacher build (kdx train building a long teacher) by PID: `teachers list` and `verify`
    show the orphan, `teachers gc` removes it; while the build is alive it is shown as being built."""
    store = tmp_path / "teachers"
    log = open(tmp_path / "train.log", "w")
    build = subprocess.Popen([*KDX, "train", "--student", "cnn1d_w4", "--teacher", "cnn1d_w32", "--epochs", "1",
                              "--teacher-epochs", "400", "--store", str(store), "--device", "cpu"],
                             cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and "teacher cnn1d_w32" not in (tmp_path / "train.log").read_text():
            assert build.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
            time.sleep(0.5)
        listing, _ = kdx(tmp_path, "teachers", "list", "--store", str(store))
        assert "being built now" in listing.stdout, listing.stdout
        gc, _ = kdx(tmp_path, "teachers", "gc", "--store", str(store))
        assert "0 orphan(s) removed" in gc.stdout and "1 build(s) in progress left alone" in gc.stdout
        pids = descendants(build.pid)
        os.kill(build.pid, signal.SIGKILL)
        build.wait(timeout=30)
        for pid in pids:
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
    finally:
        if build.poll() is None:
            stop_tree(build)
        log.close()
    (orphan,) = [p.name for p in store.iterdir() if p.is_dir()]
    listing, _ = kdx(tmp_path, "teachers", "list", "--store", str(store), "--json")
    listed = json.loads(listing.stdout.strip().splitlines()[-1])
    assert listed["teachers"] == [] and listed["incomplete"] == [{"key": orphan, "building": False}]
    verify, _ = kdx(tmp_path, "teachers", "verify", "--store", str(store))
    assert verify.returncode == 1 and orphan in verify.stdout and "kdx teachers gc" in verify.stdout
    gc, _ = kdx(tmp_path, "teachers", "gc", "--store", str(store))
    assert gc.returncode == 0 and f"removed {orphan}" in gc.stdout
    assert not (store / orphan).exists()
    verify, _ = kdx(tmp_path, "teachers", "verify", "--store", str(store))
    assert verify.returncode == 0, verify.stdout


# ------------------------------------------------------------------ run owners


def test_a_runs_owner_is_decided_by_pid_here_and_by_heartbeat_elsewhere():
    from trainables.tracking import owners

    assert owners._owner_state(owners.owner_tags()) == "alive"
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = owners.owner_tags() | {owners.OWNER_PID_TAG: str(gone.pid)}
    assert owners._owner_state(dead) == "dead"
    now = int(time.time())
    other = {owners.OWNER_HOST_TAG: "another-host", owners.OWNER_PID_TAG: "1"}
    assert owners._owner_state(other | {owners.HEARTBEAT_TAG: str(now)}) == "unknown"
    assert owners._owner_state(other | {owners.HEARTBEAT_TAG: str(now - 3600)}) == "dead"
    assert owners._owner_state({}) == "unknown"  # a run of an older kdx: left alone


def test_the_heartbeat_renews_open_runs_on_a_tracking_server(tmp_path):
    """Only this process's RUNNING runs of the experiment are renewed: the store says which (no list
    of open runs is kept); another process's run and an ended run of ours keep their heartbeat."""
    from mlflow.tracking import MlflowClient

    from trainables.tracking import owners

    with mlflow_server(tmp_path, wait_s=240) as uri:
        client = MlflowClient(tracking_uri=uri)
        exp_id = client.create_experiment("beat")
        stale = {owners.HEARTBEAT_TAG: "1"}
        mine = client.create_run(exp_id, tags=owners.owner_tags() | stale).info.run_id
        ended = client.create_run(exp_id, tags=owners.owner_tags() | stale).info.run_id
        client.set_terminated(ended, "FINISHED")
        theirs = client.create_run(exp_id, tags=owners.owner_tags() | stale | {owners.OWNER_PID_TAG: "1"}).info.run_id
        with owners.heartbeat(uri, exp_id, every_s=0.2):
            deadline = time.time() + 30
            while time.time() < deadline and client.get_run(mine).data.tags[owners.HEARTBEAT_TAG] == "1":
                time.sleep(0.3)
        beat = int(client.get_run(mine).data.tags[owners.HEARTBEAT_TAG])
        assert time.time() - beat < 60
        assert [client.get_run(r).data.tags[owners.HEARTBEAT_TAG] for r in (ended, theirs)] == ["1", "1"]
