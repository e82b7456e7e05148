"""Faults around `kdx search` and teacher builds, on real local Ray and a real SQLite MLflow store:
Ctrl-C and SIGKILL of the driver (by PID), reruns with and without --resume / --fresh, trials that
fail, resources no node has, and two builds of one teacher on a fresh store at the same time."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from kdxrun import TINY, completed_trials, kdx, start
from mlflow.tracking import MlflowClient
from procs import descendants, stop_tree

from explorer.tracking import ROLE_TAG, STATUS_TAG, TRIAL_ID_TAG

OWNER_PID = "kdx.owner.pid"


def small_spec(path: Path, **changes) -> Path:
    """tiny.yaml with one teacher, no ASHA and no baseline: every trial runs all its epochs."""
    spec = json.loads(json.dumps(TINY))
    spec.pop("confirm", None)
    spec.update(teachers={"archs": ["cnn1d_w8"], "stop_epochs": [2], "recipe": {"epochs": 2, "lr": 0.05}},
                baseline=False, search={"algorithm": "random", "num_samples": 4, "max_concurrent": 2, "asha": None},
                resources={"trial": {"cpus": 1}, "teacher": {"cpus": 1}, "retries": 0})
    spec["student"]["epochs"] = 30  # long enough that a kill lands mid-trial
    spec.update(changes)
    path.write_text(yaml.safe_dump(spec))
    return path


def runs(uri: str, name: str) -> list:
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(name)
        return client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    except Exception:  # the store is being created by the search
        return []


def running(uri, name):
    return [r for r in runs(uri, name) if r.info.status == "RUNNING"]


def wait_for_running_trial(proc, uri, name, log_path: Path, timeout=300) -> None:
    """Until a trial run of this driver is open (its metrics are written in batches, so the run, not
    its first epoch, says the trial started)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        if " built" in log_path.read_text() or " reused" in log_path.read_text():
            for r in running(uri, name):
                if r.data.tags.get(ROLE_TAG) == "trial" and r.data.tags.get(OWNER_PID) == str(proc.pid):
                    return
        time.sleep(1.0)
    raise AssertionError("no trial started: " + log_path.read_text()[-3000:])


def sigkill_tree(proc) -> None:
    """SIGKILL the driver by PID, then what it started (its Ray), by PID."""
    pids = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for_completed_and_running_trials(proc, uri, name, log_path: Path, timeout=300) -> None:
    """Until one trial of this search has completed and another is running (as MLflow records them)."""
    deadline = time.time() + timeout
    while completed_trials(uri, name) < 1 and time.time() < deadline:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        time.sleep(0.5)
    wait_for_running_trial(proc, uri, name, log_path, timeout=max(1.0, deadline - time.time()))


