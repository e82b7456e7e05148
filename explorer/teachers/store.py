"""The teacher store: content-addressed, checksummed, built at most once, extendable.

What a teacher is, its key and the manifest format: `explorer/teachers/recipe.py`. Atomic file IO, locally or
on any pyarrow URI, and the default lock: `explorer/storage.py`. This module is the store.

Layout (a local directory, a shared filesystem path, or any URI pyarrow.fs understands):
`<root>/<key>/recipe.json` (the canonical recipe, written before any checkpoint), `ckpt_e<E>.pt` (the
FULL trainer state after epoch E: model, optimiser, scheduler, data-order RNG, epoch, history),
`manifest.json` (the commit point: each checkpoint's SHA-256, size and val/test accuracy, the
per-epoch metrics, the builds), `views_*` (logits on fixed views: views.py), `<root>/<key>.lock` (its lock).

A checkpoint is written (atomically) before the manifest that lists it, so the manifest never names
a file that is not there in full. Every load checks the SHA-256 and uses
`torch.load(weights_only=True)`: anything but tensors and plain containers is refused, never
unpickled. A key directory without a manifest is a build in progress (its lock is held) or the
orphan of a killed build: `incomplete()` lists both, `gc()` removes the orphans.

Building and extending: `ensure(recipe, stop_epochs)` makes sure the teacher has a good checkpoint at
every stop epoch asked for and at its final epoch. Kept checkpoints that pass their checksum are
reused (never rewritten); a missing stop epoch E resumes from the latest good checkpoint before E
(or from scratch), so adding stop epochs later retrains only the epochs in between; on CPU a resumed
run reproduces bit for bit the weights the original run had at E (tested; on GPU the last bits can
differ). A missing, truncated or mismatching checkpoint is reported (a warning naming the file) and
rebuilt, never loaded; an unreadable manifest makes the whole teacher count as not built.

Locking: injected, `TeacherStore(root, lock=provider)`, `provider(key)` a context manager holding the
build lock of `key` across every process that may build it (on Ray, `trainables/locks.py` injects a
cluster-wide one). The default is the storage's own: a file lock on local and shared-filesystem
roots; on object stores only a lock within this process, with a warning. After acquiring the lock
the manifest is read again: if another process built the teacher meanwhile, nothing is trained.

MLflow logging is not done here: `ensure` forwards every trained epoch's metrics to `on_epoch`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import pickle
import socket
import warnings
from typing import Callable, ContextManager, Iterable, Iterator

import torch
from torch import nn

from explorer.data.splits import Splits, load_splits
from explorer.errors import KdxError, bad_value
from explorer.methods import get_method
from explorer.models import build_model, count_params
from explorer.storage import Storage, TeacherStoreWarning
from explorer.teachers.recipe import (TeacherRecipe, TeacherRecord, build_command, check_stop_epochs, ckpt_name, is_key,
                                      manifest_bytes, manifest_problem, new_manifest, plain_metrics, utc_now)
from explorer.teachers.views import StoredTeacher

__all__ = ["LockProvider", "TeacherRecipe", "TeacherRecord", "TeacherStore",
           "check_stop_epochs", "default_store_root"]

log = logging.getLogger("kdx.store")

MANIFEST, RECIPE = "manifest.json", "recipe.json"

OnEpoch = Callable[[int, dict], None]
# What builds a teacher: (TrainConfig, Splits, device, teacher=parent or None) -> a trainer with `epoch`,
# `history`, `model`, `device`, `train_epoch()`, `state_dict()` and `load_state_dict()` (explorer/training/
# loop.py's Trainer, handed in by explorer/training/build.py: the store does not import the loop).
TrainerFactory = Callable[..., "object"]
LockProvider = Callable[[str], ContextManager]


def default_store_root() -> str:
    """`./kdx_runs/teachers` under the current directory, as an absolute path."""
    return os.path.abspath(os.path.join("kdx_runs", "teachers"))


class _Broken(Exception):
    """A checkpoint that cannot be used (missing, checksum mismatch, not weights-only)."""


class TeacherStore:
    """Teachers by recipe key under `root` (a local path, created if needed, or a pyarrow URI).
    `lock`: a callable `key -> context manager`, or None for the default (see "Locking" above)."""

    def __init__(self, root: str, lock: LockProvider | None = None):
        if lock is not None and not callable(lock):
            raise bad_value("lock", lock, "allowed: a callable key -> context manager, or none for the default lock")
        self.files = Storage(root)
        self.root = self.files.root
        try:
            self.files.makedirs(self.files.base)
        except OSError as e:
            raise bad_value("store", root, f"allowed: a location that can be written ({e})") from None
        self._lock_provider = lock

    def __repr__(self) -> str:
        return f"TeacherStore({self.root!r})"

    @property
    def local(self) -> bool:
        """True when the root is on a locally mounted filesystem (where the default file lock works)."""
        return self.files.local

    def _path(self, key: str, name: str | None = None) -> str:
        return self.files.join(key) if name is None else self.files.join(key, name)

    def _show(self, key: str, name: str) -> str:
        return self.files.display(self._path(key, name))

    @staticmethod
    def _warn(msg: str) -> None:
        log.warning("teacher store: %s", msg)
        warnings.warn(f"teacher store: {msg}", TeacherStoreWarning, stacklevel=3)

    # -------------------------------------------------------------- manifest
    def _manifest(self, key: str) -> tuple[dict | None, str | None]:
        """(manifest, None); (None, None) when there is none; (None, what is wrong) when it is unreadable."""
        try:
            raw = self.files.read(self._path(key, MANIFEST))
            problem = manifest_problem(key, raw)
        except FileNotFoundError:
            return None, None
        except OSError as e:
            problem = str(e) or type(e).__name__
        return (None, problem) if problem else (json.loads(raw), None)

    def _read_manifest(self, key: str, warn: bool = True) -> dict | None:
        """The manifest, or None when there is none (or it is unreadable: then a warning)."""
        m, problem = self._manifest(key)
        if problem and warn:
            self._warn(f"{self._show(key, MANIFEST)} is unreadable ({problem}); the teacher counts as not built")
        return m

    def _write_manifest(self, key: str, manifest: dict) -> None:
        self.files.write_atomic(self._path(key, MANIFEST), manifest_bytes(manifest))

    # -------------------------------------------------------------- checkpoints
    def _read_checkpoint(self, key: str, epoch: int, info: dict) -> bytes:
        """The checkpoint's bytes if its checksum matches the manifest; _Broken otherwise."""
        name = info["file"]
        try:
            data = self.files.read(self._path(key, name))
        except FileNotFoundError:
            raise _Broken(f"{self._show(key, name)}: missing (listed in the manifest for epoch {epoch})") from None
        except OSError as e:
            raise _Broken(f"{self._show(key, name)}: unreadable ({e})") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != info["sha256"] or len(data) != int(info["bytes"]):
            raise _Broken(f"{self._show(key, name)}: checksum mismatch (manifest sha256 {info['sha256'][:12]}... "
                          f"{info['bytes']} bytes; file sha256 {digest[:12]}... {len(data)} bytes)")
        return data

    def _load_state(self, key: str, epoch: int, info: dict, device="cpu") -> dict:
        data = self._read_checkpoint(key, epoch, info)
        try:
            state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise _Broken(f"{self._show(key, info['file'])}: not a plain weights checkpoint, refused by "
                          f"torch.load(weights_only=True) ({first})") from None
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise _Broken(f"{self._show(key, info['file'])}: not a kdx trainer checkpoint (no model state)")
        return state

    def _good_epochs(self, key: str, manifest: dict | None, warn: bool = True) -> set[int]:
        """Epochs whose checkpoint file is present and passes its checksum (broken ones are warned about)."""
        good = set()
        for e, info in (manifest or {}).get("checkpoints", {}).items():
            try:
                self._read_checkpoint(key, int(e), info)
                good.add(int(e))
            except _Broken as b:
                if warn:
                    self._warn(f"{b}; it will be rebuilt")
        return good

    # -------------------------------------------------------------- public API
    def get(self, key: str) -> TeacherRecord | None:
        """The record of teacher `key`, or None when it is not (fully) in the store."""
        m = self._read_manifest(key) if is_key(key) else None
        return TeacherRecord.from_manifest(m) if m else None

    def list(self) -> list[TeacherRecord]:
        """Every teacher with a readable manifest, sorted by dataset, label then key."""
        out = [self.get(name) for name in self.files.list_dirs(self.files.base) if is_key(name)]
        return sorted((r for r in out if r), key=lambda r: (r.recipe["data"]["dataset"], r.label, r.key))

    def verify(self) -> list[str]:
        """One line per broken file (missing, checksum mismatch, unreadable manifest); [] when all is well.
        A key without a manifest promises nothing (see `incomplete()` for those)."""
        problems = []
        for key in filter(is_key, self.files.list_dirs(self.files.base)):
            m, problem = self._manifest(key)
            if problem:
                problems.append(f"{self._show(key, MANIFEST)}: unreadable manifest ({problem})")
            for e, info in sorted((m or {}).get("checkpoints", {}).items(), key=lambda kv: int(kv[0])):
                try:
                    self._read_checkpoint(key, int(e), info)
                except _Broken as b:
                    problems.append(str(b))
        return problems

    def incomplete(self) -> list[dict]:
        """Keys with files but no manifest: {key, building}: a build in progress (its lock is held) or
        the orphan of a killed build (building False; None on object stores: no lock can tell)."""
        import filelock

        out = []
        for key in filter(is_key, self.files.list_dirs(self.files.base)):
            if self.files.exists(self._path(key, MANIFEST)):
                continue
            building = None
            if self.local:
                lk = filelock.FileLock(os.path.join(self.files.base, f"{key}.lock"))
                with contextlib.suppress(filelock.Timeout):
                    building = True
                    lk.acquire(timeout=0)
                    building = lk.release() or False
            out.append({"key": key, "building": building})
        return out

    def gc(self) -> list[str]:
        """Remove the orphans of killed builds, each under its lock; their keys (local stores only)."""
        if not self.local:
            raise bad_value("--store", self.root, "allowed for gc: a local or shared-filesystem store (on an "
                            "object store no lock tells a killed build from a running one)")
        removed = []
        for key in [o["key"] for o in self.incomplete() if o["building"] is False]:
            with self.files.lock(key):
                if not self.files.exists(self._path(key, MANIFEST)):  # not committed meanwhile
                    self.files.fs.delete_dir(self._path(key))
                    removed.append(key)
        return removed

    def complete(self, recipe: TeacherRecipe, stop_epochs: Iterable[int] = ()) -> TeacherRecord | None:
        """The record when every asked stop epoch (and the final one) is kept and passes its checksum
        (no lock, nothing trained); None otherwise."""
        recipe.validate()
        wanted = check_stop_epochs(stop_epochs, recipe.train.epochs)
        key = recipe.key()
        m = self._read_manifest(key, warn=False)
        if m is None:
            return None
        listed = {int(e) for e in m["checkpoints"]}
        if not set(wanted) <= listed or self._good_epochs(key, m, warn=False) != listed:
            return None
        return TeacherRecord.from_manifest(m)

    def load_model(self, key: str, stop_epoch: int | None = None, device="cpu") -> tuple[nn.Module, dict]:
        """(model in eval mode on `device`, checkpoint info) of teacher `key` at `stop_epoch` (None = final).
        Checksum verified, read with torch.load(weights_only=True); a broken or unsafe one is a KdxError."""
        m = self._read_manifest(key) if is_key(key) else None
        if m is None:
            raise KdxError(f"teacher {key}: not in the store {self.root}; build it with `kdx teachers build ...` "
                           f"(or `kdx search`, which builds the teachers it needs).")
        rec = TeacherRecord.from_manifest(m)
        epoch = rec.epochs if stop_epoch is None else stop_epoch
        hint = build_command(rec.recipe, [epoch]) + f" --store {self.root}"
        if epoch not in rec.checkpoints:
            raise KdxError(f"teacher {key}: no checkpoint at epoch {epoch!r} (kept: "
                           f"{', '.join(map(str, rec.stop_epochs))}); add it with `{hint}`.")
        info = rec.checkpoints[epoch]
        try:
            state = self._load_state(key, epoch, info)
        except _Broken as b:
            raise KdxError(f"teacher {key} epoch {epoch}: {b}; rebuild with `{hint}`.") from None
        model = build_model(rec.arch, rec.num_classes, rec.input_shape)
        try:
            model.load_state_dict(state["model"])
        except (RuntimeError, KeyError, TypeError) as e:
            first = str(e).strip().splitlines()[0]
            raise KdxError(f"teacher {key} epoch {epoch}: {self._show(key, info['file'])} does not fit a "
                           f"{rec.arch} ({first}); rebuild with `{hint}`.") from None
        model.to(device).eval()
        return model, dict(info) | {"key": key, "label": rec.label, "arch": rec.arch, "epoch": epoch,
                                    "epochs": rec.epochs, "params": rec.params, "num_classes": rec.num_classes,
                                    "input_shape": list(rec.input_shape)}

    def teacher(self, key: str, stop_epoch: int | None = None, device="cpu") -> tuple[StoredTeacher, dict]:
        """`load_model`'s model as a `StoredTeacher`, told its entry here: a trainer reads (or writes) its
        logits on fixed views in this store (explorer/teachers/views.py)."""
        model, info = self.load_model(key, stop_epoch, device)
        return StoredTeacher(model, self, key, info["epoch"]), info

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the build lock of `key`: the injected one, else the storage's (see the class docstring)."""
        if self._lock_provider is None and not self.local:
            warnings.warn(f"teacher store {self.root}: no cross-process lock for this URI (none injected); "
                          f"concurrent builds of one teacher from several processes are not prevented",
                          TeacherStoreWarning, stacklevel=3)
        with (self._lock_provider or self.files.lock)(key):
            yield

    def ensure(self, recipe: TeacherRecipe, stop_epochs: Iterable[int] = (), device=None,
               on_epoch: OnEpoch | None = None, splits: Splits | None = None, *,
               trainer: TrainerFactory) -> tuple[TeacherRecord, bool]:
        """Make sure the teacher has a good checkpoint at every stop epoch and at its final epoch.
        Returns (record, built_now): built_now is False when everything was already kept. Builds or
        extends only what is missing, under the key's lock; a second asker waits for the first and
        reuses its result. `on_epoch(epoch, metrics)` is called for every epoch trained here.
        `splits`, if given, must be `load_splits(recipe.data)` (saves a reload). `trainer` trains it
        (`TrainerFactory`; explorer.training.build.ensure_teacher hands the one loop's)."""
        if not isinstance(recipe, TeacherRecipe):
            raise bad_value("recipe", recipe, "allowed: a TeacherRecipe")
        recipe.validate()
        wanted = check_stop_epochs(list(stop_epochs), recipe.train.epochs)
        key = recipe.key()
        rec = self.complete(recipe, wanted)
        if rec is not None:
            return rec, False
        self._check_parent(recipe)
        with self.lock(key):
            m = self._read_manifest(key)  # another process may have built it meanwhile
            good = self._good_epochs(key, m)
            listed = {int(e) for e in (m or {}).get("checkpoints", {})}
            missing = sorted((set(wanted) | listed) - good)
            if not missing:
                return TeacherRecord.from_manifest(m), False
            self._build(recipe, key, m, good, missing, device, on_epoch, splits, trainer)
            m = self._read_manifest(key)
            if m is None:  # pragma: no cover - we just wrote it
                raise KdxError(f"teacher {key}: the manifest could not be read back from {self.root}.")
            return TeacherRecord.from_manifest(m), True

    def _check_parent(self, recipe: TeacherRecipe) -> None:
        if recipe.parent_key is not None and self.get(recipe.parent_key) is None:
            raise KdxError(f"parent_key: got {recipe.parent_key!r}; the parent teacher is not in the store "
                           f"{self.root}; build the parent first (kdx search builds chains in order).")

    def parent_model(self, recipe: TeacherRecipe) -> StoredTeacher | None:
        """The teacher a distilled teacher learns from: its parent, from this store, at the parent's
        final epoch, checksum-verified (KdxError when the parent is missing: build the chain in order)."""
        if recipe.parent_key is None:
            return None
        self._check_parent(recipe)
        model, info = self.teacher(recipe.parent_key, None)
        if get_method(recipe.train.method).same_arch_teacher and info["arch"] != recipe.train.arch:
            raise bad_value("parent_key", recipe.parent_key, f"method {recipe.train.method!r} needs a parent of "
                            f"the same architecture ({recipe.train.arch}), not {info['arch']}")
        return model

    # -------------------------------------------------------------- building (under the key's lock)
    def _build(self, recipe: TeacherRecipe, key: str, manifest: dict | None, good: set[int], missing: list[int],
               device, on_epoch: OnEpoch | None, splits: Splits | None, make_trainer: TrainerFactory) -> None:
        canonical = recipe.canonical()
        self.files.makedirs(self._path(key))
        self.files.remove_temps(self._path(key))
        if manifest is None or not self.files.exists(self._path(key, RECIPE)):
            recipe_json = json.dumps({"key": key, "label": recipe.label(), "recipe": canonical}, indent=1,
                                     sort_keys=True).encode()
            self.files.write_atomic(self._path(key, RECIPE), recipe_json)
        splits = load_splits(recipe.data) if splits is None else splits
        trainer = make_trainer(recipe.train, splits, device, teacher=self.parent_model(recipe))
        build = {"started": utc_now(), "host": socket.gethostname(), "pid": os.getpid(),
                 "device": str(trainer.device), "resumed_from": [], "epochs_trained": 0, "kept": [],
                 "torch": torch.__version__}
        if manifest is None:
            manifest = new_manifest(recipe, count_params(trainer.model), splits.num_classes, splits.input_shape)
        # Drop broken entries: they are rebuilt below (and the manifest never lists a bad file).
        manifest["checkpoints"] = {e: c for e, c in manifest["checkpoints"].items() if int(e) in good}
        manifest["builds"] = list(manifest.get("builds", [])) + [build]
        history = {int(h["epoch"]): h for h in manifest.get("history", [])}
        for target in missing:
            base = max((g for g in good if g < target), default=0)
            if trainer.epoch < base:  # a kept checkpoint is closer than where this trainer stands
                try:
                    state = self._load_state(key, base, manifest["checkpoints"][str(base)], device="cpu")
                except _Broken as b:  # changed under us (should not happen under the lock)
                    raise KdxError(f"teacher {key}: {b}; run the build again.") from None
                trainer.load_state_dict(state)
                build["resumed_from"].append(base)
            elif trainer.epoch == 0:
                build["resumed_from"].append(0)
            while trainer.epoch < target:
                metrics = trainer.train_epoch()
                build["epochs_trained"] += 1
                history.setdefault(trainer.epoch, plain_metrics(metrics))
                if trainer.epoch == target:
                    self._save_checkpoint(key, trainer, manifest)
                    good.add(target)
                    build["kept"].append(target)
                    build["finished"] = utc_now()
                    manifest["history"] = [history[e] for e in sorted(history)]
                    self._write_manifest(key, manifest)  # commit: the new checkpoint is now visible
                if on_epoch is not None:
                    on_epoch(trainer.epoch, dict(metrics))

    def _save_checkpoint(self, key: str, trainer, manifest: dict) -> None:
        epoch, state = trainer.epoch, trainer.state_dict()
        state["teacher_key"] = key
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        name = ckpt_name(epoch)
        self.files.write_atomic(self._path(key, name), data)
        last = trainer.history[-1]
        manifest["checkpoints"][str(epoch)] = {
            "file": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "epoch": epoch,
            "val_acc": float(last["val_acc"]), "test_acc": float(last["test_acc"]),
            "val_loss": float(last["val_loss"]), "test_loss": float(last["test_loss"]), "written": utc_now(),
        }
        manifest["checkpoints"] = dict(sorted(manifest["checkpoints"].items(), key=lambda kv: int(kv[0])))
