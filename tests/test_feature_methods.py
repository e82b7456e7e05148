"""Feature-based and relational methods (issue 12): every loss against a numpy computation written from
its paper's formula, the feature layers and connector sizes per model family, the architecture check,
one short real training run per method, the two-stage mechanism (and exact resume across the stage
boundary), `kdx methods`, and the seed specs."""

import argparse
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from explorer.config import TrainConfig
from explorer.data.condition import DataSpec
from explorer.data.splits import load_splits
from explorer.errors import KdxError
from explorer.methods import LossInputs, check_method_params, get_method
from explorer.models import build_model
from explorer.models.features import FeatureTap, feature_paths
from explorer.training.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
NEW = ["at", "sp", "rkd_d", "rkd_a", "rkd_da", "fitnet", "fsp", "sfd", "ab", "oh", "bss", "uda"]
rng = np.random.default_rng(12)


def t(a):
    return torch.tensor(a, dtype=torch.float32)


def inputs(fs, ft, modules=None, b=None):
    b = len(fs[0]) if b is None else b
    logits = torch.zeros(b, 3)
    return LossInputs(logits, torch.zeros(b, dtype=torch.long), 1, torch.zeros(b, 3), [t(f) for f in fs],
                      [t(f) for f in ft], modules)


def ce0(k=3):
    return math.log(k)  # CE of all-zero logits


# ---------------------------------------------------------------- numpy references, from the papers


def np_avgpool(f, size):
    """Average-pool the trailing axes of f down to `size` (integer factors only)."""
    for ax, n in enumerate(size, start=2):
        k = f.shape[ax] // n
        f = f.reshape(*f.shape[:ax], n, k, *f.shape[ax + 1:]).mean(ax + 1)
    return f


def np_at(fs, ft, beta):
    """Zagoruyko & Komodakis eq. 2, p = 2: beta/2 * sum_j mean (Q_s/|Q_s| - Q_t/|Q_t|)^2."""
    total = 0.0
    for a, b in zip(fs, ft):
        size = tuple(min(x, y) for x, y in zip(a.shape[2:], b.shape[2:]))
        a, b = np_avgpool(a, size), np_avgpool(b, size)
        qa = (a ** 2).mean(1).reshape(len(a), -1)
        qb = (b ** 2).mean(1).reshape(len(b), -1)
        qa /= np.linalg.norm(qa, axis=1, keepdims=True)
        qb /= np.linalg.norm(qb, axis=1, keepdims=True)
        total += ((qa - qb) ** 2).mean()
    return beta / 2 * total


@pytest.mark.parametrize("s_shapes,t_shapes", [
    ([(4, 8, 6, 6)] * 3, [(4, 16, 6, 6)] * 3),                       # 2-D maps, different widths
    ([(3, 5, 7), (3, 5, 4), (3, 5, 2)], [(3, 9, 7), (3, 9, 4), (3, 9, 2)]),  # 1-D maps (cnn1d)
    ([(2, 4, 8, 8), (2, 4, 4, 4), (2, 4, 2, 2)], [(2, 6, 4, 4), (2, 6, 4, 4), (2, 6, 2, 2)]),  # sizes differ
])
def test_at_matches_numpy(s_shapes, t_shapes):
    fs = [rng.normal(size=s) for s in s_shapes]
    ft = [rng.normal(size=s) for s in t_shapes]
    m = get_method("at")
    terms = m.losses(inputs(fs, ft), m.resolve({"beta": 1000}))
    assert terms["at"].item() == pytest.approx(np_at(fs, ft, 1000), rel=1e-4)
    assert terms["ce"].item() == pytest.approx(ce0())
    # blocks 1, 2, 3 are the LAST three block outputs: a stem output in front is ignored
    stem_s, stem_t = rng.normal(size=s_shapes[0]), rng.normal(size=t_shapes[0])
    again = m.losses(inputs([stem_s, *fs], [stem_t, *ft]), m.resolve({}))
    assert again["at"].item() == pytest.approx(terms["at"].item(), rel=1e-5)


def np_sp(fs, ft, gamma):
    """Tung & Mori eq. 2-5: G = Q Q^T, rows L2-normalised; gamma/b^2 * ||G_t - G_s||_F^2."""
    def g(f):
        q = f.reshape(len(f), -1)
        m = q @ q.T
        return m / np.linalg.norm(m, axis=1, keepdims=True)
    b = len(fs)
    return gamma * ((g(ft) - g(fs)) ** 2).sum() / b ** 2