def test_interrupted_and_killed_searches_resume_leaving_no_run_running(tmp_path):
    """Ctrl-C, a refused rerun, --resume, SIGKILL of the driver, a rerun that closes the dead driver's
    runs, --resume to the end (nothing rebuilt, no trial run twice, no epoch logged twice), then --fresh."""
    spec = small_spec(tmp_path / "small.yaml", name="small")
    uri = f"sqlite:///{tmp_path / 'kdx_runs' / 'mlflow.db'}"
    epochs = yaml.safe_load(spec.read_text())["student"]["epochs"]

    # 1. Ctrl-C mid-trial, once a trial has completed: interrupted trials are counted as interrupted, and
    #    Ray's warnings are not shown.
    proc = start(tmp_path, "search", str(spec), log=tmp_path / "first.log")
    try:
        wait_for_completed_and_running_trials(proc, uri, "small", tmp_path / "first.log")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            stop_tree(proc)
    out = (tmp_path / "first.log").read_text()
    assert proc.returncode == 3, out[-3000:]
    final = [ln for ln in out.splitlines() if ln.startswith("search 'small' INTERRUPTED")]
    assert final and "interrupted" in final[0].split(":", 1)[1], out[-3000:]
    assert "pruned" not in out  # no ASHA here: nothing is pruned, whatever Ctrl-C stopped
    assert "FileNotFoundError" not in out and "Tuner.restore" not in out
    assert not running(uri, "small")
    done_before = {r.data.tags[TRIAL_ID_TAG] for r in runs(uri, "small")
                   if r.data.tags.get(ROLE_TAG) == "trial" and r.data.tags[STATUS_TAG] == "completed"}
    teachers_before = len([r for r in runs(uri, "small") if r.data.tags.get(ROLE_TAG) == "teacher"])
    assert done_before and teachers_before == 1

    # 2. Without --resume: refused in one sentence, nothing started.
    again = kdx(tmp_path, "search", str(spec), timeout=120)
    assert again.returncode == 2, again.stdout[-2000:] + again.stderr[-2000:]
    assert "already has a search" in again.stderr and "--resume" in again.stderr and "--fresh" in again.stderr
    assert len([ln for ln in again.stderr.splitlines() if ln.strip()]) == 1

    # 3. --resume, then SIGKILL the driver mid-trial: its parent and trial runs stay RUNNING (the fault).
    proc = start(tmp_path, "search", str(spec), "--resume", log=tmp_path / "second.log")
    try:
        wait_for_running_trial(proc, uri, "small", tmp_path / "second.log")
        sigkill_tree(proc)
    finally:
        if proc.poll() is None:
            stop_tree(proc)
    assert "reused" in (tmp_path / "second.log").read_text()  # the resumed search does not rebuild its teacher
    left = running(uri, "small")
    assert left and {r.data.tags[OWNER_PID] for r in left} == {str(proc.pid)}
    assert {r.data.tags[ROLE_TAG] for r in left} >= {"search", "trial"}

    # 4. Run again without --resume: the dead driver's runs are closed (KILLED), then the rerun is refused.
    again = kdx(tmp_path, "search", str(spec), timeout=120)
    assert again.returncode == 2 and "already has a search" in again.stderr, again.stderr[-2000:]
    assert f"closed {len(left)} run(s) left RUNNING by killed kdx process(es) (pid {proc.pid})" in again.stdout
    assert not running(uri, "small")
    killed = {r.info.run_id: r for r in runs(uri, "small")}
    assert all(killed[r.info.run_id].info.status == "KILLED" for r in left)

    # 5. --resume finishes the search: no run RUNNING, the planned trials each one run, the teacher reused,
    #    one parent run, and every trial's val_acc logged once per epoch (finished trials were not rerun).
    done = kdx(tmp_path, "search", str(spec), "--resume", "--json", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["trials"] == {"completed": 4}
    assert "reused" in done.stdout and "built" not in done.stdout.replace("reused", "")
    assert not running(uri, "small")
    everything = runs(uri, "small")
    trials = [r for r in everything if r.data.tags.get(ROLE_TAG) == "trial"]
    assert len(trials) == len({r.data.tags[TRIAL_ID_TAG] for r in trials}) == 4
    assert done_before <= {r.data.tags[TRIAL_ID_TAG] for r in trials}
    assert all(r.data.tags[STATUS_TAG] == "completed" for r in trials)
    assert len([r for r in everything if r.data.tags.get(ROLE_TAG) == "teacher"]) == teachers_before
    assert len([r for r in everything if r.data.tags.get(ROLE_TAG) == "search"]) == 1
    client = MlflowClient(tracking_uri=uri)
    for r in trials:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert steps == list(range(1, epochs + 1)), (r.info.run_name, steps)

    # 6. --fresh starts another search (a second parent run; the first one's Ray results moved aside).
    fresh = kdx(tmp_path, "search", str(spec), "--fresh", "--num-samples", "1", "--epochs", "1", "--json",
                timeout=600)
    assert fresh.returncode == 0, fresh.stdout[-3000:] + fresh.stderr[-3000:]
    assert json.loads(fresh.stdout.strip().splitlines()[-1])["trials"] == {"completed": 1}
    parents = [r for r in runs(uri, "small") if r.data.tags.get(ROLE_TAG) == "search"]
    assert len(parents) == 2 and all(r.info.status == "FINISHED" for r in parents)
    assert list((tmp_path / "kdx_runs" / "ray_results").glob("small.before-*"))
    assert not running(uri, "small")


def test_failed_trials_make_the_exit_status_and_parent_run_say_so(tmp_path):
    spec = small_spec(tmp_path / "failing.yaml", name="failing",
                      search={"algorithm": "random", "num_samples": 2, "max_concurrent": 1, "asha": None})
    spec_data = yaml.safe_load(spec.read_text())
    spec_data["student"]["epochs"] = 2
    spec.write_text(yaml.safe_dump(spec_data))
    proc = kdx(tmp_path, "search", str(spec), "--json", env={"KDX_INJECT_FAULT": f"1:{tmp_path / 'fault'}"})
    assert proc.returncode == 4, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["trials"] == {"completed": 1, "failed": 1}
    assert "1 trial(s) failed" in proc.stdout
    uri = f"sqlite:///{tmp_path / 'kdx_runs' / 'mlflow.db'}"
    (parent,) = [r for r in runs(uri, "failing") if r.data.tags.get(ROLE_TAG) == "search"]
    assert parent.info.status == "FAILED"


@pytest.mark.parametrize("field,value,words", [("gpus", 4, "has 0 GPUs"), ("cpus", 64, "CPUs")])
def test_resources_no_node_has_are_refused_before_any_run(tmp_path, field, value, words):
    spec = small_spec(tmp_path / "big.yaml", name="big",
                      resources={"trial": {"cpus": 1, field: value}, "teacher": {"cpus": 1}, "retries": 0})
    proc = kdx(tmp_path, "search", str(spec), timeout=180)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"kdx: error: resources.trial.{field}: got {value}; this cluster's largest node has")
    assert words in line and "Traceback" not in proc.stderr
    assert not runs(f"sqlite:///{tmp_path / 'kdx_runs' / 'mlflow.db'}", "big")  # no parent run, nothing built
    assert not (tmp_path / "kdx_runs" / "teachers").exists() or not any((tmp_path / "kdx_runs" / "teachers").iterdir())


def test_two_builds_of_one_teacher_on_a_fresh_store(tmp_path):
    """Two `kdx teachers build` of the same teacher at once, each with its own Ray, on a fresh SQLite
    store: the store is created once (no crash in MLflow's migration), the teacher is built once, and
    MLflow holds exactly one teacher run, FINISHED (the waiter opens none)."""
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    args = ["teachers", "build", "--arch", "cnn1d_w16", "--epochs", "6", "--store", str(tmp_path / "teachers"),
            "--tracking-uri", uri, "--num-cpus", "1", "--json"]
    procs = [start(tmp_path, *args, log=tmp_path / f"build{i}.log") for i in range(2)]
    try:
        for proc in procs:
            proc.wait(timeout=400)
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop_tree(proc)
    outs = [(tmp_path / f"build{i}.log").read_text() for i in range(2)]
    for proc, out in zip(procs, outs):
        assert proc.returncode == 0, out[-3000:]
        assert "Traceback" not in out
    statuses = sorted(json.loads(out.strip().splitlines()[-1])["teachers"][0]["status"] for out in outs)
    assert statuses == ["built", "reused"]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("kdx_teachers")
    from mlflow.entities import ViewType

    all_runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
    assert [(r.info.status, r.info.lifecycle_stage) for r in all_runs] == [("FINISHED", "active")]
