"""The Ray Tune function trainable: one student, one teacher checkpoint, one report per epoch.

- The data arrives once per trial through Ray's object store (`tune.with_parameters`), never per epoch.
- The teacher comes from the teacher store, checksum-verified, loaded with `weights_only=True`.
- Every epoch reports its metrics together with a checkpoint of the full trainer state, so a
  retried (crashed) or resumed (interrupted) trial continues from its last epoch, not from 0.
- A NaN/inf loss ends the trial at once with `diverged=1` in its last result.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import ray
from ray import tune

from explorer.store import TeacherStore
from explorer.train import Diverged, Trainer, load_state, save_state

from .plan import Plan

STATE_FILE = "trainer_state.pt"
# Test hook: "EPOCH:MARKER" makes the first trial to reach EPOCH crash once (MARKER records it).
FAULT_ENV = "KDX_INJECT_FAULT"


def _maybe_inject_fault(epoch: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    at, marker = spec.split(":", 1)
    if epoch == int(at):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        raise RuntimeError(f"injected fault at epoch {epoch} ({FAULT_ENV})")


def train_student(config: dict, plan: Plan, splits, kind: str) -> None:
    settings = plan.settings(config, kind)
    teacher = None
    if settings["teacher_key"] != "none":  # several comma-joined keys: an ensemble (mkd)
        store = TeacherStore(plan.store_root)
        teacher = [store.load_model(key, settings["teacher_stop_epoch"])[0]
                   for key in settings["teacher_key"].split(",")]
    trainer = Trainer(settings["train"], splits, teacher=teacher)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.load_state_dict(load_state(Path(d) / STATE_FILE, trainer.device))

    node = ray.get_runtime_context().get_node_id()

    def report(epoch: int, metrics: dict, tr: Trainer) -> None:
        _maybe_inject_fault(epoch)
        with tempfile.TemporaryDirectory() as d:
            save_state(tr.state_dict(), Path(d) / STATE_FILE)
            tune.report(metrics | {"diverged": 0.0, "node_id": node}, checkpoint=tune.Checkpoint.from_directory(d))

    try:
        trainer.run(report)
    except Diverged:
        # One last report for the epoch that diverged; no checkpoint (its weights are not finite).
        tune.report({"epoch": trainer.epoch + 1, "diverged": 1.0, "val_acc": 0.0, "train_loss": float("nan")})