@pytest.mark.parametrize("s_shape,t_shape", [((5, 8, 4, 4), (5, 32, 4, 4)), ((7, 6, 5), (7, 3, 5)), ((4, 10), (4, 30))])
def test_sp_matches_numpy(s_shape, t_shape):
    fs, ft = rng.normal(size=s_shape), rng.normal(size=t_shape)
    m = get_method("sp")
    terms = m.losses(inputs([fs], [ft]), m.resolve({"gamma": 3000}))
    assert terms["sp"].item() == pytest.approx(np_sp(fs, ft, 3000), rel=1e-4)


def huber(x):
    a = np.abs(x)
    return np.where(a < 1, 0.5 * x ** 2, a - 0.5)


def np_rkd_d(es, et):
    """Park et al. eq. 4-5: distances / mean off-diagonal distance; Huber, mean over all b^2 pairs."""
    def psi(e):
        d = np.sqrt(((e[:, None, :] - e[None, :, :]) ** 2).sum(-1))
        off = ~np.eye(len(e), dtype=bool)
        return d / d[off].mean()
    return huber(psi(es) - psi(et)).mean()


def np_rkd_a(es, et):
    """Park et al. eq. 6-7, written as loops: cos of the angle at j between e_i and e_k; Huber, mean over i, j, k."""
    def psi(e):
        b = len(e)
        out = np.zeros((b, b, b))
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    u, v = e[i] - e[j], e[k] - e[j]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    if nu > 0 and nv > 0:
                        out[i, j, k] = u @ v / (nu * nv)
        return out
    return huber(psi(es) - psi(et)).mean()


@pytest.mark.parametrize("b,ds,dt", [(4, 3, 5), (6, 8, 8), (5, 16, 2)])
def test_rkd_matches_numpy(b, ds, dt):
    es, et = rng.normal(size=(b, ds)) * 2, rng.normal(size=(b, dt))
    for name in ("rkd_d", "rkd_a", "rkd_da"):
        m = get_method(name)
        terms = m.losses(inputs([es], [et]), m.resolve({}))
        if name != "rkd_a":
            assert terms["rkd_d"].item() == pytest.approx(25 * np_rkd_d(es, et), rel=1e-4)
        if name != "rkd_d":
            assert terms["rkd_a"].item() == pytest.approx(50 * np_rkd_a(es, et), rel=1e-4)
        assert set(terms) == {"ce"} | {"rkd_d", "rkd_a"} & {f"rkd_{c}" for c in name[4:]}


def test_fitnet_hint_matches_numpy():
    """Stage 1: mean squared difference of the regressed student block 2 and the teacher's block 2 (a
    1x1 conv regressor here, written out as an einsum)."""
    fs = [rng.normal(size=(3, 4, 5, 5)) for _ in range(3)]
    ft = [rng.normal(size=(3, 6, 5, 5)) for _ in range(3)]
    w = rng.normal(size=(6, 4))
    reg = nn.Conv2d(4, 6, 1, bias=False)
    reg.weight.data = t(w)[:, :, None, None]
    m = get_method("fitnet")
    terms = m.init_losses(inputs(fs, ft, reg), m.resolve({}))
    ref = ((np.einsum("oc,bchw->bohw", w, fs[1]) - ft[1]) ** 2).mean()
    assert set(terms) == {"hint"} and terms["hint"].item() == pytest.approx(ref, rel=1e-5)


def np_batchnorm(z, gamma, beta, eps=1e-5):
    """Training-mode BN: per channel (axis 1), normalised by the batch's mean and biased variance."""
    axes = (0, *range(2, z.ndim))
    mu, var = z.mean(axes, keepdims=True), z.var(axes, keepdims=True)
    shape = (1, -1) + (1,) * (z.ndim - 2)
    return gamma.reshape(shape) * (z - mu) / np.sqrt(var + eps) + beta.reshape(shape)


@pytest.mark.parametrize("s_shape,t_shape", [((4, 5, 5), (6, 5, 5)), ((4, 7), (6, 7)), ((4,), (6,))],
                         ids=["map", "seq", "flat"])
