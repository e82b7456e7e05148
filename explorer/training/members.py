"""The members a trainer trains, chosen once at setup: one run (`Solo`) or S runs as one fused model
(`Fused`, explorer/training/fused.py). The loop calls the same methods on either and never asks which:

- `order(n)`: this epoch's data order, (N,) for one run, (S, N) for S members (each its own generator's);
- `augment(xb)`: a fresh random crop and flip of a batch, each member with its own generator;
- `draw_generators`: what a view table draws a batch's views with (explorer/teachers/views.py);
- `losses(loss_terms, inputs, hp)`: the method's loss terms, per member on its own rows for S members;
- `before_step()`: members' own learning rates, as gradient scales before SGD's step;
- `eval_model()`: a module giving (B, S, classes) logits on one shared input;
- `rows(...)` / `summary(...)`: each member's epoch metrics, and the epoch's metrics from them.

A member of `Fused` gets the init, data order and augmentation draws of a solo run with its seed, so
every member equals its solo run (tests/test_fused.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from explorer.data.augment import augment_batch
from explorer.errors import KdxError
from explorer.training.fused import (Broadcast, fuse_models, member_losses, member_lr_weights, member_problem,
                                     member_setup, scale_grads)


class Diverged(KdxError):
    """The training loss became NaN or infinite; the run stops at once."""


def _seeded_models(method, cfg, hp, splits, device, seeds: list[int]) -> tuple[list[nn.Module], list]:
    """One student module (the method builds it: a plain model, DML's cohort, ...) and one data-order
    generator per seed, each seeded as a solo run with that seed."""
    models, generators = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(method.build_student(cfg.arch, splits.num_classes, splits.input_shape, hp).to(device))
        generators.append(torch.Generator(device=device).manual_seed(seed))
    return models, generators


def _train_row(loss: float, terms: dict[str, float]) -> dict:
    """train_loss and every loss term as train_<term> (ce and kd always, 0 when absent, so epochs with
    the KD term off keep one column)."""
    return {"train_loss": loss, "train_ce": 0.0, "train_kd": 0.0} | {f"train_{k}": v for k, v in terms.items()}


class Solo:
    """One run with `cfg.seed`: batches (B, ...), the model itself."""

    def __init__(self, method, cfg, hp, splits, device):
        models, generators = _seeded_models(method, cfg, hp, splits, device, [cfg.seed])
        self.model, self.generators, self.seeds, self.lr_scales = models[0], generators, [cfg.seed], [1.0]
        self.device, self.diverged = device, set()
        self.draw_generators = generators[0]

    def order(self, n: int) -> Tensor:
        return torch.randperm(n, generator=self.generators[0], device=self.device)

    def augment(self, xb: Tensor) -> Tensor:
        return augment_batch(xb, self.generators[0])

    def losses(self, loss_terms, inputs, hp: dict) -> dict[str, Tensor]:
        return loss_terms(inputs, hp)

    def scale_lr(self, params: list[Tensor], weight_decay: float) -> None:
        pass  # one run trains at the optimiser's own lr

    def before_step(self) -> None:
        pass

    def eval_model(self) -> nn.Module:
        return self.model

    def rows(self, epoch: int, loss: Tensor, terms: dict[str, Tensor]) -> list[dict]:
        value = float(loss)
        if not math.isfinite(value):
            raise Diverged(f"training loss became {value} at epoch {epoch}; the run stopped.")
        return [_train_row(value, {k: float(v) for k, v in terms.items()})]

    def summary(self, head: dict, rows: list[dict], timing: dict, lr: float) -> dict:
        return head | rows[0] | timing


class Fused:
    """S members (`member_cfgs`: TrainConfigs differing in seed, lr and real-valued hyperparameters) as one
    fused model: batches (S, B, ...), each member's loss on its own rows, each member's own lr."""

    def __init__(self, method, cfg, hp, splits, device, member_cfgs: list, teachers: int):
        problem = member_problem(cfg)
        if problem:
            raise KdxError(f"members: {problem}; allowed: one seed at a time for it.")
        own, self.lr_scales = member_setup(cfg, member_cfgs, splits.num_classes, teachers)
        self.member_hp = {k: torch.tensor(v, device=device) for k, v in own.items()}
        self.seeds = [c.seed for c in member_cfgs]
        models, self.generators = _seeded_models(method, cfg, hp, splits, device, self.seeds)
        self.model = fuse_models(models, splits.train_x[:2])
        self.device, self.diverged = device, set()  # members whose loss stopped being finite
        self.draw_generators = self.generators
        self.lr_weights = None

    def scale_lr(self, params: list[Tensor], weight_decay: float) -> None:
        """Give members whose lr differs from the optimiser's their own step on `params` (the optimiser's)."""
        if any(x != 1.0 for x in self.lr_scales):
            self.params = params
            self.lr_weights = member_lr_weights(params, self.lr_scales, weight_decay)

    def order(self, n: int) -> Tensor:
        return torch.stack([torch.randperm(n, generator=g, device=self.device) for g in self.generators])

    def augment(self, xb: Tensor) -> Tensor:
        return torch.stack([augment_batch(x, g) for x, g in zip(xb, self.generators)])

    def losses(self, loss_terms, inputs, hp: dict) -> dict[str, Tensor]:
        # each term per member (S,), each on its own rows; their sum gives every member its solo gradient
        return member_losses(loss_terms, inputs, hp, self.member_hp)

    def before_step(self) -> None:
        if self.lr_weights:  # members' own learning rates (explorer/training/fused.py)
            scale_grads(self.params, self.lr_weights)

    def eval_model(self) -> nn.Module:
        return Broadcast(self.model)

    def rows(self, epoch: int, loss: Tensor, terms: dict[str, Tensor]) -> list[dict]:
        """A member whose loss is not finite has diverged: it is reported as diverged (val_acc 0, as a
        solo run's last report) while the others go on, each on its own channels, until all have."""
        losses = loss.reshape(-1).tolist()
        terms = {k: v.reshape(-1).tolist() for k, v in terms.items()}
        rows = []
        for i, seed in enumerate(self.seeds):
            if not math.isfinite(losses[i]):
                self.diverged.add(i)
            if i in self.diverged:
                rows.append({"seed": seed, "diverged": 1.0, "val_acc": 0.0})
                continue
            rows.append(_train_row(losses[i], {k: v[i] for k, v in terms.items()}) | {"seed": seed})
        if len(self.diverged) == len(self.seeds):
            raise Diverged(f"training loss of every member became non-finite by epoch {epoch}; the run stopped.")
        return rows

    def summary(self, head: dict, rows: list[dict], timing: dict, lr: float) -> dict:
        """The members' mean (a diverged member's val_acc counts as 0), and each member's row."""
        keys = [k for k in next(r for i, r in enumerate(rows) if i not in self.diverged) if k != "seed"]
        mean = {k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys}
        rows = [r | {"lr": lr * x} for r, x in zip(rows, self.lr_scales)]  # each member's own lr
        return head | mean | timing | {"members": [head | r for r in rows]}


def member_configs(cfg, members: list | None) -> list:
    """Each member's TrainConfig: `members` are seeds of `cfg` or TrainConfigs of their own (None: cfg)."""
    return [cfg.model_copy(update={"seed": m}) if isinstance(m, int) else m for m in members or [cfg]]


def make_members(method, cfg, hp, splits, device, member_cfgs: list, teachers: int) -> Solo | Fused:
    """Several members as one fused model; one: a solo run of it (the trainer's `cfg`)."""
    if len(member_cfgs) == 1:
        return Solo(method, cfg, hp, splits, device)
    return Fused(method, cfg, hp, splits, device, member_cfgs, teachers)
