"""From MLflow runs to answers: DataFrames, sweet-spot computations, reports and plots.

- `analysis.runs`: MLflow -> pandas (`load_trials`, `load_histories`, `find_parent_run`,
  `default_tracking_uri`);
- `analysis.configs`: the rules every question shares: which trials count, what a config is
  (`config_columns`, derived from what the runs logged), the best trial (`best_trial`), the
  configs to confirm: the best of every cell (`cell_configs`);
- `analysis.cells`: the confirmed answer, the one the report leads with: every cell's confirmed
  point, the sweet spot and the KD gain (`confirmed_cells` on a trials frame; `load_answer` reads it
  from MLflow);
- `analysis.sweetspot`: one pure function per question on the trials frame (imported from
  `analysis.teachers`, `analysis.hparams`, `analysis.gain`);
- `analysis.report`: Markdown/HTML/CSV report, a list of section functions, and `attach_to_parent`
  (document model: `analysis.document`, plots: `analysis.plots`, sentences: `analysis.words`);
- `analysis.commands`: the `kdx analyze` command.

The names below are imported on first use, so `import analysis` (which the `kdx` CLI does for
every command) stays cheap.
"""

from importlib import import_module

_EXPORTS = {
    "default_tracking_uri": "runs", "find_parent_run": "runs", "load_histories": "runs", "load_trials": "runs",
    "Answer": "sweetspot", "capacity_curve": "sweetspot", "diagnostics": "sweetspot", "kd_gain": "sweetspot",
    "param_importance": "sweetspot", "status_counts": "sweetspot", "stop_epoch_table": "sweetspot",
    "summary": "sweetspot", "sweet_spot": "sweetspot", "temperature_alpha_map": "sweetspot",
    "cell_configs": "configs", "best_trial": "configs", "completed": "configs", "config_columns": "configs",
    "rank_trials": "configs", "param_columns": "runs",
    "confirmed_cells": "cells", "load_answer": "cells",
    "attach_to_parent": "report", "write_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