def test_fitnet_regressor_is_a_pointwise_linear_map_plus_bn_without_relu(s_shape, t_shape):
    """The built regressor (Romero et al. section 2.2: kernel k with N_g - k + 1 = N_h, so 1x1 on maps of
    equal size; Linear on flat features) + BN, no final ReLU: the whole hint against numpy, with the
    regressor's weights drawn here, BN in training mode, on the student's and teacher's block 2."""
    b = 5
    fs = [rng.normal(size=(b, *s_shape)) for _ in range(3)]
    ft = [rng.normal(size=(b, *t_shape)) for _ in range(3)]
    m = get_method("fitnet")
    reg = m.build_modules([s_shape] * 3, [t_shape] * 3, m.resolve({})).train()
    assert len(reg) == 2 and reg[0].weight[0, 0].numel() == 1  # conv 1x1 (or Linear), BN, nothing after
    w, gamma, beta = rng.normal(size=(6, 4)), rng.uniform(0.5, 2, 6), rng.normal(size=6)
    with torch.no_grad():
        for p in reg.parameters():
            p.zero_()  # a conv bias (none expected before BN) stays 0, as the reference has none
        reg[0].weight.copy_(t(w).reshape(reg[0].weight.shape))
        reg[1].weight.copy_(t(gamma))
        reg[1].bias.copy_(t(beta))
    got = reg(t(fs[1]))
    want = np_batchnorm(np.einsum("oc,bc...->bo...", w, fs[1]), gamma, beta)
    assert got.shape == (b, *t_shape)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-4, atol=1e-4)
    assert (want < 0).any()  # no ReLU: negative outputs come through
    terms = m.init_losses(inputs(fs, ft, reg), m.resolve({}))
    assert terms["hint"].item() == pytest.approx(((want - ft[1]) ** 2).mean(), rel=1e-4)


def np_fsp(fs, ft, weights=(1, 3, 1)):
    """Yim et al. eq. 1: G = F1 F2^T / (h w) between the input and output of each block; loss sum_n W_n *
    mean over batch and matrix entries of (G_t - G_s)^2 (RepDistiller's mean, not eq. 2's sum, see
    explorer/methods/fitnet.py; block n's input = the feature before it; larger maps pooled to the smaller)."""
    def g(a, b):
        size = tuple(min(x, y) for x, y in zip(a.shape[2:], b.shape[2:]))
        a, b = np_avgpool(a, size), np_avgpool(b, size)
        return np.einsum("bchw,bdhw->bcd", a, b) / np.prod(size)
    return sum(w * ((g(ft[n], ft[n + 1]) - g(fs[n], fs[n + 1])) ** 2).mean()
               for n, w in zip(range(3), weights))


@pytest.mark.parametrize("channels,sizes", [((4, 4, 6, 8), (8, 8, 4, 2)), ((3, 5, 5, 2), (6, 6, 6, 3))])
def test_fsp_matches_numpy(channels, sizes):
    fs = [rng.normal(size=(3, c, s, s)) for c, s in zip(channels, sizes)]
    ft = [rng.normal(size=(3, c, s, s)) for c, s in zip(channels, sizes)]
    m = get_method("fsp")
    hp = m.resolve({})
    modules = m.build_modules([f.shape[1:] for f in fs], [f.shape[1:] for f in ft], hp)
    assert all(isinstance(c, nn.Identity) for c in modules.maps)  # equal widths: no connector
    terms = m.init_losses(inputs(fs, ft, modules), hp)
    assert terms["fsp"].item() == pytest.approx(np_fsp(fs, ft), rel=1e-4)


def test_two_stage_methods_take_hinton_kd_in_stage_two():
    s, tt = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    for name in ("fitnet", "fsp"):
        m = get_method(name)
        hp = m.resolve({})
        assert (hp["alpha"], hp["temperature"], hp["init_epochs"], hp["init_lr"]) == (0.9, 4.0, 100, 0.001)
        assert m.init_recipe(hp) == (0.001, (60, 80), 0.1)  # seed 000 section III
        li = LossInputs(t(s), torch.tensor([0, 1, 2, 0]), 1, t(tt))
        kd = get_method("kd")
        ref = kd.losses(li, kd.resolve({}))
        assert {k: v.item() for k, v in m.losses(li, hp).items()} == {k: v.item() for k, v in ref.items()}


