"""`kdx search` end to end on real local Ray and real MLflow (SQLite file and an `mlflow server`)."""

import glob
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from kdxrun import TINY, by_role, kdx, runs_of, write_spec
from procs import free_port, mlflow_server, stop_tree

from explorer.data.splits import load_splits
from explorer.spec.search import parse_spec
from explorer.tracking import EARLIER_EPOCHS, MEMBER_TAG, PRUNED, STATUS_TAG, TEACHER_KEY_TAG
from explorer.training.loop import Trainer
from trainables.clock import TRIAL_EPOCHS
from trainables.plan import make_plan

STORAGE = "shared"  # the `searched` fixture's --storage, under its directory


@pytest.fixture(scope="module")
def searched(tmp_path_factory, shared_ray):
    """The quickstart shrunk (tests/specs/tiny.yaml): 2 teachers x 2 stop epochs, 8 Optuna trials, 2 baselines;
    with an explicit --storage (results and teachers under ./shared), the tracking store at its default, on
    the session's Ray cluster (--address; the local default is the interrupted and crashed searches')."""
    cwd = tmp_path_factory.mktemp("search")
    # report_seconds 60: a trial reports to Tune only at the rungs (epochs 1 and 3) and at its last epoch
    spec = write_spec(cwd / "tiny.yaml", search=TINY["search"] | {"asha": {"grace_period": 1, "reduction_factor": 3},
                                                                   "report_seconds": 60})
    proc = kdx(cwd, "search", str(spec), "--storage", STORAGE, "--json", *shared_ray.args, env=shared_ray.env)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return cwd, proc


def test_reports_come_at_rungs_and_the_last_epoch_carrying_the_epochs_between(searched):
    """Tune hears a search trial at ASHA's rungs (1, 3) and its last epoch (4), the baseline (no ASHA) at
    its last epoch only; each report carries the epochs since the previous one, which MLflow logs as
    steps of their own (`test_every_trial_is_a_child_run_with_epoch_metrics`)."""
    cwd, _ = searched
    seen = {}
    for result_file in glob.glob(str(cwd / STORAGE / "ray_results" / "*" / "*" / "result.json")):
        lines = [json.loads(line) for line in Path(result_file).read_text().splitlines()]
        seen[result_file] = [(r["epoch"], [e["epoch"] for e in r.get(EARLIER_EPOCHS, ())]) for r in lines]
        # every report says how long its trial is (trainables/clock.py): KD and CE trials, the student's epochs
        assert {r[TRIAL_EPOCHS] for r in lines} == {4}, result_file
    search = [v for k, v in seen.items() if "__baseline" not in k]
    baseline = [v for k, v in seen.items() if "__baseline" in k]
    assert len(search) == 8 and len(baseline) == 2, sorted(seen)
    assert all(v == [(1, []), (3, [2]), (4, [])][:len(v)] for v in search), search
    assert [(1, []), (3, [2]), (4, [])] in search  # at least one trial ran to its end
    assert baseline == [[(4, [1, 2, 3])]] * 2


def test_every_trial_is_a_child_run_with_epoch_metrics(searched):
    cwd, proc = searched
    uri = f"sqlite:///{cwd / 'kdx_runs' / 'mlflow.db'}"
    client, runs = runs_of(uri, "tiny")
    parents = by_role(runs, "search")
    trials = by_role(runs, "trial")
    assert len(parents) == 1
    assert len(trials) == 8 + 2  # searched + one CE baseline per seed
    for r in trials:
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert r.info.status in ("FINISHED", "FAILED", "KILLED")
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert steps == list(range(1, len(steps) + 1)) and steps
        for p in ("student_params", "teacher_params", "capacity_ratio", "teacher", "temperature", "alpha"):
            assert p in r.data.params
        if r.data.tags[STATUS_TAG] == "completed":
            assert len(steps) == 4
    baselines = [r for r in trials if r.data.tags["kdx.kind"] == "baseline"]
    assert sorted(r.data.params["seed"] for r in baselines) == ["0", "1"]
    assert all(r.data.tags[STATUS_TAG] == "completed" for r in baselines)  # never pruned
    assert not [r for r in runs if r.info.status == "RUNNING"]
    artifacts = [a.path for a in client.list_artifacts(parents[0].info.run_id)]
    assert "spec.yaml" in artifacts
    # the MLflow UI: the classic ML view, artifacts beside the store, the parent named after the spec
    exp = client.get_experiment_by_name("tiny")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.artifact_location == (cwd / "kdx_runs" / "artifacts").as_uri()
    assert parents[0].info.run_name.startswith("tiny search ")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    # the reported best is the completed search trial with the highest final val_acc in MLflow
    done = [r for r in trials if r.data.tags["kdx.kind"] == "search" and r.data.tags[STATUS_TAG] == "completed"]
    best = max(done, key=lambda r: r.data.metrics["val_acc"])
    assert summary["best"]["val_acc"] == pytest.approx(best.data.metrics["val_acc"])
    assert summary["best"]["teacher"] == best.data.params["teacher"]
    assert summary["best"]["temperature"] == pytest.approx(float(best.data.params["temperature"]))
    assert summary["best"]["alpha"] == pytest.approx(float(best.data.params["alpha"]))
    assert not summary["interrupted"]
    assert "mlflow ui --backend-store-uri" in proc.stdout
    # the teacher builds showed their progress before the search began (trainables/build_progress.py)
    assert "[teachers] 2/2 finished, 8/8 epochs" in proc.stdout


