"""Tests for explorer/models/features.py: feature roles per family, FeatureTap hooks, forward_with_features.

The reference features are computed here by hand from each family's modules (the forward as the
architecture defines it), not with the roles under test, so a role pointing at the wrong module
(a pre-activation output, the pooled map instead of the flattened one, ...) fails.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explorer.errors import KdxError
from explorer.models import MLP, CifarResNet, CNN1d, MultiBranch, WideResNet, build_model
from explorer.models import features as FT
from explorer.models.features import FEATURE_ROLES, FeatureTap, feature_paths, feature_roles, forward_with_features

FAMILIES = [
    ("resnet8", (3, 16, 16)),
    ("resnet8x4", (3, 16, 16)),
    ("wrn_16_2", (3, 16, 16)),
    ("cnn1d_w4", (1, 40)),
    ("mlp_16x2", (1, 40)),
]
IDS = [name for name, _ in FAMILIES]


def _model(name, shape, seed=0):
    torch.manual_seed(seed)
    return build_model(name, 10, shape).eval()


def _x(shape, batch=3, seed=1):
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def _manual(model, x):
    """(block outputs, classifier input), written out from the architecture definitions."""
    if isinstance(model, CifarResNet):
        f0 = F.relu(model.bn1(model.conv1(x)))
        f1 = model.layer1(f0)
        f2 = model.layer2(f1)
        f3 = model.layer3(f2)
        return [f0, f1, f2, f3], F.adaptive_avg_pool2d(f3, 1).flatten(1)
    if isinstance(model, WideResNet):
        f0 = model.conv1(x)
        f1 = model.block1(f0)
        f2 = model.block2(f1)
        f3 = model.block3(f2)
        return [f0, f1, f2, f3], F.adaptive_avg_pool2d(F.relu(model.bn(f3)), 1).flatten(1)
    if isinstance(model, CNN1d):
        feats = []
        for conv in model.convs:
            x = F.relu(conv(x))
            feats.append(x)
        return feats, x.flatten(1)
    if isinstance(model, MLP):
        x = x.flatten(1)
        feats = []
        for layer in model.hidden:
            x = F.relu(layer(x))
            feats.append(x)
        return feats, x
    raise AssertionError(type(model))


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ----------------------------------------------------------------------------- roles
@pytest.mark.parametrize("name, shape", FAMILIES, ids=IDS)
def test_every_role_resolves_to_real_modules(name, shape):
    model = _model(name, shape)
    roles = feature_roles(model)
    assert {"blocks", "penultimate"} <= set(roles)
    modules = dict(model.named_modules())
    for role, paths in roles.items():
        assert paths and all(p in modules for p in paths), (role, paths)
        assert feature_paths(model, role) == paths
    assert len(roles["blocks"]) == len(model.feature_channels)
    assert type(model) in FEATURE_ROLES


@pytest.mark.parametrize("name, shape", FAMILIES, ids=IDS)
def test_hooked_blocks_are_the_block_outputs(name, shape):
    model, x = _model(name, shape), _x(shape)
    with torch.no_grad():
        ref_blocks, _ = _manual(model, x)
        logits, hooked = forward_with_features(model, x, "blocks")
        logits2, feats = model(x, features=True)
    assert torch.equal(logits, logits2) and torch.equal(logits, model(x))
    assert len(hooked) == len(feats) == len(ref_blocks) == len(model.feature_channels)
    for h, f, r, c in zip(hooked, feats, ref_blocks, model.feature_channels):
        assert torch.equal(h, f) and torch.equal(h, r)
        assert h.shape[0] == len(x) and h.shape[1] == c


@pytest.mark.parametrize("name, shape", FAMILIES, ids=IDS)
def test_penultimate_is_the_classifier_input(name, shape):
    model, x = _model(name, shape), _x(shape)
    with torch.no_grad():
        logits, (pen,) = forward_with_features(model, x, "penultimate")
        _, ref = _manual(model, x)
        assert pen.shape == (len(x), model.fc.in_features)
        assert torch.equal(pen, ref)
        assert torch.equal(model.fc(pen), logits)


@pytest.mark.parametrize("name, shape", FAMILIES, ids=IDS)
def test_hooks_are_removed_and_a_forward_replaces_not_appends(name, shape):
    model, x1, x2 = _model(name, shape), _x(shape, seed=1), _x(shape, seed=2)
    paths = feature_paths(model, "blocks") + feature_paths(model, "penultimate")
    with torch.no_grad():
        ref2 = _manual(model, x2)[1]
        with FeatureTap(model, paths) as tap:
            model(x1)
            first = tap.features
            model(x2)  # a second forward replaces the captures
            second = tap.features
            assert len(first) == len(second) == len(paths)
            assert not torch.equal(first[0], second[0])
            assert torch.equal(second[-1], ref2)
        assert _no_hooks(model)
        model(x1)  # after the context nothing is captured any more
        assert all(a is b for a, b in zip(tap.features, second))
        model(x1, features=True)
        assert _no_hooks(model)  # features=True leaves no hook behind either


def test_duplicate_paths_fill_every_slot():
    # an MLP's penultimate is its last block: the same module may be tapped twice
    model, x = _model("mlp_16x2", (1, 40)), _x((1, 40))
    paths = feature_paths(model, "blocks") + feature_paths(model, "penultimate")
    assert paths == ["acts.0", "acts.1", "acts.1"]
    _, feats = forward_with_features(model, x, paths)
    assert len(feats) == 3 and feats[1] is feats[2]


def test_clear_and_remove():
    model, x = _model("cnn1d_w4", (1, 40)), _x((1, 40))
    tap = FeatureTap(model, ["acts.2"])
    with pytest.raises(KdxError, match="nothing was captured at 'acts.2'"):
        tap.features
    model(x)
    assert tap.features[0].shape == (3, 4, 5)
    tap.clear()
    with pytest.raises(KdxError, match="nothing was captured"):
        tap.features
    tap.remove()
    tap.remove()  # idempotent
    assert _no_hooks(model)


def test_inference_mode_and_autocast():
    model, x = _model("resnet8", (3, 16, 16)), _x((3, 16, 16))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, feats = forward_with_features(model, x, "blocks")
        ref_logits, ref = model(x, features=True)
    assert torch.equal(logits, ref_logits) and all(torch.equal(a, b) for a, b in zip(feats, ref))
    assert feats[1].dtype == torch.bfloat16 and feats[1].is_inference()
    assert _no_hooks(model)


def test_hooked_features_carry_gradients():
    model, x = _model("wrn_16_2", (3, 16, 16)), _x((3, 16, 16))
    model.train()
    _, (pen,) = forward_with_features(model, x, "penultimate")
    pen.square().mean().backward()
    assert model.block3[0].conv1.weight.grad.abs().sum() > 0
    assert model.fc.weight.grad is None  # the classifier is downstream of its input


# ----------------------------------------------------------------------------- errors
def _one_sentence(msg):
    assert msg.count("\n") == 0 and msg.endswith(".") and msg.count(". ") == 0, msg


def test_bad_role_names_arch_role_and_roles():
    model = _model("resnet8", (3, 16, 16))
    with pytest.raises(KdxError) as e:
        feature_paths(model, "attention")
    msg = str(e.value)
    assert "'resnet8'" in msg and "'attention'" in msg and "blocks" in msg and "penultimate" in msg
    _one_sentence(msg)
    with pytest.raises(KdxError, match="attention"):
        forward_with_features(model, _x((3, 16, 16)), "attention")
    with pytest.raises(KdxError, match="declares no feature roles"):
        feature_paths(nn.Sequential(nn.Linear(2, 2)), "blocks")
    with pytest.raises(KdxError, match="no block features"):
        MultiBranch("resnet8", 10, (3, 16, 16), branches=2)(_x((3, 16, 16)), features=True)


def test_bad_path_names_path_and_valid_paths():
    model = _model("resnet8", (3, 16, 16))
    with pytest.raises(KdxError) as e:
        FeatureTap(model, ["layer9"])
    msg = str(e.value)
    assert "'layer9'" in msg and "'layer1'" in msg and "'resnet8'" in msg
    _one_sentence(msg)
    with pytest.raises(KdxError, match="'nope'.*'conv1'"):  # nothing close: the top-level children
        FeatureTap(model, ["layer1", "nope"])
    with pytest.raises(KdxError, match="'arch'"):  # an attribute that is not a module
        FeatureTap(model, ["arch"])
    assert _no_hooks(model)


def test_a_module_that_runs_twice_is_refused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.lin(self.relu(x)))

    model = Shared()
    with FeatureTap(model, ["lin"]) as tap:
        model(torch.randn(2, 3))
        model(torch.randn(2, 3))  # two forwards are fine: each starts afresh
        assert tap.features[0].shape == (2, 3)
    with FeatureTap(model, ["relu"]), pytest.raises(KdxError, match="'relu'.*ran twice"):
        model(torch.randn(2, 3))
    assert _no_hooks(model)


def test_register_roles_checks_the_declaration(monkeypatch):
    monkeypatch.setattr(FT, "FEATURE_ROLES", dict(FEATURE_ROLES))

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.body(x))

    with pytest.raises(ValueError, match="penultimate"):
        FT.register_roles(Toy, {"blocks": ["body"]})
    with pytest.raises(ValueError, match="list of module paths"):
        FT.register_roles(Toy, {"blocks": "body", "penultimate": ["body"]})
    assert FT.register_roles(Toy, {"blocks": ["body"], "penultimate": ["body"]}) is Toy
    # a model from outside the built-in families feeds features the same way
    toy = Toy()
    logits, (pen,) = forward_with_features(toy, torch.randn(5, 4), "penultimate")
    assert torch.equal(toy.fc(pen), logits)
    assert Toy not in FEATURE_ROLES  # the real registry was left alone
