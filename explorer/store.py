"""The teacher store: content-addressed, checksummed, built at most once, extendable.

What a teacher is
-----------------
A teacher is identified by its full recipe (`TeacherRecipe`): the data identity
(`DataSpec.identity()`: dataset, validation split, split seed, data condition; NOT `data_dir` or
`download`, which say where the data lives, not what it is), the training recipe (`TrainConfig`:
architecture, epochs, optimiser, schedule, seed, method) and, for distilled teachers later on, the
key of its own teacher (`parent_key`). `TeacherRecipe.key()` is the first 16 hex digits of the
SHA-256 of the recipe's canonical JSON (sorted keys, normalised numbers, a schema version).
Stop epochs are not part of the key: one teacher run keeps a checkpoint at every stop epoch asked
for, plus its final epoch (`epochs`).

Layout (a local directory, a shared filesystem path, or any URI pyarrow.fs understands)
---------------------------------------------------------------------------------------
    <root>/<key>/recipe.json     the canonical recipe (written once, before any checkpoint)
    <root>/<key>/ckpt_e<E>.pt    the FULL trainer state after epoch E (model, optimiser,
                                 scheduler, data-order RNG, epoch, history)
    <root>/<key>/manifest.json   the commit point: lists each checkpoint with its SHA-256, size and
                                 val/test accuracy, the per-epoch metrics, and the builds
    <root>/<key>.lock            the per-key lock file (local and shared-filesystem roots)

Every file is written under a temporary name and then renamed (`os.replace` locally, a move on
pyarrow filesystems; on object stores the object appears whole or not at all). A checkpoint is
written before the manifest that lists it, so the manifest never names a file that is not there in
full. Every load checks the SHA-256 against the manifest and uses `torch.load(weights_only=True)`:
a checkpoint holding anything but tensors and plain containers is refused, never unpickled.

Building and extending (what is reused, what is retrained)
-----------------------------------------------------------
`TeacherStore.ensure(recipe, stop_epochs)` makes sure the teacher has a good checkpoint at every
stop epoch asked for and at its final epoch:

* a checkpoint that is already kept and passes its checksum is reused as it is (never rewritten);
* a missing stop epoch E is produced by resuming from the latest good checkpoint before E (or from
  scratch when there is none) and training the epochs in between; only the new checkpoint is
  written. The saved state includes the optimiser, the scheduler and the RNG that orders the data,
  so on CPU the resumed run reproduces bit for bit the weights the original run had at E (tested).
  On GPU, cuDNN/cuBLAS kernels are not bit-reproducible, so the resumed weights can differ in
  the last bits; they are the same training recipe either way;
* so adding stop epochs later retrains only the epochs between the nearest kept checkpoint below
  each new stop epoch and that stop epoch; asking for epochs already kept trains nothing;
* a checkpoint that is missing, truncated or fails its checksum is reported (a warning naming the
  file) and treated as missing, i.e. rebuilt the same way; it is never loaded. An unreadable
  manifest makes the whole teacher count as not built.

Locking (at most one build of a key at a time)
----------------------------------------------
* Local and shared-filesystem roots (plain paths, file:// URIs): `filelock.FileLock` on
  `<root>/<key>.lock`. It works across processes on one machine, and across nodes when the root is
  on a POSIX shared filesystem with working `flock` (NFSv4, Lustre, GPFS, CephFS; not every NFS
  mount honours it). The lock is released by the OS when its holder dies.
* Other URIs (s3://, gs://, hdfs://...): object stores have no locks, so when Ray is initialised
  a named Ray actor (`kdx_teacher_locks`, namespace "kdx", detached, 0 CPUs) acts as a
  cluster-wide lock registry. Holders renew a lease every few seconds; a holder that dies loses
  the lock after the lease runs out (`RAY_LOCK_LEASE_S`), so a crashed build never blocks others
  for long. Limit: two independent Ray clusters sharing one bucket are not coordinated (each has its
  own registry) and may both build the same teacher; the writes stay atomic, so the result is
  still a consistent teacher, just built twice. Without Ray such roots get a per-process lock only
  (a warning says so).
After acquiring the lock the manifest is read again: another process may have built the teacher
meanwhile, in which case nothing is trained.

MLflow logging is not done here (explorer does not depend on a tracking server): `ensure` forwards
every trained epoch's metrics to `on_epoch(epoch, metrics)`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import pickle
import re
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from .data import DATASETS, DataSpec, Splits, load_splits
from .errors import KdxError, bad_value
from .models import build_model, count_params, is_known_model
from .methods import Method, get_method
from .train import TrainConfig, Trainer

log = logging.getLogger("kdx.store")

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
RECIPE = "recipe.json"
LOCK_ACTOR_NAME = "kdx_teacher_locks"
LOCK_ACTOR_NAMESPACE = "kdx"
RAY_LOCK_LEASE_S = 30.0
_KEY_RE = re.compile(r"^[0-9a-f]{16}$")

OnEpoch = Callable[[int, dict], None]


class TeacherStoreWarning(UserWarning):
    """A broken file in the teacher store (it is rebuilt, never used)."""


def default_store_root() -> str:
    """`./kdx_runs/teachers` under the current directory, as an absolute path."""
    return os.path.abspath(os.path.join("kdx_runs", "teachers"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def ckpt_name(epoch: int) -> str:
    return f"ckpt_e{int(epoch)}.pt"


# ------------------------------------------------------------------ canonical recipe


def _norm(value):
    """JSON-able, order-independent, numbers normalised (0.1 == 0.10 == 0.1000000000000001)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise bad_value("recipe", value, "allowed: finite numbers")
        v = float(f"{value:.12g}")
        return 0.0 if v == 0 else v
    if isinstance(value, dict):
        return {str(k): _norm(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return _norm(value.item())
    raise bad_value("recipe", value, "allowed: numbers, strings, booleans, lists and dicts")


def _canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _key_of(canonical: dict) -> str:
    return hashlib.sha256(_canonical_json(canonical).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TeacherRecipe:
    """What determines a teacher: its data, its training recipe and (for distilled teachers) its own
    teacher. Stop epochs are not part of it: they are checkpoints of one run."""

    data: DataSpec
    train: TrainConfig
    parent_key: str | None = None

    def __hash__(self):
        return hash(self.key())

    def validate(self) -> None:
        """Every check that needs no data and no compute; KdxError (one sentence) on a bad value."""
        if not isinstance(self.data, DataSpec):
            raise bad_value("data", self.data, "allowed: a DataSpec")
        if not isinstance(self.train, TrainConfig):
            raise bad_value("train", self.train, "allowed: a TrainConfig")
        self.data.validate()
        if self.parent_key is not None and not (isinstance(self.parent_key, str) and _KEY_RE.match(self.parent_key)):
            raise bad_value("parent_key", self.parent_key, "allowed: a teacher key (16 hex digits) or none")
        method = get_method(self.train.method)
        if self.parent_key is None and method.needs_teacher:
            raise bad_value("method", self.train.method, "allowed for teachers: ce (or ls, tf_kd_reg), or a "
                            "distilling method such as kd together with parent_key (a distilled teacher)")
        if self.parent_key is not None and (not method.needs_teacher or "distilled" not in method.teacher_kinds
                                            and "plain" not in method.teacher_kinds):
            raise bad_value("method", self.train.method, "allowed for a distilled teacher (with parent_key): "
                            "a method that distils from one teacher (kd, ckm, wsl, ...)")
        if type(method).build_student is not Method.build_student:
            raise bad_value("method", self.train.method, "allowed for teachers: methods that train one plain model "
                            "(not dml or one)")
        if not is_known_model(self.train.arch):
            build_model(self.train.arch, 10, (1, 40))  # raises the models module's one-sentence error
        self.train.validate()
        info = DATASETS[self.data.dataset]
        with torch.device("meta"):  # shape check only: no memory, no compute
            build_model(self.train.arch, info.num_classes, tuple(info.input_shape))

    def canonical(self) -> dict:
        """The recipe as sorted, normalised JSON-able data, with a schema version.

        Fields that cannot change the run are normalised away so equal runs get equal keys:
        milestones and lr_gamma only matter for the multistep schedule; nesterov only with momentum;
        method hyperparameters are resolved (defaults filled in)."""
        t = self.train
        hp = t.validate()
        multistep = t.schedule == "multistep"
        train = {
            "arch": t.arch,
            "epochs": int(t.epochs),
            "batch_size": int(t.batch_size),
            "lr": float(t.lr),
            "momentum": float(t.momentum),
            "nesterov": bool(t.nesterov and t.momentum > 0),
            "weight_decay": float(t.weight_decay),
            "schedule": t.schedule,
            "milestones": sorted(int(m) for m in t.milestones) if multistep else [],
            "lr_gamma": float(t.lr_gamma) if multistep else None,
            "seed": int(t.seed),
            "method": t.method,
            "method_params": hp,
        }
        return _norm({"schema": SCHEMA_VERSION, "kind": "kdx-teacher", "data": self.data.identity(),
                      "train": train, "parent_key": self.parent_key})

    def key(self) -> str:
        return _key_of(self.canonical())

    def label(self) -> str:
        return recipe_label(self.canonical())


def recipe_label(canonical: dict) -> str:
    """Short human label from a canonical recipe, e.g. 'cnn1d_w16 e30 s0'."""
    t = canonical["train"]
    extra = " es" if t.get("schedule") == "early_stop" else ""
    if canonical.get("parent_key"):
        extra += f" {t['method']}<{canonical['parent_key'][:8]}"
    return f"{t['arch']} e{t['epochs']} s{t['seed']}{extra}"


def build_command(canonical: dict, stop_epochs: Iterable[int] = ()) -> str:
    """The `kdx teachers build` command line that (re)builds this teacher."""
    d, t = canonical["data"], canonical["train"]
    c = d.get("condition", {})
    parts = ["kdx teachers build", f"--dataset {d['dataset']}", f"--arch {t['arch']}", f"--epochs {t['epochs']}",
             f"--seeds {t['seed']}"]
    stops = sorted(set(int(e) for e in stop_epochs))
    if stops:
        parts.append("--stop-epochs " + ",".join(map(str, stops)))
    parts += [f"--lr {t['lr']:g}", f"--batch-size {t['batch_size']}", f"--weight-decay {t['weight_decay']:g}",
              f"--momentum {t['momentum']:g}", f"--schedule {t['schedule']}"]
    if t.get("nesterov"):
        parts.append("--nesterov")
    if t["schedule"] == "multistep":
        if t["milestones"]:
            parts.append("--milestones " + ",".join(map(str, t["milestones"])))
        parts.append(f"--lr-gamma {t['lr_gamma']:g}")
    parts += [f"--val-fraction {d['val_fraction']:g}", f"--split-seed {d['split_seed']}"]
    if c.get("label_noise"):
        parts.append(f"--label-noise {c['label_noise']:g}")
    if c.get("imbalance_gamma") is not None:
        parts.append(f"--imbalance-gamma {c['imbalance_gamma']:g}")
        for name in ("imbalance_max", "imbalance_min"):
            if c.get(name) is not None:
                parts.append(f"--{name.replace('_', '-')} {c[name]}")
    if c.get("omit_classes"):
        parts.append("--omit-classes " + ",".join(map(str, c["omit_classes"])))
    return " ".join(parts)


def check_stop_epochs(stop_epochs: Iterable[int], epochs: int) -> list[int]:
    """Sorted distinct stop epochs plus the final epoch; KdxError naming `stop_epochs` otherwise."""
    out = set()
    for e in stop_epochs:
        if isinstance(e, bool) or not isinstance(e, int) or not 1 <= e <= epochs:
            raise bad_value("stop_epochs", e, f"allowed: whole numbers from 1 to {epochs} (the teacher's epochs)")
        out.add(int(e))
    out.add(int(epochs))
    return sorted(out)


# ------------------------------------------------------------------ records


@dataclass
class TeacherRecord:
    """What the store knows about one built teacher (from its manifest)."""

    key: str
    recipe: dict
    arch: str
    params: int
    num_classes: int
    input_shape: tuple
    checkpoints: dict[int, dict]
    history: list[dict]
    size_bytes: int
    created: str
    label: str = ""
    builds: list[dict] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return int(self.recipe["train"]["epochs"])

    @property
    def stop_epochs(self) -> list[int]:
        return sorted(self.checkpoints)

    @classmethod
    def from_manifest(cls, m: dict) -> "TeacherRecord":
        ckpts = {int(e): dict(info) for e, info in m.get("checkpoints", {}).items()}
        return cls(
            key=m["key"], recipe=m["recipe"], arch=m["arch"], params=int(m["params"]),
            num_classes=int(m["num_classes"]), input_shape=tuple(m["input_shape"]),
            checkpoints=dict(sorted(ckpts.items())), history=list(m.get("history", [])),
            size_bytes=sum(int(c["bytes"]) for c in ckpts.values()), created=m["created"],
            label=m.get("label", recipe_label(m["recipe"])), builds=list(m.get("builds", [])),
        )

    def summary(self) -> dict:
        """JSON-able summary for `kdx teachers list --json`."""
        return {
            "key": self.key, "label": self.label, "arch": self.arch, "params": self.params,
            "dataset": self.recipe["data"]["dataset"], "epochs": self.epochs, "seed": self.recipe["train"]["seed"],
            "schedule": self.recipe["train"]["schedule"], "stop_epochs": self.stop_epochs,
            "checkpoints": {str(e): {"val_acc": c.get("val_acc"), "test_acc": c.get("test_acc"),
                                     "bytes": c.get("bytes"), "sha256": c.get("sha256")}
                            for e, c in self.checkpoints.items()},
            "size_bytes": self.size_bytes, "created": self.created,
        }


# ------------------------------------------------------------------ file access


class _LocalFiles:
    """Plain local paths (also shared filesystems mounted locally)."""

    local = True

    def __init__(self, base: str):
        self.base = base

    def join(self, *parts: str) -> str:
        return os.path.join(self.base, *parts)

    def display(self, path: str) -> str:
        return path

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def write_atomic(self, path: str, data: bytes) -> None:
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        with contextlib.suppress(OSError):  # make the rename itself durable
            fd = os.open(os.path.dirname(path), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def remove_temps(self, path: str) -> None:
        """Delete leftovers of writers that died mid-write (only called under the key's lock)."""
        if os.path.isdir(path):
            for n in os.listdir(path):
                if ".tmp-" in n:
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(path, n))

    def list_dirs(self, path: str) -> list[str]:
        if not os.path.isdir(path):
            return []
        return sorted(n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n)))


class _ArrowFiles:
    """Any filesystem pyarrow.fs understands (file://, s3://, gs://, hdfs://, ...)."""

    def __init__(self, uri: str):
        import pyarrow.fs as pafs

        self._pafs = pafs
        try:
            self.fs, base = pafs.FileSystem.from_uri(uri)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError
            raise bad_value("store", uri, f"allowed: a local path or a URI pyarrow.fs understands ({e})") from None
        self.base = base.rstrip("/") or "/"
        self.uri = uri.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    def display(self, path: str) -> str:
        rel = path[len(self.base):].lstrip("/")
        return f"{self.uri}/{rel}" if rel else self.uri

    def makedirs(self, path: str) -> None:
        self.fs.create_dir(path, recursive=True)

    def read(self, path: str) -> bytes:
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as e:
            if not self.exists(path):
                raise FileNotFoundError(path) from e
            raise

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != self._pafs.FileType.NotFound

    def write_atomic(self, path: str, data: bytes) -> None:
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, path)  # a rename locally/HDFS; copy-then-delete on object stores
        finally:
            with contextlib.suppress(Exception):
                if self.exists(tmp):
                    self.fs.delete_file(tmp)

    def remove_temps(self, path: str) -> None:
        sel = self._pafs.FileSelector(path, allow_not_found=True, recursive=False)
        for info in self.fs.get_file_info(sel):
            if ".tmp-" in info.base_name and info.type == self._pafs.FileType.File:
                with contextlib.suppress(Exception):
                    self.fs.delete_file(info.path)

    def list_dirs(self, path: str) -> list[str]:
        sel = self._pafs.FileSelector(path, allow_not_found=True, recursive=False)
        return sorted(i.base_name for i in self.fs.get_file_info(sel) if i.type == self._pafs.FileType.Directory)


