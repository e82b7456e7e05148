"""What knowledge is transferred (seed 002 section 4, figs. 5-6; issue 14 item 4): every alteration of
the weak teacher's soft labels and every sample subset against an independent numpy computation
written from the paper's equations, the references (subset none = kd from t-, full on all = kd from
t+), the two-teacher rule, one short real training run per scheme, the normalised-accuracy analysis on
a hand-made frame, and the CPU spec run as a real search and analysed."""

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kdxrun import kdx
from scipy import stats

from analysis.knowledge import knowledge_table, knowledge_words
from explorer.config import TrainConfig
from explorer.data.condition import DataSpec
from explorer.data.splits import load_splits
from explorer.errors import KdxError
from explorer.methods import LossInputs, get_method
from explorer.methods.altered import SCHEMES, SUBSETS, altered_target, subset_mask
from explorer.models import build_model
from explorer.spec.search import load_spec, parse_spec
from explorer.training.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(1, 2), (7, 3), (32, 10), (5, 100)]


# ---------------------------------------------------------------- numpy, from seed 002's equations


def np_softmax(z, T):
    z = np.asarray(z, np.float64) / T
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_altered(scheme, weak, strong, student, y, T, t=0.99, delta=0.1):
    """Section 4.1 (full; eqs. 1-2) and 4.2 (eqs. 3-5) per sample, label k = y[n], written as printed
    (p_i * ratio for i != k), with eqs. 4-5's max read as min and their factor (1 - p_k - delta)/(1 - p_k)
    so that the target sums to 1 (altered.py's docstring)."""
    pm, pp, ps = np_softmax(weak, T), np_softmax(strong, T), np_softmax(student, T)
    n, K = pm.shape
    out = np.zeros((n, K))
    for s in range(n):
        k = y[s]
        for i in range(K):
            if scheme == "full":
                out[s, i] = pp[s, i]
            elif scheme == "partial":  # eq. 1
                out[s, i] = pm[s, k] if i == k else pp[s, i] * (1 - pm[s, k]) / (1 - pp[s, k])
            elif scheme == "confidence":  # eq. 2
                out[s, i] = pp[s, k] if i == k else pm[s, i] * (1 - pp[s, k]) / (1 - pm[s, k])
            elif scheme == "label smoothing":  # eq. 3
                out[s, i] = t if i == k else (1 - t) / (K - 1)
            else:  # eqs. 4-5
                p = pm if scheme == "teacher amplification" else ps
                c = min(p[s, k] + delta, 1.0)
                out[s, i] = c if i == k else p[s, i] * (1 - c) / (1 - p[s, k])
    return out


def np_mask(subset, weak, student, y, T):
    """Section 4.1 / fig. 4: correct = t-'s label probability above every other class's; regularization =
    the student's label probability above t-'s (both at T)."""
    pm, ps = np_softmax(weak, T), np_softmax(student, T)
    idx = np.arange(len(y))
    others = pm.copy()
    others[idx, y] = -np.inf
    correct = pm[idx, y] > others.max(1)
    regular = ps[idx, y] > pm[idx, y]
    return {0: np.zeros(len(y), bool), 1: correct, 2: regular, 3: correct & regular, 4: ~correct,
            5: np.ones(len(y), bool)}[subset]


def np_loss(scheme, subset, weak, strong, student, y, T, alpha, **kw):
    """(1 - alpha) CE + alpha T^2 KL(q || p_s^T), averaged over the batch (seed 002 section 3)."""
    q = np.where(np_mask(subset, weak, student, y, T)[:, None], np_altered(scheme, weak, strong, student, y, T, **kw),
                 np_softmax(weak, T))
    ps_T, ps_1 = np_softmax(student, T), np_softmax(student, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(q > 0, q * (np.log(q) - np.log(ps_T)), 0.0).sum(1)
    ce = -np.log(ps_1[np.arange(len(y)), y])
    return (1 - alpha) * ce.mean(), alpha * T * T * kl.mean()


def batch(b, k, scale=3.0):
    """Weak, strong, student logits and labels; the strong teacher leans towards the label (the same
    draw for the same arguments, whichever tests run)."""
    rng = np.random.default_rng([b, k, int(scale * 10)])
    y = rng.integers(0, k, b)
    weak, strong, student = (rng.normal(0, scale, (b, k)) for _ in range(3))
    strong[np.arange(b), y] += scale
    return weak, strong, student, y


def tt(a):
    return torch.tensor(np.asarray(a), dtype=torch.float32)


# ---------------------------------------------------------------- the alterations and the subsets


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{b}x{k}" for b, k in SHAPES])
@pytest.mark.parametrize("method", list(SCHEMES))
def test_every_alteration_matches_the_papers_equations(method, shape):
    weak, strong, student, y = batch(*shape)
    for T, extra in ((1.0, {}), (4.0, {"confidence": 0.9, "amp_delta": 0.3})):
        hp = get_method(method).resolve({"temperature": T, **{k: v for k, v in extra.items()
                                                              if k in {h.name for h in get_method(method).hparams}}})
        want = np_altered(SCHEMES[method], weak, strong, student, y, T,
                          t=hp.get("confidence", 0.99), delta=hp.get("amp_delta", 0.1))
        got = altered_target(SCHEMES[method], tt(weak), tt(strong), tt(student), torch.tensor(y), hp).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)  # every target is a distribution


