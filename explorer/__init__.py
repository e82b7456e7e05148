"""kdx core library: datasets, models, distillation methods, the training loop, the teacher store.

Importable and testable without Ray running; `trainables` and `analysis` build on it.
"""

__version__ = "0.1.0"
