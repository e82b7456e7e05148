"""A trial's epoch clock: one definition of how long a trial is.

A trial runs the student's epochs, after the init stage of a two-stage method (FitNet, FSP, AB) on the
same clock (explorer's Trainer: `total_epochs`), so its `epoch` (ASHA's time attribute) ends at its
own length. Every report of the trainable carries that length (`TRIAL_EPOCHS`), and each trial is
judged against it: ended there, completed; ended earlier (stopped by ASHA), pruned; diverged, diverged.
The status tag in MLflow, the progress, the summary and what Optuna is told all come from
`trial_outcome`. The space's longest trial (`SearchSpec.trial_epochs`) is ASHA's max_t, and the length
taken for a report that does not say (a trial of an older kdx).
"""

from __future__ import annotations

from explorer.tracking import trial_status

TRIAL_EPOCHS = "trial_epochs"  # a report's key: the epochs the trial runs, init stage included


def planned_epochs(result: dict | None, longest: int) -> int:
    """The epochs the trial of `result` runs; `longest` (the space's longest trial) when it does not say."""
    value = (result or {}).get(TRIAL_EPOCHS)
    return int(value) if value else longest


def trial_outcome(result: dict | None, longest: int) -> str:
    """completed / pruned / diverged of a finished trial from its last report."""
    return trial_status(result, planned_epochs(result, longest))