def np_adaptive_max(f, size):
    """Adaptive max-pool of the trailing axes of f to `size` (torch's windows: floor(i L/n) .. ceil((i+1) L/n))."""
    for ax, n in zip(range(f.ndim - len(size), f.ndim), size):
        L = f.shape[ax]
        parts = [np.take(f, range(i * L // n, -(-(i + 1) * L // n)), axis=ax).max(axis=ax, keepdims=True)
                 for i in range(n)]
        f = np.concatenate(parts, axis=ax)
    return f


@pytest.mark.parametrize("s_shapes,t_shapes", [
    ([(2, 4, 8, 8), (2, 8, 4, 4)], [(2, 16, 8, 8), (2, 12, 4, 4)]),   # channel factors 4 and 1.5
    ([(3, 4, 6)], [(3, 8, 12)]),                                       # 1-D maps, positions pooled too
    ([(2, 5), (2, 3)], [(2, 10), (2, 7)]),                             # flat features (MLP)
])
def test_sfd_matches_numpy(s_shapes, t_shapes):
    fs = [rng.normal(size=x) for x in s_shapes]
    ft = [rng.normal(size=x) for x in t_shapes]
    ref = sum(((a - np_adaptive_max(b, a.shape[1:])) ** 2).mean() for a, b in zip(fs, ft))
    m = get_method("sfd")
    hp = m.resolve({"sfd_weight": 2.0})
    assert m.losses(inputs(fs, ft), hp)["sfd"].item() == pytest.approx(2 * ref, rel=1e-5)
    with pytest.raises(KdxError, match="sfd"):  # a teacher narrower than the student
        m.build_modules([x[1:] for x in t_shapes], [x[1:] for x in s_shapes], hp)


class Unchanged(nn.Module):
    """Stands in for the connectors (equal widths) so the reference needs no conv."""

    def forward(self, feats):
        return [f.float() for f in feats]


def np_ab(fs, ft, mu=1.0, weights=(0.25, 0.5, 1.0)):
    """Heo et al. AAAI 2019: ||rho(t) * relu(mu - r) + (1 - rho(t)) * relu(mu + r)||^2, per block, / batch."""
    total = 0.0
    for w, r, t in zip(weights, fs, ft):
        rho = (t > 0).astype(float)
        total += w * (rho * np.maximum(mu - r, 0) ** 2 + (1 - rho) * np.maximum(mu + r, 0) ** 2).sum()
    return total / len(fs[0])


def np_oh(fs, ft, weights=(0.25, 0.5, 1.0)):
    """Heo et al. ICCV 2019: teacher max(t, m) with m = E[t | t < 0] per channel; partial L2 (no loss where
    the student is at or below a non-positive target), per block, / batch."""
    total = 0.0
    for w, r, t in zip(weights, fs, ft):
        axes = tuple(i for i in range(t.ndim) if i != 1)
        m = np.where(t < 0, t, 0).sum(axes) / np.maximum((t < 0).sum(axes), 1)
        m = m.reshape(1, -1, *([1] * (t.ndim - 2)))
        target = np.maximum(t, m)
        skip = (r <= target) & (target <= 0)
        total += w * np.where(skip, 0.0, (r - target) ** 2).sum()
    return total / len(fs[0])


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (3, 6, 7), (5, 8)])
def test_ab_and_oh_match_numpy(shape):
    fs = [rng.normal(size=shape) * 2 for _ in range(3)]
    ft = [rng.normal(size=shape) * 2 - 0.5 for _ in range(3)]
    ab = get_method("ab")
    hp = ab.resolve({})
    assert ab.init_losses(inputs(fs, ft, Unchanged()), hp)["ab"].item() == pytest.approx(0.003 * np_ab(fs, ft), rel=1e-5)
    assert ab.init_recipe(hp) == (0.1, (), 1.0) and (hp["alpha"], hp["temperature"]) == (0.5, 5.0)
    oh = get_method("oh")
    terms = oh.losses(inputs(fs, ft, Unchanged()), oh.resolve({}))
    assert terms["oh"].item() == pytest.approx(0.001 * np_oh(fs, ft), rel=1e-5)


# ---------------------------------------------------------------- feature layers and connector sizes per family

