"""Fused training of several seeds as one model (explorer/training/fused.py): a fused member is its solo run.

The reference is always the solo `Trainer` with the member's seed, trained separately: after the same
epochs a fused member's weights, batch-norm statistics and metrics must equal the solo run's within
float tolerance (grouped convolutions sum in another order). The resnet checks take two steps of 128
without oneDNN: its grouped and plain 2-D convolutions differ in the last bits of a gradient (about
3e-6 relative, measured), and on these random labels training is chaotic (a 1e-7 relative change of a
solo run's init grows to 2e-2 in four steps of 64), so longer checks would compare noise."""

from dataclasses import replace

import pytest
import torch

from explorer.config import TrainConfig
from explorer.data.condition import DataSpec
from explorer.data.splits import load_splits
from explorer.errors import KdxError
from explorer.methods import ALPHA, METHODS, LossInputs, Method, get_method
from explorer.models import build_model
from explorer.training.fused import check_member_losses, fuse_models, fuse_problem, member_losses
from explorer.training.loop import Trainer

SEEDS = [3, 7, 11]
TOL = dict(rtol=1e-4, atol=1e-5)


def _cut(s, n):
    return replace(s, train_x=s.train_x[:n].contiguous(), train_y=s.train_y[:n], train_clean_y=s.train_clean_y[:n])


@pytest.fixture(scope="module")
def seq():
    return _cut(load_splits(DataSpec("mnist1d")), 600)


@pytest.fixture(scope="module")
def img():
    """3x16x16 images with crop+flip augmentation."""
    return _cut(load_splits(DataSpec("fake")), 256)


def _teacher(splits, arch):
    torch.manual_seed(0)
    return build_model(arch, splits.num_classes, splits.input_shape).eval()


def _assert_members_equal_solo(cfg, splits, teacher_arch=None, members=SEEDS, member_teachers=None):
    """`members`: seeds of `cfg`, or TrainConfigs of their own (each member's solo run is its config);
    `member_teachers`: each member's own teacher (its solo run's), instead of one `teacher_arch`."""
    teacher = _teacher(splits, teacher_arch) if teacher_arch else None
    fused = Trainer(cfg, splits, device="cpu", teacher=teacher, members=members, member_teachers=member_teachers)
    history = fused.run()
    for i, member_cfg in enumerate(members):
        if isinstance(member_cfg, int):
            member_cfg = cfg.model_copy(update={"seed": member_cfg})
        solo = Trainer(member_cfg, splits, device="cpu", teacher=teacher if member_teachers is None else member_teachers[i])
        solo_history = solo.run()
        member = fused.model.member_state_dict(i)
        for name, want in solo.model.state_dict().items():
            assert torch.allclose(member[name].float(), want.float(), **TOL), (i, name)
        for got, want in zip(history, solo_history):
            row = got["members"][i]
            assert row["seed"] == member_cfg.seed and row["lr"] == pytest.approx(want["lr"], rel=1e-12)
            assert ("kd_agreement" in row) == ("kd_agreement" in want)
            for key in ("val_acc", "test_acc", "train_loss", "train_kd", "kd_agreement", "teacher_val_acc"):
                if key in want:
                    assert row[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), (i, key)
    # the trial-level numbers are the members' means
    last = history[-1]
    assert last["val_acc"] == pytest.approx(sum(r["val_acc"] for r in last["members"]) / len(members))


@pytest.mark.parametrize("arch", ["cnn1dbn_w8", "cnn1d_w4", "mlp_32x2"])
def test_fused_kd_members_equal_solo_runs_on_sequences(seq, arch):
    cfg = TrainConfig(arch, epochs=2, method="kd", batch_size=64, lr=0.05,
                      method_params={"temperature": 4.0, "alpha": 0.9})
    _assert_members_equal_solo(cfg, seq, teacher_arch="cnn1dbn_w16")


def test_fused_cnn2d_kd_members_equal_solo_runs_on_augmented_images(img):
    """The 2-D CNN family (explorer/models/cnn2d.py: conv + BN + ReLU + max pooling) fuses as grouped layers."""
    cfg = TrainConfig("cnn2d_w4", epochs=1, method="kd", batch_size=64, lr=0.05,
                      method_params={"temperature": 4.0, "alpha": 0.9})
    with torch.backends.mkldnn.flags(enabled=False):
        _assert_members_equal_solo(cfg, img, teacher_arch="cnn2d_w8")


