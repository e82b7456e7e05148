"""The model registry: families register name patterns; names resolve by pattern, never by a list.

A family registers a parser for its names where the family is defined::

    @register_family(rf"resnet{NUM}x4", input_family="image", allowed="resnet8x4, resnet32x4",
                     examples=["resnet8x4", "resnet32x4"])
    def _resnet_x4(m: re.Match) -> Factory: ...

The parser gets the full match, validates the captured numbers (KdxError for a bad one) and returns
a factory ``(num_classes, input_shape) -> nn.Module``. Parsing is separate from building so that
`is_known_model` never allocates a model. ``allowed`` is how the family's names are spelled in the
"unknown architecture" error, and ``examples`` are the names `list_models` (``kdx models``) shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

from torch import nn

from explorer.errors import KdxError, bad_value

__all__ = ["NUM", "Factory", "Family", "register_family", "allowed_archs", "build_model", "is_known_model",
           "list_models", "count_params", "default_input_family"]

Factory = Callable[[int, tuple], nn.Module]
NUM = r"([1-9][0-9]*)"  # positive integer, no leading zeros (one canonical spelling per model)
INPUT_FAMILIES = ("image", "sequence", "any")


@dataclass(frozen=True)
class Family:
    pattern: re.Pattern
    parse: Callable[[re.Match], Factory]
    input_family: str  # 'image' (C, H, W), 'sequence' (C, L) or 'any'
    allowed: str
    examples: tuple[str, ...]


_FAMILIES: list[Family] = []


def register_family(pattern: str, *, input_family: str, allowed: str, examples: Iterable[str]):
    """Decorator: register a parser for the model names that fully match `pattern`."""
    if input_family not in INPUT_FAMILIES:
        raise ValueError(f"model family {pattern!r}: input_family {input_family!r} is not one of "
                         f"{', '.join(INPUT_FAMILIES)}.")
    compiled = re.compile(pattern)
    if any(f.pattern.pattern == compiled.pattern for f in _FAMILIES):
        raise ValueError(f"model family {pattern!r} is already registered.")

    def register(parse: Callable[[re.Match], Factory]) -> Callable[[re.Match], Factory]:
        _FAMILIES.append(Family(compiled, parse, input_family, allowed, tuple(examples)))
        return parse
    return register


def allowed_archs() -> str:
    """The 'allowed: ...' part of the unknown-architecture error, from the registered families."""
    return "allowed: " + ", ".join(f.allowed for f in _FAMILIES)


def unknown_arch(name) -> KdxError:
    return bad_value("architecture", name, allowed_archs())


def _resolve(name) -> tuple[Family, Factory]:
    if not isinstance(name, str):
        raise unknown_arch(name)
    matches = [(f, m) for f in _FAMILIES if (m := f.pattern.fullmatch(name)) is not None]
    if len(matches) > 1:  # two plugins claim one name: a bug in the families, not in the input
        raise RuntimeError(f"model name {name!r} matches several families: "
                           f"{', '.join(f.pattern.pattern for f, _ in matches)}.")
    if not matches:
        raise unknown_arch(name)
    family, m = matches[0]
    return family, family.parse(m)


def _check_input_shape(input_shape) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise bad_value("input_shape", input_shape, "a tuple of positive integers") from None
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                            for d in shape):
        raise bad_value("input_shape", input_shape, "a tuple of positive integers")
    return shape


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Build the model called `name` for `num_classes` outputs and per-sample `input_shape`.

    Raises KdxError for an unknown name, a WRN depth not of the form 6n+4, a non-positive
    class count or an input shape the family cannot take.
    """
    _, factory = _resolve(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise bad_value("num_classes", num_classes, "a positive integer")
    shape = _check_input_shape(input_shape)
    model = factory(num_classes, shape)
    model.arch = name
    model.num_classes = num_classes
    model.input_shape = shape
    return model


def is_known_model(name: str) -> bool:
    """True when `name` is a valid architecture name (no model is built)."""
    try:
        _resolve(name)
    except KdxError:
        return False
    return True


def list_models() -> list[str]:
    """A representative list of concrete model names (the registry accepts many more)."""
    return [name for f in _FAMILIES for name in f.examples]


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or frozen; BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def default_input_family(name: str) -> str:
    """'image' (C, H, W) for ResNets/WRNs, 'sequence' (C, L) for cnn1d, 'any' for MLPs."""
    family, _ = _resolve(name)
    return family.input_family