def test_amplification_is_clipped_at_one_and_stable_when_the_label_takes_everything():
    y = torch.tensor([0, 1])
    weak = torch.tensor([[2.0, 0.0, 0.0], [0.0, 60.0, 0.0]])  # the second: p_k rounds to 1 in float32
    hp = get_method("alter_tamp").resolve({"amp_delta": 0.9})
    q = altered_target("teacher amplification", weak, weak, weak, y, hp)
    assert torch.allclose(q, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    q = altered_target("confidence", weak, weak.flip(1), weak, y, get_method("alter_confidence").resolve({}))
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(2))


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{b}x{k}" for b, k in SHAPES])
@pytest.mark.parametrize("subset", sorted(SUBSETS))
def test_subset_masks_match_numpy(subset, shape):
    weak, _, student, y = batch(*shape, scale=1.0)
    for T in (1.0, 4.0):
        got = subset_mask(subset, tt(weak), tt(student), torch.tensor(y), T).numpy()
        np.testing.assert_array_equal(got, np_mask(subset, weak, student, y, T))


def test_subsets_partition_as_the_paper_names_them():
    weak, student, _, y = batch(256, 10, scale=1.0)  # a student that leans towards the label
    m = {s: subset_mask(s, tt(weak), tt(student), torch.tensor(y), 2.0) for s in SUBSETS}
    assert torch.equal(m[1] | m[4], m[5]) and not (m[1] & m[4]).any()  # correct / not correct
    assert torch.equal(m[3], m[1] & m[2]) and 0 < int(m[3].sum()) < int(m[1].sum())  # both kinds occur
    assert not m[0].any()


@pytest.mark.parametrize("method", list(SCHEMES))
def test_loss_of_every_scheme_and_subset_matches_numpy(method):
    weak, strong, student, y = batch(16, 5, scale=2.0)
    for subset in SUBSETS:
        hp = get_method(method).resolve({"subset": subset, "temperature": 2.0, "alpha": 0.7})
        inp = LossInputs(tt(student), torch.tensor(y), 1, [tt(weak), tt(strong)])
        got = get_method(method).losses(inp, hp)
        want = np_loss(SCHEMES[method], subset, weak, strong, student, y, 2.0, 0.7)
        assert math.isclose(got["ce"].item(), want[0], rel_tol=1e-4, abs_tol=1e-6)
        assert math.isclose(got["kd"].item(), want[1], rel_tol=1e-4, abs_tol=1e-6), (method, subset)


def test_references_are_kd_from_each_teacher_alone():
    weak, strong, student, y = (tt(a) if i < 3 else torch.tensor(a) for i, a in enumerate(batch(32, 10)))
    kd = get_method("kd")
    hp_kd = kd.resolve({"temperature": 1.0, "alpha": 1.0})
    for method, subset, alone in [(m, 0, weak) for m in SCHEMES] + [("alter_full", 5, strong)]:
        hp = get_method(method).resolve({"subset": subset})
        got = get_method(method).losses(LossInputs(student, y, 1, [weak, strong]), hp)["kd"]
        want = kd.losses(LossInputs(student, y, 1, alone), hp_kd)["kd"]
        assert torch.allclose(got, want, rtol=1e-5), (method, subset)


def test_defaults_and_the_student_output_only_selects():
    m = get_method("alter_samp")
    assert m.resolve({}) == {"temperature": 1.0, "alpha": 1.0, "subset": 3, "amp_delta": 0.1}
    assert get_method("alter_ls").resolve({})["confidence"] == 0.99
    weak, strong, student, y = batch(8, 4)
    s = tt(student).requires_grad_(True)
    loss = m.losses(LossInputs(s, torch.tensor(y), 1, [tt(weak), tt(strong)]), m.resolve({"subset": 5}))["kd"]
    loss.backward()  # gradient flows through the student's prediction, not through its target
    q = altered_target("student amplification", tt(weak), tt(strong), s, torch.tensor(y), m.resolve({}))
    assert not q.requires_grad and torch.isfinite(s.grad).all()