def test_each_teacher_built_once_and_pruned_trials_told_to_optuna(searched):
    cwd, _ = searched
    client, runs = runs_of(f"sqlite:///{cwd / 'kdx_runs' / 'mlflow.db'}", "tiny")
    teacher_keys = [r.data.tags[TEACHER_KEY_TAG] for r in by_role(runs, "teacher")]
    assert len(teacher_keys) == 2 and len(set(teacher_keys)) == 2  # two archs, stop epochs share one run
    used = {r.data.tags[TEACHER_KEY_TAG] for r in by_role(runs, "trial")} - {"none"}
    assert used <= set(teacher_keys)
    pruned = [r for r in by_role(runs, "trial") if r.data.tags[STATUS_TAG] == PRUNED]
    assert pruned, "ASHA with grace 1 and reduction 3 over 8 trials should stop some"
    for r in pruned:
        assert len(client.get_metric_history(r.info.run_id, "val_acc")) < 4
    # The searcher state Ray saved (our own file): Optuna holds PRUNED, not COMPLETE, for those trials.
    (state_file,) = glob.glob(str(cwd / STORAGE / "ray_results" / "tiny" / "searcher-state-*.pkl"))
    with open(state_file, "rb") as f:
        study = pickle.load(f)["_ot_study"]
    states = [t.state.name for t in study.trials]
    assert states.count("PRUNED") == len(pruned) and states.count("COMPLETE") == 8 - len(pruned)


