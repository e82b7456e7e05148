"""Distillation losses against independent computations on fixed tensors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from explorer.errors import KdxError
from explorer.methods import LossInputs, check_method_params, get_method


def np_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def np_kd_loss(s, t, y, alpha, T):
    """Seed 001 eq. 1 written out in numpy: (1-a)*CE + a*T^2*KL(p_t||p_s), KL summed over classes, mean over batch."""
    p_s1 = np_softmax(s)
    ce = -np.log(p_s1[np.arange(len(y)), y]).mean()
    p_t, p_s = np_softmax(t / T), np_softmax(s / T)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1).mean()
    return (1 - alpha) * ce, alpha * T * T * kl


@pytest.fixture
def batch():
    g = np.random.default_rng(7)
    s = g.normal(size=(6, 5)) * 3
    t = g.normal(size=(6, 5)) * 3
    y = np.array([0, 1, 2, 3, 4, 0])
    return s, t, y


@pytest.mark.parametrize("alpha,T", [(0.9, 4.0), (0.5, 1.0), (0.1, 20.0), (1.0, 2.5)])
def test_kd_matches_numpy(batch, alpha, T):
    s, t, y = batch
    method = get_method("kd")
    hp = method.resolve({"alpha": alpha, "temperature": T})
    terms = method.losses(LossInputs(torch.tensor(s), torch.tensor(y), 1, torch.tensor(t)), hp)
    ce_ref, kd_ref = np_kd_loss(s, t, y, alpha, T)
    assert terms["ce"].item() == pytest.approx(ce_ref, rel=1e-5)
    assert terms["kd"].item() == pytest.approx(kd_ref, rel=1e-5)


def test_kd_term_is_batchmean_not_elementwise_mean(batch):
    """An elementwise mean would be smaller by the number of classes (5 here)."""
    s, t, y = batch
    method = get_method("kd")
    hp = method.resolve({"alpha": 1.0, "temperature": 3.0})
    kd = method.losses(LossInputs(torch.tensor(s), torch.tensor(y), 1, torch.tensor(t)), hp)["kd"].item()
    _, kd_ref = np_kd_loss(s, t, y, 1.0, 3.0)
    assert kd == pytest.approx(kd_ref, rel=1e-5)
    assert kd != pytest.approx(kd_ref / 5, rel=1e-2)


def test_alpha_zero_is_exactly_ce(batch):
    s, t, y = batch
    st, yt = torch.tensor(s), torch.tensor(y)
    kd = get_method("kd")
    terms = kd.losses(LossInputs(st, yt, 1, torch.tensor(t)), kd.resolve({"alpha": 0.0, "temperature": 4.0}))
    ce = get_method("ce")
    plain = ce.losses(LossInputs(st, yt, 1), ce.resolve({}))
    assert sum(terms.values()).item() == plain["ce"].item()


def test_identical_teacher_gives_zero_kd(batch):
    s, _, y = batch
    kd = get_method("kd")
    terms = kd.losses(LossInputs(torch.tensor(s), torch.tensor(y), 1, torch.tensor(s)), kd.resolve({"alpha": 0.5}))
    assert terms["kd"].item() == pytest.approx(0.0, abs=1e-7)


def test_kd_gradient_matches_closed_form(batch):
    """d/ds [T^2 KL(p_t^T || p_s^T)] / B = T (p_s^T - p_t^T) / B (Hinton et al. 2015, section 2.1)."""
    s, t, y = batch
    T = 4.0
    st = torch.tensor(s, requires_grad=True)
    kd = get_method("kd")
    kd.losses(LossInputs(st, torch.tensor(y), 1, torch.tensor(t)), kd.resolve({"alpha": 1.0, "temperature": T}))["kd"].backward()
    expected = T * (np_softmax(s / T) - np_softmax(t / T)) / len(s)
    np.testing.assert_allclose(st.grad.numpy(), expected, rtol=1e-5, atol=1e-8)


def test_kd_stop_epoch_switches_kd_off(batch):
    s, t, y = batch
    kd = get_method("kd")
    hp = kd.resolve({"alpha": 0.7, "temperature": 4.0, "kd_stop_epoch": 3})
    assert kd.uses_teacher(2, hp) and not kd.uses_teacher(3, hp)
    on = kd.losses(LossInputs(torch.tensor(s), torch.tensor(y), 2, torch.tensor(t)), hp)
    off = kd.losses(LossInputs(torch.tensor(s), torch.tensor(y), 3, None), hp)
    assert set(on) == {"ce", "kd"} and set(off) == {"ce"}
    assert off["ce"].item() == pytest.approx(F.cross_entropy(torch.tensor(s), torch.tensor(y)).item())


@pytest.mark.parametrize("params,field", [
    ({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"), ({"temperature": 0}, "temperature"),
    ({"temperature": -2}, "temperature"), ({"kd_stop_epoch": 0}, "kd_stop_epoch"),
    ({"kd_stop_epoch": 11}, "kd_stop_epoch"), ({"beta": 3}, "beta"), ({"alpha": "high"}, "alpha"),
])
def test_bad_hyperparameters_name_the_field(params, field):
    with pytest.raises(KdxError) as e:
        check_method_params("kd", params, epochs=10)
    assert field in str(e.value) and "\n" not in str(e.value)


def test_unknown_method():
    with pytest.raises(KdxError, match="method.*'hinton'.*allowed"):
        get_method("hinton")


@pytest.mark.parametrize("classes", [2, 10, 15, 16, 100])
def test_kdx_cross_entropy_equals_torchs_values_and_gradients(classes):
    """kdx's `log_softmax`/`cross_entropy` take another CPU kernel below 16 classes; same numbers, checked
    against numpy's log-sum-exp (and torch's), a masked -inf logit included (DKD masks the label)."""
    from explorer.methods.losses import cross_entropy, log_softmax

    g = torch.Generator().manual_seed(classes)
    x = torch.randn(64, classes, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, classes, (64,), generator=g)
    xn = x.numpy()
    ref = xn - (xn.max(1, keepdims=True) + np.log(np.exp(xn - xn.max(1, keepdims=True)).sum(1, keepdims=True)))
    np.testing.assert_allclose(log_softmax(x, 1).numpy(), ref, rtol=1e-12, atol=1e-12)
    masked = x.masked_fill(F.one_hot(y, classes).bool(), float("-inf"))
    assert torch.equal(log_softmax(masked.float(), 1), F.log_softmax(masked.float(), 1))
    xs = x.float().requires_grad_(True)
    xt = x.float().requires_grad_(True)
    cross_entropy(xs, y).backward()
    F.cross_entropy(xt, y).backward()
    assert cross_entropy(xs, y).item() == pytest.approx(-ref[np.arange(64), y.numpy()].mean(), rel=1e-6)
    torch.testing.assert_close(xs.grad, xt.grad, rtol=1e-6, atol=1e-7)
    per_sample = cross_entropy(x, y, reduction="none").numpy()
    np.testing.assert_allclose(per_sample, -ref[np.arange(64), y.numpy()], rtol=1e-12)
