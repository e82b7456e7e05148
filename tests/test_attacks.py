"""PGD and the transfer rate (seed 000 section IV-D) against results known in closed form."""

import numpy as np
import pytest
import torch
from torch import nn

from explorer.training.attacks import PGD, pgd, pixel_box, transfer_rate

rng = np.random.default_rng(3)


def linear(w, b=None):
    m = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        m.weight.copy_(torch.tensor(w, dtype=torch.float32))
        m.bias.zero_() if b is None else m.bias.copy_(torch.tensor(b, dtype=torch.float32))
    return m


def test_pgd_reaches_the_known_optimum_of_a_linear_binary_model():
    """For two classes and f(x) = Wx, CE(f(x), y) grows along d = w_other - w_y, whose sign never changes:
    PGD ends at the eps-ball's corner x + eps * sign(d), clipped to the box (when steps * step >= eps)."""
    w = rng.normal(size=(2, 12))
    x = rng.uniform(0.2, 0.8, size=(16, 12))
    y = rng.integers(0, 2, 16)
    box = (torch.zeros(1, 12), torch.ones(1, 12))  # pixels in [0, 1]: eps is in pixel units
    eps = 0.031
    want = np.clip(x + eps * np.sign(w[1 - y] - w[y]), 0, 1)
    got = pgd(linear(w), torch.tensor(x, dtype=torch.float32), torch.tensor(y), box,
              PGD(eps=eps, step=0.003, steps=20, random_start=False))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    # from a random start too, given the steps to cross the whole ball (25 x 0.003 > 2 x 0.031)
    got = pgd(linear(w), torch.tensor(x, dtype=torch.float32), torch.tensor(y), box, PGD(eps=eps, steps=25),
              torch.Generator().manual_seed(0))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_pgd_stays_in_the_ball_and_the_box_scaled_per_channel():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
    x = torch.randn(8, 3, 6, 6) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    model(x)
    y = torch.randint(0, 5, (8,))
    lo, hi = pixel_box(x)
    adv = pgd(model, x, y, (lo, hi), PGD(eps=0.05, step=0.01, steps=7), torch.Generator().manual_seed(1))
    scale = (hi - lo)
    assert ((adv - x).abs() <= 0.05 * scale + 1e-6).all() and (adv >= lo - 1e-6).all() and (adv <= hi + 1e-6).all()
    assert ((adv - x).abs() > 0).any()
    ce = nn.functional.cross_entropy
    assert ce(model(adv), y) > ce(model(x), y)  # the attack raised the loss


def test_transfer_rate_counts_only_samples_both_models_get_right():
    """Source = target: every sample both get right and PGD moves across the boundary is a success, so
    a linear model with a wide margin and a tiny eps gives 0, and a large eps gives 1."""
    w = np.array([[1.0, 0.0], [-1.0, 0.0]])
    x = np.array([[0.9, 0.5], [0.6, 0.5], [0.1, 0.5], [0.4, 0.5], [0.55, 0.5]])
    y = np.array([0, 0, 1, 1, 1])  # the last one is wrong for the model (x0 > 0.5 -> class 0)
    model = linear(w, np.array([-0.5, 0.5]))
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    box = (torch.zeros(1, 2), torch.ones(1, 2))
    rate, n = transfer_rate(model, model, xt, yt, box, PGD(eps=0.01, step=0.005, steps=4))
    assert (rate, n) == (0.0, 4)  # margins are >= 0.1 > eps
    rate, n = transfer_rate(model, model, xt, yt, box, PGD(eps=0.15, step=0.05, steps=6))
    assert n == 4 and rate == pytest.approx(2 / 4)  # only the two samples within 0.15 of x0 = 0.5 flip
    # a target that is right on nothing: no sample counts
    wrong = linear(-w, np.array([0.5, -0.5]))
    rate, n = transfer_rate(model, wrong, xt, yt, box)
    assert n == 0 and np.isnan(rate)
