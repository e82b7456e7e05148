"""Fixed augmented views, and the teacher's logits on them computed once per (sample, view) for a search.

Why: on augmented data the teacher used to run on every batch of every epoch of every trial, so a KD
epoch cost 1.3x to 3.4x a CE epoch (resnet20..resnet110 teachers, issue 11). The teacher's outputs
are a function of the image alone, so they are computed once on a fixed set of V views per training
sample, kept beside the teacher's checkpoint in the teacher store, and every trial reads them.

Views. View v of training sample i is a crop+flip (`explorer.data.augment.crop_flip`, the same gather as
live augmentation) chosen by (i, v) alone: the DISTINCT_VIEWS (dy, dx, flip) combinations (162 for
padding 4) are ranked by a counter-based hash of (i, combination) and view v is the v-th of that
ranking. So a sample's views are distinct, the same on every device, in every trial and epoch, and
view v does not depend on V (V=4's views are the first 4 of V=16's). Each epoch, each sample draws
one of its V views uniformly from the trainer's generator (so a resumed run repeats the draws).
V = DISTINCT_VIEWS is every crop: the same distribution as live augmentation, cached.

The trade-off (`views` in the recipe, default `config.DEFAULT_VIEWS` = 16; 0 = live): a student sees
at most V distinct crops of each image instead of a fresh one of 162 each epoch, against a KD epoch
that costs about a CE epoch and a once-per-search build of V teacher passes over the training set.
It applies only where it saves teacher compute: a trainer distilling from a teacher's logits on
augmented data. CE runs (teachers, baselines) and feature-based methods keep live augmentation.
`benchmarks/view_study.py` measures the accuracy cost; `benchmarks/teacher_cost.py` the speed.

The table. (N, V, K) logits, computed in float32 under inference mode (eval mode, no autocast), kept
as float16 (half the bytes; float16 resolves a logit to about 1e-3 of its size). Unaugmented data
has the V=1 identity table, the logits on the plain training set, kept in float32 (N x K is small,
and those runs' numbers stay exactly as when each trial computed them).

In the teacher store. A teacher taken from a `TeacherStore` (`TeacherStore.teacher`) is a `StoredTeacher`:
the model, told its store entry (store, key, stop epoch); its table is then `<store>/<teacher key>/views_<key>.pt`, with `views_<key>.json` beside it, the commit
record (SHA-256, bytes, shape, what it was computed from). The table's key hashes the teacher key,
its stop epoch, the training data (SHA-256 of the training tensor: whatever produced the split, the
same data gives the same table), the view definition, V and the dtype. Written atomically, the table
before its record; read only when the record's SHA-256 matches, with torch.load(weights_only=True);
a broken table is warned about (TeacherStoreWarning) and rebuilt, never used. Built under the
teacher key's store lock, and looked up again after taking it, so concurrent trials build it once.
A teacher not from a store gets its table computed in memory (once per trainer).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import socket
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone

import torch
from torch import Tensor, nn

from explorer.data.augment import CROP_PADDING, crop_flip
from explorer.errors import KdxError
from explorer.storage import TeacherStoreWarning

__all__ = ["TeacherViews", "VIEW_DEFINITION", "compute_view_logits", "data_fingerprint", "StoredTeacher",
           "stored_view_logits", "teacher_views", "view_images", "view_params"]

log = logging.getLogger("kdx.views")

SCHEMA = 1
_M32 = 0xFFFFFFFF
# What fixes the images of (sample, view): part of every table's key (change it, and every table changes).
VIEW_DEFINITION = {"augment": "crop_flip", "padding": CROP_PADDING, "order": "lowbias32-rank-v1"}


# ---------------------------------------------------------------- the views
def _hash32(x: Tensor) -> Tensor:
    """A bijection of 32-bit integers with good avalanche (Wellons' lowbias32), on int64 tensors."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def view_params(idx: Tensor, v: Tensor, padding: int = CROP_PADDING) -> tuple[Tensor, Tensor, Tensor]:
    """(dy, dx, flip) of view `v` of samples `idx` (1-D integer tensors of one length, same device):
    the v-th combination in sample i's ranking of all (2p+1)^2 x 2 combinations by hash(hash(i) ^ c).
    hash32 is a bijection, so the ranks have no ties and a sample's views are distinct."""
    m = (2 * padding + 1) ** 2 * 2
    if len(v) and (int(v.min()) < 0 or int(v.max()) >= m):
        raise KdxError(f"views: view index {int(v.max())} is outside 0..{m - 1} (padding {padding})")
    return combo_params(view_combos(idx, m, padding).gather(1, v.to(torch.int64)[:, None])[:, 0], padding)


def view_combos(idx: Tensor, views: int, padding: int = CROP_PADDING) -> Tensor:
    """(B, views): the combination codes of views 0..views-1 of samples `idx` (see `view_params`)."""
    side = 2 * padding + 1
    combos = torch.arange(side * side * 2, device=idx.device, dtype=torch.int64)
    scores = _hash32(_hash32(idx.to(torch.int64))[:, None] ^ combos)                      # (B, m)
    return torch.sort(scores, dim=1, stable=True).indices[:, :views]


def combo_params(c: Tensor, padding: int = CROP_PADDING) -> tuple[Tensor, Tensor, Tensor]:
    """(dy, dx, flip) of combination codes `c`."""
    side = 2 * padding + 1
    return c // (2 * side), (c // 2) % side, (c % 2).bool()


def view_images(x: Tensor, idx: Tensor, v: Tensor, padding: int = CROP_PADDING) -> Tensor:
    """The images of view `v` of training samples `idx` of `x` (N, C, H, W), on x.device."""
    dy, dx, flip = view_params(idx, v, padding)
    return crop_flip(x[idx], dy, dx, flip, padding)


@torch.inference_mode()
def compute_view_logits(model: nn.Module, x: Tensor, views: int, augmented: bool, batch_size: int = 256) -> Tensor:
    """(N, V, K) logits of `model` on views 0..V-1 of every row of `x` (augmented), or (N, 1, K) on the
    rows themselves; float32 compute in eval mode, kept float16 when augmented, float32 otherwise."""
    was_training = model.training
    model.eval()
    n, dtype = len(x), torch.float16 if augmented else torch.float32
    out = None
    for v in range(views):
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(n, start + batch_size), device=x.device)
            xb = view_images(x, idx, torch.full_like(idx, v)) if augmented else x[idx]
            logits = model(xb).float()
            if out is None:
                out = torch.empty(n, views, logits.shape[1], dtype=dtype, device=x.device)
            out[idx, v] = logits.to(dtype)
    model.train(was_training)
    if out is None:
        raise KdxError("views: the training set is empty; there is nothing to compute the teacher's logits on")
    if not torch.isfinite(out).all():
        raise KdxError(f"teacher logits are not finite (or exceed float16's range, {torch.finfo(dtype).max:g}) on "
                       f"some training views; the teacher cannot be distilled from as it is")
    return out


