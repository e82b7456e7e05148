"""The MLflow tracking store and its experiments: checked before anything starts, created safely,
opened with the runs of killed kdx processes closed, shown in the UI's classic view."""

from __future__ import annotations

from pathlib import Path

from .owners import close_orphaned_runs

# The experiment kind MLflow 3 records for classic ML (runs table) experiments. MLflow 3.17's UI picks its
# view from the page address instead (`?workflowType=machine_learning`, printed by `kdx search`).
CLASSIC_VIEW = {"mlflow.experimentKind": "custom_model_development"}


def classic_page(experiment_id: str, run_id: str | None = None) -> str:
    """The UI address (after the server's root) of an experiment, or one of its runs, in the classic view."""
    return f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "") + "?workflowType=machine_learning"


def prepare_tracking(uri: str) -> None:
    """Create (or migrate) a SQLite tracking store under a file lock: MLflow's schema creation is not
    safe when two processes open a fresh store at the same moment. Other stores: nothing to do."""
    if not uri.startswith("sqlite:///"):
        return
    import filelock
    from mlflow.tracking import MlflowClient

    db = uri[len("sqlite:///"):]
    with filelock.FileLock(f"{db}.lock", timeout=120):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """Fail within seconds, in one sentence, when the tracking URI is malformed, cannot be created or
    does not answer (explorer's `check_tracking_uri`); then create a fresh SQLite store under a lock."""
    from explorer.cli.commands import check_tracking_uri

    check_tracking_uri(uri, timeout_s=timeout_s)
    prepare_tracking(uri)


def open_experiment(client, name: str, out=print):
    """The experiment `name` (None when it does not exist yet), its runs orphaned by a killed kdx
    process of this host closed first."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        close_orphaned_runs(client, exp.experiment_id, out)
    return exp


def experiment_id(client, name: str, tracking_uri: str) -> str:
    """Get or create the experiment (races with another process are fine). A new one is tagged as a
    classic ML experiment (`CLASSIC_VIEW`), and with a SQLite store keeps its artifacts beside
    the store file, never in the current directory (a server decides for itself)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    artifacts = None
    if tracking_uri.startswith("sqlite:///"):
        artifacts = (Path(tracking_uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifacts, tags=CLASSIC_VIEW)
    except MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id