@pytest.mark.parametrize("method,own", [
    ("kd", [{"temperature": 4.0, "alpha": 0.9}, {"temperature": 1.5, "alpha": 0.5}, {"temperature": 8.0, "alpha": 0.9}]),
    ("ls", [{"epsilon": 0.1}, {"epsilon": 0.3}, {"epsilon": 0.1}]),
])
def test_members_with_their_own_lr_and_hyperparameters_equal_their_solo_runs(seq, method, own):
    """Several configs of one student recipe as one fused model: each member's lr scales its own SGD
    step, and its hyperparameters reach its own loss; a shared seed still gives each member its own run."""
    cfg = TrainConfig("cnn1dbn_w8", epochs=2, method=method, batch_size=64, lr=0.1, momentum=0.9,
                      weight_decay=5e-4, nesterov=method == "ls", method_params=own[0])
    members = [cfg.model_copy(update={"seed": seed, "lr": lr, "method_params": hp})
               for seed, lr, hp in zip([3, 3, 11], [0.05, 0.2, 0.01], own)]
    _assert_members_equal_solo(cfg, seq, "cnn1dbn_w16" if method == "kd" else None, members)


@pytest.mark.parametrize("data,arch,views", [("seq", "cnn1dbn_w8", 16), ("img", "resnet8", 4), ("img", "resnet8", 0)])
def test_members_with_their_own_teachers_equal_their_solo_runs(request, data, arch, views):
    """Configs whose teachers differ (a confirmation's cells) as one fused model: each member gets its own
    teacher's logits on its own rows, from the teachers' view tables (views 16 on unaugmented sequences:
    the plain images; 4 on crop+flip images) or from live teacher forwards (views 0)."""
    splits = request.getfixturevalue(data)
    teachers = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        teachers.append(build_model(arch, splits.num_classes, splits.input_shape).eval())
    cfg = TrainConfig(arch, epochs=1 if data == "img" else 2, method="kd", batch_size=128 if data == "img" else 64,
                      lr=0.05, views=views, method_params={"temperature": 4.0, "alpha": 0.9})
    members = [cfg.model_copy(update={"seed": seed, "lr": lr, "method_params": {"temperature": t, "alpha": 0.9}})
               for seed, lr, t in [(3, 0.05, 4.0), (3, 0.1, 2.0), (7, 0.05, 4.0)]]
    with torch.backends.mkldnn.flags(enabled=False):
        _assert_members_equal_solo(cfg, splits, members=members, member_teachers=[teachers[1], teachers[0], teachers[1]])


def test_member_teachers_are_one_per_member():
    seq_cfg = TrainConfig("cnn1d_w4", epochs=1, method="kd")
    with pytest.raises(KdxError, match=r"^member_teachers: got '1 teachers'; allowed: one per member \(2\)"):
        Trainer(seq_cfg, _cut(load_splits(DataSpec("mnist1d")), 64), device="cpu", members=[0, 1],
                member_teachers=[build_model("cnn1d_w4", 10, (40,))])


@pytest.mark.parametrize("field,value,why", [
    ("batch_size", 32, "batch_size differs between members"),
    ("method_params", {"temperature": 4.0, "kd_stop_epoch": 1}, "kd_stop_epoch differs between members"),
])
def test_members_that_differ_in_what_shapes_the_loop_are_refused(seq, field, value, why):
    cfg = TrainConfig("cnn1dbn_w8", epochs=2, method="kd", method_params={"temperature": 4.0})
    teacher = _teacher(seq, "cnn1dbn_w16")
    with pytest.raises(KdxError, match=f"^members: {why} .*; allowed: "):
        Trainer(cfg, seq, device="cpu", teacher=teacher, members=[cfg, cfg.model_copy(update={field: value})])