class TeacherViews:
    """The teacher's logits on the training set's fixed views, for the training loop. `draw` gives a
    batch's images (one stored view per sample, drawn from the trainer's generator) and remembers the
    views drawn; `logits` gives the teacher's float32 logits of the same views (a list for several
    teachers). On unaugmented data there is one view, the image itself, and `draw` is not used."""

    def __init__(self, tables: list[Tensor], train_x: Tensor, augmented: bool):
        self.tables = tables
        self.views = int(tables[0].shape[1])
        self.augmented = augmented
        self.x = train_x
        self._drawn: tuple[Tensor, Tensor] | None = None
        # each sample's V view codes, ranked once here rather than per batch (int16: codes < 162)
        self.combos = None
        if augmented:
            rows = torch.arange(len(train_x), device=train_x.device)
            self.combos = torch.cat([view_combos(r, self.views).to(torch.int16) for r in rows.split(4096)])

    def draw(self, idx: Tensor, generator: torch.Generator | list[torch.Generator] | None) -> Tensor:
        """One view per sample of `idx`: (B,) with one generator, or (S, B) with one per fused member
        (explorer/training/fused.py), each member drawing from its own generator as a solo run would."""
        gens = generator if isinstance(generator, list) else [generator]
        rows = idx.view(len(gens), -1)
        v = torch.stack([torch.randint(0, self.views, r.shape, generator=g, device=idx.device)
                         for r, g in zip(rows, gens)]).view(idx.shape)
        self._drawn = (idx, v)
        flat = idx.flatten()
        dy, dx, flip = combo_params(self.combos[flat, v.flatten()].to(torch.int64))
        return crop_flip(self.x[flat], dy, dx, flip, CROP_PADDING).view(*idx.shape, *self.x.shape[1:])

    def drawn(self, idx: Tensor) -> Tensor | None:
        """The views `draw` drew for the batch `idx` (None on unaugmented data: the image itself)."""
        if not self.augmented:
            return None
        drawn_idx, v = self._drawn
        if drawn_idx is not idx:
            raise KdxError("views: the teacher's logits were asked for a batch whose views were not drawn")
        return v

    def logits(self, idx: Tensor) -> Tensor | list[Tensor]:
        out = self.logits_at(idx, self.drawn(idx))
        return out[0] if len(out) == 1 else out

    def logits_at(self, idx: Tensor, v: Tensor | None) -> list[Tensor]:
        """Each teacher's float32 logits of samples `idx` at views `v` (None: unaugmented data)."""
        return [t[idx, 0 if v is None else v].float() for t in self.tables]


