"""Intermediate features from any registered model, by forward hooks at named module paths.

Why hooks: a feature-based distillation method (FitNets, attention transfer, ...) needs a model's
block outputs or its penultimate features, and it should get them from ANY model family without
the family's forward having to return them. So each family declares, where it is defined, which
of its modules produce each *role*:

* ``"blocks"``: the block / stage outputs, shallow to deep (what ``model(x, features=True)``
  returns; that path is implemented with these very hooks, so there is one definition);
* ``"penultimate"``: the input of the final classifier (pooled and flattened features), so
  ``model.fc(penultimate) == logits``.

API::

    register_roles(CifarResNet, {"blocks": ["stem_relu", "layer1", "layer2", "layer3"],
                                 "penultimate": ["flatten"]})
    feature_paths(model, "blocks")               # -> ["stem_relu", "layer1", "layer2", "layer3"]
    with FeatureTap(model, paths) as tap:        # hooks on; removed on exit
        logits = model(x)
    tap.features                                 # outputs of `paths`, in order, from the latest forward
    logits, feats = forward_with_features(model, x, "blocks")

A role's paths are dotted names as in ``model.named_modules()``; where they depend on the instance
(an MLP's depth), the role maps to a function ``model -> paths`` instead of a list. The hooks do
not detach or copy: captured features carry gradients like the model's own outputs, and they work
under ``torch.inference_mode()`` and autocast.
"""

from __future__ import annotations

import difflib
from typing import Callable, Mapping, Sequence, Union

from torch import Tensor, nn

from explorer.errors import KdxError

__all__ = ["FEATURE_ROLES", "REQUIRED_ROLES", "register_roles", "feature_roles", "feature_paths", "FeatureTap",
           "forward_with_features"]

RolePaths = Union[Sequence[str], Callable[[nn.Module], Sequence[str]]]

# Every family declares at least these, so every model can feed every feature-based method.
REQUIRED_ROLES = ("blocks", "penultimate")

# model class -> {role: paths, or a function model -> paths}; filled by `register_roles`.
FEATURE_ROLES: dict[type, dict[str, RolePaths]] = {}


def register_roles(model_class: type, roles: Mapping[str, RolePaths]) -> type:
    """Declare which module paths produce each feature role for every model of `model_class` (and
    its subclasses); call it next to the class definition. Returns the class."""
    missing = [r for r in REQUIRED_ROLES if r not in roles]
    if missing:
        raise ValueError(f"{model_class.__name__}: feature roles must include {', '.join(REQUIRED_ROLES)} "
                         f"(missing {', '.join(missing)}).")
    for role, paths in roles.items():
        if not callable(paths) and (isinstance(paths, str) or not all(isinstance(p, str) for p in paths)):
            raise ValueError(f"{model_class.__name__}: feature role {role!r} must map to a list of module "
                             f"paths or a function of the model returning one, not {paths!r}.")
    FEATURE_ROLES[model_class] = {r: (p if callable(p) else tuple(p)) for r, p in roles.items()}
    return model_class


def _arch(model: nn.Module) -> str:
    return str(getattr(model, "arch", type(model).__name__))


def feature_roles(model: nn.Module) -> dict[str, list[str]]:
    """Every role the model's family declares, resolved to this model's paths ({} if none)."""
    for cls in type(model).__mro__:
        if cls in FEATURE_ROLES:
            return {r: list(p(model) if callable(p) else p) for r, p in FEATURE_ROLES[cls].items()}
    return {}


def feature_paths(model: nn.Module, role: str) -> list[str]:
    """The module paths of `role` for this model; KdxError when its family does not declare it."""
    roles = feature_roles(model)
    if role not in roles:
        has = f"its roles are {', '.join(sorted(roles))}" if roles else "its family declares no feature roles"
        raise KdxError(f"features: model {_arch(model)!r} has no feature role {role!r}; {has}.")
    return roles[role]


class FeatureTap:
    """Forward hooks on the submodules at `paths` of `model`; `features` holds their outputs (in
    `paths` order) from the model's latest forward. Use it as a context manager, or call `remove()`.

    The tap also hooks `model` itself: a forward of the model empties the slots first, so `features`
    never mixes two forwards, and a path whose module runs twice within one forward of the model (a
    shared activation module) raises, since which output is "the" feature would be a guess. (A
    submodule called on its own, outside a forward of the model, just replaces its slot.)
    """

    def __init__(self, model: nn.Module, paths: Sequence[str]):
        self.model = model
        self.paths = [paths] if isinstance(paths, str) else list(paths)
        modules = [_submodule(model, path) for path in self.paths]
        self._slots: list[Tensor | None] = [None] * len(self.paths)
        self._in_forward = False
        self._handles = []
        try:
            self._handles.append(model.register_forward_pre_hook(self._start))
            self._handles.append(model.register_forward_hook(self._stop, always_call=True))
            for i, module in enumerate(modules):
                self._handles.append(module.register_forward_hook(self._capture(i)))
        except BaseException:
            self.remove()
            raise

    def _start(self, model, args) -> None:
        self.clear()
        self._in_forward = True

    def _stop(self, model, args, output) -> None:
        self._in_forward = False

    def _capture(self, i: int):
        def hook(module, args, output):
            if self._in_forward and self._slots[i] is not None:
                raise KdxError(f"features: the module at {self.paths[i]!r} of model {_arch(self.model)!r} "
                               f"ran twice in one forward, so its output is not one feature; tap a module "
                               f"that runs once.")
            self._slots[i] = output
        return hook

    @property
    def features(self) -> list[Tensor]:
        """The captured outputs, in `paths` order (KdxError if a path captured nothing)."""
        for path, out in zip(self.paths, self._slots):
            if out is None:
                raise KdxError(f"features: nothing was captured at {path!r} of model {_arch(self.model)!r} "
                               f"(no forward since the tap was set or cleared, or the module did not run).")
        return list(self._slots)

    def clear(self) -> None:
        """Forget the captured outputs (frees their memory)."""
        self._slots = [None] * len(self.paths)

    def remove(self) -> None:
        """Remove every hook (idempotent); the captured outputs stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _submodule(model: nn.Module, path) -> nn.Module:
    """The module at `path`, or a KdxError naming the path and a few valid ones (the closest
    spellings, else the top-level children)."""
    if isinstance(path, str):
        try:
            return model.get_submodule(path)
        except AttributeError:
            pass
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(path, names, n=4) if isinstance(path, str) else []
    picks = ", ".join(repr(n) for n in (close or [n for n in names if "." not in n][:6])) or "none"
    raise KdxError(f"features: {path!r} is not a module path of model {_arch(model)!r}; "
                   f"valid paths include {picks}.")


def forward_with_features(model: nn.Module, x: Tensor, role_or_paths: str | Sequence[str]
                          ) -> tuple[Tensor, list[Tensor]]:
    """One forward of `model` on `x`: (its output, the features of a role name or a list of paths)."""
    paths = feature_paths(model, role_or_paths) if isinstance(role_or_paths, str) else role_or_paths
    with FeatureTap(model, paths) as tap:
        out = model(x)
    return out, tap.features
