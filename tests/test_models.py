"""Tests for explorer.models: parameter counts against hand arithmetic, shapes, features, errors."""

import pytest
import torch

from explorer.errors import KdxError
from explorer.models import build_model, count_params, is_known_model, list_models

# --------------------------------------------------------------------------- hand arithmetic
# Parameter formulas written from the architecture definitions, independent of the code.


def conv(cin, cout, k):  # no bias
    return cin * cout * k * k


def bn(c):  # weight + bias
    return 2 * c


def linear(fin, fout):
    return fin * fout + fout


def hand_resnet(depth, num_classes, in_ch=3, stem=16, widths=(16, 32, 64)):
    n = (depth - 2) // 6
    total = conv(in_ch, stem, 3) + bn(stem)
    cin = stem
    for stage, w in enumerate(widths):
        for i in range(n):
            total += conv(cin, w, 3) + bn(w) + conv(w, w, 3) + bn(w)
            if cin != w or (stage > 0 and i == 0):
                total += conv(cin, w, 1) + bn(w)
            cin = w
    return total + linear(widths[-1], num_classes)


def hand_wrn(depth, k, num_classes, in_ch=3):
    n = (depth - 4) // 6
    total = conv(in_ch, 16, 3)
    cin = 16
    for stage, w in enumerate((16 * k, 32 * k, 64 * k)):
        for i in range(n):
            total += bn(cin) + conv(cin, w, 3) + bn(w) + conv(w, w, 3)
            if cin != w or (stage > 0 and i == 0):
                total += conv(cin, w, 1)
            cin = w
    return total + bn(64 * k) + linear(64 * k, num_classes)


def hand_cnn1d(width, num_classes, in_ch=1, length=40):
    # Conv1d has a bias; lengths: k5 s2 p1, then k3 s2 p1 twice
    l1 = (length + 2 - 5) // 2 + 1
    l2 = (l1 + 2 - 3) // 2 + 1
    l3 = (l2 + 2 - 3) // 2 + 1
    return ((in_ch * width * 5 + width) + 2 * (width * width * 3 + width)
            + linear(width * l3, num_classes))


def params(name, num_classes=10, input_shape=(3, 32, 32)):
    return count_params(build_model(name, num_classes, input_shape))


# --------------------------------------------------------------------------- parameter counts


def test_hand_formulas_match_literature_constants():
    # Guards the hand formulas themselves against the published numbers.
    assert hand_resnet(20, 100) == 278_324
    assert hand_wrn(40, 2, 100) == 2_255_156


def test_resnet20_param_count():
    assert params("resnet20", 100) == 278_324
    # 10 classes: the head loses 90 * 64 weights and 90 biases
    assert params("resnet20", 10) == 278_324 - 90 * 64 - 90


def test_wrn_40_2_param_count():
    assert params("wrn_40_2", 100) == 2_255_156
    assert params("wrn_40_2", 10) == 2_255_156 - 90 * 128 - 90 == 2_243_546


def test_resnet32x4_param_count_written_out():
    # n = 5 blocks per stage; stem 3->32; stages 64/128/256 (every stage's first block projects)
    stem = 3 * 32 * 9 + 2 * 32
    stage1 = (32 * 64 * 9 + 64 * 64 * 9 + 4 * 64 + 32 * 64 + 2 * 64) \
        + 4 * (2 * 64 * 64 * 9 + 4 * 64)
    stage2 = (64 * 128 * 9 + 128 * 128 * 9 + 4 * 128 + 64 * 128 + 2 * 128) \
        + 4 * (2 * 128 * 128 * 9 + 4 * 128)
    stage3 = (128 * 256 * 9 + 256 * 256 * 9 + 4 * 256 + 128 * 256 + 2 * 256) \
        + 4 * (2 * 256 * 256 * 9 + 4 * 256)
    head = 256 * 100 + 100
    expected = stem + stage1 + stage2 + stage3 + head
    assert 7_420_000 < expected < 7_440_000  # the literature's "7.43M"
    assert params("resnet32x4", 100) == expected


