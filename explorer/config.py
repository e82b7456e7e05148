"""What determines one training run apart from its data: the recipe (optimiser and schedule) and the
run's identity (architecture, seed, method). Defined once: the spec's `student`/`teachers.recipe`
sections, `kdx train`/`kdx teachers build` flags and the trainer all use `Recipe`'s fields, defaults
and validators.
"""

from __future__ import annotations

import math
from typing import Callable

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from explorer.data.augment import DISTINCT_VIEWS
from explorer.errors import KdxError, pydantic_sentence
from explorer.fields import Seed, Strict
from explorer.methods import check_method_params

# ---------------------------------------------------------------- learning-rate schedules
# Each maps (config, epochs already completed) to the LR multiplier.


def _multistep(cfg: "Recipe", epoch: int) -> float:
    return cfg.lr_gamma ** sum(epoch >= m for m in cfg.milestones)


def _cosine(cfg: "Recipe", epoch: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))


def _early_stop(cfg: "Recipe", epoch: int) -> float:
    """Seed 004 section 5.5: an n-epoch teacher drops its LR x0.2 every floor((n-5)/3) epochs."""
    step = max(1, (cfg.epochs - 5) // 3)
    return 0.2 ** (epoch // step)


def _constant(cfg: "Recipe", epoch: int) -> float:
    return 1.0


SCHEDULES: dict[str, Callable[["Recipe", int], float]] = {
    "multistep": _multistep,
    "cosine": _cosine,
    "early_stop": _early_stop,
    "constant": _constant,
}


# Fixed teacher views per sample by default (explorer/teachers/views.py has the trade-off and the measurements).
DEFAULT_VIEWS = 16




class Recipe(Strict):
    """Optimiser and schedule of one training run (student or teacher): the one set of defaults."""

    epochs: int = Field(30, ge=1, description="training epochs")
    batch_size: int = Field(128, ge=1, description="samples per SGD step")
    lr: float = Field(0.05, gt=0, description="initial learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(False, description="Nesterov momentum")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay")
    schedule: str = Field("cosine", description=f"LR schedule: {', '.join(SCHEDULES)}")
    milestones: tuple[int, ...] = Field((), description="multistep: epochs where lr *= lr_gamma")
    lr_gamma: float = Field(0.2, gt=0, description="multistep: LR factor at each milestone")
    views: int = Field(DEFAULT_VIEWS, description=(
        "augmented data, KD on logits: each sample draws one of V fixed crop+flip views whose teacher "
        f"logits are computed once per search; 0 = live random crops (the teacher runs on every batch); "
        f"at most {DISTINCT_VIEWS} (every crop)"))

    # PGD-k adversarial training (seed 003 section 4.4; Madry et al. 2018): each batch the model trains on
    # is replaced by L-inf PGD examples made on the model itself (explorer/training/adversarial.py); the teacher's
    # outputs stay on the clean batch (seed 003 eqs. 6-7). eps and step are in units of the [0, 1] pixel
    # range; seed 003 gives no values: 8/255 and 2/255 are Madry et al.'s CIFAR-10 setting.
    adversarial_steps: int = Field(0, ge=0, le=1000, description=(
        "PGD steps of adversarial training (seed 003 uses 7); 0 = off (clean training)"))
    adversarial_eps: float = Field(8 / 255, gt=0, le=1, description="adversarial training: L-inf radius (pixel range)")
    adversarial_step: float = Field(2 / 255, gt=0, le=1, description="adversarial training: PGD step (pixel range)")

    @field_validator("lr", "momentum", "weight_decay", "lr_gamma", "adversarial_eps", "adversarial_step")
    @classmethod
    def _finite(cls, v):
        if not math.isfinite(v):
            raise ValueError("allowed: a finite number")
        return v

    @field_validator("views", mode="before")
    @classmethod
    def _views(cls, v):
        if v is None or v == "live":  # `views: live` (or null) in a spec = 0
            return 0
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= DISTINCT_VIEWS:
            raise ValueError(f"allowed: a whole number of fixed views per sample from 1 to {DISTINCT_VIEWS}, "
                             f"or 0 (or live) for live augmentation")
        return v

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v):
        if v not in SCHEDULES:
            raise ValueError(f"allowed: {', '.join(SCHEDULES)}")
        return v

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, v, info: ValidationInfo):
        epochs = info.data.get("epochs")
        bad = [m for m in v if epochs is not None and not 1 <= m <= epochs]
        if bad:
            raise ValueError(f"milestone {bad[0]} is outside 1..epochs ({epochs})")
        return v

    def train_config(self, arch: str, seed: int, method: str = "ce", method_params: dict | None = None,
                     **overrides) -> "TrainConfig":
        fields = self.model_dump() | overrides
        return TrainConfig(arch=arch, seed=seed, method=method, method_params=method_params or {}, **fields)


class TrainConfig(Recipe):
    """Everything that determines one training run, apart from the data (see `DataSpec`).

    `TrainConfig("cnn1d_w8", epochs=2)` (the architecture may be given first). A bad field raises the
    one-sentence `KdxError`, never a pydantic traceback."""

    arch: str
    seed: Seed = 0
    method: str = "ce"
    method_params: dict = {}

    def __init__(self, arch: str | None = None, /, **data):
        if arch is not None:
            data["arch"] = arch
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise KdxError(pydantic_sentence(e)) from None

    def validate(self) -> dict:
        """The method's resolved hyperparameters (the fields were checked on construction)."""
        return check_method_params(self.method, self.method_params, self.epochs, archs=[self.arch])

    def as_dict(self) -> dict:
        d = self.model_dump()
        d["milestones"] = list(self.milestones)
        return d
