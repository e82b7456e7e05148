"""The Ray Tune function trainable: one student (or fused members), one teacher checkpoint, batched reports.

- The data arrives once per trial through Ray's object store (`tune.with_parameters`), never per epoch.
- The teacher comes from the teacher store, checksum-verified, loaded with `weights_only=True`.
- Every epoch's metrics reach Tune, batched: a report goes at every ASHA rung, at the last epoch,
  with every checkpoint, and between them at most every `search.report_seconds`; it carries the
  epochs since the previous report (`EARLIER_EPOCHS`), which the MLflow logger writes one step each.
  (Tune's function trainables report synchronously: training waits for the driver at each report.)
- A checkpoint of the full trainer state goes with the report only where a restart needs one
  (`checkpoint_epochs`): at every ASHA rung, at the last epoch, and between them at most every
  `search.checkpoint_seconds`. A retried (crashed) or resumed (interrupted) trial continues from its
  last checkpoint; the trainer state holds the RNG states, so the epochs it repeats give the same
  numbers as the first time (the MLflow logger skips the epochs a run already logged).
- A NaN/inf loss ends the trial at once with `diverged=1` in its last result.
- Every report says how many epochs the trial runs (`TRIAL_EPOCHS`, init stage included), which
  decides whether it completed or was pruned (trainables/clock.py).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import ray
from ray import tune

from explorer.teachers.store import TeacherStore
from explorer.tracking import EARLIER_EPOCHS, KIND_SEARCH
from explorer.training.attacks import PGD, pixel_box, robust_accuracy, transfer_rate
from explorer.training.loop import Trainer, load_state, save_state
from explorer.training.members import Diverged

from .clock import TRIAL_EPOCHS
from .locks import store_lock
from .plan import Plan, member_points

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


def checkpoint_epochs(epochs: int, asha: tuple[int, float] | None) -> set[int]:
    """The epochs that always checkpoint: the last one and every ASHA rung (grace_period x
    reduction_factor^k below the last epoch; `asha` = (grace_period, reduction_factor) or None)."""
    keep = {epochs}
    if asha is not None:
        rung, factor = asha
        while rung < epochs:
            keep.add(int(rung))
            rung *= factor
    return keep


def transfer_metrics(tr: Trainer) -> dict:
    """`evaluate.transfer` (seed 000 section IV-D): PGD examples made on the trial's teacher, tried on its
    student, over the test samples both get right; the box is the training split's per-channel range."""
    s = tr.splits
    rate, n = transfer_rate(tr.teacher, tr.model, s.test_x, s.test_y, pixel_box(s.train_x), seed=tr.cfg.seed)
    return {"transfer_samples": float(n)} | ({"transfer_rate": rate} if n else {})


def robust_metrics(tr: Trainer, restarts: int) -> dict:
    """`evaluate.robust` (seed 003 section 4.4): test accuracy under L-inf PGD on the student, at its recipe's
    eps and step: the training attack's steps (7 without adversarial training), and 50 steps from
    `restarts` random starts."""
    s, c = tr.splits, tr.cfg
    box = pixel_box(s.train_x)
    train_attack = PGD(c.adversarial_eps, c.adversarial_step, c.adversarial_steps or 7)
    strong = PGD(c.adversarial_eps, c.adversarial_step, 50)
    return {"robust_acc_pgd": robust_accuracy(tr.model, s.test_x, s.test_y, box, train_attack, 1, c.seed),
            "robust_acc_pgd50": robust_accuracy(tr.model, s.test_x, s.test_y, box, strong, restarts, c.seed)}


def load_teachers(plan: Plan, settings: list[dict]) -> list[list | None]:
    """The teacher (a list: one, or an ensemble's) of each of `settings`, from the teacher store; one
    object per distinct checkpoint, so members that share a teacher share it."""
    loaded: dict[tuple, list] = {}
    store = None
    out = []
    for s in settings:
        if s["teacher_key"] == "none":
            out.append(None)
            continue
        at = (s["teacher_key"], s["teacher_stop_epoch"])
        if at not in loaded:  # several comma-joined keys: an ensemble (mkd)
            # the lock guards the teacher's logits-on-views table too, built by the first trial that needs it
            store = store or TeacherStore(plan.store_root, lock=store_lock("auto", plan.store_root))
            loaded[at] = [store.teacher(key, at[1])[0] for key in at[0].split(",")]
        out.append(loaded[at])
    return out


def train_student(config: dict, plan: Plan, splits, kind: str) -> None:
    settings = plan.settings(config, kind)
    # a trial may train fused members (a confirmation trial, trainables/confirm.py; any trial with
    # search.fuse_seeds): its config's seeds, or several configs' seeds, each member with its own config
    # and teacher; its reports carry each member's row (`members`), which the MLflow logger gives to
    # that member's own run, and the members' mean, on which ASHA and the searcher decide
    points = member_points(config)
    members = [plan.settings(p, kind) for p in points] if points else [settings]
    teachers = load_teachers(plan, members)
    shared = all(t is teachers[0] for t in teachers)
    trainer = Trainer(settings["train"], splits, teacher=teachers[0] if shared else None,
                      members=[m["train"] for m in members] if points else None,
                      member_teachers=None if shared else teachers)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.load_state_dict(load_state(Path(d) / STATE_FILE, trainer.device))

    node = ray.get_runtime_context().get_node_id()
    search = plan.spec.search
    asha = (search.asha.grace_period, search.asha.reduction_factor) if search.asha and kind == KIND_SEARCH else None
    keep = checkpoint_epochs(trainer.total_epochs, asha)  # on the one epoch clock (init stage included)
    last_saved = last_reported = time.monotonic()
    unreported: list[dict] = []  # epochs trained since the last report

    def report(epoch: int, metrics: dict, tr: Trainer) -> None:
        nonlocal last_saved, last_reported
        _maybe_inject_fault(epoch)
        metrics = metrics | {"diverged": 0.0, "node_id": node, TRIAL_EPOCHS: tr.total_epochs}
        if epoch == tr.total_epochs and plan.spec.evaluate.transfer and tr.teacher is not None:
            metrics |= transfer_metrics(tr)
        if epoch == tr.total_epochs and plan.spec.evaluate.robust:
            metrics |= robust_metrics(tr, plan.spec.evaluate.robust_restarts)
        now = time.monotonic()
        save = epoch in keep or now - last_saved >= search.checkpoint_seconds
        if not save and now - last_reported < search.report_seconds:
            unreported.append(metrics)
            return
        result = metrics | ({EARLIER_EPOCHS: unreported.copy()} if unreported else {})
        unreported.clear()
        if save:
            with tempfile.TemporaryDirectory() as d:
                save_state(tr.state_dict(), Path(d) / STATE_FILE)
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
            last_saved = time.monotonic()
        else:
            tune.report(result)
        last_reported = time.monotonic()

    try:
        trainer.run(report)
    except Diverged:
        # One last report for the epoch that diverged; no checkpoint (its weights are not finite).
        tune.report({"epoch": trainer.epoch + 1, "diverged": 1.0, "val_acc": 0.0, "train_loss": float("nan"),
                     TRIAL_EPOCHS: trainer.total_epochs}
                    | ({EARLIER_EPOCHS: unreported} if unreported else {}))