def test_resnet8x4_param_count_written_out():
    # n = 1 block per stage, each with a projection shortcut
    stem = 3 * 32 * 9 + 2 * 32
    s1 = 32 * 64 * 9 + 64 * 64 * 9 + 4 * 64 + 32 * 64 + 2 * 64
    s2 = 64 * 128 * 9 + 128 * 128 * 9 + 4 * 128 + 64 * 128 + 2 * 128
    s3 = 128 * 256 * 9 + 256 * 256 * 9 + 4 * 256 + 128 * 256 + 2 * 256
    assert params("resnet8x4", 100) == stem + s1 + s2 + s3 + 256 * 100 + 100
    assert params("resnet8x4", 10) == stem + s1 + s2 + s3 + 256 * 10 + 10


@pytest.mark.parametrize("depth", [8, 14, 26, 32, 44, 56, 110])
def test_other_resnets_match_hand_formula(depth):
    assert params(f"resnet{depth}", 10) == hand_resnet(depth, 10)


@pytest.mark.parametrize("depth,k", [(10, 1), (16, 1), (16, 2), (16, 4), (28, 1), (40, 1)])
def test_other_wrns_match_hand_formula(depth, k):
    assert params(f"wrn_{depth}_{k}", 100) == hand_wrn(depth, k, 100)


@pytest.mark.parametrize("width", [2, 4, 16, 64])
def test_cnn1d_matches_hand_formula(width):
    assert params(f"cnn1d_w{width}", 10, (1, 40)) == hand_cnn1d(width, 10)


def test_mlp_param_count():
    # mlp_1200x2 on 28x28 MNIST: 784->1200->1200->10
    assert params("mlp_1200x2", 10, (1, 28, 28)) == \
        (784 * 1200 + 1200) + (1200 * 1200 + 1200) + (1200 * 10 + 10)
    assert params("mlp_400x1", 10, (1, 28, 28)) == (784 * 400 + 400) + (400 * 10 + 10)


def test_input_channels_follow_input_shape():
    # a 1-channel stem has 2 * 16 * 9 fewer weights than a 3-channel one
    assert params("resnet20", 10, (3, 32, 32)) - params("resnet20", 10, (1, 8, 8)) == 2 * 16 * 9
    assert params("cnn1d_w8", 10, (1, 40)) == hand_cnn1d(8, 10, in_ch=1, length=40)
    assert params("cnn1d_w8", 10, (2, 64)) == hand_cnn1d(8, 10, in_ch=2, length=64)


def test_param_count_monotone_in_width():
    cnn = [params(f"cnn1d_w{w}", 10, (1, 40)) for w in (2, 4, 8, 16, 32, 64)]
    assert all(a < b for a, b in zip(cnn, cnn[1:])), cnn
    wrn = [params(f"wrn_16_{k}", 10) for k in (1, 2, 4, 8)]
    assert all(a < b for a, b in zip(wrn, wrn[1:])), wrn


# --------------------------------------------------------------------------- shapes and features


def _check_forward(name, input_shape, num_classes, n_feats, feat_shapes=None, batch=2):
    torch.manual_seed(0)
    model = build_model(name, num_classes, input_shape).eval()
    assert model.arch == name
    x = torch.randn(batch, *input_shape)
    with torch.no_grad():
        logits = model(x)
        logits2, feats = model(x, features=True)
    assert logits.shape == (batch, num_classes)
    assert isinstance(feats, list) and len(feats) == n_feats
    assert torch.equal(logits, logits2)
    assert len(model.feature_channels) == n_feats
    for f, c in zip(feats, model.feature_channels):
        assert f.shape[0] == batch and f.shape[1] == c
    if feat_shapes is not None:
        assert [tuple(f.shape[1:]) for f in feats] == feat_shapes
    return feats


def test_resnet_shapes_cifar():
    _check_forward("resnet8", (3, 32, 32), 100, 4,
                   [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)])


