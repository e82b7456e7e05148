"""BSS and UDA (issue 12): BSS's sample selection, target-class draw, boundary attack and loss against
numpy written from the authors' description; RandAugment's operations against torchvision's functionals;
UDA's loss as the sum of Hinton KD on both views; the image-only refusal."""

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from explorer.data.randaugment import OPS, op_magnitude, rand_augment
from explorer.errors import KdxError
from explorer.methods import LossInputs, check_method_params, get_method
from explorer.methods.bss import base_samples, bss_attack, bss_weights, target_classes, value_range

rng = np.random.default_rng(7)


def softmax(z, T=1.0):
    e = np.exp(z / T - (z / T).max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def kl(p, q):
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), 1)))


# ---------------------------------------------------------------- BSS


def test_bss_weights_follow_the_authors_linear_decays():
    E = 200
    for e in (1, 50, 100, 150, 151, 200):
        kd, b = bss_weights(e, E)
        assert kd == pytest.approx(1 + 3 * (1 - e / E))
        assert b == pytest.approx(max(0.0, 2 - 8 * e / (3 * E)))
    assert bss_weights(150, 200)[1] == 0.0  # the attack stops after three quarters of training


def np_base_samples(t, s, y, size, student_too=True):
    """The authors' selection, written out: samples whose top-1 is the label for the teacher (and the
    student, unless `student_too` is False: kdx's old rule), the `size` with the largest
    sum_{k != y} (p_t,k - p_s,k)^2 (softmax at T = 1)."""
    pt, ps, k = softmax(t), softmax(s), t.shape[1]
    ok = [i for i in range(len(y)) if t[i].argmax() == y[i] and (not student_too or s[i].argmax() == y[i])]
    score = {i: sum((pt[i, c] - ps[i, c]) ** 2 for c in range(k) if c != y[i]) for i in ok}
    return sorted(sorted(score, key=score.get, reverse=True)[:size])


@pytest.mark.parametrize("size", [3, 8, 50])
def test_base_samples_are_teacher_and_student_correct_and_most_disagreeing(size):
    r = np.random.default_rng(21)
    t = r.normal(size=(60, 6)) * 2
    s = 0.7 * t + r.normal(size=(60, 6)) * 1.5  # a student that agrees with the teacher on some samples
    y = t.argmax(1).copy()
    y[::4] = (y[::4] + 1) % 6  # every fourth sample: the teacher is wrong
    want = np_base_samples(t, s, y, size)
    # the case must tell the rules apart: teacher-right, student-wrong samples rank among the old top `size`
    assert np_base_samples(t, s, y, size, student_too=False) != want and len(want) >= 3
    got = base_samples(torch.tensor(t), torch.tensor(s), torch.tensor(y), size).tolist()
    assert sorted(got) == want


