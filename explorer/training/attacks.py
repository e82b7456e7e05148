"""L-inf PGD and the transferability of a teacher's adversarial examples to a student (seed 000 section
IV-D, Fig. 1's last column).

PGD (Madry et al. 2018, the seed's ref. [32]): from a uniform random start in the eps-ball, K steps of
x <- proj(x + eta * sign(grad_x CE(f(x), y))), each projected onto the eps-ball around the clean input and
onto the valid input box. Seed 000: eps = 0.031, eta = 0.003, K = 20 on inputs in [0, 1] before
normalisation. kdx's tensors are normalised, so the attack runs in normalised units with the [0, 1]
box and the eps of each channel scaled by that channel's value range: `pixel_box` takes the box as
the per-channel minimum and maximum of the training split, which for CIFAR (every channel spans 0..255
in the training set) is exactly [0, 1] mapped through the normalisation; for datasets without pixels
(MNIST-1D) eps is the same fraction of each channel's range.

Why a compact PGD of kdx's own rather than torchattacks or advertorch: both expect [0, 1] inputs and a
model that normalises inside; kdx's models take normalised tensors and its datasets carry no pixel
statistics, so a wrapper would be more code than the attack. The test checks it against the known
optimum of a linear model (tests/test_attacks.py).

Robust accuracy (seed 003 table 5 reports AutoAttack's, which is not on PyPI, so kdx reports PGD's): the
fraction of samples a model classifies correctly both clean and on the PGD examples of every one of
`restarts` random starts (a sample counts as broken if any restart breaks it).

Transfer rate: on the test samples that both the teacher (the source) and the student (the target)
classify correctly, the fraction of the teacher's adversarial examples that the student misclassifies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class PGD:
    """Seed 000 section IV-D's attack settings (in units of the [0, 1] pixel range)."""

    eps: float = 0.031
    step: float = 0.003
    steps: int = 20
    random_start: bool = True


def pixel_box(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel (lo, hi) of a split, broadcastable to a batch of it: the valid input box."""
    dims = (0, *range(2, x.dim()))
    return x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)


def pgd(model: nn.Module, x: Tensor, y: Tensor, box: tuple[Tensor, Tensor], attack: PGD = PGD(),
        generator: torch.Generator | None = None) -> Tensor:
    """Untargeted L-inf PGD on `model` (in eval mode; its weights are not changed) within `box`."""
    lo, hi = box
    scale = hi - lo  # one unit of the [0, 1] range, per channel
    eps, step = attack.eps * scale, attack.step * scale
    was = model.training
    model.eval()
    adv = x.detach().clone()
    if attack.random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        adv = torch.minimum(torch.maximum(adv + noise * eps, lo), hi)
    for _ in range(attack.steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(F.cross_entropy(model(adv).float(), y), adv)
        adv = adv.detach() + step * grad.sign()
        adv = torch.minimum(torch.maximum(adv, x - eps), x + eps)
        adv = torch.minimum(torch.maximum(adv, lo), hi)
    model.train(was)
    return adv.detach()


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, box: tuple[Tensor, Tensor], attack: PGD = PGD(),
                    restarts: int = 1, seed: int = 0, batch_size: int = 256) -> float:
    """Fraction of (x, y) that `model` gets right clean and under every restart of `attack`."""
    was = model.training
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    right = 0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        ok = _predict(model, xb, batch_size) == yb
        for _ in range(restarts):
            ok &= _predict(model, pgd(model, xb, yb, box, attack, generator), batch_size) == yb
        right += int(ok.sum())
    model.train(was)
    return right / len(y) if len(y) else float("nan")


def transfer_rate(source: nn.Module, target: nn.Module, x: Tensor, y: Tensor, box: tuple[Tensor, Tensor],
                  attack: PGD = PGD(), seed: int = 0, batch_size: int = 256) -> tuple[float, int]:
    """(success rate on `target` of PGD examples made on `source`, number of samples it is measured on:
    those both models classify correctly). NaN when there are none."""
    source_was, target_was = source.training, target.training
    source.eval()
    target.eval()
    both = (_predict(source, x, batch_size) == y) & (_predict(target, x, batch_size) == y)
    xs, ys = x[both], y[both]
    generator = torch.Generator(device=x.device).manual_seed(seed)
    fooled = 0
    for i in range(0, len(ys), batch_size):
        adv = pgd(source, xs[i : i + batch_size], ys[i : i + batch_size], box, attack, generator)
        fooled += int((_predict(target, adv, batch_size) != ys[i : i + batch_size]).sum())
    source.train(source_was)
    target.train(target_was)
    n = len(ys)
    return (fooled / n if n else float("nan")), n