def test_exactly_two_teachers():
    m = get_method("alter_partial")
    assert "exactly two teachers" in m.teacher_problem("plain") and "a plain teacher" in m.teacher_problem("plain")
    assert "not 3 teachers" in m.teacher_problem("ensemble", members=3)
    assert m.teacher_problem("ensemble") is None and m.teacher_problem("ensemble", members=2) is None
    assert "needs a teacher" in m.teacher_problem(None)
    hp = m.resolve({})
    for teachers in (torch.zeros(2, 3), [torch.zeros(2, 3)] * 3):
        with pytest.raises(KdxError, match="takes exactly two"):
            m.losses(LossInputs(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 1, teachers), hp)
    with pytest.raises(KdxError, match="subset: got 6; allowed: 0 <= subset <= 5"):
        m.resolve({"subset": 6})


def test_spec_refuses_a_single_teacher():
    data = {"name": "x", "dataset": {"name": "mnist1d"}, "student": {"arch": "cnn1d_w4", "epochs": 2},
            "teachers": {"archs": ["cnn1d_w16"]}, "distill": {"method": "alter_full"}}
    with pytest.raises(KdxError, match="exactly two teachers"):
        parse_spec(data)
    data["teachers"]["archs"] = ["cnn1d_w2+cnn1d_w16"]
    assert parse_spec(data).distill.method.fixed == "alter_full"


# ---------------------------------------------------------------- a real training run per scheme


@pytest.fixture(scope="module")
def mnist1d():
    splits = load_splits(DataSpec("mnist1d"))
    return replace(splits, **{k: getattr(splits, k)[: 512 if k.startswith("train") else 256] for k in splits._TENSORS})


@pytest.mark.parametrize("method", list(SCHEMES))
def test_one_short_training_run_per_scheme(method, mnist1d):
    torch.manual_seed(0)
    pair = [build_model(a, mnist1d.num_classes, mnist1d.input_shape) for a in ("cnn1d_w2", "cnn1d_w16")]
    cfg = TrainConfig("cnn1d_w4", epochs=1, seed=1, method=method, method_params={"subset": 5}, lr=0.05)
    tr = Trainer(cfg, mnist1d, "cpu", teacher=pair)
    before = [p.detach().clone() for p in tr.model.parameters()]
    (m,) = tr.run()
    assert math.isfinite(m["train_loss"]) and m["train_kd"] > 0 and m["train_ce"] == 0  # alpha 1: no CE
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))


# ---------------------------------------------------------------- the analysis


def frame(cells: dict, seeds, refs="alter") -> pd.DataFrame:
    """A trials frame by hand: `cells` maps (method, subset) to test accuracies per seed."""
    rows = []
    for (method, subset), accs in cells.items():
        for seed, a in zip(seeds, accs):
            teacher = {"kd-": "a", "kd+": "b"}.get(method, "a+b")
            rows.append({"run_id": f"{method}{subset}{seed}", "status": "completed", "kind": "search",
                         "student": "s", "teacher": teacher, "method": method.rstrip("+-"), "seed": seed,
                         "temperature": 1.0, "alpha": 1.0, "subset": subset,
                         "confidence": 0.99 if method == "alter_ls" else None, "val_acc": a, "test_acc": a})
    return pd.DataFrame(rows)


def test_normalised_accuracy_and_interval_by_hand():
    seeds = [0, 1, 2, 3]
    minus, plus = np.array([.80, .81, .79, .80]), np.array([.90, .90, .88, .91])
    ls = np.array([.88, .87, .86, .90])
    df = frame({("alter_full", 0): minus, ("alter_ls", 0): minus, ("alter_full", 5): plus,
                ("alter_ls", 3): ls, ("alter_full", 3): np.array([.85, .86, .83, .86])}, seeds)
    t = knowledge_table(df)
    assert list(zip(t["method"], t["subset_code"])) == [("alter_full", 3), ("alter_ls", 3)]
    r = t.set_index("method").loc["alter_ls"]
    norm = (ls - minus) / (plus - minus)
    lo, hi = stats.t.interval(0.95, 3, loc=norm.mean(), scale=stats.sem(norm))
    assert math.isclose(r["norm_mean"], norm.mean()) and math.isclose(r["norm_low"], lo)
    assert math.isclose(r["norm_high"], hi) and r["n_seeds"] == 4 and r["variant"] == "confidence=0.99"
    assert r["subset"] == "regularization & correct" and r["scheme"] == "label smoothing"
    assert math.isclose(r["gap_mean"], (plus - minus).mean()) and r["reference"].startswith("subset none")
    assert bool(r["best"]) and not bool(t.set_index("method").loc["alter_full", "best"])
    d = norm - (np.array([.85, .86, .83, .86]) - minus) / (plus - minus)
    assert math.isclose(r["vs_full_diff"], d.mean())
    words = knowledge_words(t)
    assert words[0].startswith("Student `s`, weak teacher `a`, strong teacher `b`") and "anchored" in words[0]
    assert any("highest mean is label smoothing on regularization & correct" in w for w in words)


