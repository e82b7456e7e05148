"""`kdx search`: plan the teacher zoo, build what is missing, run the student search on Ray Tune.

Two Tune experiments per search, both children of one MLflow parent run (trainables/tracking/parent.py):
- `<name>`: the searched KD trials, ASHA-scheduled, proposed by Optuna TPE (or random / grid);
- `<name>__baseline`: the CE-only students, one per seed, never pruned and never shown to the
  searcher (they answer "how much does KD gain", not "which config is best").
`--resume` reopens the latest search's parent run and restores both from their experiment state, at
the storage the parent recorded: finished trials are not rerun, unfinished ones continue from their
last checkpoint, and their MLflow runs are reopened, not duplicated.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from explorer.data.splits import load_splits
from explorer.errors import KdxError
from explorer.spec.search import SearchSpec
from explorer.tracking import COMPLETED, FAILED, INTERRUPTED, KIND_BASELINE, KIND_SEARCH, is_better, latest_search

from .callbacks import SearchProgress, trial_status
from .connect import check_address, check_cluster_resources, quiet_ray_logs
from .locations import Locations, locations, move_aside
from .plan import Plan, make_plan, trial_label
from .searcher import tune_setup
from .student import FAULT_ENV, train_student
from .tracking.owners import heartbeat
from .tracking.parent import ParentRun, check_resumable, refuse_rerun, search_locations
from .tracking.store import check_tracking, classic_page, open_experiment
from .tracking.trial_runs import MlflowTrialLogger

# ------------------------------------------------------------------ the run


@dataclass
class ExperimentSetup:
    """One Ray Tune experiment of a search: its kind, name, space, searcher and scheduler."""

    kind: str
    name: str
    space: dict
    searcher: object
    num_samples: int
    expected: int  # trials it should end with (fewer after a Ctrl-C)
    scheduler: object = None


def search_setup(spec: SearchSpec, num_samples: int | None) -> ExperimentSetup:
    from ray.tune.schedulers import ASHAScheduler

    space, searcher, n = tune_setup(spec, num_samples)
    if spec.search.fuse_seeds:  # a constant of every trial's config, beside the searcher's values
        space = space | {"members": list(spec.seeds)}
    s, scheduler = spec.search, None
    if s.asha:
        scheduler = ASHAScheduler(time_attr="epoch", metric=s.metric, mode=s.mode,
                                  max_t=spec.trial_epochs(), grace_period=s.asha.grace_period,
                                  reduction_factor=s.asha.reduction_factor)
    return ExperimentSetup(KIND_SEARCH, spec.name, space, searcher, n, expected_trials(spec, num_samples), scheduler)


def points_setup(kind: str, name: str, points: list[dict]) -> ExperimentSetup:
    """Fixed configurations, each run once, never pruned (CE baselines, confirmation re-runs)."""
    from ray import tune

    return ExperimentSetup(kind, name, {"point": tune.grid_search(points)}, None, 1, len(points))


def baseline_setup(spec: SearchSpec) -> ExperimentSetup:
    return points_setup(KIND_BASELINE, f"{spec.name}__{KIND_BASELINE}", spec.baseline_points())



def _fit(setup: ExperimentSetup, spec: SearchSpec, plan: Plan, splits_ref, loc: Locations, exp_id: str,
         parent_id: str, resume: bool, max_concurrent: int | None, out) -> None:
    """One Tune experiment; Tune's own output is silenced (kdx shows its progress, SearchProgress)."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    res, s = spec.resources, spec.search
    trainable = tune.with_resources(
        tune.with_parameters(train_student, plan=plan, splits=splits_ref, kind=setup.kind),
        {"cpu": res.trial.cpus, "gpu": res.trial.gpus},
    )
    logger = MlflowTrialLogger(loc.tracking_uri, exp_id, parent_id, plan, setup.kind)
    progress = SearchProgress(plan, s.metric, s.mode, setup.kind, setup.expected, out=out)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if isinstance(setup.searcher, BasicVariantGenerator):  # Tune ignores max_concurrent_trials for it
        setup.searcher.max_concurrent = max_concurrent or s.max_concurrent
    path = loc.experiment_path(setup.name)
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=setup.space,
            tune_config=tune.TuneConfig(search_alg=setup.searcher, scheduler=setup.scheduler,
                                        num_samples=setup.num_samples,
                                        max_concurrent_trials=max_concurrent or s.max_concurrent,
                                        reuse_actors=s.reuse_actors),
            run_config=tune.RunConfig(
                name=setup.name, storage_path=loc.storage, verbose=0,
                callbacks=[logger, progress, JsonLoggerCallback()],
                failure_config=tune.FailureConfig(max_failures=res.retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    try:
        with quiet_ray_logs():
            tuner.fit()
    finally:
        SearchProgress.close_all()  # ours, or the copy a restored Tuner unpickled
        logger.close_open_runs()


@dataclass
class Outcome:
    best: dict | None
    trials: dict[str, int]
    interrupted: bool
    experiment_id: str
    parent_run_id: str
    tracking_uri: str


def describe_plan(spec: SearchSpec, plan: Plan, loc: Locations, out) -> None:
    from explorer.teachers.store import TeacherStore

    # A local store that does not exist yet holds nothing; do not create it for a dry run.
    exists = "://" in plan.store_root or os.path.isdir(plan.store_root)
    store = TeacherStore(plan.store_root) if exists else None
    out(f"search {spec.name!r}: {plan.dataset}, student {plan.student} ({plan.student_params:,} params), "
        f"{spec.student.epochs} epochs" + (f" (up to {spec.trial_epochs()} with a two-stage method's init stage)"
                                           if spec.trial_epochs() > spec.student.epochs else ""))
    for key, recipe in plan.recipes.items():
        rec = store.get(key) if store else None
        have = set(rec.checkpoints) if rec else set()
        state = "reuse" if rec and set(plan.stops[key]) <= have else ("extend" if rec else "build")
        out(f"  teacher {recipe.label():<28} key {key}  stop epochs {sorted(plan.stops[key])}  -> {state}")
    axes = spec.searched_axes()
    cells = spec.search_cells()
    n = (f"{expected_trials(spec, None)} = {spec.search.trials_per_cell} per cell x {len(cells)} cells" if cells
         else spec.search.num_samples if spec.search.algorithm != "grid" else "grid")
    out(f"  searched: {', '.join(f'{k} {a.kind} {a.values()}' for k, a in axes.items()) or 'nothing'}")
    out(f"  trials: {n} ({spec.search.algorithm}"
        f"{', ASHA' if spec.search.asha else ''}) + {len(spec.baseline_points()) if spec.baseline else 0} CE baselines"
        f"{f', each trial training seeds {spec.seeds} fused' if spec.search.fuse_seeds else ''}; "
        f"resources per trial {spec.resources.trial.cpus} CPU {spec.resources.trial.gpus} GPU, "
        f"per teacher {spec.resources.teacher.cpus} CPU {spec.resources.teacher.gpus} GPU")
    out(f"  results {loc.storage}\n  teachers {plan.store_root}\n  tracking {loc.tracking_uri}")


def _planned(spec: SearchSpec, loc: Locations, out) -> Plan:
    plan = make_plan(spec, loc.store_root)  # (fused search trials were checked with the spec: fused_problem)
    describe_plan(spec, plan, loc, out)
    return plan


def run_search(spec: SearchSpec, spec_text: str, *, num_samples: int | None = None, dry_run: bool = False,
               out=print, **where) -> Outcome | None:
    """Plan, build teachers, run the CE baselines and the KD search; `where`: address, storage,
    tracking_uri, resume, fresh, max_concurrent. `resume` continues the latest search's parent run,
    at the storage it recorded."""
    storage, fresh, resume = where.pop("storage", None), where.pop("fresh", False), where.get("resume", False)
    loc = locations(storage, where.pop("tracking_uri", None))
    if dry_run:
        _planned(spec, loc, out)
        return None
    check_tracking(loc.tracking_uri)  # before anything is built or started
    client = MlflowClient(tracking_uri=loc.tracking_uri)
    exp = open_experiment(client, spec.name, out)
    last = latest_search(client, exp.experiment_id if exp else None)
    refuse_rerun(last, spec.name, resume, fresh)
    if resume and last is not None:
        loc = search_locations(last, storage, loc.tracking_uri)
        check_resumable(last, loc, spec.name)
    plan = _planned(spec, loc, out)
    setups = ([baseline_setup(spec)] if spec.baseline else []) + [search_setup(spec, num_samples)]
    if fresh:
        move_aside(loc, [s.name for s in setups])
    parent = ParentRun(loc.tracking_uri, last.info.run_id if resume and last is not None else None)
    return run_experiments(spec, spec_text, plan, loc, setups, parent, out=out, **where)


def _quiet_tune() -> None:
    # Ray warns on every checkpoint of a fast trial; kdx checkpoints every epoch on purpose.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter honours verbose=0; kdx prints its own progress
    # Tune's own per-trial logs on the driver: only result.json (the runs are in MLflow); its CSV and
    # TensorBoard writers re-flatten every result, which costs the driver seconds per trial when a
    # result carries the rows of 16 fused members (and the driver shares the trials' cores)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def run_experiments(spec: SearchSpec, spec_text: str, plan: Plan, loc: Locations, setups: list[ExperimentSetup],
                    parent: ParentRun, *, address: str | None = None, resume: bool = False,
                    max_concurrent: int | None = None, out=print, what: str = "search") -> Outcome:
    """Ray up, the MLflow parent run opened (created, or reopened), teachers built or reused, then each
    experiment in turn. The caller has checked the tracking store (`check_tracking`)."""
    import ray

    address = check_address(address)  # one sentence within seconds, never a hang in ray.init
    _quiet_tune()
    splits = load_splits(spec.data_spec())  # before Ray: a missing dataset fails fast, in one sentence
    env = {FAULT_ENV: os.environ[FAULT_ENV]} if FAULT_ENV in os.environ else {}
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env} if env else None)
    try:  # resources no node can give are refused before any run is opened or anything is built
        res = spec.resources
        check_cluster_resources([(f"resources.{who}.{r.lower()}s", r, getattr(getattr(res, who), r.lower() + "s"))
                                 for who in ("trial", "teacher") for r in ("CPU", "GPU")])
        exp_id, parent_id = parent.open(spec, spec_text, plan, loc)
    except BaseException:
        if started_ray:
            ray.shutdown()
        raise
    status = "FAILED"
    try:
        with heartbeat(loc.tracking_uri, exp_id):
            outcome = _run_all(spec, plan, splits, loc, setups, exp_id, parent_id, resume, max_concurrent, out, what)
        status = "KILLED" if outcome.interrupted else "FAILED" if outcome.trials.get(FAILED) else "FINISHED"
        return outcome
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        parent.close(status)
        if started_ray:
            ray.shutdown()