@dataclass(frozen=True)
class StoredTeacher:
    """A teacher model from a teacher store, with its entry there (`key` at stop epoch `epoch`): where its
    logits on fixed views are kept. A trainer takes it wherever it takes a teacher module."""

    model: nn.Module
    store: object  # the TeacherStore it came from
    key: str
    epoch: int


def module_of(teacher) -> nn.Module:
    """The model of a teacher given as a module or as a `StoredTeacher`."""
    return teacher.model if isinstance(teacher, StoredTeacher) else teacher


def teacher_views(teachers: list, splits, views: int) -> TeacherViews | None:
    """The trainer's `TeacherViews` for `teachers` (modules, or `StoredTeacher`s) on `splits` (`views` = the
    recipe's V; 0 = live): read from (or written to) the store entry of a StoredTeacher, else computed
    here; None where the teacher must run live (augmented data with views 0)."""
    augmented = splits.augment == "crop_flip"
    if augmented and not views or splits.augment not in ("none", "crop_flip"):
        return None
    n_views, x, fingerprint = (views if augmented else 1), splits.train_x, None
    tables = []
    for t in teachers:
        if not isinstance(t, StoredTeacher):
            tables.append(compute_view_logits(t, x, n_views, augmented))
            continue
        fingerprint = fingerprint or data_fingerprint(x)
        table = stored_view_logits(t.store, t.key, t.epoch, t.model, x, n_views, augmented, splits.num_classes,
                                   fingerprint)
        tables.append(table.to(x.device))
    return TeacherViews(tables, x, augmented)


# ---------------------------------------------------------------- in the teacher store
def data_fingerprint(x: Tensor) -> str:
    """SHA-256 of the training tensor's shape, dtype and bytes: the identity of the data a table is of."""
    h = hashlib.sha256(f"{tuple(x.shape)} {x.dtype}".encode())
    h.update(memoryview(x.detach().contiguous().cpu().numpy()).cast("B"))
    return h.hexdigest()


