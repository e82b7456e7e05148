"""The one training loop, for teachers and students alike (a teacher is a student with no teacher).

Design points (../shared/DESIGN.md, "Fast by default"):
- the data is one tensor per split on the training device; batches and augmentation are tensor ops;
- the teacher runs under `torch.inference_mode()` (bf16 autocast on GPU); when the method only needs
  logits, the teacher's logits are computed once per training sample and view (the plain images, or
  V fixed crop+flip views of augmented data, `cfg.views`; kept in the teacher store, explorer/views.py)
  and indexed per batch instead of re-running the teacher every epoch of every trial;
- loss sums stay on the device during an epoch (no per-batch `.item()` sync);
- the full state (model, optimiser, scheduler, RNG, epoch, history) round-trips through
  `state_dict()` / `load_state_dict()`, so a Ray trial can resume from its last epoch.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

import torch
from torch import Tensor, nn

from .adversarial import make_adversary
from .config import SCHEDULES, TrainConfig  # noqa: F401  (TrainConfig is part of this module's API)
from .data import Splits, augment_batch
from .errors import KdxError, bad_value
from .evaluation import absent_classes, autocast, epoch_scores, predict_logits
from .features import FeatureTap, feature_paths
from .fused import (Broadcast, fuse_models, member_losses, member_lr_weights, member_problem, member_setup,
                    scale_grads)
from .member_teachers import MemberTeachers, check_teachers, teacher_unit, test_preds
from .methods import LossInputs, get_method


class Diverged(KdxError):
    """The training loss became NaN or infinite; the run stops at once."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


EpochCallback = Callable[[int, dict, "Trainer"], None]


