"""The names kdx writes to MLflow, in one place: what `trainables` logs is what `analysis` reads.

Layout of one search in MLflow (experiment = the spec's `name`):

- a **parent run** per `kdx search` invocation: tag `kdx.role=search`; the spec file as an
  artifact; the plan as params;
- a **teacher run** per teacher build: tag `kdx.role=teacher`, tag `teacher_key`; the recipe as
  params; per-epoch metrics (step = epoch);
- a **trial run** per Ray Tune trial, child of the parent (tag `mlflow.parentRunId`): tags
  `kdx.role=trial`, `trial_id`, `teacher_key` ("none" for the CE baseline), `status`, `kdx.kind`;
  params `TRIAL_PARAMS`; per-epoch metrics `EPOCH_METRICS` with step = epoch. A trial that trains
  fused members (its seeds as one model) has one such run per member, tagged `kdx.member` = its seed.
"""

ROLE_TAG = "kdx.role"
ROLE_SEARCH, ROLE_TEACHER, ROLE_TRIAL = "search", "teacher", "trial"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_ID_TAG = "trial_id"
TEACHER_KEY_TAG = "teacher_key"
STATUS_TAG = "status"
KIND_TAG = "kdx.kind"
MEMBER_TAG = "kdx.member"

# Trial outcomes. Only COMPLETED trials enter comparisons; the others are counted and listed.
COMPLETED, PRUNED, DIVERGED, FAILED, RUNNING = "completed", "pruned", "diverged", "failed", "running"
INTERRUPTED = "interrupted"  # the search was stopped (Ctrl-C) mid-trial; `--resume` continues it
STATUSES = (COMPLETED, PRUNED, DIVERGED, FAILED, RUNNING, INTERRUPTED)

# What a trial is for: a searched KD config, the CE-only baseline (never pruned), a confirmation re-run.
KIND_SEARCH, KIND_BASELINE, KIND_CONFIRM = "search", "baseline", "confirm"

NO_TEACHER = "none"

from explorer.config import Recipe  # noqa: E402
from explorer.methods import hparam_names  # noqa: E402

# Params of every trial run (strings in MLflow; analysis converts them back): these identity and
# derived params, then every method hyperparameter the registry declares ("none" where the trial's
# method has none) and every field of the student's recipe as `student.<field>`.
BASE_TRIAL_PARAMS = (
    "dataset",            # dataset name
    "student",            # student architecture
    "teacher",            # teacher entry, or "none"
    "teacher_stop_epoch", # epoch of the teacher checkpoint used ("none" without teacher)
    "teacher_epochs",     # the teacher run's total epochs
    "method",             # distillation method name (ce for the baseline)
    "seed",               # the student's seed
    "student_params",     # parameter counts
    "teacher_params",
    "capacity_ratio",     # teacher_params / student_params (below 1 for reversed KD)
    "epochs",             # the student's planned epochs (ASHA's max_t)
    "teacher_kind",       # plain | distilled (a chain: TAKD assistant, born-again generation) | ensemble | none
    "teacher_chain",      # store keys of the teacher and its own teachers: 'key<parent<...', '+' between members
)
METHOD_PARAMS = hparam_names()
RECIPE_PARAMS = tuple(f"student.{f}" for f in Recipe.model_fields if f != "epochs")
TRIAL_PARAMS = BASE_TRIAL_PARAMS + METHOD_PARAMS + RECIPE_PARAMS

# A trial's *config* is every param it logged except its seed and the params derived from the others
# (sizes, the teacher's recipe facts): runs that agree on all the rest are seeds of one config. The
# analysis and `kdx confirm` key configs on exactly this, so a new method hyperparameter or a new
# search axis needs no list updated anywhere.
SEED_PARAM = "seed"
DERIVED_PARAMS = ("student_params", "teacher_params", "capacity_ratio", "teacher_epochs", "teacher_kind",
                  "teacher_chain")

# A trial's report to Tune carries, under this key, the metric rows of the epochs trained since its
# previous report, oldest first (trainables/student.py batches reports, `search.report_seconds`).
EARLIER_EPOCHS = "earlier_epochs"

# Per-epoch metrics (step = epoch, 1-based) produced by explorer.training.loop.Trainer.
EPOCH_METRICS = (
    "train_loss", "train_ce", "train_kd", "val_acc", "val_loss", "test_acc", "test_loss",
    "kd_agreement", "teacher_val_acc", "epoch_seconds", "eval_seconds", "samples_per_second", "lr", "stage",
    # the last epoch's `evaluate:` metrics (spec_sections.EvaluateSection)
    "transfer_rate", "transfer_samples", "robust_acc_pgd", "robust_acc_pgd50",
    # accuracy on the classes the training split lacks (omit_classes), the model's and its teacher's
    "val_acc_omitted", "test_acc_omitted", "teacher_val_acc_omitted", "teacher_test_acc_omitted",
    "class_count_max", "class_count_min",  # the training split's class counts as used (before label noise)
)


# ------------------------------------------------------------------ where runs go by default

import os  # noqa: E402
from pathlib import Path  # noqa: E402

RUN_DIR = "kdx_runs"  # under the current directory: Ray results, teachers, the SQLite store, reports


def default_tracking_uri(cwd: str | os.PathLike | None = None) -> str:
    """`sqlite:///<abs>/kdx_runs/mlflow.db` under `cwd` (default: the current directory)."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    return f"sqlite:///{(base / RUN_DIR / 'mlflow.db').resolve()}"


def absolute_tracking_uri(uri: str | None) -> str | None:
    """Make a tracking URI independent of the current directory (Ray trials and tasks change it):
    a plain path becomes absolute, `sqlite:///relative.db` becomes `sqlite:////abs/relative.db`."""
    if not uri:
        return uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    if uri.startswith("file://"):
        path = uri[len("file://"):]
        return uri if path.startswith("/") else "file://" + os.path.abspath(path)
    if "://" not in uri and not uri.startswith("sqlite:"):
        return os.path.abspath(os.path.expanduser(uri))
    return uri


# ------------------------------------------------------------------ one definition each


def trial_status(last_result: dict | None, epochs: int) -> str:
    """A finished trial's outcome from its last reported result: diverged (NaN/inf loss), completed
    (reached the planned epochs) or pruned (stopped earlier by ASHA)."""
    last = last_result or {}
    if last.get("diverged"):
        return DIVERGED
    return COMPLETED if last.get("epoch", 0) >= epochs else PRUNED


def is_better(value, best, mode: str) -> bool:
    """The one "best trial" rule: a completed trial's final validation metric, strictly better in the
    search's mode than the best so far (ties keep the trial seen first)."""
    if value is None or value != value:
        return False
    return best is None or (value > best if mode == "max" else value < best)


def latest_search(client, experiment_id: str | None):
    """The experiment's latest parent run (tag `kdx.role=search`, by start time), or None: the search a
    confirmation joins, a resumed search reopens and the analysis reads (`client`: an MlflowClient)."""
    if experiment_id is None:
        return None
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE_TAG}` = '{ROLE_SEARCH}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if len(runs) else None
