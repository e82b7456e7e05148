"""Fused training of several members (issue 11): the seeds of one config trained as one model.

S members of one architecture become one wide model, as HFTA does (Wang et al., MLSys 2021, "horizontally
fused training arrays"): every Conv becomes one grouped Conv with S times the channels and S times the
groups, every BatchNorm one BatchNorm over S times the channels, every Linear one batched matmul.
Activations travel member-major along the channel axis, so member s owns channels
[s*C, (s+1)*C) of every layer, its own batch-norm statistics included; parameter-free layers (ReLU,
pooling, flatten, residual sums) act on each channel alone and need no change. A tiny model is far from
the compute limit (its time is kernel launches and Python), so S members cost far less than S runs
(`benchmarks/fused_speed.py`). On CPU a fused 1-D CNN runs its convolutions as channels-last 2-D ones
of height 1 (GroupedConv1d): oneDNN's grouped 1-D kernel is several times slower.

Why grouped layers and not `torch.func.vmap` over stacked weights: vmap measured 1.37x over solo runs on
this project's CPU (grouped layers 2.4x for 5 members), and in-place batch-norm running statistics
under vmap need every buffer batched by hand.

Each member keeps its own init (its seed's), its own data order and augmentation draws (its own
generator) and reports its own metrics; its loss is computed on its own rows (the method's loss is
`vmap`ped over members, so losses that look across a batch never mix members) and the members' losses are
summed, so each member's gradient is exactly its solo gradient, and SGD (momentum and weight decay
act per element) takes the solo step. `fuse_models` checks that the fused forward equals every member's
own forward before it is used; an architecture whose forward mixes channels in another way (a channel
concatenation or padding) is refused, not trained wrong.

Members may also differ in their learning rate and in the method's real-valued hyperparameters (T,
alpha, ...): several configs of one student recipe train as one model (`member_settings`). Each
member's hyperparameters reach its own loss as vmapped values, so its gradient is still its solo
gradient; its learning rate scales its own SGD step (`scale_grads`): torch's SGD step is -lr times a
direction that is linear in the gradient plus weight decay (momentum and Nesterov included), so
scaling that sum by lr_s / lr makes the step the one its solo run takes. Members may distil from
different teachers too (explorer/training/teacher_signal.py). Everything else (architecture, epochs, batch
size, schedule, momentum, weight decay, data) sets the one fused model and its loop, so members
must share it.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explorer.errors import KdxError
from explorer.methods import LossInputs, Method, get_method
from explorer.models import build_model

# An op without a vmap batching rule falls back to a loop over members, and torch says so on every call
# (kdx's own losses avoid F.kl_div for that reason; a method plugin's loss might not)
warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")

_CONVS = (nn.Conv1d, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class FusedLinear(nn.Module):
    """S Linear layers as one batched matmul on member-major features: (B, S*in) -> (B, S*out).
    The weight is stored as (S*out, in) and the bias as (S*out,), member-major like every fused tensor."""

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.members, self.in_features, self.out_features = members, in_features, out_features
        self.weight = nn.Parameter(torch.empty(members * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members * out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        s, b = self.members, x.shape[0]
        w = self.weight.view(s, self.out_features, self.in_features)
        out = torch.bmm(x.view(b, s, self.in_features).transpose(0, 1), w.transpose(1, 2))  # (S, B, out)
        if self.bias is not None:
            out = out + self.bias.view(s, 1, self.out_features)
        return out.transpose(0, 1).reshape(b, s * self.out_features)


class _ContiguousGrad(torch.autograd.Function):
    """The identity, whose backward hands on a contiguous gradient (a channels-last one slows every
    elementwise backward before it)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class GroupedConv1d(nn.Conv1d):
    """A grouped Conv1d that on CPU runs as a channels-last Conv2d of height 1 and hands on its output
    as it comes, (B, C, 1, L) channels-last: oneDNN's grouped 1-D kernel is several times slower there
    for the small 1-D CNNs fused training is for, and batch norm, ReLU, flatten and the next such conv
    take the 4-D layout without a copy (`benchmarks/fused_speed.py`). The weights are a Conv1d's.
    A model whose own code needs (B, C, L) after a conv (a mean over dim 2) gets `channels_last = False`
    from `fuse_models` and the plain grouped Conv1d."""

    channels_last = True

    def forward(self, x: Tensor) -> Tensor:
        if (not self.channels_last or x.device.type != "cpu" or self.padding_mode != "zeros"
                or isinstance(self.padding, str)):
            return super().forward(x)
        if x.dim() == 3:  # (B, C, L) from the input or a layer that kept it
            x = _ContiguousGrad.apply(x).unsqueeze(2).contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, self.weight.unsqueeze(2), self.bias, (1, *self.stride), (0, *self.padding),
                        (1, *self.dilation), self.groups)


class WideBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over S members' channels that also takes GroupedConv1d's (B, C, 1, L) output."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2-D, 3-D or 4-D input (got {x.dim()}-D)")


def _wide(module: nn.Module, s: int) -> nn.Module | None:
    """The fused counterpart of one leaf layer, None for layers without parameters (kept as they are)."""
    if isinstance(module, _CONVS):
        return (GroupedConv1d if isinstance(module, nn.Conv1d) else type(module))(
            module.in_channels * s, module.out_channels * s, module.kernel_size, module.stride, module.padding,
            module.dilation, module.groups * s, module.bias is not None, module.padding_mode)
    if isinstance(module, _NORMS):
        return (WideBatchNorm1d if isinstance(module, nn.BatchNorm1d) else type(module))(
            module.num_features * s, module.eps, module.momentum, module.affine, module.track_running_stats)
    if isinstance(module, nn.Linear):
        return FusedLinear(s, module.in_features, module.out_features, module.bias is not None)
    if next(module.parameters(recurse=False), None) is not None or next(module.buffers(recurse=False), None) is not None:
        raise KdxError(f"members: layer {type(module).__name__} cannot be fused; allowed: models built from "
                       "Conv1d/Conv2d, BatchNorm1d/2d, Linear and parameter-free layers (train the seeds one by one)")
    return None


class FusedModel(nn.Module):
    """S members as one module: `forward(x)` takes (S, B, *input) (member s's batch at [s]) and returns
    (S, B, classes). `member_state_dict(s)` is member s's own state dict (loadable into a solo model)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.members = len(models)
        body = copy.deepcopy(models[0])
        for name, module in list(body.named_modules()):
            wide = _wide(module, self.members) if name else None
            if wide is not None:
                parent, _, leaf = name.rpartition(".")
                setattr(body.get_submodule(parent) if parent else body, leaf, wide)
        states = [m.state_dict() for m in models]
        body.load_state_dict({k: torch.cat([st[k] for st in states]) if v.dim() else v
                              for k, v in states[0].items()})
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        s, b = x.shape[:2]
        # member-major channels: (S, B, C, ...) -> (B, S*C, ...); a flat sample (S, B, L) is one channel each
        x = x.transpose(0, 1)
        x = x.reshape(b, s * x.shape[2], *x.shape[3:]) if x.dim() > 3 else x
        if x.dim() == 4 and x.device.type == "cpu":  # oneDNN's grouped 2-D convolutions are faster channels-last
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.body(x)
        return out.view(b, s, -1).transpose(0, 1).contiguous()  # (the per-member losses run faster on it)

    def member_state_dict(self, s: int) -> dict[str, Tensor]:
        return {k: (v.chunk(self.members)[s] if v.dim() else v).clone() for k, v in self.body.state_dict().items()}


def fuse_models(models: list[nn.Module], probe: Tensor) -> FusedModel:
    """The members as one FusedModel, checked on `probe` (a few input samples): in eval mode, the fused
    forward must equal each member's own, else the architecture is refused. 1-D convolutions are tried
    channels-last first (GroupedConv1d), then plain, for a model whose code needs their 3-D output."""
    fused = FusedModel(models).to(probe.device)
    was = [m.training for m in models]
    with torch.no_grad():
        for m in models:
            m.eval()
        fused.eval()
        want = torch.stack([m(probe) for m in models])
        ok = False
        for channels_last in (True, False):
            for conv in fused.modules():
                if isinstance(conv, GroupedConv1d):
                    conv.channels_last = channels_last
            try:  # a layer that cannot take the 4-D layout (a mean over dim 2) fails here
                got = fused(probe.expand(len(models), *probe.shape))
            except RuntimeError:
                continue
            ok = got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5)
            if ok:
                break
        for m, w in zip(models, was):
            m.train(w)
    fused.train()
    if not ok:
        raise KdxError(f"members: architecture {getattr(models[0], 'arch', type(models[0]).__name__)!r} mixes "
                       "channels in a way fused training cannot follow; allowed: one seed at a time for it")
    return fused


def fuse_problem(method: Method) -> str | None:
    """Why members trained with `method` cannot be fused, or None."""
    if method.needs_features:
        return f"method {method.name!r} reads intermediate features"
    if method.extra_forwards:
        return f"method {method.name!r} runs the student or teacher again inside its loss"
    if type(method).build_student is not Method.build_student:
        return f"method {method.name!r} trains its own kind of student module"
    return None


def adversarial_problem(steps) -> str | None:
    """Why members trained adversarially (`adversarial_steps`) cannot be fused, or None."""
    return "adversarial training attacks one model at a time" if steps else None


def evaluate_problem(evaluate) -> str | None:
    """Why the spec's `evaluate:` section (its attacks) rules out fused members, or None."""
    on = [k for k in ("transfer", "robust") if getattr(evaluate, k)]
    return f"evaluate.{on[0]} attacks one model at a time" if on else None