def test_crashed_trial_retries_from_its_checkpoint(tmp_path):
    marker = tmp_path / "crashed-once"
    spec = write_spec(tmp_path / "tiny.yaml", baseline=False,  # checkpoint_seconds 0: a checkpoint every epoch
                      search=TINY["search"] | {"num_samples": 2, "asha": None, "checkpoint_seconds": 0})
    proc = kdx(tmp_path, "search", str(spec), "--json", env={"KDX_INJECT_FAULT": f"3:{marker}"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert marker.exists()  # the fault did fire
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["trials"] == {"completed": 2}
    restored = []
    for result_file in glob.glob(str(tmp_path / "kdx_runs" / "ray_results" / "tiny" / "*" / "result.json")):
        last = json.loads(Path(result_file).read_text().strip().splitlines()[-1])
        assert last["epoch"] == 4 and last["training_iteration"] == 4
        if last["iterations_since_restore"] < last["training_iteration"]:
            restored.append(last)
    # exactly one trial crashed at epoch 3; it came back from its epoch-2 checkpoint, not epoch 0
    assert len(restored) == 1 and restored[0]["iterations_since_restore"] == 2
    client, runs = runs_of(f"sqlite:///{tmp_path / 'kdx_runs' / 'mlflow.db'}", "tiny")
    for r in by_role(runs, "trial"):
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")] == [1, 2, 3, 4]


def test_two_node_cluster_runs_trials_on_both_nodes_logging_to_a_real_mlflow_server(tmp_path):
    """A search joins a two-node Ray cluster (--address) and tracks to a real `mlflow server` (--tracking-uri):
    its trials run on both nodes, every run reaches the server and nothing goes to the local default store.
    (One search for both: the cluster and the server were two tests, two searches, before issue 22.)"""
    port = free_port()
    # Ray keeps Unix sockets in its temp dir: pytest's tmp paths are too long for them (107 bytes).
    temp_dir = tempfile.mkdtemp(prefix="kdx-ray-", dir="/tmp")
    env = os.environ | {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    common = ["--block", "--num-cpus=1", "--disable-usage-stats"]
    begun = time.monotonic()
    head = subprocess.Popen([ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=false",
                             f"--temp-dir={temp_dir}", *common], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        with mlflow_server(tmp_path) as uri:  # starts while the head does
            time.sleep(max(0.0, 8 - (time.monotonic() - begun)))
            worker = subprocess.Popen([ray_bin, "start", f"--address=127.0.0.1:{port}", *common], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(8)
            spec = write_spec(tmp_path / "tiny.yaml", baseline=False,
                              search=TINY["search"] | {"num_samples": 4, "asha": None, "max_concurrent": 2},
                              teachers=TINY["teachers"] | {"archs": ["cnn1d_w8"], "stop_epochs": [4]})
            proc = kdx(tmp_path, "search", str(spec), "--address", f"127.0.0.1:{port}", "--tracking-uri", uri,
                       "--json", env=env, timeout=240)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            nodes = set()
            for result_file in glob.glob(str(tmp_path / "kdx_runs" / "ray_results" / "tiny" / "*" / "result.json")):
                nodes |= {json.loads(line)["node_id"] for line in Path(result_file).read_text().splitlines()}
            assert len(nodes) == 2, nodes
            # the runs reached the real MLflow server
            _, runs = runs_of(uri, "tiny")
            assert len(by_role(runs, "trial")) == 4 and len(by_role(runs, "teacher")) == 1
            assert not (tmp_path / "kdx_runs" / "mlflow.db").exists()  # nothing went to the local default
    finally:
        for p in (worker, head):
            if p is not None:
                stop_tree(p)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_unreachable_tracking_server_is_one_sentence_within_seconds(tmp_path):
    spec = write_spec(tmp_path / "tiny.yaml")
    start = time.monotonic()
    proc = kdx(tmp_path, "search", str(spec), "--tracking-uri", f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 2
    assert time.monotonic() - start < 30
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "--tracking-uri" in err[0] and "no MLflow tracking server" in err[0]
    assert not (tmp_path / "kdx_runs" / "ray_results").exists()  # no trial started


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path):
    spec = write_spec(tmp_path / "tiny.yaml")
    proc = kdx(tmp_path, "search", str(spec), "--dry-run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("-> build") == 2 and "trials: 8" in proc.stdout
    assert not (tmp_path / "kdx_runs").exists()


def test_diverging_trials_end_as_diverged_and_the_search_carries_on(tmp_path, shared_ray):
    spec = write_spec(tmp_path / "tiny.yaml", student=TINY["student"] | {"lr": 1.0e6}, baseline=False,
                      teachers=TINY["teachers"] | {"archs": ["cnn1d_w8"], "stop_epochs": [4]},
                      search=TINY["search"] | {"num_samples": 2, "asha": None})
    proc = kdx(tmp_path, "search", str(spec), "--json", *shared_ray.args, env=shared_ray.env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["trials"] == {"diverged": 2}
    client, runs = runs_of(f"sqlite:///{tmp_path / 'kdx_runs' / 'mlflow.db'}", "tiny")
    trials = by_role(runs, "trial")
    assert [r.data.tags[STATUS_TAG] for r in trials] == ["diverged", "diverged"]
    for r in trials:  # the diverged epoch's report carries no measured val_acc, so none is logged
        assert not [m for m in client.get_metric_history(r.info.run_id, "val_acc") if m.value == 0.0]
    assert all(r.info.status == "FAILED" for r in trials)
    (state_file,) = glob.glob(str(tmp_path / "kdx_runs" / "ray_results" / "tiny" / "searcher-state-*.pkl"))
    with open(state_file, "rb") as f:
        assert [t.state.name for t in pickle.load(f)["_ot_study"].trials] == ["FAIL", "FAIL"]


def test_confirm_then_analyze_on_the_real_search(searched, shared_ray):
    """`kdx confirm` re-runs every cell's best config and the baseline with the spec's fresh seeds;
    `kdx analyze` reads it all back and states the confirmed answer first.

    The search was given --storage, the confirmation is not (as the README's command table shows it):
    the confirmation still belongs to the search (issue 22): it adds its trials under the search's
    parent run and keeps its results beside the search's, reusing the search's teachers."""
    cwd, _ = searched
    proc = kdx(cwd, "confirm", "tiny", "--json", *shared_ray.args, env=shared_ray.env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert glob.glob(str(cwd / STORAGE / "ray_results" / "tiny__confirm_*" / "*" / "result.json"))
    assert not (cwd / "kdx_runs" / "ray_results").exists() and not (cwd / "kdx_runs" / "teachers").exists()
    assert "reused" in proc.stdout and " built" not in proc.stdout  # the search's teachers
    client, runs = runs_of(f"sqlite:///{cwd / 'kdx_runs' / 'mlflow.db'}", "tiny")
    trials = by_role(runs, "trial")
    searched_runs = [r for r in trials if r.data.tags["kdx.kind"] == "search"
                     and r.data.tags[STATUS_TAG] in ("completed", "pruned")]
    cells = {(r.data.params["teacher"], r.data.params["teacher_stop_epoch"]) for r in searched_runs}
    confirm = [r for r in trials if r.data.tags["kdx.kind"] == "confirm"]
    # every config's two seeds train fused (confirm.fuse), and the cells' configs, which differ only in
    # teacher, T and alpha, share one fused model (confirm.members_per_trial 24 >= 2 x cells); the CE baseline
    # is another: two Ray trials, one MLflow run per member, each member's own config in its params
    assert json.loads(proc.stdout.strip().splitlines()[-1])["trials"] == {"completed": 2}
    assert f"({2 * len(cells) + 2} runs train as members of the 2 fused ones, one model per trial)" in proc.stdout
    assert len(confirm) == 2 * len(cells) + 2 and all(r.data.tags[STATUS_TAG] == "completed" for r in confirm)
    assert len({r.data.tags["trial_id"] for r in confirm}) == 2
    for r in confirm:  # the member tag: the seed, or a member of several configs' trial, its own point
        tag = r.data.tags[MEMBER_TAG]
        own = {"seed": int(tag)} if r.data.params["teacher"] == "none" else json.loads(tag)
        assert {k: str(v) for k, v in own.items()} == {k: r.data.params[k] for k in own}
    # each member distilled from its own teacher: its teacher's val accuracy is the one its cell's search
    # trials logged
    for r in confirm:
        if r.data.params["teacher"] != "none":
            same = [q for q in searched_runs if q.data.tags[TEACHER_KEY_TAG] == r.data.tags[TEACHER_KEY_TAG]
                    and q.data.params["teacher_stop_epoch"] == r.data.params["teacher_stop_epoch"]]
            assert r.data.metrics["teacher_val_acc"] == pytest.approx(same[0].data.metrics["teacher_val_acc"])
    # a fused member is its seed's solo run: the CE baseline's seed-101 member, trained alone here, ends at
    # the same test accuracy (within one test sample: fused and solo sums may round differently)
    spec = parse_spec(TINY)
    splits = load_splits(spec.data_spec())
    alone = make_plan(spec, str(cwd / "unused_store")).settings({"method": "ce", "teacher": "none", "seed": 101})
    solo = Trainer(alone["train"], splits, device="cpu").run()[-1]
    (member,) = [r for r in confirm if r.data.params["teacher"] == "none" and r.data.params["seed"] == "101"]
    assert member.data.metrics["test_acc"] == pytest.approx(solo["test_acc"], abs=1.01 / len(splits.test_y))
    assert member.data.metrics["val_acc"] == pytest.approx(solo["val_acc"], abs=1.01 / len(splits.val_y))
    assert all(r.info.run_name.startswith("confirm ") for r in confirm)
    # fresh seeds only (the search used 0 and 1), each cell and the baseline with both
    assert sorted(r.data.params["seed"] for r in confirm) == sorted(["100", "101"] * (len(cells) + 1))
    assert sorted(r.data.params["teacher"] for r in confirm).count("none") == 2  # the CE baseline, twice
    assert len(by_role(runs, "search")) == 1  # same parent run
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # each cell's confirmed config is that cell's best completed search trial, at its searched values
    # (a cell whose trials were all pruned: its best pruned trial, so it is measured rather than dropped)
    for cell in cells:
        tried = [r for r in searched_runs if (r.data.params["teacher"], r.data.params["teacher_stop_epoch"]) == cell]
        done = [r for r in tried if r.data.tags[STATUS_TAG] == "completed"]
        best = max(done or tried, key=lambda r: r.data.metrics["val_acc"])
        mine = [r for r in confirm if (r.data.params["teacher"], r.data.params["teacher_stop_epoch"]) == cell]
        assert len(mine) == 2
        for r in mine:
            for p in ("temperature", "alpha"):
                assert r.data.params[p] == best.data.params[p], p

    out = cwd / "report"
    proc = kdx(cwd, "analyze", "tiny", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    trial_runs = by_role(runs, "trial")
    assert summary["trials"]["total"] == len(trial_runs) == 8 + 2 + 2 * len(cells) + 2
    (student,) = summary["students"]
    # the search summary's best run is a search run: the confirmation's seeds answer only the confirmed cells
    distilled = [r for r in trial_runs if r.data.tags[STATUS_TAG] == "completed" and r.data.params["teacher"] != "none"
                 and r.data.tags["kdx.kind"] == "search"]
    top = max(distilled, key=lambda r: r.data.metrics["val_acc"])
    assert student["student"] == "cnn1d_w4" and student["val_acc"] == pytest.approx(top.data.metrics["val_acc"])
    assert student["teacher"] == top.data.params["teacher"]
    assert f"val {student['val_acc']:.4f}" in proc.stdout  # the printed summary says the same
    for name in ("report.md", "report.html", "trials.csv", "confirmed.png", "capacity_curve.png", "kd_gain_forest.png"):
        assert (out / name).stat().st_size > 0, name
    # the confirmed answer comes first, on the terminal and in the report, every point on 2 fresh seeds
    confirmed = summary["confirmed"]["cnn1d_w4"]
    assert confirmed["confirmed"] and confirmed["min_seeds"] == 2 and confirmed["n_cells"] == len(cells)
    assert "the best cell on validation is" in proc.stdout.splitlines()[1]
    report = (out / "report.md").read_text()
    assert report.index("## Answer") < report.index("## 1. Trials by status")
    parent = client.get_run(by_role(runs, "search")[0].info.run_id)
    attached = [a.path for a in client.list_artifacts(parent.info.run_id, "analysis")]
    assert any(p.endswith("report.html") for p in attached)
    # the parent run carries the headline numbers, equal to the summary's
    g = confirmed["kd_gain"]["test_acc"]
    assert parent.data.metrics["kd_gain_test"] == pytest.approx(g["diff"])
    assert parent.data.metrics["best_test_acc"] == pytest.approx(confirmed["best"]["test_mean"])
    assert parent.data.metrics["best_n_seeds"] == 2


def test_a_confirmation_refuses_a_storage_or_name_that_is_not_its_searchs(searched):
    """The search's parent run records where its files are; a confirmation told another --storage, or
    the name of no search, is refused in one sentence before anything starts."""
    cwd, _ = searched
    _, runs = runs_of(f"sqlite:///{cwd / 'kdx_runs' / 'mlflow.db'}", "tiny")
    (parent,) = by_role(runs, "search")
    assert parent.data.tags["kdx.storage"] == str(cwd / STORAGE)
    other = kdx(cwd, "confirm", "tiny", "--storage", "elsewhere")
    err = other.stderr.strip().splitlines()
    assert other.returncode == 2 and len(err) == 1, other.stderr[-3000:]
    assert "--storage" in err[0] and "'elsewhere'" in err[0] and str(cwd / STORAGE) in err[0]
    missing = kdx(cwd, "confirm", "nosuch")
    err = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(err) == 1 and "NAME" in err[0] and "'nosuch'" in err[0], missing.stderr
    assert not (cwd / "elsewhere").exists()
    _, after = runs_of(f"sqlite:///{cwd / 'kdx_runs' / 'mlflow.db'}", "tiny")
    assert len(by_role(after, "search")) == 1


def test_trials_checkpoint_at_every_asha_rung_and_the_last_epoch():
    from trainables.student import checkpoint_epochs

    assert checkpoint_epochs(30, (15, 2)) == {15, 30}
    assert checkpoint_epochs(30, (1, 3)) == {1, 3, 9, 27, 30}
    assert checkpoint_epochs(4, (1, 2)) == {1, 2, 4}
    assert checkpoint_epochs(6, None) == {6}
