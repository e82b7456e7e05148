"""A trial's epoch clock has one definition (issue 22): the epochs the trial itself runs, init stage
included, which every report carries. ASHA's max_t is the longest trial of the space; a trial's status
(MLflow tag, progress, summary) and what Optuna is told compare its last epoch with its own length.

Regression: a FitNet trial that ASHA stopped at a rung past the student's epochs but before the end of
its init + main stages used to be tagged `completed` and told to Optuna as COMPLETE (the status
compared with the student's epochs). Its opposite must hold too: a KD trial of the same space ends at
the student's epochs and is completed, although the space's longest trial (FitNet's) runs longer.

The trials here are what Tune hands the driver's callbacks and the searcher (config, last result); the
MLflow store (SQLite) and the Optuna study are real."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow.tracking import MlflowClient

from explorer.spec.search import parse_spec
from explorer.tracking import COMPLETED, PARENT_TAG, PRUNED, STATUS_TAG
from trainables.callbacks import trial_status
from trainables.clock import TRIAL_EPOCHS
from trainables.plan import make_plan
from trainables.searcher import tune_setup
from trainables.tracking.trial_runs import MlflowTrialLogger

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, INIT = 4, 3  # the student's epochs; FitNet's init stage runs before them on the same clock


def spec_dict() -> dict:
    spec = yaml.safe_load((ROOT / "tests" / "specs" / "tiny.yaml").read_text())
    spec["student"]["epochs"] = EPOCHS
    spec["distill"] = {"method": {"choice": ["kd", "fitnet"]}, "init_epochs": INIT,
                       "temperature": {"loguniform": [1.0, 16.0]}}
    spec["teachers"] |= {"archs": ["cnn1d_w8"], "stop_epochs": [4]}
    spec["seeds"] = [0]
    spec["search"] |= {"asha": {"grace_period": 1, "reduction_factor": 2},  # rungs 1, 2, 4 (then 7)
                       "points_to_evaluate": [{"method": "fitnet", "temperature": 4.0},
                                              {"method": "kd", "temperature": 4.0}]}
    return spec


@pytest.fixture(scope="module")
def spec():
    return parse_spec(spec_dict())


def report(epoch: int, trial_epochs: int) -> dict:
    """A trial's last report as the trainable sends it (trainables/student.py)."""
    return {"epoch": epoch, "val_acc": 0.5, "train_loss": 1.0, "diverged": 0.0, TRIAL_EPOCHS: trial_epochs}


def trial(trial_id: str, config: dict, last: dict):
    return SimpleNamespace(trial_id=trial_id, config=config, last_result=last, status="TERMINATED")


def test_asha_runs_to_the_longest_trial_of_the_space(spec):
    from trainables.search import search_setup

    assert spec.trial_epochs() == EPOCHS + INIT
    assert search_setup(spec, None).scheduler._max_t == EPOCHS + INIT


def test_each_trial_runs_its_own_length(spec):
    """What a trial's reports carry as its length (trainables/student.py: the trainer's `total_epochs`):
    a FitNet trial of this space runs its init stage and then the student's epochs, a KD trial only these."""
    from explorer.data.splits import load_splits
    from explorer.models import build_model
    from explorer.training.loop import Trainer

    plan = make_plan(spec, "/nonexistent/teachers")
    splits = load_splits(spec.data_spec())
    for method, length in (("fitnet", EPOCHS + INIT), ("kd", EPOCHS)):
        train = plan.settings({"method": method, "temperature": 4.0})["train"]
        teacher = build_model("cnn1d_w8", plan.num_classes, plan.input_shape)
        assert Trainer(train, splits, teacher=teacher, device="cpu").total_epochs == length, method


def test_a_trial_stopped_past_the_students_epochs_but_before_its_own_end_is_pruned(spec):
    plan = make_plan(spec, "/nonexistent/teachers")
    fitnet, kd = {"method": "fitnet", "temperature": 4.0}, {"method": "kd", "temperature": 4.0}
    # ASHA stopped the FitNet trial at the rung at the student's epochs: 3 init + 1 main epochs run
    assert trial_status(trial("f", fitnet, report(EPOCHS, EPOCHS + INIT)), plan) == PRUNED
    assert trial_status(trial("f", fitnet, report(EPOCHS + INIT, EPOCHS + INIT)), plan) == COMPLETED
    assert trial_status(trial("k", kd, report(EPOCHS, EPOCHS)), plan) == COMPLETED
    assert trial_status(trial("k", kd, report(2, EPOCHS)), plan) == PRUNED


def test_optuna_is_told_pruned_for_it_and_complete_for_a_finished_shorter_trial(spec):
    _, searcher, _ = tune_setup(spec, None)
    assert searcher.suggest("f")["method"] == "fitnet"  # the spec's points come first
    assert searcher.suggest("k")["method"] == "kd"
    searcher.on_trial_complete("f", report(EPOCHS, EPOCHS + INIT))
    searcher.on_trial_complete("k", report(EPOCHS, EPOCHS))
    states = {t.params["method"]: t.state.name for t in searcher._ot_study.trials}
    assert states == {"fitnet": "PRUNED", "kd": "COMPLETE"}


def test_its_mlflow_run_is_tagged_pruned(spec, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("clock")
    parent = client.create_run(exp_id).info.run_id
    logger = MlflowTrialLogger(uri, exp_id, parent, make_plan(spec, str(tmp_path / "teachers")), "search")
    trials = {"f": trial("f", {"method": "fitnet", "temperature": 4.0}, report(EPOCHS, EPOCHS + INIT)),
              "k": trial("k", {"method": "kd", "temperature": 4.0}, report(EPOCHS, EPOCHS))}
    for t in trials.values():
        logger.on_trial_start(0, list(trials.values()), t)
        logger.on_trial_result(0, list(trials.values()), t, t.last_result)
        logger.on_trial_complete(0, list(trials.values()), t)
    runs = client.search_runs([exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")
    assert {r.data.params["method"]: r.data.tags[STATUS_TAG] for r in runs} == {"fitnet": PRUNED, "kd": COMPLETED}
    assert {r.data.params["method"]: r.info.status for r in runs} == {"fitnet": "FINISHED", "kd": "FINISHED"}
    assert [r.data.metrics["val_acc"] for r in runs] == [0.5, 0.5]