class Trainer:
    """Trains `cfg.arch` on `splits` with `cfg.method`, optionally against a frozen `teacher`.

    Epochs are 1-based. `run()` calls `callback(epoch, metrics, trainer)` after every epoch; the
    callback may save `trainer.state_dict()` and report metrics (a Ray trial does both).

    Two-stage methods (fitnet, fsp: `method.init_epochs(hp) > 0`) get an init stage first: epochs
    1..init_epochs train on `method.init_losses` with their own SGD optimiser and schedule
    (`method.init_recipe`), then epochs init_epochs+1 .. init_epochs+cfg.epochs are the recipe's main
    stage (`method.losses`, the recipe's optimiser; its schedule counts from the stage's first epoch).
    One epoch clock runs through both (`total_epochs`), one callback per epoch, each with `stage` 1 or 2;
    so `epoch` (ASHA's clock) counts the init epochs too, and a two-stage trial has init_epochs more
    epochs than `cfg.epochs`.

    `members=[s1, ..., sS]` trains S seeds of `cfg` as one fused model (explorer/fused.py) in this same
    loop: batches, views and teacher logits carry a leading member axis, the loss is computed per member,
    and each epoch's metrics are the members' means plus `members`, one row per member (its seed and lr
    in it). A member may also be a TrainConfig of its own: members then differ in seed, lr and the
    method's real-valued hyperparameters (T, alpha, ...), and share the rest of `cfg`
    (`explorer.fused.member_settings`). `member_teachers` (instead of `teacher`) gives each member its
    own teacher (a module, or an ensemble's list of the same size for every member;
    explorer/member_teachers.py).
    """

    def __init__(self, cfg: TrainConfig, splits: Splits, device: torch.device | str | None = None,
                 teacher: nn.Module | list[nn.Module] | None = None,
                 members: list[int | TrainConfig] | None = None, member_teachers: list | None = None):
        self.hp = cfg.validate()
        self.cfg = cfg
        self.method = get_method(cfg.method)
        # each member's teacher as a list (an ensemble's members); one teacher for all: one distinct list
        if member_teachers is not None and (teacher is not None or len(member_teachers) != len(members or [])):
            raise bad_value("member_teachers", f"{len(member_teachers)} teachers",
                            f"allowed: one per member ({len(members or [])}), and no `teacher` beside them")
        listed = [list(t) if isinstance(t, (list, tuple)) else [] if t is None else [t]
                  for t in (member_teachers if member_teachers is not None else [teacher])]
        distinct = list({tuple(map(id, t)): t for t in listed}.values())
        if len({len(t) for t in distinct}) > 1:
            raise bad_value("member_teachers", "ensembles of different sizes",
                            "allowed: the same size for every member")
        for teachers in distinct:
            check_teachers(cfg, self.method, teachers)
        teachers = distinct[0]
        self.device = torch.device(device) if device is not None else default_device()
        self.splits = splits.to(self.device)
        self.adversary = make_adversary(cfg, self.splits)  # None: the student trains on the clean batch
        # `members`: fused members (explorer/fused.py), trained as one model; each gets the init, data
        # order and draws of a solo run with its seed. None: one run with cfg.seed.
        self.member_cfgs = [cfg.model_copy(update={"seed": m}) if isinstance(m, int) else m
                            for m in members or [cfg.seed]]
        self.seeds = [c.seed for c in self.member_cfgs]
        self.fused = len(self.seeds) > 1
        problem = self.fused and member_problem(cfg)
        if problem:
            raise KdxError(f"members: {problem}; allowed: one seed at a time for it.")
        # what differs between members: hyperparameters their losses take per member, and lr / cfg.lr
        own, lr_scale = member_setup(cfg, self.member_cfgs, splits.num_classes,
                                     len(teachers) if self.method.needs_teacher else 0)
        self.member_hp = {k: torch.tensor(v, device=self.device) for k, v in own.items()}
        self.lr_scales = lr_scale
        # The method builds the module it trains (a plain model, DML's cohort, ...); its eval-mode
        # forward gives the logits that are evaluated.
        models, self.generators = [], []
        for seed in self.seeds:
            torch.manual_seed(seed)
            models.append(self.method.build_student(cfg.arch, splits.num_classes, splits.input_shape,
                                                    self.hp).to(self.device))
            self.generators.append(torch.Generator(device=self.device).manual_seed(seed))
        self.model = fuse_models(models, self.splits.train_x[:2]) if self.fused else models[0]
        self.generator = self.generators[0]
        self.diverged: set[int] = set()  # fused members whose loss stopped being finite
        self.epoch = 0  # epochs completed (init stage included)
        self.init_epochs = self.method.init_epochs(self.hp)
        self.total_epochs = self.init_epochs + cfg.epochs
        self.history: list[dict] = []
        self.teacher = None  # one module, or a TeacherEnsemble of several
        self.teacher_tap = None
        self.member_teachers = None  # fused members' own teachers, where they differ
        if teachers and self.method.needs_teacher:
            self._set_teacher(teachers)
            if len(distinct) > 1:
                views = None if self.method.needs_features else cfg.views
                units = [self.unit] + [teacher_unit(t, self.splits, views, self.device) for t in distinct[1:]]
                where = {tuple(map(id, t)): k for k, t in enumerate(distinct)}
                self.member_teachers = MemberTeachers(units, [where[tuple(map(id, t))] for t in listed], self.device)
        # Feature-based methods read the student's (and teacher's) layers of their role through
        # forward hooks, and may own modules sized from those layers (not part of the student).
        self.student_tap = None
        self.modules = None
        if self.method.needs_features:
            self.student_tap = FeatureTap(self.model, feature_paths(self.model, self.method.feature_role))
            self.modules = self._build_method_modules()
        params = list(self.model.parameters()) + (list(self.modules.parameters()) if self.modules is not None else [])
        self.optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay,
        )
        self.lr_weights = (member_lr_weights(self.optimizer.param_groups[0]["params"], self.lr_scales,
                                             cfg.weight_decay) if any(x != 1.0 for x in self.lr_scales) else None)
        schedule = SCHEDULES[cfg.schedule]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: schedule(cfg, e))
        self.init_optimizer = self.init_scheduler = None
        if self.init_epochs:
            lr, milestones, gamma = self.method.init_recipe(self.hp)
            self.init_optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum,
                                                  nesterov=cfg.nesterov and cfg.momentum > 0,
                                                  weight_decay=cfg.weight_decay)
            self.init_scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.init_optimizer, lambda e: gamma ** sum(e >= m for m in milestones))

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
            if self.teacher_tap is not None:
                self.teacher(x)
                t_shapes = [tuple(f.shape[1:]) for f in self.teacher_tap.features]
        self.student_tap.clear()
        modules = self.method.build_modules(s_shapes, t_shapes, self.hp)
        return modules.to(self.device) if modules is not None else None

    # ------------------------------------------------------------------ teacher
    def _set_teacher(self, teachers: list[nn.Module]) -> None:
        # Where the method needs only logits, the teacher runs once per training sample and view, not per
        # batch: on the V fixed views per sample of augmented data (cfg.views; 0 = live crops, the
        # teacher runs on every batch) or on the plain images; from the teacher store when the teacher
        # came from one (explorer/views.py). None = the live path.
        self.unit = teacher_unit(teachers, self.splits, None if self.method.needs_features else self.cfg.views,
                                 self.device)
        self.teachers, self.teacher = self.unit.modules, self.unit.teacher
        if self.method.needs_features:
            self.teacher_tap = FeatureTap(self.teacher, feature_paths(self.teacher, self.method.feature_role))
        self.teacher_train_logits = self.unit.views

    @torch.inference_mode()
    def _teacher_outputs(self, xb: Tensor, idx: Tensor):
        """(logits, features) of the teacher for a batch; for an ensemble, a list of logits."""
        several = len(self.teachers) > 1
        if self.teacher_train_logits is not None and self.member_teachers is None:  # the views `_augment` drew
            return self.teacher_train_logits.logits(idx), None                      # (or the plain images)
        with autocast(self.device):
            if self.member_teachers is not None:  # each member's own teacher on its own rows
                return self.member_teachers.logits(xb, idx), None
            if self.teacher_tap is not None:
                logits = self.teacher(xb).float()
                return logits, [f.float() for f in self.teacher_tap.features]
            flat = xb.flatten(0, 1) if self.fused else xb  # fused members' (S, B, ...) batches as one
            outs = [t(flat).float().view(*xb.shape[: 1 + self.fused], -1) for t in self.teachers]
            return (outs if several else outs[0]), None

    def _augment(self, xb: Tensor, idx: Tensor) -> Tensor:
        """A batch's images on augmented data: one of each sample's fixed views (drawn from the trainer's
        generator) when the teacher's logits on them are kept, else a fresh random crop and flip."""
        views = getattr(self, "teacher_train_logits", None)  # set by _set_teacher (trainers with a teacher)
        if views is not None:
            return views.draw(idx, self.generators if self.fused else self.generator)
        if self.fused:  # each member's batch with its own generator
            return torch.stack([augment_batch(x, g) for x, g in zip(xb, self.generators)])
        return augment_batch(xb, self.generator)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to continue bit-for-bit; only tensors and plain types (weights_only-safe)."""
        return {
            "model": self.model.state_dict(),
            "modules": self.modules.state_dict() if self.modules is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "init_optimizer": self.init_optimizer.state_dict() if self.init_optimizer is not None else {},
            "init_scheduler": self.init_scheduler.state_dict() if self.init_scheduler is not None else {},
            "generator": self.generator.get_state(),
            "generators": [g.get_state() for g in self.generators],
            "diverged": sorted(self.diverged),
            "epoch": self.epoch,
            "history": self.history,
            "config": self.cfg.as_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.modules is not None:
            self.modules.load_state_dict(state["modules"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.init_optimizer is not None:
            self.init_optimizer.load_state_dict(state["init_optimizer"])
            self.init_scheduler.load_state_dict(state["init_scheduler"])
        for g, st in zip(self.generators, state.get("generators", [state["generator"]])):
            g.set_state(st.cpu() if self.device.type == "cpu" else st)
        self.diverged = set(state.get("diverged", ()))
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])

    # ------------------------------------------------------------------ loop
    def train_epoch(self) -> dict:
        epoch = self.epoch + 1
        s, hp, method = self.splits, self.hp, self.method
        use_teacher = self.teacher is not None and method.uses_teacher(epoch, hp)
        init_stage = epoch <= self.init_epochs
        optimizer, scheduler = ((self.init_optimizer, self.init_scheduler) if init_stage
                                else (self.optimizer, self.scheduler))
        loss_terms = method.init_losses if init_stage else method.losses
        self.model.train()
        if self.modules is not None:
            self.modules.train()
        sums: dict[str, Tensor] = {}
        total = 0
        n_seen = 0
        start = time.perf_counter()
        perm = torch.stack([torch.randperm(len(s.train_y), generator=g, device=self.device) for g in self.generators])
        for idx in (perm if self.fused else perm[0]).split(self.cfg.batch_size, dim=-1):  # (S, B) or (B,)
            xb, yb = s.train_x[idx], s.train_y[idx]
            if s.augment == "crop_flip":
                xb = self._augment(xb, idx)
            t_logits, t_feats = self._teacher_outputs(xb, idx) if use_teacher else (None, None)
            if t_feats is not None:  # inference tensors cannot be saved for backward (e.g. an MSE target)
                t_feats = [f.clone() for f in t_feats]
            if self.adversary is not None:  # the student sees x' (the teacher's outputs are on the clean x)
                xb = self.adversary(self.model, xb, yb, self.generator)
            with autocast(self.device):
                logits = self.model(xb)
            feats = self.student_tap.features if self.student_tap is not None else None
            inputs = LossInputs(logits, yb, epoch, t_logits, feats, t_feats, self.modules, x=xb,
                                run_student=self._run_student, run_teacher=self._run_teacher if use_teacher else None,
                                generator=self.generator, epochs=self.cfg.epochs)
            # fused members: each term per member (S,), each on its own rows; their sum gives every
            # member its solo gradient
            terms = member_losses(loss_terms, inputs, hp, self.member_hp) if self.fused else loss_terms(inputs, hp)
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            if self.lr_weights:  # members' own learning rates (explorer/fused.py)
                scale_grads(self.optimizer.param_groups[0]["params"], self.lr_weights)
            optimizer.step()
            n = yb.shape[-1]
            n_seen += n
            total = total + loss.detach() * n
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.detach() * n
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        head = {"epoch": epoch, "lr": lr} | ({"stage": 1 if init_stage else 2} if self.init_epochs else {})
        rows = self._train_rows(epoch, total / n_seen, {k: v / n_seen for k, v in sums.items()})
        start = time.perf_counter()
        for i, scores in enumerate(self._eval_metrics()):
            if i not in self.diverged:
                rows[i] |= scores
        timing = {"eval_seconds": time.perf_counter() - start, "epoch_seconds": seconds,
                  "samples_per_second": len(self.seeds) * n_seen / seconds if seconds > 0 else float("inf")}
        if self.fused:  # the members' mean (a diverged member's val_acc counts as 0), and each member's row
            keys = [k for k in next(r for i, r in enumerate(rows) if i not in self.diverged) if k != "seed"]
            mean = {k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys}
            rows = [r | {"lr": lr * x} for r, x in zip(rows, self.lr_scales)]  # each member's own lr
            metrics = head | mean | timing | {"members": [head | r for r in rows]}
        else:
            metrics = head | rows[0] | timing
        self.epoch = epoch
        self.history.append(metrics)
        return metrics

    def _train_rows(self, epoch: int, loss: Tensor, terms: dict[str, Tensor]) -> list[dict]:
        """Each member's training metrics: train_loss and every loss term the method returned, as
        train_<term> (ce and kd always, 0 when absent, so epochs with the KD term off keep one column).
        A member whose loss is not finite has diverged: a solo run stops; a fused member is reported
        as diverged (val_acc 0, as a solo run's last report) while the others go on, each on its own
        channels, until all have diverged."""
        losses = loss.reshape(-1).tolist()
        terms = {k: v.reshape(-1).tolist() for k, v in terms.items()}
        rows = []
        for i, seed in enumerate(self.seeds):
            if not math.isfinite(losses[i]) and i not in self.diverged:
                if not self.fused:
                    raise Diverged(f"training loss became {losses[i]} at epoch {epoch}; the run stopped.")
                self.diverged.add(i)
            if i in self.diverged:
                rows.append({"seed": seed, "diverged": 1.0, "val_acc": 0.0})
                continue
            row = {"train_loss": losses[i], "train_ce": 0.0, "train_kd": 0.0}
            rows.append(row | {f"train_{k}": v[i] for k, v in terms.items()} | ({"seed": seed} if self.fused else {}))
        if len(self.diverged) == len(self.seeds):
            raise Diverged(f"training loss of every member became non-finite by epoch {epoch}; the run stopped.")
        return rows

    def _run_student(self, x: Tensor) -> Tensor:
        """An extra train-mode forward of the student (a method's second view or attacked samples)."""
        with autocast(self.device):
            return self.model(x)

    def _run_teacher(self, x: Tensor) -> Tensor:
        """The teacher's logits for `x` (eval mode, frozen weights, float32), differentiable in `x`."""
        with autocast(self.device):
            return self.teacher(x).float()

    def _eval_metrics(self) -> list[dict]:
        """Each member's val/test metrics (explorer/evaluation.py `epoch_scores`)."""
        s = self.splits
        model = Broadcast(self.model) if self.fused else self.model
        val, test = (predict_logits(model, x).view(len(x), len(self.seeds), -1).transpose(0, 1)
                     for x in (s.val_x, s.test_x))
        if self.teacher is None:
            return [epoch_scores(s, v, t, None) for v, t in zip(val, test)]
        units = self.member_teachers.units if self.member_teachers is not None else [self.unit]
        unit_of = self.member_teachers.unit_of if self.member_teachers is not None else [0] * len(self.seeds)
        rows = []
        for v, t, u in zip(val, test, unit_of):
            unit = units[u]
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
