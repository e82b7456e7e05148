"""The one training loop, for teachers and students alike (a teacher is a student with no teacher).

Design points (docs/DESIGN.md, "Fast by default"):
- the data is one tensor per split on the training device; batches and augmentation are tensor ops;
- the teacher runs under `torch.inference_mode()` (bf16 autocast on GPU); when the method only needs
  logits, the teacher's logits are computed once per training sample and view (the plain images, or
  V fixed crop+flip views of augmented data, `cfg.views`; kept in the teacher store, explorer/teachers/views.py)
  and indexed per batch instead of re-running the teacher every epoch of every trial;
- loss sums stay on the device during an epoch (no per-batch `.item()` sync);
- the full state (model, optimiser, scheduler, RNG, epoch, history) round-trips through
  `state_dict()` / `load_state_dict()`, so a Ray trial can resume from its last epoch.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import torch
from torch import Tensor, nn

from explorer.config import TrainConfig
from explorer.data.splits import Splits
from explorer.methods import LossInputs, get_method
from explorer.models.features import FeatureTap, feature_paths
from explorer.training.adversarial import make_adversary
from explorer.training.batches import BatchSource
from explorer.training.evaluation import absent_classes, autocast, epoch_scores, predict_logits
from explorer.training.fused import member_settings
from explorer.training.members import make_members, member_configs
from explorer.training.stages import Stages, trial_epochs
from explorer.training.teacher_signal import NoTeacher, check_teachers, make_signal, teacher_lists, test_preds


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


EpochCallback = Callable[[int, dict, "Trainer"], None]


class _NoTap:
    features = None


_NO_SIGNAL = NoTeacher()  # the signal of an epoch whose loss takes no teacher (`method.uses_teacher`)


class Trainer:
    """Trains `cfg.arch` on `splits` with `cfg.method`, optionally against a frozen `teacher`.

    Epochs are 1-based. `run()` calls `callback(epoch, metrics, trainer)` after every epoch; the
    callback may save `trainer.state_dict()` and report metrics (a Ray trial does both).

    The loop (`train_epoch`) composes parts chosen once here, each its own module behind a small
    interface, and does not branch on any of them:
    - the members (explorer/training/members.py): one run, or `members=[s1, ..., sS]` (seeds of `cfg`, or
      TrainConfigs differing in seed, lr and the method's real-valued hyperparameters) as one fused model
      whose metrics are the members' means plus `members`, one row per member;
    - the teacher signal (explorer/training/teacher_signal.py): none, `teacher` (a module or an ensemble's
      list) for every member, or `member_teachers`, one per member;
    - the batch source (explorer/training/batches.py): data order and views;
    - the stages (explorer/training/stages.py): a two-stage method's init stage, then the main stage, on
      one epoch clock (`total_epochs`; each epoch reports its `stage`);
    - the adversary (explorer/training/adversarial.py): the batch the student trains on.
    """

    def __init__(self, cfg: TrainConfig, splits: Splits, device: torch.device | str | None = None,
                 teacher: nn.Module | list[nn.Module] | None = None,
                 members: list[int | TrainConfig] | None = None, member_teachers: list | None = None):
        member_cfgs = member_configs(cfg, members)
        if len(member_cfgs) == 1:  # one member: its own run (refused where it differs from cfg's loop)
            member_settings(cfg, member_cfgs)
            cfg = member_cfgs[0]
        self.cfg, self.hp, self.method = cfg, cfg.validate(), get_method(cfg.method)
        distinct, unit_of = teacher_lists(teacher, member_teachers, len(member_cfgs))
        for teachers in distinct:
            check_teachers(cfg, self.method, teachers)
        self.device = torch.device(device) if device is not None else default_device()
        self.splits = splits.to(self.device)
        self.members = make_members(self.method, cfg, self.hp, self.splits, self.device, member_cfgs,
                                    len(distinct[0]) if self.method.needs_teacher else 0)
        self.model, self.seeds = self.members.model, self.members.seeds
        self.signal = make_signal(self.method, cfg, self.splits, self.device, distinct, unit_of,
                                  lead=1 + (len(self.seeds) > 1))
        self.teacher = self.signal.teacher  # one module, or a TeacherEnsemble of several
        self.batches = BatchSource(self.splits, self.members, self.signal.views, cfg.batch_size)
        self.adversary = make_adversary(cfg, self.splits)
        # Feature-based methods read the student's (and teacher's) layers of their role through forward
        # hooks, and may own modules sized from those layers (not part of the student).
        self.student_tap, self.modules = _NoTap(), None
        if self.method.needs_features:
            self.student_tap = FeatureTap(self.model, feature_paths(self.model, self.method.feature_role))
            self.modules = self._build_method_modules()
        params = list(self.model.parameters()) + (list(self.modules.parameters()) if self.modules is not None else [])
        self.stages = Stages(self.method, cfg, self.hp, params)
        self.members.scale_lr(params, cfg.weight_decay)  # the main optimiser's parameters
        self.init_epochs = self.stages.init_epochs
        self.total_epochs = trial_epochs(self.method, self.hp, cfg.epochs)
        self.epoch = 0  # epochs completed (init stage included)
        self.history: list[dict] = []

    @property
    def generator(self) -> torch.Generator:
        """The (first) member's generator: a method's own draws and the adversary's start."""
        return self.members.generators[0]

    def _build_method_modules(self) -> nn.Module | None:
        """Run one sample through the student (and teacher) to learn their feature shapes, then let the
        method build its modules (seeded by the run's seed, after the student's own init)."""
        x = self.splits.train_x[:2]
        with torch.no_grad():
            was = self.model.training
            self.model.eval()
            self.model(x)
            self.model.train(was)
            s_shapes = [tuple(f.shape[1:]) for f in self.student_tap.features]
            t_shapes = None
            if self.signal.tap is not None:
                self.teacher(x)
                t_shapes = [tuple(f.shape[1:]) for f in self.signal.tap.features]
        self.student_tap.clear()
        modules = self.method.build_modules(s_shapes, t_shapes, self.hp)
        return modules.to(self.device) if modules is not None else None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to continue bit-for-bit; only tensors and plain types (weights_only-safe)."""
        return {"model": self.model.state_dict(),
                "modules": self.modules.state_dict() if self.modules is not None else {},
                **self.stages.state_dict(),
                "generators": [g.get_state() for g in self.members.generators],
                "diverged": sorted(self.members.diverged), "epoch": self.epoch, "history": self.history,
                "config": self.cfg.as_dict()}

    def load_state_dict(self, state: dict) -> None:
        """A state from `state_dict` (or from before its generators were one list: `generator`)."""
        self.model.load_state_dict(state["model"])
        if self.modules is not None:
            self.modules.load_state_dict(state["modules"])
        self.stages.load_state_dict(state)
        for g, st in zip(self.members.generators, state.get("generators", [state.get("generator")])):
            g.set_state(st.cpu() if self.device.type == "cpu" else st)
        self.members.diverged = set(state.get("diverged", ()))
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])

    # ------------------------------------------------------------------ loop
    def train_epoch(self) -> dict:
        """One epoch: per batch the teacher signal, the adversary, the student's forward, the loss terms,
        backward and step; then each member's metrics and the evaluation."""
        epoch, hp, members = self.epoch + 1, self.hp, self.members
        stage = self.stages.at(epoch)
        signal = self.signal if self.method.uses_teacher(epoch, hp) else _NO_SIGNAL
        run_teacher = self._run_teacher if signal is self.signal else None
        self.model.train()
        if self.modules is not None:
            self.modules.train()
        sums: dict[str, Tensor] = {}
        total, n_seen, start = 0, 0, time.perf_counter()
        for idx, xb, yb in self.batches:  # idx: (B,) for one run, (S, B) for S fused members
            t_logits, t_feats = signal.outputs(xb, idx)
            xb = self.adversary(self.model, xb, yb, self.generator)  # the student's x' (the teacher saw x)
            with autocast(self.device):
                logits = self.model(xb)
            inputs = LossInputs(logits, yb, epoch, t_logits, self.student_tap.features, t_feats, self.modules, x=xb,
                                run_student=self._run_student, run_teacher=run_teacher,
                                generator=self.generator, epochs=self.cfg.epochs)
            terms = members.losses(stage.losses, inputs, hp)
            loss = sum(terms.values())
            stage.optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            members.before_step()
            stage.optimizer.step()
            n = yb.shape[-1]
            n_seen += n
            total = total + loss.detach() * n
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.detach() * n
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        lr = stage.optimizer.param_groups[0]["lr"]
        stage.scheduler.step()
        rows = members.rows(epoch, total / n_seen, {k: v / n_seen for k, v in sums.items()})
        metrics = members.summary(self.stages.head(epoch, lr), *self._evaluate(rows, n_seen, seconds), lr)
        self.epoch = epoch
        self.history.append(metrics)
        return metrics

    def _evaluate(self, rows: list[dict], n_seen: int, seconds: float) -> tuple[list[dict], dict]:
        """Each member's row with its val/test metrics added (not a diverged member's), and the timing."""
        start = time.perf_counter()
        for i, scores in enumerate(self._eval_metrics()):
            if i not in self.members.diverged:
                rows[i] |= scores
        return rows, {"eval_seconds": time.perf_counter() - start, "epoch_seconds": seconds,
                      "samples_per_second": len(self.seeds) * n_seen / seconds if seconds > 0 else float("inf")}

    def _run_student(self, x: Tensor) -> Tensor:
        """An extra train-mode forward of the student (a method's second view or attacked samples)."""
        with autocast(self.device):
            return self.model(x)

    def _run_teacher(self, x: Tensor) -> Tensor:
        """The teacher's logits for `x` (eval mode, frozen weights, float32), differentiable in `x`."""
        with autocast(self.device):
            return self.teacher(x).float()

    def _eval_metrics(self) -> list[dict]:
        """Each member's val/test metrics (explorer/training/evaluation.py `epoch_scores`)."""
        s, model = self.splits, self.members.eval_model()
        val, test = (predict_logits(model, x).view(len(x), len(self.seeds), -1).transpose(0, 1)
                     for x in (s.val_x, s.test_x))
        rows = []
        for i, (v, t) in enumerate(zip(val, test)):
            unit = self.signal.unit_of(i)
            if unit is None:
                rows.append(epoch_scores(s, v, t, None))
                continue
            teacher = {"val": unit.val_preds} | ({"test": test_preds(unit, s)} if len(absent_classes(s)) else {})
            rows.append(epoch_scores(s, v, t, teacher) | {"teacher_val_acc": unit.val_acc})
        return rows

    def run(self, callback: EpochCallback | None = None) -> list[dict]:
        """Train from the current epoch to `total_epochs`; return the per-epoch history."""
        while self.epoch < self.total_epochs:
            metrics = self.train_epoch()
            if callback is not None:
                callback(self.epoch, metrics, self)
        return self.history


def save_state(state: dict, path: str | os.PathLike) -> None:
    """Write atomically: a temporary file in the same directory, then rename over the final name."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by `save_state`; refuses anything but tensors and plain types."""
    return torch.load(os.fspath(path), map_location=device, weights_only=True)
