"""Adversarial training (seed 003 section 4.4): the hook the training loop calls on each batch.

`make_adversary(cfg, splits)` returns `clean` (plain training: the batch itself) or a callable
`adversary(model, x, y, generator) -> x'`: the batch the model trains on. With `adversarial_steps: k`
in the recipe, x' is L-inf PGD-k on the model being trained (Madry et al. 2018, seed 003 eq. 5: from a
random start in the eps-ball, k signed-gradient steps on the CE loss, each projected back onto the ball
and onto the training split's pixel box; `explorer.training.attacks.pgd`). The teacher's outputs are always taken
on the clean batch, so kd / tf_kd_self / tf_kd_reg with the adversary on are seed 003's AT Tf-KD-self
(eq. 6: teacher on x, student on x') and AT Tf-KD-reg (eq. 7), and `ce` is plain adversarial training.

The attack runs with the model in eval mode (batch-norm running statistics, no update of them), as
TRADES' and most PyTorch adversarial-training code do; Madry et al.'s TensorFlow code attacks the
training-mode graph. kdx takes eval mode so that making x' never moves the batch-norm statistics.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from explorer.training.attacks import PGD, pgd, pixel_box

Adversary = Callable[[nn.Module, Tensor, Tensor, object], Tensor]


def clean(model: nn.Module, x: Tensor, y: Tensor, generator) -> Tensor:
    """No adversary: the student trains on the clean batch."""
    return x


def make_adversary(cfg, splits) -> Adversary:
    """The batch the student trains on: PGD's x' within `adversarial_eps` of x, or x itself (`clean`)."""
    if not cfg.adversarial_steps:
        return clean
    box = pixel_box(splits.train_x)
    attack = PGD(eps=cfg.adversarial_eps, step=cfg.adversarial_step, steps=cfg.adversarial_steps, random_start=True)

    def adversary(model: nn.Module, x: Tensor, y: Tensor, generator) -> Tensor:
        return pgd(model, x, y, box, attack, generator)

    return adversary