def table_key(teacher_key: str, epoch: int, fingerprint: str, views: int, augmented: bool) -> str:
    ident = {"kind": "kdx-teacher-views", "schema": SCHEMA, "teacher_key": teacher_key, "epoch": int(epoch),
             "data": fingerprint, "definition": VIEW_DEFINITION if augmented else {"augment": "none"},
             "views": int(views), "dtype": "float16" if augmented else "float32"}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


class _Broken(Exception):
    pass


def _read_table(store, key: str, name: str, shape: tuple, dtype: torch.dtype) -> Tensor | None:
    """The committed table `name` of teacher `key`, None when there is none; _Broken when it is unusable."""
    files = store.files
    try:
        record = json.loads(files.read(files.join(key, f"{name}.json")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise _Broken(f"unreadable record ({e})") from None
    try:
        data = files.read(files.join(key, record["file"]))
        if hashlib.sha256(data).hexdigest() != record["sha256"] or len(data) != int(record["bytes"]):
            raise _Broken("checksum mismatch with its record")
        table = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)["logits"]
    except (FileNotFoundError, KeyError, TypeError, ValueError) as e:
        raise _Broken(f"missing or malformed ({type(e).__name__} {e})") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, OSError) as e:
        raise _Broken(f"refused by torch.load(weights_only=True) ({str(e).strip()[:120]})") from None
    if not isinstance(table, Tensor) or table.dtype != dtype or tuple(table.shape) != shape:
        raise _Broken(f"not a {dtype} table of shape {shape}")
    return table


def _read_or_warn(store, key: str, name: str, shape: tuple, dtype: torch.dtype) -> Tensor | None:
    try:
        return _read_table(store, key, name, shape, dtype)
    except _Broken as b:
        msg = f"teacher store: {store.files.display(store.files.join(key, name + '.pt'))}: {b}; it will be rebuilt"
        log.warning(msg)
        warnings.warn(msg, TeacherStoreWarning, stacklevel=4)
        return None


def stored_view_logits(store, key: str, epoch: int, model: nn.Module, x: Tensor, views: int, augmented: bool,
                       num_classes: int, fingerprint: str | None = None) -> Tensor:
    """Teacher `key`'s (N, V, K) table at stop epoch `epoch` on `x`: read from `store` when it is there
    and sound, else computed with `model` and written (under the teacher's store lock). On CPU."""
    fingerprint = fingerprint or data_fingerprint(x)
    name = "views_" + table_key(key, epoch, fingerprint, views, augmented)
    shape, dtype = (len(x), views, num_classes), torch.float16 if augmented else torch.float32
    table = _read_or_warn(store, key, name, shape, dtype)
    if table is not None:
        return table
    with store.lock(key):
        try:  # built by another process while this one waited?
            table = _read_table(store, key, name, shape, dtype)
        except _Broken:
            table = None
        if table is not None:
            return table
        log.info("teacher %s@%d: computing its logits on %d x %d views (%s)", key, epoch, len(x), views, store.root)
        start = time.perf_counter()
        table = compute_view_logits(model, x, views, augmented).cpu()
        seconds = time.perf_counter() - start
        buf = io.BytesIO()
        torch.save({"logits": table}, buf)
        data = buf.getvalue()
        files = store.files
        files.write_atomic(files.join(key, name + ".pt"), data)  # the table first, its record (the commit) last
        record = {"schema": SCHEMA, "kind": "kdx-teacher-views", "key": name.removeprefix("views_"),
                  "teacher_key": key, "epoch": int(epoch), "data": fingerprint, "views": views,
                  "definition": VIEW_DEFINITION if augmented else {"augment": "none"}, "shape": list(shape),
                  "dtype": str(dtype).removeprefix("torch."), "file": name + ".pt",
                  "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "build_seconds": round(seconds, 3),
                  "device": str(x.device), "host": socket.gethostname(), "pid": os.getpid(),
                  "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        files.write_atomic(files.join(key, name + ".json"), json.dumps(record, indent=1, sort_keys=True).encode())
        return table
