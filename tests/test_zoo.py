"""Tests for trainables.zoo and `kdx teachers`: real local Ray (2 CPUs), real MLflow (SQLite in
tmp_path), real training of tiny teachers on the bundled digits."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray
from mlflow.tracking import MlflowClient

from explorer.config import TrainConfig
from explorer.data.condition import DataSpec
from explorer.errors import KdxError
from explorer.storage import TeacherStoreWarning
from explorer.teachers.store import TeacherRecipe, TeacherStore
from explorer.tracking import ROLE_TAG, ROLE_TEACHER, TEACHER_KEY_TAG
from explorer.training.build import ensure_teacher
from kdx import cli
from trainables import zoo
from trainables.locks import lock_registry, ray_key_lock, store_lock
from trainables.zoo import build_zoo


def recipe(arch, epochs=3, seed=0, batch_size=64, dataset="digits", data_dir=None):
    return TeacherRecipe(DataSpec(dataset, data_dir=data_dir),
                         TrainConfig(arch, epochs=epochs, lr=0.05, batch_size=batch_size, seed=seed,
                                     schedule="cosine"))


# ------------------------------------------------------------------ one local Ray for the module


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


# ------------------------------------------------------------------ CLI


def test_cli_teachers_build_list_verify(local_ray, tmp_path, capsys):
    """`kdx teachers build` uses the Ray it finds running (else it starts a local one, and stops it)."""
    store = str(tmp_path / "teachers")
    build = ["teachers", "build", "--dataset", "digits", "--arch", "mlp_16x1,mlp_24x1", "--epochs", "2",
             "--stop-epochs", "1", "--lr", "0.05", "--store", store, "--json"]
    assert cli.main(build) == 0
    out = capsys.readouterr().out
    assert ray.is_initialized()  # not ours to stop
    lines = out.strip().splitlines()
    assert sum(" built " in ln for ln in lines) == 2 and "2 built, 0 reused, 0 failed" in out
    assert all("e1 val" in ln and "e2 val" in ln for ln in lines if " built " in ln)
    built = json.loads(lines[-1])
    assert [t["status"] for t in built["teachers"]] == ["built", "built"]

    assert cli.main(["teachers", "list", "--store", store, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert listed["store"] == store
    assert sorted(t["key"] for t in listed["teachers"]) == sorted(t["key"] for t in built["teachers"])
    for t in listed["teachers"]:
        assert t["stop_epochs"] == [1, 2] and t["params"] > 0 and t["size_bytes"] > 0
        assert set(t["checkpoints"]) == {"1", "2"} and 0 <= t["checkpoints"]["2"]["test_acc"] <= 1
    assert cli.main(["teachers", "list", "--store", store]) == 0
    assert "mlp_16x1 e2 s0" in capsys.readouterr().out

    assert cli.main(["teachers", "verify", "--store", store]) == 0
    assert "ok: 2 teachers, 4 checkpoints verified" in capsys.readouterr().out
    key = built["teachers"][0]["key"]
    with open(os.path.join(store, key, "ckpt_e1.pt"), "ab") as f:
        f.write(b"x")
    assert cli.main(["teachers", "verify", "--store", store]) == 1
    out = capsys.readouterr().out
    assert f"{key}/ckpt_e1.pt: checksum mismatch" in out and "1 broken file(s)" in out
    # Building again rebuilds exactly the broken teacher and reuses the other one.
    assert cli.main(build) == 0
    again = {t["key"]: t["status"] for t in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["teachers"]}
    assert again == {t["key"]: ("built" if t["key"] == key else "reused") for t in built["teachers"]}
    assert cli.main(["teachers", "verify", "--store", store]) == 0

    # Bad input: one sentence, before Ray starts.
    assert cli.main(build[:-1] + ["--stop-epochs", "3"]) == 2
    assert "stop_epochs: got 3; allowed: whole numbers from 1 to 2" in capsys.readouterr().err
    assert cli.main(build[:-1] + ["--address", "auto", "--num-cpus", "2"]) == 2
    assert "--num-cpus: got 2; allowed: a whole number >= 1, only with a local Ray" in capsys.readouterr().err


# ------------------------------------------------------------------ the zoo


def _runs(uri, experiment):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def test_build_zoo_parallel_reuse_and_failure(local_ray, tmp_path):
    store_root = str(tmp_path / "teachers")
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    good = [recipe("mlp_16x1"), recipe("mlp_32x1"), recipe("mlp_32x1", seed=1)]
    broken = recipe("resnet8", epochs=2, dataset="cifar10", data_dir=str(tmp_path / "no_cifar_here"))
    requests = [(r, [1]) for r in good] + [(broken, [])]

    results = build_zoo(requests, store_root, cpus_per_teacher=1, retries=1, tracking_uri=uri, experiment="zoo")
    assert [r.key for r in results] == [r.key() for r, _ in requests]
    assert [r.status for r in results] == ["built", "built", "built", "failed"], [r.error for r in results]
    failed = results[3]
    assert failed.record is None and "no CIFAR-10 data found" in failed.error and "no_cifar_here" in failed.error
    for res in results[:3]:
        assert res.error is None and res.record.stop_epochs == [1, 3] and res.label.startswith("mlp_")

    client, runs = _runs(uri, "zoo")
    teacher_runs = [r for r in runs if r.data.tags.get(ROLE_TAG) == ROLE_TEACHER]
    by_key = {r.data.tags[TEACHER_KEY_TAG]: r for r in teacher_runs}
    assert len(teacher_runs) == 4 and set(by_key) == {r.key for r in results}  # the bad recipe was not retried
    for res in results[:3]:
        run = by_key[res.key]
        assert run.info.status == "FINISHED"
        assert run.data.params["train.arch"] == res.record.arch and run.data.params["teacher_key"] == res.key
        hist = client.get_metric_history(run.info.run_id, "val_acc")
        assert sorted(m.step for m in hist) == [1, 2, 3]
        assert {m.step: m.value for m in hist}[3] == pytest.approx(res.record.checkpoints[3]["val_acc"])
    assert by_key[failed.key].info.status == "FAILED"
    assert "no CIFAR-10 data found" in by_key[failed.key].data.tags["error"]
    # Built in parallel: with 2 CPUs at least two builds were running at the same time.
    spans = sorted((by_key[r.key].info.start_time, by_key[r.key].info.end_time) for r in results[:3])
    assert any(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1)), spans

    # Second call: every teacher is reused at once, without a task (no new MLflow run, no training).
    t0 = time.perf_counter()
    again = build_zoo([(r, [1]) for r in good], store_root, tracking_uri=uri, experiment="zoo")
    assert time.perf_counter() - t0 < 2.0
    assert [r.status for r in again] == ["reused"] * 3
    assert [r.record.checkpoints for r in again] == [r.record.checkpoints for r in results[:3]]
    assert len(_runs(uri, "zoo")[1]) == 4


def test_ray_lock_builds_once_across_tasks(local_ray, tmp_path):
    """The object-store path: the lock is the named Ray actor, not a file."""
    root = str(tmp_path / "teachers")
    r = recipe("mlp_24x1", epochs=3, batch_size=16)
    refs = [zoo._build_remote.remote(r, [2], root, "ray", 1) for _ in range(2)]
    outs = ray.get(refs)
    assert sorted(o["status"] for o in outs) == ["built", "reused"]
    assert outs[0]["record"].checkpoints == outs[1]["record"].checkpoints
    (rec,) = TeacherStore(root).list()
    assert len(rec.builds) == 1
    assert not (tmp_path / "teachers" / f"{rec.key}.lock").exists()  # no file lock was used

    # The registry's lease: a holder that stops renewing loses the lock.
    actor = lock_registry()
    assert ray.get(actor.acquire.remote("k", "a", 0.3))
    assert not ray.get(actor.acquire.remote("k", "b", 5))
    time.sleep(0.4)
    assert ray.get(actor.acquire.remote("k", "b", 5))
    assert not ray.get(actor.release.remote("k", "a")) and ray.get(actor.release.remote("k", "b"))


def test_store_uses_the_injected_lock_and_warns_without_one_on_object_stores(tmp_path):
    """explorer takes its build lock from outside; on an object store with none injected it says so."""
    held = []

    @contextlib.contextmanager
    def provider(key):
        held.append(key)
        yield

    r = recipe("mlp_16x1", epochs=1)
    store = TeacherStore(str(tmp_path / "teachers"), lock=provider)
    assert ensure_teacher(store, r, [])[1] and held == [r.key()]
    assert not (tmp_path / "teachers" / f"{r.key()}.lock").exists()  # the default file lock was not used
    with pytest.raises(KdxError, match="lock: got 'ray'; allowed: a callable"):
        TeacherStore(str(tmp_path / "other"), lock="ray")
    # pyarrow's in-memory mock:// filesystem stands in for an object store: no lock file is possible.
    mem = TeacherStore("mock:///teachers")
    assert not mem.local
    with pytest.warns(TeacherStoreWarning, match="no cross-process lock"):
        rec, built = ensure_teacher(mem, r, [])
    assert built and mem.verify() == [] and mem.load_model(rec.key)[1]["epoch"] == 1
    assert held == [r.key()]


def test_the_store_needs_no_ray():
    """The lock lives on the Ray side: importing the store (recipe, storage) loads no Ray module."""
    code = "import sys, explorer.teachers.store; assert not [m for m in sys.modules if m.split('.')[0] == 'ray'], 'ray'"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=repo))


def test_store_lock_choice(local_ray, tmp_path):
    """What build tasks inject: the Ray lock registry on object stores, the file lock elsewhere."""
    assert store_lock("auto", str(tmp_path)) is None and store_lock("auto", f"file://{tmp_path}") is None
    assert store_lock("auto", "s3://bucket/teachers") is ray_key_lock
    assert store_lock("ray", str(tmp_path)) is ray_key_lock
    assert store_lock("file", str(tmp_path)) is None
    with pytest.raises(KdxError, match="lock: got 'file'; a file lock needs a local or shared-filesystem store"):
        store_lock("file", "s3://bucket/teachers")
    with pytest.raises(KdxError, match="lock: got 'nfs'; allowed: auto, file, ray"):
        store_lock("nfs", str(tmp_path))


def test_build_zoo_validates_before_any_task(local_ray, tmp_path):
    with pytest.raises(KdxError, match="stop_epochs: got 9"):
        build_zoo([(recipe("mlp_16x1"), [9])], str(tmp_path))
    with pytest.raises(KdxError, match="gpus_per_teacher"):
        build_zoo([(recipe("mlp_16x1"), [1])], str(tmp_path), gpus_per_teacher=-1)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ crashed builds (last: they kill workers)


def test_killed_build_is_retried_and_resumes_from_its_last_checkpoint(local_ray, tmp_path):
    store_root = tmp_path / "teachers"
    r = recipe("mlp_32x1", epochs=30, batch_size=8)
    manifest = store_root / r.key() / "manifest.json"
    out = {}
    thread = threading.Thread(target=lambda: out.update(res=build_zoo([(r, [1])], str(store_root), retries=1)))
    thread.start()
    deadline = time.time() + 90
    while not manifest.exists():  # the worker has committed epoch 1
        assert time.time() < deadline and thread.is_alive()
        time.sleep(0.02)
    pid = json.loads(manifest.read_text())["builds"][0]["pid"]
    os.kill(pid, signal.SIGKILL)  # the Ray worker process that runs this build (it wrote its pid)
    thread.join(timeout=120)
    (res,) = out["res"]
    assert res.status == "built", res.error
    builds = res.record.builds
    assert len(builds) == 2 and builds[0]["pid"] == pid and builds[1]["pid"] != pid
    assert builds[1]["resumed_from"][0] >= 1  # the retry resumed from a committed checkpoint
    assert res.record.stop_epochs == [1, 30] and TeacherStore(str(store_root)).verify() == []


def test_killed_build_without_retries_is_reported_failed(local_ray, tmp_path):
    store_root = tmp_path / "teachers"
    r = recipe("mlp_16x1", epochs=30, batch_size=8)
    manifest = store_root / r.key() / "manifest.json"
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    out = {}
    thread = threading.Thread(target=lambda: out.update(res=build_zoo([(r, [1]), (recipe("mlp_16x1", epochs=2), [])],
                                                                      str(store_root), retries=0, tracking_uri=uri,
                                                                      experiment="killed")))
    thread.start()
    deadline = time.time() + 90
    while not manifest.exists():
        assert time.time() < deadline and thread.is_alive()
        time.sleep(0.02)
    os.kill(json.loads(manifest.read_text())["builds"][0]["pid"], signal.SIGKILL)
    thread.join(timeout=120)
    killed, other = out["res"]
    assert killed.status == "failed" and "Worker" in killed.error and killed.record is None
    assert other.status == "built"
    # The driver writes the runs, so a killed worker leaves no run stuck RUNNING: its failure is recorded.
    runs = {r.data.tags[TEACHER_KEY_TAG]: r for r in _runs(uri, "killed")[1]}
    assert runs[killed.key].info.status == "FAILED" and "Worker" in runs[killed.key].data.tags["error"]
    assert runs[other.key].info.status == "FINISHED" and len(runs) == 2


def test_the_build_progress_line_counts_builds_epochs_and_an_eta():
    from trainables.build_progress import build_line

    epochs, labels = {"a": 10, "b": 4, "c": 6}, {"a": "w64", "b": "w8", "c": "w16"}
    line = build_line(epochs, labels, reached={"a": 3, "b": 4}, done={"b", "reused-elsewhere"}, elapsed=70)
    # b finished (4 epochs), a reached 3 of 10, c not started: 7 of 20 epochs in 70 s, so 13 more take ~130 s
    assert line == "[teachers] 1/3 finished, 7/20 epochs, elapsed 0:01:10, ETA ~0:02:10 | w64 epoch 3/10"
    assert "ETA ~-" in build_line(epochs, labels, {}, set(), elapsed=5)