def _run_all(spec, plan, splits, loc, setups, exp_id, parent_id, resume, max_concurrent, out, what) -> Outcome:
    """Teachers, then each experiment in turn (stopping after one that was interrupted); the outcome."""
    import ray

    from .zoo import build_zoo

    zoo = build_zoo([(plan.recipes[k], plan.stops[k]) for k in plan.recipes], plan.store_root,
                    cpus_per_teacher=spec.resources.teacher.cpus, gpus_per_teacher=spec.resources.teacher.gpus,
                    retries=spec.resources.retries, tracking_uri=loc.tracking_uri, experiment=spec.name, out=out)
    for r in zoo:
        out(f"  teacher {r.label:<28} {r.key}  {r.status}" + (f": {r.error}" if r.error else ""))
    failed = [r for r in zoo if r.status == "failed"]
    if failed:
        raise KdxError(f"teachers: {len(failed)} teacher build(s) failed ({failed[0].label}: {failed[0].error}); "
                       "fix the cause and run again with --resume.")
    splits_ref = ray.put(splits)
    for i, setup in enumerate(setups):
        _fit(setup, spec, plan, splits_ref, loc, exp_id, parent_id, resume, max_concurrent, out)
        if summarize(spec, plan, [setup], exp_id, parent_id, loc).interrupted:
            setups = setups[: i + 1]
            break  # Ctrl-C: do not start the next experiment
    outcome = summarize(spec, plan, setups, exp_id, parent_id, loc)
    report_outcome(spec, outcome, loc, out, what)
    return outcome


