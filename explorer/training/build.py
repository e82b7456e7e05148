"""Building a teacher: the teacher store's `ensure`, handed the one training loop.

The store (explorer/teachers/store.py) keeps, checks and extends teachers but does not import the
trainer: whoever builds passes a trainer factory. This is that wiring, in one place."""

from __future__ import annotations

from explorer.teachers.store import TeacherStore
from explorer.training.loop import Trainer


def ensure_teacher(store: TeacherStore, recipe, stop_epochs=(), **kwargs):
    """`store.ensure(recipe, stop_epochs, ...)` training with `Trainer`: (record, built_now)."""
    return store.ensure(recipe, stop_epochs, trainer=Trainer, **kwargs)