PAIRS = [("resnet8", "resnet32x4", (3, 32, 32)), ("wrn_16_2", "wrn_40_2", (3, 32, 32)),
         ("cnn1d_w4", "cnn1d_w64", (1, 40))]


def role_features(arch, input_shape):
    """{role: (per-sample shapes, features)} of one forward of `arch` on two random samples."""
    model = build_model(arch, 10, input_shape).eval()
    roles = ("blocks", "penultimate", "preact")
    taps = {r: FeatureTap(model, feature_paths(model, r)) for r in roles}
    with torch.no_grad():
        model(torch.randn(2, *input_shape))
    out = {r: ([tuple(f.shape[1:]) for f in tap.features], tap.features) for r, tap in taps.items()}
    for tap in taps.values():
        tap.remove()
    return out


@pytest.mark.parametrize("student,teacher,input_shape", PAIRS, ids=[p[0] for p in PAIRS])
def test_feature_layers_and_connectors_per_family(student, teacher, input_shape):
    s_roles, t_roles = role_features(student, input_shape), role_features(teacher, input_shape)
    for name in NEW:
        m = get_method(name)
        if not m.needs_features:  # bss, uda: logits only
            continue
        problem = m.arch_problem(student)
        if problem:
            assert name == "fsp" and student.startswith("cnn1d")  # the only refusal among these pairs
            continue
        (s_shapes, s_feats), (t_shapes, t_feats) = s_roles[m.feature_role], t_roles[m.feature_role]
        hp = m.resolve({})
        modules = m.build_modules(s_shapes, t_shapes, hp)
        if name == "fitnet":
            conv = modules[0]
            assert (conv.in_channels, conv.out_channels) == (s_shapes[-2][0], t_shapes[-2][0])
        if name in ("ab", "oh"):
            for c, s, tt in zip(modules.maps, s_shapes[-3:], t_shapes[-3:]):
                assert (c[0].in_channels, c[0].out_channels) == (s[0], tt[0])
        if name == "fsp":
            for c, s, tt in zip(modules.maps, s_shapes, t_shapes):  # input of block 1 (the stem), blocks 1-3
                assert isinstance(c, nn.Identity) if s[0] == tt[0] else (c[0].in_channels, c[0].out_channels) == (s[0], tt[0])
        # the loss resolves on these features (both stages of the two-stage methods)
        li = LossInputs(torch.zeros(2, 10), torch.zeros(2, dtype=torch.long), 1, torch.zeros(2, 10), s_feats,
                        t_feats, modules)
        for fn in (m.losses, m.init_losses) if m.init_epochs(hp) else (m.losses,):
            assert all(torch.isfinite(v) for v in fn(li, hp).values())
    if student == "resnet8":  # widths differ: block 2 is 32 vs 128 channels; stem, blocks 16/16/32/64 vs 32/64/128/256
        fit = get_method("fitnet").build_modules(s_roles["blocks"][0], t_roles["blocks"][0], {})
        assert (fit[0].in_channels, fit[0].out_channels) == (32, 128)
        fsp = get_method("fsp").build_modules(s_roles["blocks"][0], t_roles["blocks"][0], {})
        assert [(c[0].in_channels, c[0].out_channels) for c in fsp.maps] == [(16, 32), (16, 64), (32, 128), (64, 256)]
        oh = get_method("oh").build_modules(s_roles["preact"][0], t_roles["preact"][0], {})
        assert [(c[0].in_channels, c[0].out_channels) for c in oh.maps] == [(16, 64), (32, 128), (64, 256)]


def test_mlp_features_resolve_for_flat_methods():
    s_roles, t_roles = role_features("mlp_32x3", (1, 40)), role_features("mlp_64x3", (1, 40))
    for name in ("sp", "rkd_da", "fitnet", "sfd", "oh"):
        m = get_method(name)
        hp = m.resolve({})
        (s_shapes, s_feats), (t_shapes, t_feats) = s_roles[m.feature_role], t_roles[m.feature_role]
        modules = m.build_modules(s_shapes, t_shapes, hp)
        li = LossInputs(torch.zeros(2, 10), torch.zeros(2, dtype=torch.long), 1, torch.zeros(2, 10), s_feats,
                        t_feats, modules)
        fn = m.init_losses if m.init_epochs(hp) else m.losses
        assert all(torch.isfinite(v) for v in fn(li, hp).values())


