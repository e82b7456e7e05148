"""The spec's simple sections: how to search (`search:`, `search.asha:`), what each trial and teacher
build may use (`resources:`), and the confirmation stage (`confirm:`). Their cross-section rules are
`SearchSpec.check` in explorer/spec.py."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .config import Seed, Strict


class AshaSection(Strict):
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3, gt=1)


class SearchSection(Strict):
    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    num_samples: int = Field(16, ge=1)
    max_concurrent: int = Field(2, ge=1)
    metric: Literal["val_acc", "val_loss"] = "val_acc"
    mode: Literal["max", "min"] = "max"
    seed: Seed = 0
    points_to_evaluate: list[dict] = []
    asha: AshaSection | None = AshaSection()
    # A trial checkpoints at every ASHA rung and at its last epoch, and between them at most this
    # often (0: every epoch). A restart repeats at most this much training, exactly.
    checkpoint_seconds: float = Field(30.0, ge=0, allow_inf_nan=False)


class Resources(Strict):
    cpus: float = Field(1, gt=0)
    gpus: float = Field(0, ge=0)


class ResourcesSection(Strict):
    trial: Resources = Resources()
    teacher: Resources = Resources()
    retries: int = Field(2, ge=0)


class ConfirmSection(Strict):
    """The confirmation stage (`kdx confirm`, issue 10): the search's best config of every cell, chosen
    on validation, re-run with fresh seeds beside the CE baseline trained with the same seeds, so
    every reported point is a mean over paired, unselected seeds."""

    seeds: list[Seed] = Field([1000, 1001, 1002, 1003, 1004], min_length=2,
                              description="fresh seeds (never the search's), shared by every cell and the baseline")
    cells: list[str] = Field(["teacher", "teacher_stop_epoch"],
                             description="the params whose every combination is a cell (the student's searched "
                                         "architecture is always one more)")


# What a confirmation cell may be keyed on: the teacher/stop lists and discrete distill/student axes.
CELL_LISTS = ("teacher", "teacher_stop_epoch")