def test_resnet_shapes_digits():
    _check_forward("resnet14", (1, 8, 8), 10, 4,
                   [(16, 8, 8), (16, 8, 8), (32, 4, 4), (64, 2, 2)])


def test_resnet_x4_shapes():
    _check_forward("resnet8x4", (3, 32, 32), 10, 4,
                   [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)])


def test_wrn_shapes():
    _check_forward("wrn_16_2", (3, 32, 32), 10, 4,
                   [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)])
    _check_forward("wrn_10_1", (1, 8, 8), 10, 4,
                   [(16, 8, 8), (16, 8, 8), (32, 4, 4), (64, 2, 2)])


def test_cnn1d_shapes():
    # lengths 40 -> 19 -> 10 -> 5
    _check_forward("cnn1d_w16", (1, 40), 10, 3, [(16, 19), (16, 10), (16, 5)])
    _check_forward("cnn1d_w2", (1, 8), 10, 3)


def test_mlp_shapes():
    _check_forward("mlp_32x2", (1, 40), 10, 2, [(32,), (32,)])
    _check_forward("mlp_16x1", (3, 32, 32), 100, 1, [(16,)])


def test_models_train_backward():
    model = build_model("resnet8", 10, (3, 16, 16))
    model.train()
    logits, feats = model(torch.randn(4, 3, 16, 16), features=True)
    (logits.sum() + feats[1].mean()).backward()
    assert model.conv1.weight.grad is not None
    for p in model.parameters():  # the logits reach every parameter
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


# The modules that compute each entry of feats, in order (written from the architectures).
_STAGES = {
    "resnet8": ((3, 16, 16), [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"]]),
    "wrn_10_1": ((3, 16, 16), [["conv1"], ["block1"], ["block2"], ["block3"]]),
    "cnn1d_w4": ((1, 40), [["convs.0"], ["convs.1"], ["convs.2"]]),
    "mlp_8x3": ((1, 40), [["hidden.0"], ["hidden.1"], ["hidden.2"]]),
}


@pytest.mark.parametrize("name", list(_STAGES))
def test_features_are_wired_to_their_stages(name):
    # A loss on feats[i] alone must reach every parameter of the stem and stages up to i with a
    # finite, non-zero gradient, and no parameter of a later stage or of the classifier: so feats[i]
    # is the output of stage i, not of a neighbour (and not detached).
    shape, stages = _STAGES[name]
    torch.manual_seed(0)
    model = build_model(name, 10, shape).train()
    x = torch.randn(4, *shape)
    for i in range(len(stages)):
        model.zero_grad(set_to_none=True)
        _, feats = model(x, features=True)
        feats[i].square().mean().backward()
        for j, stage in enumerate(stages):
            for path in stage:
                for pname, p in model.get_submodule(path).named_parameters():
                    where = f"{name}: feats[{i}] -> {path}.{pname}"
                    if j <= i:
                        assert p.grad is not None and torch.isfinite(p.grad).all(), where
                        assert p.grad.abs().sum() > 0, where
                    else:
                        assert p.grad is None, where
        assert model.fc.weight.grad is None and model.fc.bias.grad is None


def test_deterministic_under_seed():
    for name, shape in [("wrn_16_1", (3, 32, 32)), ("cnn1d_w8", (1, 40)), ("mlp_8x2", (1, 40))]:
        torch.manual_seed(123)
        a = build_model(name, 10, shape).state_dict()
        torch.manual_seed(123)
        b = build_model(name, 10, shape).state_dict()
        torch.manual_seed(124)
        c = build_model(name, 10, shape).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], c[k]) for k in a)


def test_init_conv_kaiming_and_bn():
    torch.manual_seed(0)
    model = build_model("resnet20", 10, (3, 32, 32))
    w = model.layer3[0].conv1.weight  # 32 -> 64, 3x3: fan_out = 64 * 9, fan_in = 32 * 9
    expected_std = (2.0 / (64 * 9)) ** 0.5  # fan_in would give sqrt(2) times this
    assert abs(w.std().item() - expected_std) / expected_std < 0.05
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)


