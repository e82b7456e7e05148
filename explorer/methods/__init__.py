"""Distillation methods: small plugins, one module per method or family, each registered where its
class is defined (see `base.py` for the API). Every module of this package is imported here, so
adding a method is adding one file; nothing else lists methods.
"""

from __future__ import annotations

import importlib
import pkgutil

from explorer.methods.base import (ALPHA, KD_STOP_EPOCH, METHODS, TEACHER_KINDS, TEACHER_TEMPERATURE,  # noqa: F401
                                   TEMPERATURE, HParam, LossInputs, Method, check_method_params, get_method,
                                   hparam_declarations, hparam_names, register)
from explorer.methods.losses import kd_kl, smoothed_targets, soft_kl  # noqa: F401

# ce and kd first (the baseline and the convention every other method is described against), then
# the rest in file-name order.
for _module in ["hinton"] + sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in ("base", "losses"):
        importlib.import_module(f"{__name__}.{_module}")

from explorer.methods.online import Cohort  # noqa: E402,F401