# ---------------------------------------------------------------- methods that do not fit an architecture


@pytest.mark.parametrize("name", ["at", "fsp"])
def test_spatial_methods_refuse_mlps_in_one_sentence(name, mnist1d):
    with pytest.raises(KdxError) as e:
        check_method_params(name, {}, 10, archs=["mlp_400x2"])
    msg = str(e.value)
    assert f"'{name}'" in msg and "'mlp_400x2'" in msg and msg.count(".") <= 2
    # the trainer refuses too, before it builds or trains anything (a teacher of the wrong kind counts)
    splits = mnist1d
    with pytest.raises(KdxError, match="mlp_400x2"):
        Trainer(TrainConfig("mlp_400x2", epochs=1, method=name), splits, "cpu",
                teacher=build_model("cnn1d_w16", 10, splits.input_shape))
    with pytest.raises(KdxError, match="'at'.*'mlp_400x2'"):
        Trainer(TrainConfig("cnn1d_w4", epochs=1, method="at"), splits, "cpu",
                teacher=build_model("mlp_400x2", 10, splits.input_shape))
    # methods that read flat features run on MLPs
    for ok in ("sp", "rkd_da", "fitnet"):
        check_method_params(ok, {}, 10, archs=["mlp_400x2", "mlp_800x2"])


# ---------------------------------------------------------------- short real training runs