# ------------------------------------------------------------------ locks


class _LockRegistry:
    """The body of the named Ray actor that serves as a cluster-wide lock table (one lease per key)."""

    def __init__(self):
        self.held: dict[str, tuple[str, float]] = {}

    def acquire(self, key: str, token: str, lease_s: float) -> bool:
        now = time.monotonic()
        cur = self.held.get(key)
        if cur is None or cur[1] < now or cur[0] == token:
            self.held[key] = (token, now + lease_s)
            return True
        return False

    def renew(self, key: str, token: str, lease_s: float) -> bool:
        cur = self.held.get(key)
        if cur is None or cur[0] != token:
            return False
        self.held[key] = (token, time.monotonic() + lease_s)
        return True

    def release(self, key: str, token: str) -> bool:
        cur = self.held.get(key)
        if cur is not None and cur[0] == token:
            del self.held[key]
            return True
        return False

    def holders(self) -> dict:
        now = time.monotonic()
        return {k: v[0] for k, v in self.held.items() if v[1] >= now}


def lock_registry():
    """The cluster's lock-registry actor (created on first use; needs `ray.init()` first)."""
    import ray

    return (ray.remote(num_cpus=0, max_restarts=-1)(_LockRegistry)
            .options(name=LOCK_ACTOR_NAME, namespace=LOCK_ACTOR_NAMESPACE, get_if_exists=True,
                     lifetime="detached")
            .remote())


