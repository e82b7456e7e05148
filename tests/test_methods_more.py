"""Issue 6 methods: each loss against an independent numpy computation written from the paper's
formula, `kdx methods --json`, `kdx train` for every method, DML exact resume."""

import json

import numpy as np
import pytest
import torch
from resume import full_and_resumed

from explorer.config import TrainConfig
from explorer.data.condition import DataSpec
from explorer.data.splits import load_splits
from explorer.errors import KdxError
from explorer.methods import METHODS, LossInputs, get_method
from explorer.training.loop import Trainer
from kdx.cli import main


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def kl_rows(p, q):
    """KL(p || q) per row, 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=1)


def ce_rows(s, y):
    return -np.log(softmax(s)[np.arange(len(y)), y])


def smooth(y, K, conf):
    q = np.full((len(y), K), (1 - conf) / (K - 1))
    q[np.arange(len(y)), y] = conf
    return q


@pytest.fixture
def batch():
    g = np.random.default_rng(3)
    s = g.normal(size=(8, 5)) * 2
    t = g.normal(size=(8, 5)) * 2
    t[np.arange(8), [0, 1, 2, 3, 4, 0, 1, 2]] += 3  # the teacher is mostly right
    y = np.array([0, 1, 2, 3, 4, 0, 1, 3])
    return s, t, y


def run(name, s, y, t=None, **params):
    m = get_method(name)
    hp = m.resolve(params)
    tl = None if t is None else ([torch.tensor(x) for x in t] if isinstance(t, list) else torch.tensor(t))
    terms = m.losses(LossInputs(torch.tensor(s), torch.tensor(y), 1, tl), hp)
    return {k: float(v) for k, v in terms.items()}


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing(batch, eps):
    s, _, y = batch
    q = smooth(y, 5, 1 - eps)  # seed 002 eq. 3 with t = 1 - eps
    want = -(q * np.log(softmax(s))).sum(1).mean()
    assert run("ls", s, y, epsilon=eps)["ce"] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("delta,T,alpha", [(0.9, 1.0, 0.9), (0.95, 3.0, 0.5), (1.0, 2.0, 0.7)])
def test_tf_kd_reg(batch, delta, T, alpha):
    s, _, y = batch
    p_d = smooth(y, 5, delta)
    p_dT = p_d ** (1 / T)
    p_dT /= p_dT.sum(1, keepdims=True)
    kd = alpha * T * T * kl_rows(p_dT, softmax(s / T)).mean()
    got = run("tf_kd_reg", s, y, delta=delta, temperature=T, alpha=alpha)
    assert got["ce"] == pytest.approx((1 - alpha) * ce_rows(s, y).mean(), rel=1e-5)
    assert got["kd"] == pytest.approx(kd, rel=1e-5)


@pytest.mark.parametrize("Ts,Tt,alpha", [(1.0, 0.7, 0.9), (4.0, 2.0, 0.5), (3.0, 3.0, 1.0)])
def test_kd_separate_temperatures(batch, Ts, Tt, alpha):
    s, t, y = batch
    kd = alpha * Ts * Ts * kl_rows(softmax(t / Tt), softmax(s / Ts)).mean()
    got = run("kd", s, y, t, temperature=Ts, teacher_temperature=Tt, alpha=alpha)
    assert got["kd"] == pytest.approx(kd, rel=1e-5)
    assert got["ce"] == pytest.approx((1 - alpha) * ce_rows(s, y).mean(), rel=1e-5)


def test_tf_kd_self_is_kd_from_a_teacher(batch):
    s, t, y = batch
    assert run("tf_kd_self", s, y, t, temperature=3.0, alpha=0.6)["kd"] == pytest.approx(
        0.6 * 9 * kl_rows(softmax(t / 3), softmax(s / 3)).mean(), rel=1e-5)


@pytest.mark.parametrize("Ts,Tt,conf", [(1.0, 0.7, 0.99), (2.0, 2.0, 0.9)])
def test_ckm(batch, Ts, Tt, conf):
    s, t, y = batch
    p_t, p_s = softmax(t / Tt), softmax(s / Ts)
    targets = []
    for i in range(len(y)):
        right = p_t[i].argmax() == y[i]
        weaker = p_t[i, y[i]] < p_s[i, y[i]]
        targets.append(smooth(y[i:i + 1], 5, conf)[0] if (right and weaker) else p_t[i])
    targets = np.array(targets)
    kd = 0.9 * Ts * Ts * kl_rows(targets, p_s).mean()
    got = run("ckm", s, y, t, temperature=Ts, teacher_temperature=Tt, confidence=conf, alpha=0.9)
    assert got["kd"] == pytest.approx(kd, rel=1e-5)
    # the fixture has at least one mined and one kept sample, so both branches are exercised
    mined = [(p_t[i].argmax() == y[i]) and p_t[i, y[i]] < p_s[i, y[i]] for i in range(len(y))]
    assert any(mined) and not all(mined)


@pytest.mark.parametrize("T,alpha", [(2.0, 0.9), (4.0, 0.5)])
def test_wsl(batch, T, alpha):
    s, t, y = batch
    w = 1 - np.exp(-ce_rows(s, y) / ce_rows(t, y))
    kd = alpha * T * T * (w * kl_rows(softmax(t / T), softmax(s / T))).mean()
    got = run("wsl", s, y, t, temperature=T, alpha=alpha)
    assert got["kd"] == pytest.approx(kd, rel=1e-5)
    assert got["ce"] == pytest.approx((1 - alpha) * ce_rows(s, y).mean(), rel=1e-5)


def test_mkd_averages_kd_over_teachers(batch):
    s, t, y = batch
    t2 = t[::-1].copy() * 0.5
    want = np.mean([kl_rows(softmax(x / 5), softmax(s / 5)).mean() for x in (t, t2)]) * 25 * 0.5
    assert run("mkd", s, y, [t, t2], temperature=5.0, alpha=0.5)["kd"] == pytest.approx(want, rel=1e-5)
    assert run("kd", s, y, [t, t2], temperature=5.0, alpha=0.5)["kd"] == pytest.approx(want, rel=1e-5)
    # takd is kd from an assistant: the same loss on a single teacher
    assert run("takd", s, y, t, temperature=5.0, alpha=0.5)["kd"] == pytest.approx(
        0.5 * 25 * kl_rows(softmax(t / 5), softmax(s / 5)).mean(), rel=1e-5)


def test_dml_cohort_loss(batch):
    s, t, y = batch
    u = s * 0.3 + 1
    stacked = np.stack([s, t, u])
    T = 4.0
    ce = sum(ce_rows(x, y).mean() for x in stacked)
    kd = sum(T * T * kl_rows(softmax(stacked[j] / T), softmax(stacked[i] / T)).mean()
             for i in range(3) for j in range(3) if i != j) / 2
    got = run("dml", stacked, y, temperature=T, cohort=3)
    assert got["ce"] == pytest.approx(ce, rel=1e-5) and got["kd"] == pytest.approx(kd, rel=1e-5)


def test_dml_gradient_flows_to_each_member_only_through_its_own_loss():
    s = torch.randn(2, 4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    m = get_method("dml")
    terms = m.losses(LossInputs(s, y, 1), m.resolve({}))
    sum(terms.values()).backward()
    s0 = s[0].detach().clone().requires_grad_(True)
    alone = torch.nn.functional.cross_entropy(s0, y) + 16 * torch.nn.functional.kl_div(
        torch.log_softmax(s0 / 4, 1), torch.softmax(s[1].detach() / 4, 1), reduction="batchmean")
    alone.backward()
    assert torch.allclose(s.grad[0], s0.grad, atol=1e-6)


def test_bad_hyperparameters_are_one_sentence():
    with pytest.raises(KdxError, match="epsilon: got 1.5; allowed"):
        get_method("ls").resolve({"epsilon": 1.5})
    with pytest.raises(KdxError, match="cohort: got 1; allowed"):
        get_method("dml").resolve({"cohort": 1})
    with pytest.raises(KdxError, match="method 'ls' takes: epsilon"):
        get_method("ls").resolve({"alpha": 0.5})


EXPECTED = {"ce", "kd", "ls", "tf_kd_reg", "tf_kd_self", "ckm", "wsl", "mkd", "takd", "dml"}


def test_kdx_methods_json(capsys):
    assert main(["methods", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["name"]: r for r in out["methods"]}
    assert EXPECTED <= set(rows) and set(rows) == set(METHODS)
    for r in rows.values():
        assert r["source"] and r["description"]
    hp = lambda name: {h["name"]: h["default"] for h in rows[name]["hparams"]}  # noqa: E731
    assert hp("ls") == {"epsilon": 0.1}
    assert hp("ckm")["teacher_temperature"] == 0.7 and hp("ckm")["confidence"] == 0.99
    assert hp("wsl")["temperature"] == 2.0
    assert hp("dml") == {"temperature": 4.0, "cohort": 2}
    assert hp("tf_kd_reg")["delta"] == 0.9
    assert rows["tf_kd_self"]["same_arch_teacher"] and rows["takd"]["teacher_kinds"] == ["distilled"]
    assert main(["methods"]) == 0 and "source:" in capsys.readouterr().out


TRAIN_CASES = [
    ("ls", []), ("tf_kd_reg", ["--delta", "0.95"]), ("tf_kd_self", []), ("ckm", ["--teacher", "cnn1d_w8"]),
    ("wsl", ["--teacher", "cnn1d_w8"]), ("mkd", ["--teacher", "cnn1d_w8,cnn1d_w8:s1"]),
    ("takd", ["--teacher", "cnn1d_w8<cnn1d_w16"]), ("kd", ["--teacher", "cnn1d_w8^1", "--teacher-temperature", "2"]),
    ("dml", []),
]
# The same teachers trained from another seed: a method that reads its teacher trains a different student.
OTHER_TEACHER = {"tf_kd_self": "cnn1d_w4:s1", "ckm": "cnn1d_w8:s1", "wsl": "cnn1d_w8:s1",
                 "mkd": "cnn1d_w8:s2,cnn1d_w8:s1", "takd": "cnn1d_w8:s1<cnn1d_w16", "kd": "cnn1d_w8:s1^1"}


@pytest.mark.parametrize("method,extra", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_kdx_train_every_method(tmp_path, capsys, method, extra):
    argv = ["train", "--student", "cnn1d_w4", "--epochs", "2", "--teacher-epochs", "2", "--method", method,
            "--store", str(tmp_path / "teachers"), "--device", "cpu", "--json", *extra]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["method"] == method and out["epoch"] == 2 and 0 <= out["test_acc"] <= 1
    assert np.isfinite(out["train_loss"])
    # every method but plain label smoothing has a distillation term, and it is not zero
    assert (out["train_kd"] > 0) == (method != "ls")
    if get_method(method).needs_teacher:
        assert out["teacher_kind"] in ("plain", "distilled", "ensemble")
        other = [a for a in extra if a != "--teacher" and "cnn1d" not in a]
        assert main([*argv[:-len(extra) or None], *other, "--teacher", OTHER_TEACHER[method]]) == 0
        again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert again["teacher_key"] != out["teacher_key"]
        assert again["train_loss"] != out["train_loss"] and again["train_kd"] != out["train_kd"]


def test_kdx_train_refuses_misfits(tmp_path, capsys):
    base = ["train", "--student", "cnn1d_w4", "--epochs", "1", "--store", str(tmp_path)]
    assert main(base + ["--method", "takd", "--teacher", "cnn1d_w8"]) == 2
    assert "takd" in capsys.readouterr().err
    assert main(base + ["--method", "ls", "--alpha", "0.5"]) == 2
    assert "--alpha" in capsys.readouterr().err
    assert main(base + ["--method", "tf_kd_self", "--teacher", "cnn1d_w8"]) == 2
    assert "own architecture" in capsys.readouterr().err
    assert main(base + ["--method", "kd", "--teacher", "cnn1d_w8<nope"]) == 2
    assert "--teacher: got" in capsys.readouterr().err


@pytest.fixture(scope="module")
def splits():
    return load_splits(DataSpec(dataset="mnist1d"))


def test_dml_exact_resume(splits):
    cfg = TrainConfig(arch="cnn1d_w4", epochs=2, lr=0.05, schedule="cosine", method="dml")
    full, resumed = full_and_resumed(cfg, splits)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert full.history[-1]["val_acc"] == resumed.history[-1]["val_acc"]
    assert len(full.model.members) == 2  # the cohort; member 0 is evaluated


def test_ensemble_teacher_exact_resume(splits):
    torch.manual_seed(0)
    from explorer.models import build_model
    teachers = [build_model("cnn1d_w8", 10, splits.input_shape) for _ in range(2)]
    cfg = TrainConfig(arch="cnn1d_w4", epochs=2, lr=0.05, schedule="cosine", method="mkd")
    full, resumed = full_and_resumed(cfg, splits, teachers)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(KdxError, match="teacher: got 'an ensemble of 2'"):
        Trainer(TrainConfig(arch="cnn1d_w4", epochs=1, method="ckm"), splits, "cpu", teacher=teachers)