def expected_trials(spec: SearchSpec, num_samples: int | None) -> int:
    """How many KD trials the search plans: num_samples, trials_per_cell x cells, or the grid's size times
    its repeats."""
    if spec.search_cells():
        return spec.search.trials_per_cell * len(spec.search_cells())
    if spec.search.algorithm != "grid":
        return num_samples or spec.search.num_samples
    n = num_samples or 1
    for axis in spec.searched_axes().values():
        n *= len(axis.values())
    return n


def summarize(spec, plan, setups: list[ExperimentSetup], exp_id, parent_id, loc) -> Outcome:
    """Counts and the best completed KD trial, read from the experiment state Ray saved.

    The saved state, not the in-memory trials: after a Ctrl-C Ray marks live trials TERMINATED in
    memory but saves them as RUNNING, which is what `--resume` continues.
    """
    from ray.tune import ExperimentAnalysis

    counts: dict[str, int] = {}
    best, interrupted = None, False
    for setup in setups:
        with quiet_ray_logs():  # an interrupted trial's missing files are counted below, not warned about
            trials = ExperimentAnalysis(loc.experiment_path(setup.name)).trials
        missing = setup.expected - len(trials)
        if missing > 0:
            counts["not started"] = counts.get("not started", 0) + missing
            interrupted = True
        for trial in trials:
            if trial.status in ("PENDING", "RUNNING", "PAUSED"):
                interrupted = True
                st = INTERRUPTED
            else:
                st = FAILED if trial.status == "ERROR" else trial_status(trial, plan)
            counts[st] = counts.get(st, 0) + 1
            v = (trial.last_result or {}).get(spec.search.metric)
            if setup.kind != KIND_BASELINE and st == COMPLETED and is_better(v, best and best[1], spec.search.mode):
                best = (trial, v, setup.kind)
    best_info = None
    if best:
        settings = plan.settings(best[0].config, best[2])
        last = best[0].last_result
        best_info = {"label": trial_label(settings), spec.search.metric: best[1], "test_acc": last.get("test_acc"),
                     **{k: settings[k] for k in ("student", "teacher", "teacher_stop_epoch", "method", "seed")},
                     **{k: settings[k] for k in spec.searched_axes() if k in settings}}
    return Outcome(best_info, counts, interrupted, exp_id, parent_id, loc.tracking_uri)