def test_kd_references_when_the_search_has_no_in_family_ones():
    seeds = [0, 1, 2]
    minus, plus, a = np.array([.70, .71, .72]), np.array([.80, .80, .83]), np.array([.75, .76, .78])
    df = frame({("kd-", None): minus, ("kd+", None): plus, ("alter_confidence", 1): a}, seeds)
    r = knowledge_table(df).iloc[0]
    assert r["reference"] == "kd from t- / kd from t+" and r["n_seeds"] == 3
    assert math.isclose(r["norm_mean"], np.mean((a - minus) / (plus - minus)))


def test_unpaired_seeds_and_an_empty_frame():
    df = frame({("alter_full", 0): [.8, .8], ("alter_full", 5): [.9, .8], ("alter_ls", 4): [.85, .9]}, [0, 1])
    r = knowledge_table(df).iloc[0]  # seed 1 has acc+ == acc-: dropped, so one seed and no interval
    assert r["n_seeds"] == 1 and math.isclose(r["norm_mean"], 0.5) and math.isnan(r["norm_low"])
    assert "no interval" in " ".join(knowledge_words(knowledge_table(df)))
    assert knowledge_table(frame({("kd+", None): [.8]}, [0])).empty


# ---------------------------------------------------------------- the specs


def test_full_size_spec_validates():
    spec, text = load_spec(ROOT / "searches" / "seed002_knowledge.yaml")
    assert "fig. 5" in text.lower() and spec.dataset.name == "cifar10"
    assert set(spec.distill.method.values()) == set(SCHEMES) and spec.distill.subset.values() == list(SUBSETS)


def test_cpu_spec_runs_as_a_search_and_is_analysed(tmp_path, shared_ray):
    from analysis.runs import load_trials

    name = "seed002_knowledge_small"
    proc = kdx(tmp_path, "search", ROOT / "tests" / "specs" / f"{name}.yaml", "--json", *shared_ray.args,
               env=shared_ray.env)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    df = load_trials(name, f"sqlite:///{tmp_path / 'kdx_runs' / 'mlflow.db'}")
    assert len(df) == 24 and set(df["status"]) == {"completed"} and set(df["teacher_kind"]) == {"ensemble"}
    assert set(df["subset"]) == {0, 3, 4, 5} and set(df["teacher"]) == {"cnn1d_w2+cnn1d_w16"}
    # the subset-0 column is one run per scheme: the same training, so the same numbers
    none = df[df["subset"] == 0].groupby("seed")["test_acc"].nunique()
    assert (none == 1).all()
    t = knowledge_table(df)
    assert len(t) == 2 + 3 + 3 and set(t["reference"]) == {"subset none / alter_full on all"}
    assert (t["n_seeds"] == 2).all() and np.isfinite(t["norm_mean"]).all() and np.isfinite(t["norm_low"]).all()
    # one cell by hand from the logged trials
    acc = df.set_index(["method", "subset", "seed"])["test_acc"]
    norm = [(acc["alter_ls", 3, s] - acc["alter_full", 0, s]) / (acc["alter_full", 5, s] - acc["alter_full", 0, s])
            for s in (0, 1)]
    row = t[(t["method"] == "alter_ls") & (t["subset_code"] == 3)].iloc[0]
    assert math.isclose(row["norm_mean"], np.mean(norm))
    words = knowledge_words(t)
    assert len(words) == 1 + 3 + 2 and "acc+ - acc-" in words[0]
    print("\n".join(words))
    proc = kdx(tmp_path, "analyze", name)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "kdx_runs" / name / "analysis" / "report.md").read_text()
    assert "## What knowledge is transferred" in report and words[0] in report