def test_a_loss_that_branches_on_a_member_hyperparameter_is_refused():
    """A plugin loss with a Python branch on alpha cannot take one alpha per member under vmap; it is
    refused in one sentence instead of training every member with the first member's alpha."""

    class Branchy(Method):
        def losses(self, inputs, hp):
            ce = torch.nn.functional.cross_entropy(inputs.student_logits, inputs.targets)
            return {"ce": ce * 2 if hp["alpha"] > 0.5 else ce}

    branchy = Branchy("branchy", "a test plugin", "none", hparams=(ALPHA,))
    with pytest.raises(KdxError, match="^members: the 'branchy' loss cannot take its own alpha per member; allowed"):
        check_member_losses(branchy, {"alpha": 0.9}, {"alpha": [0.9, 0.1]}, 10, 0)
    check_member_losses(branchy, {"alpha": 0.9}, {}, 10, 0)  # one alpha for all: nothing to check


@pytest.mark.parametrize("name", sorted(n for n, m in METHODS.items() if fuse_problem(m) is None))
def test_every_real_valued_hyperparameter_of_a_fusable_method_can_differ_per_member(name):
    """Each fusable method takes its real-valued hyperparameters per member: the vmapped loss with two
    members' values equals the method's loss with each member's own (`check_member_losses` compares)."""
    method = get_method(name)
    hp = method.resolve({})
    pair = method.needs_teacher and method.teacher_problem("plain") is not None
    teachers = (2 if pair else 1) if method.needs_teacher else 0
    for h in method.hparams:
        if not h.integer and hp[h.name] is not None:
            other = min(hp[h.name] * 0.5 or 0.3, h.high if h.high is not None else float("inf"))
            check_member_losses(method, hp, {h.name: [hp[h.name], other]}, 10, teachers)


def test_fused_ce_members_equal_solo_runs_on_augmented_images(img):
    """Live crop+flip: each member draws its own crops from its own generator."""
    with torch.backends.mkldnn.flags(enabled=False):
        _assert_members_equal_solo(TrainConfig("resnet8", epochs=1, batch_size=128, lr=0.05), img)


def test_fused_kd_members_draw_their_own_fixed_views(img):
    """Teacher logits on V fixed views: each member draws its views as its solo run does."""
    cfg = TrainConfig("resnet8", epochs=1, method="kd", batch_size=128, views=4)
    with torch.backends.mkldnn.flags(enabled=False):
        _assert_members_equal_solo(cfg, img, teacher_arch="resnet8")


@pytest.mark.parametrize("own_lr", [False, True])
def test_fused_resume_is_exact(seq, tmp_path, own_lr):
    cfg = TrainConfig("cnn1dbn_w8", epochs=3, batch_size=64)
    members = [cfg.model_copy(update={"seed": s, "lr": 0.02 * (i + 1)}) for i, s in enumerate(SEEDS)] if own_lr else SEEDS
    whole = Trainer(cfg, seq, device="cpu", members=members)
    whole.run()
    first = Trainer(cfg, seq, device="cpu", members=members)
    first.train_epoch()
    state = first.state_dict()
    second = Trainer(cfg, seq, device="cpu", members=members)
    second.load_state_dict(state)
    second.run()
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k]), k
    assert second.history[-1]["members"] == whole.history[-1]["members"]


def test_a_diverged_member_is_reported_and_the_others_go_on(seq):
    """A member whose weights are not finite diverges alone: the other members still equal their solo
    runs, and its rows say diverged with val_acc 0 (as a solo run's last report)."""
    cfg = TrainConfig("cnn1dbn_w8", epochs=2, batch_size=64)
    fused = Trainer(cfg, seq, device="cpu", members=SEEDS)
    with torch.no_grad():
        fc = fused.model.body.fc.weight
        fc.view(len(SEEDS), -1, fc.shape[1])[1] = float("nan")
    history = fused.run()
    assert history[-1]["members"][1] == {"epoch": 2, "lr": history[-1]["lr"], "seed": SEEDS[1], "diverged": 1.0,
                                         "val_acc": 0.0}
    solo = Trainer(cfg.model_copy(update={"seed": SEEDS[0]}), seq, device="cpu").run()
    assert history[-1]["members"][0]["val_acc"] == pytest.approx(solo[-1]["val_acc"], abs=1e-6)
    rows = history[-1]["members"]
    assert history[-1]["val_acc"] == pytest.approx(sum(r["val_acc"] for r in rows) / 3)