def shrink(splits, n):
    """The first n training and n/2 validation and test samples: a real dataset, small enough for CI."""
    cut = {k: getattr(splits, k)[: n if k.startswith("train") else n // 2] for k in splits._TENSORS}
    return replace(splits, **cut)


@pytest.fixture(scope="module")
def mnist1d():
    return shrink(load_splits(DataSpec("mnist1d")), 512)


@pytest.fixture(scope="module")
def fake():
    return shrink(load_splits(DataSpec("fake")), 256)


RUNS = {"at": {"beta": 10.0}, "sp": {}, "rkd_d": {}, "rkd_a": {}, "rkd_da": {}, "fitnet": {"init_epochs": 1},
        "fsp": {"init_epochs": 1}, "sfd": {}, "ab": {"init_epochs": 1}, "oh": {}, "bss": {}, "uda": {}}
TERMS = {"at": {"at"}, "sp": {"sp"}, "rkd_d": {"rkd_d"}, "rkd_a": {"rkd_a"}, "rkd_da": {"rkd_d", "rkd_a"},
         "fitnet": {"hint", "kd"}, "fsp": {"fsp", "kd"}, "sfd": {"sfd"}, "ab": {"ab", "kd"}, "oh": {"oh"},
         "bss": {"ce", "kd", "bss"}, "uda": {"ce", "kd", "ce_ra", "kd_ra"}}


@pytest.mark.parametrize("name", NEW)
def test_one_short_training_run_per_method(name, mnist1d, fake):
    image = get_method(name).arch_problem("cnn1d_w4") is not None
    splits, student, teacher = (fake, "resnet8", "resnet14") if image else (mnist1d, "cnn1d_w4", "cnn1d_w16")
    torch.manual_seed(0)
    teacher_model = build_model(teacher, splits.num_classes, splits.input_shape)
    cfg = TrainConfig(student, epochs=1, seed=1, method=name, method_params=RUNS[name], lr=0.05)
    tr = Trainer(cfg, splits, "cpu", teacher=teacher_model)
    before = [p.detach().clone() for p in tr.model.parameters()]
    history = tr.run()
    logged = {k.removeprefix("train_"): v for m in history for k, v in m.items() if k.startswith("train_")}
    assert TERMS[name] <= set(logged), (name, sorted(logged))
    assert all(math.isfinite(v) for v in logged.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    if tr.init_epochs:
        assert [m["stage"] for m in history] == [1, 2]


# ---------------------------------------------------------------- the init stage of two-stage methods


def test_init_stage_clock_lr_and_exact_resume_within_and_across_the_stages(mnist1d):
    teacher = build_model("cnn1d_w16", 10, mnist1d.input_shape)
    cfg = TrainConfig("cnn1d_w4", epochs=1, seed=3, method="fitnet", lr=0.05, schedule="constant",
                      method_params={"init_epochs": 2, "init_lr": 0.01})  # init milestones at epochs 1 and 2
    straight = Trainer(cfg, mnist1d, "cpu", teacher=teacher)
    fc0 = straight.model.fc.weight.detach().clone()
    deep0 = straight.model.convs[2].weight.detach().clone()
    straight.train_epoch()
    # stage 1: the hint alone moves the student up to block 2 (and the regressor), nothing after it
    assert torch.equal(straight.model.fc.weight, fc0) and torch.equal(straight.model.convs[2].weight, deep0)
    straight.run()
    h = straight.history
    assert straight.total_epochs == 3 and [m["epoch"] for m in h] == [1, 2, 3]
    assert [m["stage"] for m in h] == [1, 1, 2]
    assert [m["lr"] for m in h] == pytest.approx([0.01, 0.001, 0.05])  # the init stage's own schedule, then the recipe's
    assert "train_hint" in h[1] and "train_hint" not in h[2] and h[2]["train_kd"] > 0
    for stop in (1, 2):  # inside the init stage (its optimiser and schedule restored) and at its end
        first = Trainer(cfg, mnist1d, "cpu", teacher=teacher)
        for _ in range(stop):
            first.train_epoch()
        resumed = Trainer(cfg, mnist1d, "cpu", teacher=teacher)
        resumed.load_state_dict(first.state_dict())
        resumed.run()
        for k, v in straight.model.state_dict().items():
            assert torch.equal(resumed.model.state_dict()[k], v), (stop, k)
        for k, v in straight.modules.state_dict().items():
            assert torch.equal(resumed.modules.state_dict()[k], v), (stop, k)
        assert [m["train_loss"] for m in resumed.history] == [m["train_loss"] for m in h]


# ---------------------------------------------------------------- kdx methods and the seed specs


def test_kdx_methods_lists_the_new_methods(capsys):
    import json

    from explorer.cli.commands import cmd_methods

    cmd_methods(argparse.Namespace(json=True))
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["methods"]}
    expected = {"at": {"beta": 1000.0}, "sp": {"gamma": 3000.0}, "rkd_d": {"lambda_d": 25.0},
                "rkd_a": {"lambda_a": 50.0}, "rkd_da": {"lambda_d": 25.0, "lambda_a": 50.0},
                "fitnet": {"alpha": 0.9, "temperature": 4.0, "init_epochs": 100, "init_lr": 0.001},
                "fsp": {"alpha": 0.9, "temperature": 4.0, "init_epochs": 100, "init_lr": 0.001}}
    expected["bss"] = {"temperature": 4.0, "attack_size": 32, "attack_steps": 10, "attack_step": 0.3}
    for name, defaults in expected.items():
        assert {h["name"]: h["default"] for h in rows[name]["hparams"]} == defaults
        assert "seed 000 table I" in rows[name]["source"]
    seed001 = {"sfd": {"sfd_weight": 1.0}, "oh": {"oh_weight": 0.001},
               "ab": {"temperature": 5.0, "alpha": 0.5, "init_epochs": 120, "init_lr": 0.1, "ab_weight": 0.003},
               "uda": {"temperature": 4.0, "alpha": 0.9, "kd_stop_epoch": None, "teacher_temperature": None,
                       "ra_ops": 2, "ra_magnitude": 9.0}}
    for name, defaults in seed001.items():
        assert {h["name"]: h["default"] for h in rows[name]["hparams"]} == defaults
        assert "seed 001 section" in rows[name]["source"]


SPECS = [ROOT / "searches" / "seed000_methods.yaml", ROOT / "searches" / "seed000_methods_wrn.yaml",
         ROOT / "searches" / "seed001_feature.yaml",
         ROOT / "tests" / "specs" / "seed000_methods_small.yaml", ROOT / "tests" / "specs" / "seed001_feature_small.yaml"]


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_seed_method_specs_validate(path):
    """What `kdx validate` checks (no search is run here: CI time)."""
    from explorer.spec.search import load_spec

    spec, text = load_spec(path)
    assert spec.teacher_configs()
    methods = set(spec.distill.axes()["method"].values())
    assert methods & set(NEW)
    if "small" not in path.stem:
        assert "table" in text.lower() and spec.dataset.name == "cifar10"
