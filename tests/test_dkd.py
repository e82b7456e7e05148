"""DKD (Zhao et al. CVPR 2022), added as one file in explorer/methods/: checked against an
independent numpy computation written from the paper's eq. 1-7, and reachable from every place that
derives from the method registry (spec, `kdx train` flags, trial params) without further edits."""

import json

import numpy as np
import pytest
import torch

from explorer.methods import LossInputs, get_method, kd_kl
from explorer.spec.search import parse_spec
from explorer.tracking import TRIAL_PARAMS
from kdx.cli import main


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def reference_dkd(zs, zt, y, T):
    """T^2 * (TCKD, NCKD) batch means, from the paper: b = [p_t, 1 - p_t]; p^ = the non-target classes
    renormalised; both KL(teacher || student)."""
    ps, pt = _softmax(zs / T), _softmax(zt / T)
    n = len(y)
    tckd, nckd = [], []
    for i in range(n):
        bs = np.array([ps[i, y[i]], 1 - ps[i, y[i]]])
        bt = np.array([pt[i, y[i]], 1 - pt[i, y[i]]])
        tckd.append(np.sum(bt * np.log(bt / bs)))
        others = [k for k in range(zs.shape[1]) if k != y[i]]
        qs = ps[i, others] / ps[i, others].sum()
        qt = pt[i, others] / pt[i, others].sum()
        nckd.append(np.sum(qt * np.log(qt / qs)))
    return T**2 * np.mean(tckd), T**2 * np.mean(nckd)


@pytest.mark.parametrize("n,k,T", [(5, 10, 4.0), (16, 3, 1.0), (7, 100, 2.5)])
def test_dkd_matches_the_paper_formula(n, k, T):
    rng = np.random.default_rng(n * k)
    zs, zt = rng.normal(size=(n, k)) * 3, rng.normal(size=(n, k)) * 3
    y = rng.integers(0, k, n)
    m = get_method("dkd")
    hp = m.resolve({"temperature": T, "alpha": 0.7, "beta": 5.0, "warmup_epochs": 10})
    terms = m.losses(LossInputs(torch.tensor(zs), torch.tensor(y), 4, torch.tensor(zt)), hp)
    tckd, nckd = reference_dkd(zs, zt, y, T)
    w = 4 / 10  # epoch 4 of a 10-epoch warm-up
    ce = -np.mean(np.log(_softmax(zs)[np.arange(n), y]))
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["tckd"].item() == pytest.approx(w * 0.7 * tckd, rel=1e-4)
    assert terms["nckd"].item() == pytest.approx(w * 5.0 * nckd, rel=1e-4)
    late = m.losses(LossInputs(torch.tensor(zs), torch.tensor(y), 30, torch.tensor(zt)), hp)
    assert late["nckd"].item() == pytest.approx(5.0 * nckd, rel=1e-4)  # warm-up over: full weight


def test_dkd_decomposes_classical_kd():
    """Paper eq. 5, per sample: KD = TCKD + (1 - p_t^teacher) * NCKD."""
    rng = np.random.default_rng(0)
    m = get_method("dkd")
    for _ in range(5):
        zs, zt, y = rng.normal(size=(1, 6)), rng.normal(size=(1, 6)), rng.integers(0, 6, 1)
        hp = m.resolve({"temperature": 2.0, "alpha": 1.0, "beta": 1.0, "warmup_epochs": 0})
        t = m.losses(LossInputs(torch.tensor(zs), torch.tensor(y), 1, torch.tensor(zt)), hp)
        p_t = _softmax(zt / 2.0)[0, y[0]]
        kd = kd_kl(torch.tensor(zs), torch.tensor(zt), 2.0).item()
        assert t["tckd"].item() + (1 - p_t) * t["nckd"].item() == pytest.approx(kd, rel=1e-5)


def test_dkd_defaults_and_registry_derivations():
    m = get_method("dkd")
    assert m.resolve({}) == {"temperature": 4.0, "alpha": 1.0, "beta": 8.0, "warmup_epochs": 20}
    assert {"beta", "warmup_epochs"} <= set(TRIAL_PARAMS)
    spec = parse_spec({"name": "d", "student": {"arch": "cnn1d_w4", "epochs": 3},
                       "teachers": {"archs": ["cnn1d_w8"], "recipe": {"epochs": 3}},
                       "distill": {"method": "dkd", "beta": {"uniform": [2.0, 8.0]}}})
    assert set(spec.searched_axes()) == {"beta"}
    with pytest.raises(Exception, match="beta"):
        parse_spec({"name": "d", "student": {"arch": "cnn1d_w4"}, "teachers": {"archs": ["cnn1d_w8"]},
                    "distill": {"method": "dkd", "beta": -1}})


def test_kdx_train_dkd_flags_and_terms(tmp_path, capsys):
    argv = ["train", "--student", "cnn1d_w4", "--teacher", "cnn1d_w8", "--method", "dkd", "--beta", "4",
            "--warmup-epochs", "2", "--epochs", "2", "--teacher-epochs", "2", "--store", str(tmp_path),
            "--device", "cpu", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["method_params"] == {"temperature": 4.0, "alpha": 1.0, "beta": 4.0, "warmup_epochs": 2}
    assert out["train_tckd"] > 0 and out["train_nckd"] > 0 and np.isfinite(out["train_loss"])
    assert out["train_loss"] == pytest.approx(out["train_ce"] + out["train_tckd"] + out["train_nckd"], rel=1e-4)
