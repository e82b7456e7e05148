"""The stages of a run, chosen once at setup: one main stage, or a two-stage method's init stage first.

Two-stage methods (fitnet, fsp, ab: `method.init_epochs(hp) > 0`) train epochs 1..init_epochs on
`method.init_losses` with their own SGD optimiser and schedule (`method.init_recipe`), then epochs
init_epochs+1 .. init_epochs+cfg.epochs are the recipe's main stage (`method.losses`, the recipe's
optimiser; its schedule counts from the stage's first epoch). One epoch clock runs through both, so a
two-stage run has init_epochs more epochs than `cfg.epochs` (`trial_epochs` below is that clock).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from explorer.config import SCHEDULES


def trial_epochs(method, hp: dict, epochs: int) -> int:
    """A run's whole epoch clock: the init stage's epochs (0 for one-stage methods) plus `epochs`."""
    return method.init_epochs(hp) + epochs


@dataclass
class Stage:
    number: int  # 1: the init stage, 2: the main stage (reported as `stage` only by two-stage runs)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    losses: Callable  # (LossInputs, hp) -> {term: loss}


def _sgd(params, lr: float, cfg) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


class Stages:
    """The main stage and, for two-stage methods, the init stage; `at(epoch)` is the one an epoch trains in."""

    def __init__(self, method, cfg, hp: dict, params: list):
        self.init_epochs = method.init_epochs(hp)
        schedule = SCHEDULES[cfg.schedule]
        optimizer = _sgd(params, cfg.lr, cfg)
        self.main = Stage(2, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: schedule(cfg, e)),
                          method.losses)
        self.init = None
        if self.init_epochs:
            lr, milestones, gamma = method.init_recipe(hp)
            init = _sgd(params, lr, cfg)
            self.init = Stage(1, init, torch.optim.lr_scheduler.LambdaLR(
                init, lambda e: gamma ** sum(e >= m for m in milestones)), method.init_losses)

    def at(self, epoch: int) -> Stage:
        return self.init if epoch <= self.init_epochs else self.main

    def head(self, epoch: int, lr: float) -> dict:
        """The epoch's first metrics: its number and lr, and its stage where there are two."""
        return {"epoch": epoch, "lr": lr} | ({"stage": self.at(epoch).number} if self.init_epochs else {})

    def state_dict(self) -> dict:
        init = self.init
        return {"optimizer": self.main.optimizer.state_dict(), "scheduler": self.main.scheduler.state_dict(),
                "init_optimizer": init.optimizer.state_dict() if init else {},
                "init_scheduler": init.scheduler.state_dict() if init else {}}

    def load_state_dict(self, state: dict) -> None:
        self.main.optimizer.load_state_dict(state["optimizer"])
        self.main.scheduler.load_state_dict(state["scheduler"])
        if self.init is not None:
            self.init.optimizer.load_state_dict(state["init_optimizer"])
            self.init.scheduler.load_state_dict(state["init_scheduler"])
