"""One MLflow run per teacher the zoo builds (trainables/zoo.py), written on the driver from what the
build task returned: tags `kdx.role=teacher` and `teacher_key`, the flattened recipe as params,
per-epoch metrics (step = epoch), the build's start and end times, and an end status FINISHED or
FAILED (tag `error`). A teacher reused gets no new run: the run of the build that made it stands."""

from __future__ import annotations

import contextlib
import logging

from explorer.teachers.store import TeacherRecipe
from explorer.tracking import ROLE_TAG, ROLE_TEACHER, TEACHER_KEY_TAG

from .owners import close_orphaned_runs, owner_tags
from .store import experiment_id, prepare_tracking

log = logging.getLogger("kdx.zoo")


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """{'train': {'lr': 0.1}} -> {'train.lr': '0.1'} (MLflow params are strings)."""
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, name + ".")
        elif isinstance(v, (list, tuple)):
            out[name] = ",".join(map(str, v)) if v else "[]"
        else:
            out[name] = "none" if v is None else str(v)
    return out


class TeacherRuns:
    """Writes one MLflow run per teacher build from what its task returned, through an MlflowClient
    with an explicit URI. A tracking hiccup is logged, never raised: it must not throw away teachers."""

    def __init__(self, tracking_uri: str, experiment: str):
        from mlflow.tracking import MlflowClient

        prepare_tracking(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = experiment_id(self.client, experiment, tracking_uri)
        close_orphaned_runs(self.client, self.experiment_id, log.warning)

    def write(self, recipe: TeacherRecipe, stop_epochs: list[int], out: dict, built: bool) -> None:
        """The run of one build: `out` is what its task returned (`history`, `started`, `ended`, and the
        `record` when `built`, else the `error`)."""
        from mlflow.entities import Metric, Param

        key, run_id = recipe.key(), None
        tags = {ROLE_TAG: ROLE_TEACHER, TEACHER_KEY_TAG: key, "teacher_label": recipe.label(),
                "arch": recipe.train.arch, "dataset": recipe.data.dataset, **owner_tags()}
        params = flatten(recipe.canonical()) | {"teacher_key": key, "stop_epochs": ",".join(map(str, stop_epochs))}
        try:
            run = self.client.create_run(self.experiment_id, start_time=out.get("started"), tags=tags,
                                         run_name=f"teacher {recipe.label()} {key}")
            run_id = run.info.run_id
            items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
            for i in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[i:i + 100])
            metrics = [Metric(name, value, ts, int(epoch)) for epoch, ts, values in out.get("history", [])
                       for name, value in values.items()]
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
            if built:
                end = {"stop_epochs": ",".join(map(str, out["record"].stop_epochs))}
            else:
                end = {"error": out.get("error") or "unknown error"}
            for k, v in end.items():
                self.client.set_tag(run_id, k, str(v)[:5000])
            self.client.set_terminated(run_id, "FINISHED" if built else "FAILED",
                                       end_time=out.get("ended"))
        except Exception as e:
            log.warning("could not write the MLflow run of teacher %s: %s", key, e)
            if run_id is not None:
                with contextlib.suppress(Exception):
                    self.client.set_terminated(run_id, "FAILED")