@contextlib.contextmanager
def ray_key_lock(key: str, lease_s: float = RAY_LOCK_LEASE_S, timeout: float | None = None,
                 on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the cluster-wide lock of `key` (lease renewed in the background while held).

    Raises TimeoutError when `timeout` seconds pass without getting it."""
    import ray

    actor = lock_registry()
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    start, delay, waited = time.monotonic(), 0.05, False
    while not ray.get(actor.acquire.remote(key, token, lease_s)):
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"lock of teacher {key} not acquired within {timeout} s")
        if not waited and on_wait is not None:
            on_wait()
        waited = True
        time.sleep(delay)
        delay = min(1.0, delay * 2)
    stop = threading.Event()

    def renew():
        while not stop.wait(lease_s / 4):
            try:
                if not ray.get(actor.renew.remote(key, token, lease_s)):
                    log.warning("lost the lock of teacher %s (lease expired or lock registry restarted)", key)
                    return
            except Exception as e:  # registry unreachable: keep building, the writes stay atomic
                log.warning("could not renew the lock of teacher %s: %s", key, e)

    t = threading.Thread(target=renew, name=f"kdx-lock-{key}", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=5)
        with contextlib.suppress(Exception):
            ray.get(actor.release.remote(key, token))


_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


def _process_lock(name: str) -> threading.Lock:
    with _PROCESS_LOCKS_GUARD:
        return _PROCESS_LOCKS.setdefault(name, threading.Lock())


# ------------------------------------------------------------------ the store


class _Broken(Exception):
    """A checkpoint that cannot be used (missing, checksum mismatch, not weights-only)."""


class TeacherStore:
    """Teachers by recipe key under `root` (a local path, created if needed, or a pyarrow URI).

    `lock`: "auto" (file lock for local/shared-filesystem roots, the Ray lock registry for other
    URIs), "file" or "ray" (the latter needs `ray.init()` first)."""

    def __init__(self, root: str, lock: str = "auto"):
        if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
            raise bad_value("store", root, "allowed: a local path or a URI such as s3://bucket/teachers")
        root = os.fspath(root)
        if lock not in ("auto", "file", "ray"):
            raise bad_value("lock", lock, "allowed: auto, file, ray")
        if "://" in root:
            self.files = _ArrowFiles(root)
            self.root = self.files.uri
        else:
            self.root = os.path.abspath(os.path.expanduser(root))
            self.files = _LocalFiles(self.root)
        try:
            self.files.makedirs(self.files.base)
        except OSError as e:
            raise bad_value("store", root, f"allowed: a location that can be written ({e})") from None
        if lock == "file" and not self.files.local:
            raise bad_value("lock", lock, f"a file lock needs a local or shared-filesystem store, not {self.root}")
        self.lock_kind = lock if lock != "auto" else ("file" if self.files.local else "ray")

    def __repr__(self) -> str:
        return f"TeacherStore({self.root!r})"

    # -------------------------------------------------------------- paths
    def _dir(self, key: str) -> str:
        return self.files.join(key)

    def _path(self, key: str, name: str) -> str:
        return self.files.join(key, name)

    def _show(self, key: str, name: str) -> str:
        return self.files.display(self._path(key, name))

    # -------------------------------------------------------------- manifest
    def _read_manifest(self, key: str, warn: bool = True) -> dict | None:
        """The manifest, or None when there is none (or it is unreadable: then a warning)."""
        path = self._path(key, MANIFEST)
        try:
            raw = self.files.read(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            if warn:
                self._warn(f"{self._show(key, MANIFEST)} is unreadable ({e}); the teacher counts as not built")
            return None
        problem = self._manifest_problem(key, raw)
        if problem:
            if warn:
                self._warn(f"{self._show(key, MANIFEST)} is unreadable ({problem}); the teacher counts as not built")
            return None
        return json.loads(raw)

    @staticmethod
    def _manifest_problem(key: str, raw: bytes) -> str | None:
        try:
            m = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            return f"not JSON: {e}"
        if not isinstance(m, dict) or m.get("schema") != SCHEMA_VERSION:
            return "not a kdx teacher manifest of schema version %d" % SCHEMA_VERSION
        try:
            if m["key"] != key or _key_of(m["recipe"]) != key:
                return "its recipe does not hash to its key"
            for e, c in m["checkpoints"].items():
                int(e), c["file"], c["sha256"], int(c["bytes"])
            m["arch"], int(m["params"]), int(m["num_classes"]), list(m["input_shape"]), m["created"]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return f"malformed: {type(e).__name__} {e}"
        return None

    def _write_manifest(self, key: str, manifest: dict) -> None:
        data = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False, default=_json_default).encode()
        self.files.write_atomic(self._path(key, MANIFEST), data)

    @staticmethod
    def _warn(msg: str) -> None:
        log.warning("teacher store: %s", msg)
        warnings.warn(f"teacher store: {msg}", TeacherStoreWarning, stacklevel=3)

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
        if not isinstance(key, str) or not _KEY_RE.match(key):
            return None
        m = self._read_manifest(key)
        return TeacherRecord.from_manifest(m) if m else None

    def list(self) -> list[TeacherRecord]:
        """Every teacher with a readable manifest, sorted by label then key."""
        out = []
        for name in self.files.list_dirs(self.files.base):
            if _KEY_RE.match(name):
                m = self._read_manifest(name)
                if m:
                    out.append(TeacherRecord.from_manifest(m))
        return sorted(out, key=lambda r: (r.recipe["data"]["dataset"], r.label, r.key))

    def verify(self) -> list[str]:
        """One line per broken file (missing, checksum mismatch, unreadable manifest); [] when all is well."""
        problems = []
        for key in self.files.list_dirs(self.files.base):
            if not _KEY_RE.match(key):
                continue
            path = self._path(key, MANIFEST)
            if not self.files.exists(path):
                continue  # a build in progress or interrupted before its first commit: nothing promised
            try:
                raw = self.files.read(path)
                problem = self._manifest_problem(key, raw)
            except OSError as e:
                problem = str(e)
            if problem:
                problems.append(f"{self._show(key, MANIFEST)}: unreadable manifest ({problem})")
                continue
            m = json.loads(raw)
            for e, info in sorted(m["checkpoints"].items(), key=lambda kv: int(kv[0])):
                try:
                    self._read_checkpoint(key, int(e), info)
                except _Broken as b:
                    problems.append(str(b))
        return problems

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

        The checksum is verified and the file is read with torch.load(weights_only=True); a broken
        or unsafe checkpoint raises KdxError, it is never used."""
        m = self._read_manifest(key) if isinstance(key, str) and _KEY_RE.match(key) else None
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
        out = dict(info) | {"key": key, "label": rec.label, "arch": rec.arch, "epoch": epoch, "epochs": rec.epochs,
                            "params": rec.params, "num_classes": rec.num_classes,
                            "input_shape": list(rec.input_shape)}
        return model, out

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the build lock of `key` (see the module docstring for the design)."""
        def waiting():
            log.info("teacher %s is being built by another process; waiting for it", key)

        if self.lock_kind == "file":
            import filelock

            path = os.path.join(self.files.base, f"{key}.lock")
            lk = filelock.FileLock(path)
            try:
                lk.acquire(timeout=0.5)
            except filelock.Timeout:
                waiting()
                lk.acquire()
            try:
                yield
            finally:
                lk.release()
            return
        import ray

        if ray.is_initialized():
            with ray_key_lock(key, on_wait=waiting):
                yield
            return
        if self.lock_kind == "ray":
            raise KdxError("lock: 'ray' needs a running Ray (call ray.init() first).")
        warnings.warn(f"teacher store {self.root}: no cross-process lock without Ray for this URI; "
                      f"concurrent builds of one teacher from several processes are not prevented",
                      TeacherStoreWarning, stacklevel=3)
        with _process_lock(f"{self.root}/{key}"):
            yield

    def ensure(self, recipe: TeacherRecipe, stop_epochs: Iterable[int] = (), device=None,
               on_epoch: OnEpoch | None = None, splits: Splits | None = None) -> tuple[TeacherRecord, bool]:
        """Make sure the teacher has a good checkpoint at every stop epoch and at its final epoch.

        Returns (record, built_now): built_now is False when everything was already kept (nothing
        trained). Builds or extends only what is missing, under the key's lock; a second asker
        waits for the first and reuses its result. `on_epoch(epoch, metrics)` is called for every
        epoch trained here. `splits`, if given, must be `load_splits(recipe.data)` (saves a reload)."""
        if not isinstance(recipe, TeacherRecipe):
            raise bad_value("recipe", recipe, "allowed: a TeacherRecipe")
        recipe.validate()
        stop_epochs = list(stop_epochs)
        wanted = check_stop_epochs(stop_epochs, recipe.train.epochs)
        key = recipe.key()
        rec = self.complete(recipe, wanted)
        if rec is not None:
            return rec, False
        if recipe.parent_key is not None and self.get(recipe.parent_key) is None:
            raise KdxError(f"parent_key: got {recipe.parent_key!r}; the parent teacher is not in the store "
                           f"{self.root}; build the parent first (kdx search builds chains in order).")
        with self.lock(key):
            m = self._read_manifest(key)  # another process may have built it meanwhile
            good = self._good_epochs(key, m)
            listed = {int(e) for e in (m or {}).get("checkpoints", {})}
            missing = sorted((set(wanted) | listed) - good)
            if not missing:
                return TeacherRecord.from_manifest(m), False
            self._build(recipe, key, m, good, missing, device, on_epoch, splits)
            m = self._read_manifest(key)
            if m is None:  # pragma: no cover - we just wrote it
                raise KdxError(f"teacher {key}: the manifest could not be read back from {self.root}.")
            return TeacherRecord.from_manifest(m), True

    def parent_model(self, recipe: TeacherRecipe) -> nn.Module | None:
        """The teacher a distilled teacher learns from: its parent, from this store, at the parent's
        final epoch, checksum-verified (KdxError when the parent is missing: build the chain in order)."""
        if recipe.parent_key is None:
            return None
        if self.get(recipe.parent_key) is None:
            raise KdxError(f"parent_key: got {recipe.parent_key!r}; the parent teacher is not in the store "
                           f"{self.root}; build the parent first (kdx search builds chains in order).")
        model, info = self.load_model(recipe.parent_key, None)
        if get_method(recipe.train.method).same_arch_teacher and info["arch"] != recipe.train.arch:
            raise bad_value("parent_key", recipe.parent_key, f"method {recipe.train.method!r} needs a parent of "
                            f"the same architecture ({recipe.train.arch}), not {info['arch']}")
        return model

    # -------------------------------------------------------------- building
    def _build(self, recipe: TeacherRecipe, key: str, manifest: dict | None, good: set[int], missing: list[int],
               device, on_epoch: OnEpoch | None, splits: Splits | None) -> None:
        canonical = recipe.canonical()
        self.files.makedirs(self._dir(key))
        self.files.remove_temps(self._dir(key))
        if manifest is None or not self.files.exists(self._path(key, RECIPE)):
            recipe_json = json.dumps({"key": key, "label": recipe.label(), "recipe": canonical}, indent=1,
                                     sort_keys=True).encode()
            self.files.write_atomic(self._path(key, RECIPE), recipe_json)
        if splits is None:
            splits = load_splits(recipe.data)
        cfg = recipe.train
        trainer = Trainer(cfg, splits, device, teacher=self.parent_model(recipe))
        build = {"started": _now(), "host": socket.gethostname(), "pid": os.getpid(),
                 "device": str(trainer.device), "resumed_from": [], "epochs_trained": 0, "kept": [],
                 "torch": torch.__version__}
        if manifest is None:
            manifest = {
                "schema": SCHEMA_VERSION, "key": key, "label": recipe.label(), "recipe": canonical,
                "arch": cfg.arch, "params": count_params(trainer.model), "num_classes": splits.num_classes,
                "input_shape": list(splits.input_shape), "created": _now(), "checkpoints": {}, "history": [],
                "builds": [],
            }
        # Drop broken entries: they are rebuilt below (and the manifest never lists a bad file).
        manifest["checkpoints"] = {e: c for e, c in manifest["checkpoints"].items() if int(e) in good}
        manifest["builds"] = list(manifest.get("builds", [])) + [build]
        history = {int(h["epoch"]): h for h in manifest.get("history", [])}
        for target in missing:
            base = max((g for g in good if g < target), default=0)
            if trainer.epoch < base:  # a kept checkpoint is closer than where this trainer stands
                info = manifest["checkpoints"][str(base)]
                try:
                    state = self._load_state(key, base, info, device="cpu")
                except _Broken as b:  # changed under us (should not happen under the lock)
                    raise KdxError(f"teacher {key}: {b}; run the build again.") from None
                trainer.load_state_dict(state)
                build["resumed_from"].append(base)
            elif trainer.epoch == 0:
                build["resumed_from"].append(0)
            while trainer.epoch < target:
                metrics = trainer.train_epoch()
                build["epochs_trained"] += 1
                history.setdefault(trainer.epoch, _plain(metrics))
                if trainer.epoch == target:
                    self._save_checkpoint(key, trainer, manifest)
                    good.add(target)
                    build["kept"].append(target)
                    build["finished"] = _now()
                    manifest["history"] = [history[e] for e in sorted(history)]
                    self._write_manifest(key, manifest)  # commit: the new checkpoint is now visible
                if on_epoch is not None:
                    on_epoch(trainer.epoch, dict(metrics))

    def _save_checkpoint(self, key: str, trainer: Trainer, manifest: dict) -> None:
        epoch = trainer.epoch
        state = trainer.state_dict()
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
            "val_loss": float(last["val_loss"]), "test_loss": float(last["test_loss"]), "written": _now(),
        }
        manifest["checkpoints"] = dict(sorted(manifest["checkpoints"].items(), key=lambda kv: int(kv[0])))


def _plain(metrics: dict) -> dict:
    """Per-epoch metrics as JSON-safe plain numbers (non-finite floats become None)."""
    out = {}
    for k, v in metrics.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
