"""ONE (on-the-fly native ensemble): the loss against an independent numpy computation, the
multi-branch student's shapes, `kdx train --method one`, `kdx methods`, exact resume."""

import json

import numpy as np
import pytest
import torch
from resume import full_and_resumed

from explorer.config import TrainConfig
from explorer.data.condition import DataSpec
from explorer.data.splits import load_splits
from explorer.errors import KdxError
from explorer.methods import LossInputs, get_method
from explorer.models import MultiBranch, build_model, split_trunk_head
from kdx.cli import main


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def one_loss_numpy(branches, gate, y, T):
    """Lan et al.'s ONE loss written from the formula: the gated ensemble is sum_i g_i z_i;
    sum_i CE(z_i) + CE(z_ens) + T^2 sum_i KL(p_ens^T || p_i^T), every term a batch mean."""
    ens = np.einsum("bm,mbc->bc", gate, branches)
    n = len(y)

    def ce(z):
        return float(np.mean(-np.log(softmax(z)[np.arange(n), y])))

    ce_total = sum(ce(z) for z in branches) + ce(ens)
    p_ens = softmax(ens / T)
    kd = 0.0
    for z in branches:
        p_i = softmax(z / T)
        kd += T * T * float(np.sum(p_ens * (np.log(p_ens) - np.log(p_i))) / n)
    return ce_total, kd, ens


@pytest.mark.parametrize("m,T", [(3, 3.0), (2, 1.0), (4, 5.0)])
def test_one_loss_matches_numpy(m, T):
    g = np.random.default_rng(7)
    branches = g.normal(size=(m, 6, 5)) * 2
    gate = softmax(g.normal(size=(6, m)))
    y = np.array([0, 1, 2, 3, 4, 1])
    want_ce, want_kd, ens = one_loss_numpy(branches, gate, y, T)
    stacked = torch.tensor(np.concatenate([branches, ens[None]]))  # what MultiBranch gives in train mode
    method = get_method("one")
    terms = method.losses(LossInputs(stacked, torch.tensor(y), 1), method.resolve({"temperature": T, "branches": m}))
    assert set(terms) == {"ce", "kd"}
    assert float(terms["ce"]) == pytest.approx(want_ce, rel=1e-6)
    assert float(terms["kd"]) == pytest.approx(want_kd, rel=1e-6)


def test_one_ensemble_target_is_detached_in_the_kl():
    stacked = torch.randn(4, 5, 3, requires_grad=True)  # 3 branches + the ensemble
    y = torch.tensor([0, 1, 2, 0, 1])
    method = get_method("one")
    method.losses(LossInputs(stacked, y, 1), method.resolve({}))["kd"].backward()
    assert torch.all(stacked.grad[-1] == 0) and stacked.grad[:-1].abs().sum() > 0


def test_one_defaults_and_range():
    method = get_method("one")
    assert method.resolve({}) == {"temperature": 3.0, "branches": 3}
    assert not method.needs_teacher
    with pytest.raises(KdxError, match="branches: got 1; allowed"):
        method.resolve({"branches": 1})
    with pytest.raises(KdxError, match="branches: got 2.5; allowed: a whole number"):
        method.resolve({"branches": 2.5})


@pytest.mark.parametrize("arch,shape", [("cnn1d_w8", (1, 40)), ("resnet8", (3, 32, 32)), ("wrn_10_1", (3, 16, 16)),
                                        ("mlp_32x1", (1, 40)), ("mlp_16x3", (40,))])
def test_split_trunk_head_reproduces_the_model(arch, shape):
    model = build_model(arch, 10, shape).eval()
    cut = split_trunk_head(model)
    x = torch.randn(3, *shape)
    shared = cut.trunk(x)
    assert shared.shape[1] == cut.channels
    assert torch.allclose(cut.head(shared), model(x), atol=1e-6)


@pytest.mark.parametrize("arch,shape", [("cnn1d_w8", (1, 40)), ("resnet8", (3, 32, 32))])
def test_multibranch_shapes(arch, shape):
    torch.manual_seed(0)
    net = MultiBranch(arch, 10, shape, branches=3)
    x = torch.randn(4, *shape)
    net.train()
    out = net(x)
    assert out.shape == (4, 4, 10)  # 3 branches + the gated ensemble
    z, g, ens = net.forward_all(x)
    assert z.shape == (3, 4, 10) and g.shape == (4, 3) and ens.shape == (4, 10)
    assert torch.allclose(g.sum(1), torch.ones(4), atol=1e-6)
    assert torch.allclose(ens, (g.T.unsqueeze(-1) * z).sum(0), atol=1e-5)
    net.eval()
    assert net(x).shape == (4, 10)
    z_eval, _, _ = net.forward_all(x)
    assert torch.allclose(net(x), z_eval[0], atol=1e-5)  # branch 0 is evaluated
    # branches start from different weights; the trunk is shared (its parameters appear once)
    assert not torch.equal(z[0], z[1])
    n_head = sum(p.numel() for p in net.heads[0].parameters())
    n_trunk = sum(p.numel() for p in net.trunk.parameters())
    assert sum(p.numel() for p in net.parameters()) == n_trunk + 3 * n_head + net.gate.weight.numel() + 3


def test_kdx_methods_lists_one(capsys):
    assert main(["methods", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["methods"]}
    assert {h["name"]: h["default"] for h in rows["one"]["hparams"]} == {"temperature": 3.0, "branches": 3}
    assert "seed 000" in rows["one"]["source"]


def test_kdx_train_one_beats_chance(tmp_path, capsys):
    argv = ["train", "--dataset", "mnist1d", "--student", "cnn1d_w8", "--method", "one", "--epochs", "2",
            "--store", str(tmp_path), "--device", "cpu", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["method"] == "one" and out["epoch"] == 2
    assert out["method_params"] == {"temperature": 3.0, "branches": 3}
    assert np.isfinite(out["train_loss"]) and out["train_kd"] > 0
    assert out["val_acc"] > 0.2 and out["test_acc"] > 0.2  # 10 classes: chance is 0.1


@pytest.fixture(scope="module")
def splits():
    return load_splits(DataSpec(dataset="mnist1d"))


def test_one_exact_resume(splits):
    cfg = TrainConfig(arch="cnn1d_w4", epochs=2, lr=0.05, schedule="cosine", method="one")
    full, resumed = full_and_resumed(cfg, splits)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert list(a) == list(b) and any(k.startswith("gate.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.history[-1]["val_acc"] == resumed.history[-1]["val_acc"]
    assert isinstance(full.model, MultiBranch) and len(full.model.heads) == 3
