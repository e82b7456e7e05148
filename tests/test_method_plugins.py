"""The method plugin API end to end with a feature-based method defined here (a FitNet-style hint on
the last block): features come from forward hooks at the family's "blocks" paths, the method owns a
regressor sized from the student's and the teacher's shapes, the optimiser trains it, it is saved
and restored with the trainer, and it is not part of the evaluated student."""

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explorer.config import TrainConfig
from explorer.data.condition import DataSpec
from explorer.data.splits import load_splits
from explorer.methods import METHODS, TEMPERATURE, LossInputs, Method, register
from explorer.models import build_model, count_params
from explorer.training.evaluation import predict_logits
from explorer.training.loop import Trainer


@dataclass(frozen=True)
class LastBlockHint(Method):
    def build_modules(self, student_shapes, teacher_shapes, hp):
        assert teacher_shapes is not None  # the method sees the teacher when its modules are built
        return nn.Conv1d(student_shapes[-1][0], teacher_shapes[-1][0], kernel_size=1)

    def losses(self, inputs: LossInputs, hp):
        ce = F.cross_entropy(inputs.student_logits.float(), inputs.targets)
        hint = F.mse_loss(inputs.modules(inputs.student_features[-1].float()), inputs.teacher_features[-1])
        return {"ce": ce, "hint": hint}


@pytest.fixture
def hint_method():
    register(LastBlockHint(name="test_hint", description="test", source="test", hparams=(TEMPERATURE,),
                           needs_teacher=True, teacher_kinds=("plain",), feature_role="blocks"))
    yield "test_hint"
    del METHODS["test_hint"]


@pytest.fixture(scope="module")
def splits():
    return load_splits(DataSpec("mnist1d"))


@pytest.fixture(scope="module")
def teacher(splits):
    t = Trainer(TrainConfig("cnn1d_w16", epochs=1, seed=5), splits, "cpu")
    t.run()
    return t.model


def test_method_owned_modules_train_and_stay_out_of_the_student(hint_method, splits, teacher):
    cfg = TrainConfig("cnn1d_w4", epochs=2, seed=1, method=hint_method)
    tr = Trainer(cfg, splits, "cpu", teacher=teacher)
    assert (tr.modules.in_channels, tr.modules.out_channels) == (4, 16)  # sized from both models' features
    before = tr.modules.weight.detach().clone()
    m = tr.train_epoch()
    assert m["train_hint"] > 0 and "train_ce" in m
    assert not torch.equal(before, tr.modules.weight)  # the optimiser trains the method's module
    # the evaluated student is the plain architecture: same size, same logits as the bare model
    assert count_params(tr.model) == count_params(build_model("cnn1d_w4", 10, splits.input_shape))
    bare = build_model("cnn1d_w4", 10, splits.input_shape)
    bare.load_state_dict(tr.model.state_dict())
    x = splits.val_x[:64]
    assert torch.equal(predict_logits(tr.model, x), predict_logits(bare, x))


def test_method_modules_resume_exactly(hint_method, splits, teacher):
    cfg = TrainConfig("cnn1d_w4", epochs=2, seed=1, method=hint_method)
    straight = Trainer(cfg, splits, "cpu", teacher=teacher)
    straight.run()
    first = Trainer(cfg, splits, "cpu", teacher=teacher)
    first.train_epoch()
    state = first.state_dict()
    resumed = Trainer(cfg, splits, "cpu", teacher=teacher)
    resumed.load_state_dict(state)
    resumed.run()
    assert torch.equal(resumed.modules.weight, straight.modules.weight)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    assert resumed.history[-1]["train_hint"] == straight.history[-1]["train_hint"]
