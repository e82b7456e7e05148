"""The spec's simple sections: how to search (`search:`, `search.asha:`), what each trial and teacher
build may use (`resources:`), the confirmation stage (`confirm:`) and the evaluations a finished trial
gets (`evaluate:`). Their cross-section rules are
`SearchSpec.check` in explorer/spec/search.py."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from explorer.errors import KdxError
from explorer.fields import Seed, Strict


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
    # A trial reports to Tune at every ASHA rung, with every checkpoint and at its last epoch, and between
    # them at most this often (0: every epoch); each report carries every epoch since the one before, so
    # MLflow still gets one step per epoch. A report is a round trip to the driver during which the
    # trial's training waits (Tune function trainables report synchronously).
    report_seconds: float = Field(5.0, ge=0, allow_inf_nan=False)
    # Ray Tune's reuse_actors: the next trial runs in the worker process of a finished one (no
    # process start, no second torch import). Trials keep no state between them: each builds its own.
    reuse_actors: bool = True
    # An equal budget per cell (issue 10): the cells (`SearchSpec.search_cells`: every combination of the
    # searched cell params, `confirm.cells` plus the student) run as a grid, each with this many trials that
    # its own TPE proposes from the other axes; the search then runs trials_per_cell x cells trials.
    trials_per_cell: int | None = Field(None, ge=1)
    # Issue 11: a trial is one config times every entry of `seeds`, trained as one fused model
    # (explorer/training/fused.py). It reports the members' mean, on which ASHA and the searcher decide, and
    # each seed its own MLflow run; the CE baselines fuse their seeds too. The seed is then not a
    # searched axis: every config the search tries gets every seed.
    fuse_seeds: bool = False


class Resources(Strict):
    cpus: float = Field(1, gt=0)
    gpus: float = Field(0, ge=0)


class ResourcesSection(Strict):
    trial: Resources = Resources()
    teacher: Resources = Resources()
    retries: int = Field(2, ge=0)


# The teacher lists a confirmation cell is keyed on by default; `confirm.cells` may add searched discrete axes
# (the analysis reads the same names back: analysis/cells.py).
CELL_LISTS = ("teacher", "teacher_stop_epoch")


class ConfirmSection(Strict):
    """The confirmation stage (`kdx confirm`, issue 10): the search's best config of every cell, chosen
    on validation, re-run with fresh seeds beside the CE baseline trained with the same seeds, so
    every reported point is a mean over paired, unselected seeds."""

    seeds: list[Seed] = Field([1000, 1001, 1002, 1003, 1004], min_length=2,
                              description="fresh seeds (never the search's), shared by every cell and the baseline")
    cells: list[str] = Field(list(CELL_LISTS),
                             description="the params whose every combination is a cell (the student's searched "
                                         "architecture is always one more)")
    fuse: bool | Literal["auto"] = Field("auto", description=(
        "train a config's seeds as one fused model (explorer/training/fused.py) where its method and student allow; "
        "each seed still gets its own MLflow run with its own metrics. auto: on GPU trials, and on CPU for "
        "students without 2-D convolutions (benchmarks/fused_speed.py, 8 seeds on one CPU thread: fused 1-D CNNs "
        "train about 4x faster, fused resnets about 0.8x as fast, their convolutions being compute-bound there)"))
    members_per_trial: int = Field(24, ge=1, description=(
        "where seeds train fused: the most members one confirmation trial trains. A config's seeds always "
        "train together; configs of one student recipe and method, differing only in teacher, lr and the "
        "method's real-valued hyperparameters (T, alpha, ...), share a trial up to this many members, each "
        "member with its own teacher and values (explorer/training/fused.py). 24: past it a fused 1-D CNN's time per "
        "member falls by a few percent more on one CPU thread, and bigger trials leave fewer to spread over "
        "cores (benchmarks/fused_members.py, benchmarks/RESULTS.md)"))

    def check(self, search_seeds: list[int], searched: dict) -> None:
        """Fresh, distinct seeds, and cells keyed on the teacher lists or searched choice/grid axes."""
        if len(set(self.seeds)) != len(self.seeds):
            raise KdxError(f"confirm.seeds: got {self.seeds}; allowed: distinct seeds.")
        reused = sorted(set(self.seeds) & set(search_seeds))
        if reused:
            raise KdxError(f"confirm.seeds: got {self.seeds}; allowed: seeds the search does not use (it uses "
                           f"{search_seeds}), so that no seed is counted twice ({reused[0]} is in both).")
        allowed = [*CELL_LISTS, *(k for k, a in searched.items()
                                  if a.kind in ("choice", "grid") and k not in CELL_LISTS and k != "seed")]
        for name in self.cells:
            if name not in allowed:
                raise KdxError(f"confirm.cells: got {name!r}; allowed: {', '.join(allowed)} (the teacher lists and "
                               "the searched choice or grid axes).")
        if len(set(self.cells)) != len(self.cells):
            raise KdxError(f"confirm.cells: got {self.cells}; allowed: distinct names.")


class EvaluateSection(Strict):
    """Evaluations every trial gets after its last epoch, logged to its MLflow run beside val/test acc."""

    transfer: bool = Field(False, description=(
        "seed 000 section IV-D: the success rate on the student of L-inf PGD examples made on its teacher "
        "(eps 0.031, step 0.003, 20 steps, in units of the pixel range), on the test samples both classify "
        "correctly: metrics transfer_rate and transfer_samples (explorer/training/attacks.py); trials without a "
        "teacher get none"))
    robust: bool = Field(False, description=(
        "seed 003 section 4.4: test accuracy under L-inf PGD on the student itself, at the recipe's "
        "adversarial_eps and adversarial_step: robust_acc_pgd with the training attack's steps (7 when the "
        "student was not adversarially trained), and robust_acc_pgd50, 50 steps from robust_restarts random "
        "starts (a sample counts only if it survives all); AutoAttack, which the seed uses, is not on PyPI"))
    robust_restarts: int = Field(5, ge=1, le=100, description="evaluate.robust: random starts of PGD-50")