def test_a_sample_only_the_teacher_gets_right_is_never_attacked():
    """The teacher is right on every sample; the student is wrong on sample 0 only, where it disagrees
    most with the teacher (the largest distillation score), so the old teacher-only rule picked it first."""
    t = torch.tensor([[4.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    s = torch.tensor([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.5]])
    y = torch.tensor([0, 0, 1, 2])
    assert np_base_samples(t.numpy(), s.numpy(), y.numpy(), 1, student_too=False) == [0]
    assert base_samples(t, s, y, 1).tolist() == np_base_samples(t.numpy(), s.numpy(), y.numpy(), 1) != [0]
    assert sorted(base_samples(t, s, y, 4).tolist()) == [1, 2, 3]


def test_target_class_is_never_the_top_and_follows_the_teacher_softmax():
    t = torch.tensor([[3.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    drawn = target_classes(t, g)
    p = softmax(t[:1].numpy())[0, 1:]
    freq = np.bincount(drawn.numpy(), minlength=4) / len(drawn)
    assert freq[0] == 0
    np.testing.assert_allclose(freq[1:], p / p.sum(), atol=0.015)


class Linear(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = torch.tensor(w, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def test_boundary_attack_matches_the_iteration_on_a_linear_teacher():
    """f(x) = Wx + b: grad of (f_k - f_b) is w_k - w_b, so each step is x += eta (f_b - f_k + 1e-4) d/||d||
    while the teacher still predicts b, clipped to the batch's range per channel."""
    w, b = rng.normal(size=(4, 2 * 3 * 3)), rng.normal(size=4)
    x = rng.normal(size=(6, 2, 3, 3)) * 0.3
    teacher = Linear(w, b)
    target = np.array([(int(np.argmax(w @ xi.ravel() + b)) + 1) % 4 for xi in x])
    steps, eta = 10, 0.3
    lo, hi = x.min(axis=(0, 2, 3), keepdims=True), x.max(axis=(0, 2, 3), keepdims=True)
    want = []
    for xi, k in zip(x, target):
        a = xi.copy()
        base = int(np.argmax(w @ a.ravel() + b))
        for _ in range(steps):
            f = w @ a.ravel() + b
            if np.argmax(f) != base:
                break
            d = w[k] - w[base]
            a = np.clip(a + eta * (f[base] - f[k] + 1e-4) * (d / np.linalg.norm(d)).reshape(a.shape), lo[0], hi[0])
        want.append(a)
    xt = torch.tensor(x, dtype=torch.float32)
    got = bss_attack(teacher, xt, torch.tensor(target), steps, eta, *value_range(xt))
    np.testing.assert_allclose(got.numpy(), np.stack(want), atol=1e-4)
    assert not np.allclose(got.numpy(), x)  # the attack moved the samples


def test_bss_loss_matches_numpy_with_two_classes():
    """With two classes the target class is the other one, so the whole loss is computable in numpy. The
    base samples are picked in numpy by the authors' rule (teacher and student right); the batch holds
    teacher-right, student-wrong samples that the teacher-only rule would have attacked."""
    r = np.random.default_rng(3)
    w_t, b_t = r.normal(size=(2, 8)), np.zeros(2)
    w_s = 0.5 * w_t + r.normal(size=(2, 8)) * 0.4
    x = r.normal(size=(16, 8)).astype(np.float32)
    teacher, student = Linear(w_t, b_t), Linear(w_s, np.zeros(2))
    t, s = x @ w_t.T, x @ w_s.T
    y = t.argmax(1)
    y[:2] = 1 - y[:2]  # two samples the teacher gets wrong: never attacked
    size = 4
    pick = np_base_samples(t, s, y, size)
    assert len(pick) == size and pick != np_base_samples(t, s, y, size, student_too=False)
    method = get_method("bss")
    hp = method.resolve({"attack_size": size, "attack_steps": 3})
    T, epoch, epochs = hp["temperature"], 2, 10
    xt = torch.tensor(x)
    terms = method.losses(LossInputs(student(xt), torch.tensor(y), epoch, teacher(xt), x=xt, run_student=student,
                                     run_teacher=teacher, generator=torch.Generator().manual_seed(0), epochs=epochs), hp)
    kd_w, b_w = 1 + 3 * (1 - epoch / epochs), 2 * (1 - 4 / 3 * epoch / epochs)
    ce = float(np.mean(-np.log(softmax(s)[np.arange(len(y)), y])))
    adv = []
    for i in pick:
        a, base = x[i].astype(np.float64), int(t[i].argmax())
        for _ in range(3):
            f = w_t @ a
            if np.argmax(f) != base:
                break
            d = w_t[1 - base] - w_t[base]
            a = np.clip(a + 0.3 * (f[base] - f[1 - base] + 1e-4) * d / np.linalg.norm(d), x.min(0), x.max(0))
        adv.append(a)
    adv = np.stack(adv)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["kd"].item() == pytest.approx(kd_w * kl(softmax(t, T), softmax(s, T)), rel=1e-4)
    assert terms["bss"].item() == pytest.approx(b_w * kl(softmax(adv @ w_t.T, T), softmax(adv @ w_s.T, T)), rel=1e-3)


# ---------------------------------------------------------------- RandAugment and UDA


TORCHVISION = {
    "brightness": lambda x, m: TF.adjust_brightness(x, 1 + m),
    "color": lambda x, m: TF.adjust_saturation(x, 1 + m),
    "contrast": lambda x, m: TF.adjust_contrast(x, 1 + m),
    "sharpness": lambda x, m: TF.adjust_sharpness(x, 1 + m),
    "posterize": lambda x, m: TF.posterize((x * 255).round().to(torch.uint8), int(8 - m)).float() / 255,
    "solarize": lambda x, m: TF.solarize(x, 1 - m),
    "autocontrast": lambda x, m: TF.autocontrast(x),
    "equalize": lambda x, m: TF.equalize((x * 255).round().to(torch.uint8)).float() / 255,
    "rotate": lambda x, m: TF.rotate(x, m),
    "shear_x": lambda x, m: TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(math.atan(m)), 0.0]),
    "shear_y": lambda x, m: TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, math.degrees(math.atan(m))]),
    "translate_x": lambda x, m: TF.affine(x, angle=0.0, translate=[m * 16, 0], scale=1.0, shear=[0.0, 0.0]),
    "translate_y": lambda x, m: TF.affine(x, angle=0.0, translate=[0, m * 16], scale=1.0, shear=[0.0, 0.0]),
    "identity": lambda x, m: x,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_randaugment_operations_equal_torchvision(name):
    assert set(TORCHVISION) == set(OPS)
    x = torch.tensor(rng.integers(0, 256, size=(4, 3, 16, 16)), dtype=torch.float32) / 255
    x[0] *= 0.5  # one image without the bright levels
    m = op_magnitude(name, 9)
    if name.startswith("translate"):
        m = 0.125  # a whole number of pixels (torchvision rounds translations)
    for sign in ((1, -1) if OPS[name][2] else (1,)):
        ours = OPS[name][0](x.clone(), torch.full((4,), sign * m))
        theirs = torch.stack([TORCHVISION[name](xi, sign * m) for xi in x])
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)  # float rounding


def test_randaugment_magnitudes_follow_torchvisions_table():
    assert op_magnitude("rotate", 9) == pytest.approx(9.0)
    assert op_magnitude("shear_x", 9) == pytest.approx(0.09)
    assert op_magnitude("posterize", 9) == 1.0  # 8 - 7 bits kept
    assert op_magnitude("solarize", 9) == pytest.approx(0.3)  # threshold 0.7


def test_randaugment_is_seeded_keeps_shape_and_range_and_changes_images():
    x = torch.randn(32, 3, 8, 8)
    a = rand_augment(x, torch.Generator().manual_seed(1))
    b = rand_augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(a, x)
    lo, hi = x.amin(dim=(0, 2, 3)), x.amax(dim=(0, 2, 3))
    assert (a.amin(dim=(0, 2, 3)) >= lo - 1e-5).all() and (a.amax(dim=(0, 2, 3)) <= hi + 1e-5).all()


def test_uda_loss_is_hinton_kd_on_both_views():
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    x, y = torch.randn(16, 3, 8, 8), torch.tensor(rng.integers(0, 5, 16))
    method = get_method("uda")
    hp = method.resolve({"alpha": 0.7, "temperature": 3.0})
    with torch.no_grad():
        t = teacher(x)
    terms = method.losses(LossInputs(student(x), y, 1, t, x=x, run_student=student, run_teacher=teacher,
                                     generator=torch.Generator().manual_seed(4)), hp)
    x_ra = rand_augment(x, torch.Generator().manual_seed(4), 2, 9.0)  # the same draw as inside the loss
    with torch.no_grad():
        want = 0.0
        for view in (x, x_ra):
            s, tv = student(view).numpy(), teacher(view).numpy()
            ce = np.mean(-np.log(softmax(s)[np.arange(16), y.numpy()]))
            want += 0.3 * ce + 0.7 * 9.0 * kl(softmax(tv, 3.0), softmax(s, 3.0))
    assert set(terms) == {"ce", "kd", "ce_ra", "kd_ra"}
    assert sum(v.item() for v in terms.values()) == pytest.approx(want, rel=1e-4)


def test_uda_refuses_non_images_in_one_sentence():
    with pytest.raises(KdxError) as e:
        check_method_params("uda", {}, 10, archs=["cnn1d_w4"])
    assert str(e.value).count(".") == 1 and "RandAugment" in str(e.value)
    check_method_params("uda", {}, 10, archs=["resnet8", "resnet20"])


# ---------------------------------------------------------------- in the training loop


def teacher_labels(teacher, x):
    """Calibrate the untrained teacher's BN statistics on `x` (a cumulative average) and return its
    predictions, to serve as labels the teacher gets right; the student then gets some of them right."""
    for m in teacher.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        teacher.train()(x)
        return teacher.eval()(x).argmax(1)


@pytest.mark.parametrize("name", ["bss", "uda"])
def test_trains_in_the_loop_with_its_extra_terms_and_resumes_exactly(name):
    from dataclasses import replace

    from resume import full_and_resumed

    from explorer.config import TrainConfig
    from explorer.data.condition import DataSpec
    from explorer.data.splits import load_splits
    from explorer.models import build_model

    splits = load_splits(DataSpec("fake"))
    splits = replace(splits, **{k: getattr(splits, k)[: 192 if k.startswith("train") else 64] for k in splits._TENSORS})
    torch.manual_seed(0)
    teacher = build_model("resnet14", splits.num_classes, splits.input_shape)
    if name == "bss":  # BSS attacks only samples both nets get right, and an untrained net predicts one class
        y = teacher_labels(teacher, splits.train_x)  # for every image
        splits = replace(splits, train_y=y, train_clean_y=y)
    cfg = TrainConfig("resnet8", epochs=2, seed=5, method=name, lr=0.05, batch_size=64)
    full, resumed = full_and_resumed(cfg, splits, teacher)
    extra = "train_bss" if name == "bss" else "train_kd_ra"
    assert full.history[0][extra] > 0  # bss: the attack's weight is 2 (1 - 2/3) at epoch 1 of 2
    if name == "bss":
        assert full.history[1][extra] == 0.0  # ... and 0 from three quarters of training on
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