# --------------------------------------------------------------------------- names and errors


@pytest.mark.parametrize("name", ["resnet21", "resnet9", "resnet8x2", "vgg8", "wrn_16",
                                  "cnn1d_w0", "mlp_400", "ResNet20", "resnet020", ""])
def test_unknown_names_raise(name):
    assert not is_known_model(name)
    with pytest.raises(KdxError) as exc:
        build_model(name, 10, (3, 32, 32))
    assert repr(name) in str(exc.value)
    assert "allowed" in str(exc.value)


@pytest.mark.parametrize("name", ["wrn_17_2", "wrn_4_1", "wrn_41_2"])
def test_bad_wrn_depth_raises(name):
    assert not is_known_model(name)
    with pytest.raises(KdxError, match=name):
        build_model(name, 10, (3, 32, 32))


def test_bad_num_classes_and_shapes_raise():
    with pytest.raises(KdxError):
        build_model("resnet8", 0, (3, 32, 32))
    with pytest.raises(KdxError):
        build_model("resnet8", 10, (3, 32, 32, 32))
    with pytest.raises(KdxError):
        build_model("cnn1d_w4", 10, (3, 32, 32))
    with pytest.raises(KdxError):
        build_model("cnn1d_w4", 10, (1, 2))
    with pytest.raises(KdxError):
        build_model("mlp_4x1", 10, (1, 0))


def test_a_family_plugs_in_by_pattern(monkeypatch):
    from torch import nn
    from explorer.models import KdxModel, allowed_archs, register_family, registry
    monkeypatch.setattr(registry, "_FAMILIES", list(registry._FAMILIES))  # the real registry stays as is

    class Linear(KdxModel):
        def __init__(self, width, num_classes, fan_in):
            super().__init__()
            self.body, self.fc = nn.Linear(fan_in, width), nn.Linear(width, num_classes)

        def _forward(self, x):
            return self.fc(self.body(torch.flatten(x, 1)))

    @register_family(rf"lin{registry.NUM}", input_family="any", allowed="lin<width>", examples=["lin3"])
    def _lin(m):
        return lambda num_classes, shape: Linear(int(m.group(1)), num_classes, shape[-1])

    model = build_model("lin3", 4, (5,))
    assert isinstance(model, Linear) and model.arch == "lin3" and count_params(model) == 5 * 3 + 3 + 3 * 4 + 4
    assert model(torch.randn(2, 5)).shape == (2, 4)
    assert is_known_model("lin3") and not is_known_model("lin03") and list_models()[-1] == "lin3"
    assert allowed_archs().endswith(", mlp_<width>x<depth>, cnn2d_w<width>, lin<width>")
    with pytest.raises(KdxError, match="lin<width>"):
        build_model("lin", 4, (5,))
    with pytest.raises(ValueError, match="already registered"):
        register_family(rf"lin{registry.NUM}", input_family="any", allowed="x", examples=[])
    with pytest.raises(ValueError, match="input_family"):
        register_family(r"other", input_family="video", allowed="x", examples=[])
    # two families claiming one name is a bug in the families, never resolved by registration order
    register_family(r"lin[0-9]", input_family="any", allowed="lin<digit>", examples=[])(_lin)
    with pytest.raises(RuntimeError, match="several families"):
        build_model("lin3", 4, (5,))


def test_list_models_all_known_and_complete():
    names = list_models()
    assert len(names) == len(set(names))
    assert all(is_known_model(n) for n in names)
    for required in ["resnet8", "resnet14", "resnet20", "resnet26", "resnet32", "resnet44",
                     "resnet56", "resnet110", "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2",
                     "wrn_16_4", "wrn_16_8", "wrn_40_1", "wrn_40_2", "cnn1d_w2", "cnn1d_w128",
                     "mlp_400x1", "mlp_800x2", "mlp_1200x2"]:
        assert required in names
    assert [n for n in names if n.startswith("cnn1d_w")] == [f"cnn1d_w{2 ** i}" for i in range(1, 8)]