def report_outcome(spec, outcome: Outcome, loc: Locations, out, what: str = "search") -> None:
    out(f"{what} {spec.name!r} {'INTERRUPTED (continue with --resume)' if outcome.interrupted else 'finished'}: "
        + ", ".join(f"{v} {k}" for k, v in sorted(outcome.trials.items())))
    if outcome.trials.get(FAILED):
        out(f"{outcome.trials[FAILED]} trial(s) failed (errored): their MLflow runs are FAILED with the cause in "
            f"Ray's results; the exit status is 4")
    if outcome.best:
        b = outcome.best
        out(f"best config by {spec.search.metric}: {b['label']}  {spec.search.metric} {b[spec.search.metric]:.4f}  "
            f"(test_acc {b['test_acc']:.4f}, reported, not used to choose)")
    out(f"results: {loc.experiment_path(spec.name)}\nteachers: {loc.store_root}")
    # MLflow 3.17's UI picks its GenAI or classic (model training) view from the page address, not from
    # the experiment's tag: the printed address asks for the classic runs table.
    page = classic_page(outcome.experiment_id)
    if loc.tracking_uri.startswith(("http://", "https://")):
        out(f"open the runs: {loc.tracking_uri.rstrip('/')}/{page}")
        return
    mlflow_bin = Path(sys.executable).with_name("mlflow")  # the venv's, wherever kdx was started from
    out(f"open the runs: {mlflow_bin if mlflow_bin.exists() else 'mlflow'} ui --backend-store-uri {loc.tracking_uri}"
        f"\n  then http://127.0.0.1:5000/{page}")