def member_problem(cfg) -> str | None:
    """Why runs of the TrainConfig `cfg` cannot train as fused members, or None."""
    return adversarial_problem(cfg.adversarial_steps) or fuse_problem(get_method(cfg.method))


def architecture_problem(arch: str, num_classes: int, input_shape: tuple) -> str | None:
    """Why two students of `arch` do not fuse into one whose forward equals theirs (`fuse_models`), or None."""
    try:
        fuse_models([build_model(arch, num_classes, input_shape) for _ in range(2)], torch.zeros(2, *input_shape))
    except KdxError as e:
        return str(e)
    return None


def fused_problem(cfg, evaluate=None, num_classes: int | None = None, input_shape: tuple | None = None) -> str | None:
    """Why runs of the TrainConfig `cfg` cannot train as fused members, or None: the one rule the spec,
    the plan and the confirmation ask. The method or the recipe trains one model at a time
    (`member_problem`), an `evaluate:` section's attack needs one model, or (given the data's shape) the
    student's architecture does not fuse (`architecture_problem`)."""
    problem = member_problem(cfg) or (evaluate_problem(evaluate) if evaluate is not None else None)
    if problem is not None or num_classes is None:
        return problem
    return architecture_problem(cfg.arch, num_classes, input_shape)


def member_losses(loss_terms, inputs: LossInputs, hp: dict,
                  own: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The method's loss terms of every member on its own rows: `inputs` hold (S, B, ...) tensors; the
    result maps each term to an (S,) tensor. The loss is vmapped, so it sees one member's batch, and
    member s's hyperparameters are `hp` overlaid with `own[name][s]` (`member_settings`)."""

    def one(logits, targets, teacher_logits, mine):
        return loss_terms(LossInputs(logits, targets, inputs.epoch, teacher_logits, epochs=inputs.epochs), hp | mine)

    teacher = inputs.teacher_logits
    return torch.func.vmap(one, in_dims=(0, 0, None if teacher is None else 0, 0))(
        inputs.student_logits, inputs.targets, teacher, own or {})


# What fused members may differ in besides the method's real-valued hyperparameters: everything else
# in a TrainConfig shapes the one fused model and its loop.
MEMBER_FIELDS = ("seed", "lr")


def member_settings(cfg, members: list) -> tuple[dict[str, list[float]], list[float]]:
    """What the members (TrainConfigs) have of their own against the trial's `cfg`: ({hyperparameter: each
    member's value} for the method's hyperparameters that are not all cfg's, each member's lr / cfg's).
    Members that differ from `cfg` in anything else are refused in one sentence."""
    first = cfg.as_dict()
    for m in members:
        for k, v in m.as_dict().items():
            if k not in MEMBER_FIELDS + ("method_params",) and v != first[k]:
                raise KdxError(f"members: {k} differs between members ({first[k]!r} and {v!r}); allowed: members "
                               f"that differ only in {', '.join(MEMBER_FIELDS)} and the method's real-valued "
                               "hyperparameters")
    hp, hps = cfg.validate(), [m.validate() for m in members]
    own = {}
    for h in get_method(cfg.method).hparams:
        values = [mine[h.name] for mine in hps]
        if any(v != hp[h.name] for v in values):
            if h.integer or None in values + [hp[h.name]]:
                raise KdxError(f"members: {h.name} differs between members ({', '.join(map(str, values))}); "
                               f"allowed: one {h.name} for all members (it sets the loop, not only the loss)")
            own[h.name] = values
    return own, [m.lr / cfg.lr for m in members]


def check_member_losses(method: Method, hp: dict, own: dict[str, list[float]], num_classes: int,
                        teachers: int) -> None:
    """Refuse (one sentence) per-member hyperparameters that the method's loss cannot take as vmapped
    values (a Python branch or a fill on them): on random logits (and `teachers` teachers' logits), every
    member's vmapped loss terms must equal the method's own terms with that member's values."""
    if not own:
        return
    g = torch.Generator().manual_seed(0)
    s = len(next(iter(own.values())))
    logits = torch.randn(s, 8, num_classes, generator=g)
    targets = torch.randint(0, num_classes, (s, 8), generator=g)
    teacher = [torch.randn(s, 8, num_classes, generator=g) for _ in range(teachers)] or None
    if teacher is not None and len(teacher) == 1:
        teacher = teacher[0]
    names = ", ".join(own)
    refused = KdxError(f"members: the {method.name!r} loss cannot take its own {names} per member; allowed: one "
                       f"{names} for all members of this method")
    try:
        got = member_losses(method.losses, LossInputs(logits, targets, 1, teacher, epochs=1), hp,
                            {k: torch.tensor(v) for k, v in own.items()})
    except RuntimeError:
        raise refused from None
    for i in range(s):
        mine = hp | {k: v[i] for k, v in own.items()}
        t = None if teacher is None else [x[i] for x in teacher] if isinstance(teacher, list) else teacher[i]
        want = method.losses(LossInputs(logits[i], targets[i], 1, t, epochs=1), mine)
        if any(not torch.allclose(got[k][i], w, rtol=1e-4, atol=1e-6) for k, w in want.items()):
            raise refused


def member_setup(cfg, members: list, num_classes: int, teachers: int) -> tuple[dict[str, list[float]], list[float]]:
    """`member_settings`, with the method's loss checked to take each member's own values
    (`check_member_losses`; `teachers`: how many teachers' logits the loss gets, 0 without one)."""
    own, lr_scale = member_settings(cfg, members)
    check_member_losses(get_method(cfg.method), cfg.validate(), own, num_classes, teachers)
    return own, lr_scale


def member_lr_weights(params: list[Tensor], scale: list[float], weight_decay: float) -> list[tuple[Tensor, Tensor]]:
    """Per fused parameter (member-major along dim 0), the (w, v) of `scale_grads` for members whose lr is
    `scale[s]` times the optimiser's: w = scale, v = (scale - 1) * weight_decay, each member's rows."""
    out = []
    for p in params:
        c = torch.tensor(scale, device=p.device, dtype=p.dtype).repeat_interleave(p.shape[0] // len(scale))
        c = c.view(-1, *[1] * (p.dim() - 1))
        out.append((c, (c - 1.0) * weight_decay))
    return out


@torch.no_grad()
def scale_grads(params: list[Tensor], weights: list[tuple[Tensor, Tensor]]) -> None:
    """Before torch's SGD step: member s's gradient g becomes c*g + (c - 1)*wd*p (c = its lr over the
    optimiser's). SGD adds wd*p, so its direction is c times the member's own (g + wd*p), the momentum
    buffer c times the member's own (it is linear and c is fixed), Nesterov's too, and the step lr times
    that: the member's solo step at lr*c."""
    for p, (w, v) in zip(params, weights):
        if p.grad is not None:
            p.grad.mul_(w).addcmul_(p, v)


class Broadcast(nn.Module):
    """A FusedModel evaluated on one shared input: (B, *input) -> (B, S, classes)."""

    def __init__(self, fused: FusedModel):
        super().__init__()
        self.fused = fused

    def forward(self, x: Tensor) -> Tensor:
        return self.fused(x.expand(self.fused.members, *x.shape)).transpose(0, 1)