def _logit_methods():
    return sorted(name for name, m in METHODS.items() if fuse_problem(m) is None)


@pytest.mark.parametrize("name", _logit_methods())
def test_every_fusable_method_loss_is_per_member(name):
    """The vmapped loss of S members equals the method's loss on each member's rows alone."""
    method = get_method(name)
    hp = method.resolve({})
    g = torch.Generator().manual_seed(0)
    s, b, k = 3, 16, 10
    logits = torch.randn(s, b, k, generator=g)
    targets = torch.randint(0, k, (s, b), generator=g)
    pair = method.needs_teacher and method.teacher_problem("plain") is not None  # the alter_* t-, t+ pair
    teacher = None
    if method.needs_teacher:
        teacher = [torch.randn(s, b, k, generator=g) for _ in range(2)] if pair else torch.randn(s, b, k, generator=g)
    got = member_losses(method.losses, LossInputs(logits, targets, 3, teacher, epochs=10), hp)
    for i in range(s):
        mine = None if teacher is None else [t[i] for t in teacher] if pair else teacher[i]
        want = method.losses(LossInputs(logits[i], targets[i], 3, mine, epochs=10), hp)
        assert set(got) == set(want)
        for term, value in want.items():
            assert torch.allclose(got[term][i], value, rtol=1e-5, atol=1e-6), (name, term)


@pytest.mark.parametrize("method,why", [("at", "reads intermediate features"), ("bss", "runs the student or teacher"),
                                        ("dml", "its own kind of student")])
def test_methods_that_cannot_fuse_are_refused_in_one_sentence(seq, method, why):
    cfg = TrainConfig("cnn1dbn_w8", epochs=1, method=method)
    teacher = _teacher(seq, "cnn1dbn_w16")
    with pytest.raises(KdxError, match=f"^members: method '{method}' .*{why}.*allowed: one seed at a time"):
        Trainer(cfg, seq, device="cpu", teacher=teacher, members=[0, 1])


class _ConvThenLinear(torch.nn.Module):
    """A 1-D conv and a linear layer; each test's subclass says what its forward does between them."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 4, 3)
        self.fc = torch.nn.Linear(4, 2)

    def conv_out(self, x):
        return self.conv(x.unsqueeze(1) if x.dim() == 2 else x)


def _two_seeds(cls) -> list[torch.nn.Module]:
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(cls())
    return models


def test_fusing_checks_the_forward_of_every_member():
    """A model whose forward mixes channels (here: reverses them) is refused rather than trained wrong."""

    class Mixer(_ConvThenLinear):
        def forward(self, x):
            return self.fc(self.conv_out(x).flip(1).mean(2))

    with pytest.raises(KdxError, match="^members: architecture 'Mixer' mixes channels"):
        fuse_models(_two_seeds(Mixer), torch.randn(2, 8))


def test_a_model_that_needs_3d_conv_outputs_fuses_with_plain_grouped_convs():
    """GroupedConv1d hands on (B, C, 1, L) channels-last on CPU; a model whose own code averages over dim 2
    after a conv cannot take that, so it gets plain grouped Conv1d and still equals its members."""
    from explorer.training.fused import GroupedConv1d

    class Pooled(_ConvThenLinear):
        def forward(self, x):
            return self.fc(torch.relu(self.conv_out(x)).mean(2))

    models = _two_seeds(Pooled)
    fused = fuse_models(models, torch.randn(2, 8))
    assert [m.channels_last for m in fused.modules() if isinstance(m, GroupedConv1d)] == [False]
    x = torch.randn(2, 5, 8)
    assert torch.allclose(fused(x), torch.stack([m(xi) for m, xi in zip(models, x)]), atol=1e-6)
    cnn = [build_model("cnn1dbn_w8", 10, (40,)) for _ in range(2)]
    assert all(m.channels_last for m in fuse_models(cnn, torch.randn(2, 40)).modules() if isinstance(m, GroupedConv1d))
