"""Adversarial training (seed 003 section 4.4) and robust accuracy, against closed-form results.

The adversary is PGD on the model being trained (explorer/training/adversarial.py); for a linear binary model its
optimum is known (the eps-ball's corner along w_other - w_y), and so is robust accuracy: a sample
survives iff its margin exceeds eps * ||w_y - w_other||_1."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from explorer.config import TrainConfig
from explorer.data.condition import DataSpec
from explorer.data.splits import load_splits
from explorer.errors import KdxError
from explorer.models import build_model
from explorer.teachers.recipe import TeacherRecipe
from explorer.training import adversarial
from explorer.training.adversarial import make_adversary
from explorer.training.attacks import PGD, robust_accuracy
from explorer.training.loop import Trainer

rng = np.random.default_rng(5)


def linear(w, b):
    m = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        m.weight.copy_(torch.tensor(w, dtype=torch.float32))
        m.bias.copy_(torch.tensor(b, dtype=torch.float32))
    return m


def test_the_adversary_is_pgd_k_at_the_recipe_settings():
    """Recipe fields -> the training batch: on a linear binary model PGD-k ends at the ball's corner."""
    w, b = rng.normal(size=(2, 10)), np.zeros(2)
    train_x = torch.tensor(rng.uniform(0, 1, size=(64, 10)), dtype=torch.float32)
    train_x[0], train_x[1] = 0.0, 1.0  # the training split spans [0, 1] in every feature: the pixel box
    splits = type("S", (), {"train_x": train_x})()
    cfg = TrainConfig("mlp_8x1", adversarial_steps=12, adversarial_eps=0.05, adversarial_step=0.01)
    adversary = make_adversary(cfg, splits)
    x = rng.uniform(0.2, 0.8, size=(16, 10))
    y = rng.integers(0, 2, 16)
    got = adversary(linear(w, b), torch.tensor(x, dtype=torch.float32), torch.tensor(y), torch.Generator().manual_seed(0))
    want = np.clip(x + 0.05 * np.sign(w[1 - y] - w[y]), 0, 1)  # 12 x 0.01 > 2 x 0.05: the corner is reached
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    assert make_adversary(TrainConfig("mlp_8x1"), splits) is adversarial.clean  # off by default: the clean batch


def test_robust_accuracy_of_a_linear_model_is_its_margin_test():
    w, b = rng.normal(size=(2, 6)), rng.normal(size=2) * 0.1
    x = rng.uniform(-1, 1, size=(200, 6))
    logits = x @ w.T + b
    y = logits.argmax(1)
    y[:20] = 1 - y[:20]  # some samples the model gets wrong: never robust
    box = (torch.full((1, 6), -100.0), torch.full((1, 6), 100.0))  # no clipping; eps in units of 200
    eps = 0.1 / 200
    d = w[y] - w[1 - y]
    margin = (x * d).sum(1) + (b[y] - b[1 - y])
    want = float(np.mean(margin > 0.1 * np.abs(d).sum(1)))
    attack = PGD(eps=eps, step=eps / 2, steps=10)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    assert robust_accuracy(linear(w, b), xt, yt, box, attack, restarts=3, seed=0) == pytest.approx(want, abs=1e-9)
    assert 0 < want < float(np.mean(margin > 0))  # the check is not vacuous


@pytest.fixture(scope="module")
def seq():
    s = load_splits(DataSpec("mnist1d"))
    return replace(s, train_x=s.train_x[:256].contiguous(), train_y=s.train_y[:256], train_clean_y=s.train_clean_y[:256])


def test_the_student_trains_on_x_prime_while_the_teacher_sees_the_clean_batch(seq):
    """Seed 003 eq. 6: the teacher's outputs on x, the student's on x' (within eps of x)."""
    torch.manual_seed(0)
    teacher = build_model("cnn1d_w8", seq.num_classes, seq.input_shape).eval()
    cfg = TrainConfig("cnn1d_w4", epochs=1, method="kd", adversarial_steps=3, batch_size=128)
    tr = Trainer(cfg, seq, device="cpu", teacher=teacher)
    seen = {"teacher": [], "attacked": [], "student": []}
    attack, outputs = tr.adversary, tr.signal.outputs

    def adversary(model, x, y, g):
        out = attack(model, x, y, g)
        seen["attacked"].append((x, out))
        return out

    def teacher_outputs(xb, idx):
        seen["teacher"].append((xb.clone(), idx))
        return outputs(xb, idx)

    tr.adversary, tr.signal.outputs = adversary, teacher_outputs
    tr.model.register_forward_hook(lambda m, inp, out: seen["student"].append(inp[0]) if m.training else None)
    tr.train_epoch()
    assert len(seen["attacked"]) == len(seen["teacher"]) == len(seen["student"]) == 2
    lo, hi = seq.train_x.min(), seq.train_x.max()  # MNIST-1D has one channel: the box is its whole range
    for (clean, idx), (x, adv), student_in in zip(seen["teacher"], seen["attacked"], seen["student"]):
        assert torch.equal(clean, seq.train_x[idx]) and torch.equal(x, clean)
        assert student_in is adv and not torch.equal(adv, clean)
        assert ((adv - clean).abs() <= cfg.adversarial_eps * (hi - lo) + 1e-6).all()


def test_adversarial_training_keys_a_teacher_only_when_on():
    data = DataSpec("mnist1d")
    plain = TeacherRecipe(data, TrainConfig("cnn1d_w4")).key()
    assert TeacherRecipe(data, TrainConfig("cnn1d_w4", adversarial_eps=0.1)).key() == plain  # off: eps is moot
    on = TeacherRecipe(data, TrainConfig("cnn1d_w4", adversarial_steps=7)).key()
    assert on != plain and TeacherRecipe(data, TrainConfig("cnn1d_w4", adversarial_steps=10)).key() != on


@pytest.mark.parametrize("field,value", [("adversarial_steps", -1), ("adversarial_eps", 0.0),
                                         ("adversarial_step", float("nan")), ("adversarial_eps", 2.0)])
def test_bad_adversarial_settings_are_one_sentence(field, value):
    with pytest.raises(KdxError, match=f"^{field}: got .*allowed"):
        TrainConfig("cnn1d_w4", **{field: value})


def test_fused_members_are_refused_with_adversarial_training(seq):
    with pytest.raises(KdxError, match="^members: adversarial training"):
        Trainer(TrainConfig("cnn1d_w4", adversarial_steps=2), seq, device="cpu", members=[0, 1])
