"""What a teacher is (its recipe, key, label, rebuild command) and what a built one is (its record).

A teacher is identified by its full recipe (`TeacherRecipe`): the data identity
(`DataSpec.identity()`: dataset, validation split, split seed, data condition; NOT `data_dir` or
`download`, which say where the data lives, not what it is; a teacher trained `clean` has the clean
DataSpec, `DataSpec.teacher_data()`), the training recipe (`TrainConfig`:
architecture, epochs, optimiser, schedule, seed, method) and, for distilled teachers, the key of its
own teacher (`parent_key`). `TeacherRecipe.key()` is the first 16 hex digits of the SHA-256 of the
recipe's canonical JSON (`canonical_json`: sorted keys, no spaces, numbers normalised to 12
significant digits, a schema version). Stop epochs are not part of the key: one teacher run keeps a
checkpoint at every stop epoch asked for, plus its final epoch (`epochs`).

The canonical form is a compatibility contract: every key already in a store was computed from it,
so any change to it (a field added, a normalisation changed) must bump `SCHEMA_VERSION`.

The manifest format lives here too (`new_manifest`, `manifest_problem`, `manifest_bytes`, `TeacherRecord`): it
shares the schema version with the canonical recipe, and like it, it is plain data. Reading and
writing manifests and checkpoints is `explorer/teachers/store.py`'s job. Nothing here touches files, locks or
compute (only a shape check on the meta device).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

import torch

from explorer.config import Recipe, TrainConfig
from explorer.data.condition import DataSpec
from explorer.data.registry import dataset_info
from explorer.errors import bad_value
from explorer.methods import Method, get_method
from explorer.models import build_model, is_known_model

__all__ = ["SCHEMA_VERSION", "TeacherRecipe", "TeacherRecord", "build_command", "canonical_json", "check_stop_epochs",
           "ckpt_name", "is_key", "key_of", "manifest_bytes", "manifest_problem", "new_manifest", "plain_metrics",
           "recipe_label", "utc_now"]

SCHEMA_VERSION = 1
_KEY_RE = re.compile(r"^[0-9a-f]{16}$")


def is_key(value) -> bool:
    """True for a teacher key (16 lowercase hex digits)."""
    return isinstance(value, str) and bool(_KEY_RE.match(value))


def ckpt_name(epoch: int) -> str:
    """File name of the checkpoint kept after `epoch`."""
    return f"ckpt_e{int(epoch)}.pt"


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


def canonical_json(obj) -> str:
    """The text the key hashes: sorted keys, no spaces, no NaN (changing it changes every key)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def key_of(canonical: dict) -> str:
    """The key of a canonical recipe: the first 16 hex digits of the SHA-256 of its canonical JSON."""
    return hashlib.sha256(canonical_json(canonical).encode()).hexdigest()[:16]


def _multistep_only(value, t):
    return value if t.schedule == "multistep" else None


# How each Recipe field enters a teacher's key (`keyed_train`): field -> (its canonical value, given the
# field's value and the TrainConfig), None where it cannot change the run. Every Recipe field has a rule
# (checked at import), so a new field says here how it keys teachers, and `build_command` follows.
_KEYED = {
    "epochs": lambda v, t: int(v),
    "batch_size": lambda v, t: int(v),
    "lr": lambda v, t: float(v),
    "momentum": lambda v, t: float(v),
    "nesterov": lambda v, t: bool(v and t.momentum > 0),
    "weight_decay": lambda v, t: float(v),
    "schedule": lambda v, t: v,
    "milestones": lambda v, t: sorted(int(m) for m in v) if t.schedule == "multistep" else [],
    "lr_gamma": lambda v, t: _multistep_only(float(v), t),
    # keyed only when on, so keys from before adversarial training stay the same (grouped: "adversarial")
    "adversarial_steps": lambda v, t: int(v) or None,
    "adversarial_eps": lambda v, t: float(v) if t.adversarial_steps else None,
    "adversarial_step": lambda v, t: float(v) if t.adversarial_steps else None,
    "views": None,  # keyed by `keyed_train` itself: it depends on the data and the teacher's parent
}
_ADVERSARIAL = {"adversarial_steps": "steps", "adversarial_eps": "eps", "adversarial_step": "step"}
if set(_KEYED) != set(Recipe.model_fields):  # pragma: no cover - a developer's error, caught by any import
    raise RuntimeError(f"explorer/teachers/recipe.py: no key rule for {set(Recipe.model_fields) ^ set(_KEYED)}")


def keyed_train(t: TrainConfig, distilled: bool, augmented: bool) -> dict:
    """The training half of a teacher's canonical recipe: its identity (arch, seed, method and resolved
    hyperparameters) and every Recipe field by its rule in `_KEYED`. Fixed teacher views (`views`) change a
    run only where a teacher's logits on augmented data are cached: a distilled teacher whose method needs
    no features; keyed only there and only when not live (0), so every key computed before `views`
    existed still names the same run."""
    train = {"arch": t.arch, "seed": int(t.seed), "method": t.method, "method_params": t.validate()}
    adversarial = {}
    for name, rule in _KEYED.items():
        if rule is None:
            continue
        value = rule(getattr(t, name), t)
        if name in _ADVERSARIAL:
            if value is not None:
                adversarial[_ADVERSARIAL[name]] = value
        else:
            train[name] = value
    if adversarial:
        train["adversarial"] = adversarial
    if distilled and t.views and augmented and not get_method(t.method).needs_features:
        train["views"] = int(t.views)
    return train


@dataclass(frozen=True)
class TeacherRecipe:
    """What determines a teacher: its data, its training recipe and (for distilled teachers) its own
    teacher. Stop epochs are not part of it: they are checkpoints of one run."""

    data: DataSpec
    train: TrainConfig
    parent_key: str | None = None

    def __post_init__(self):
        # The data the teacher trains on: a student's DataSpec asking for clean teachers (teacher_condition
        # `clean`) becomes its clean split here, so every caller builds, keys and loads the same teacher.
        if isinstance(self.data, DataSpec):
            object.__setattr__(self, "data", self.data.teacher_data())

    def __hash__(self):
        return hash(self.key())

    def validate(self) -> None:
        """Every check that needs no data and no compute; KdxError (one sentence) on a bad value."""
        if not isinstance(self.data, DataSpec):
            raise bad_value("data", self.data, "allowed: a DataSpec")
        if not isinstance(self.train, TrainConfig):
            raise bad_value("train", self.train, "allowed: a TrainConfig")
        self.data.validate()
        if self.parent_key is not None and not is_key(self.parent_key):
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
        info = dataset_info(self.data.dataset)
        with torch.device("meta"):  # shape check only: no memory, no compute
            build_model(self.train.arch, info.num_classes, tuple(info.input_shape))

    def canonical(self) -> dict:
        """The recipe as sorted, normalised JSON-able data, with a schema version.

        Fields that cannot change the run are normalised away so equal runs get equal keys:
        milestones and lr_gamma only matter for the multistep schedule; nesterov only with momentum;
        method hyperparameters are resolved (defaults filled in); views only where they apply
        (`keyed_train`)."""
        train = keyed_train(self.train, distilled=self.parent_key is not None,
                            augmented=dataset_info(self.data.dataset).augment == "crop_flip")
        return _norm({"schema": SCHEMA_VERSION, "kind": "kdx-teacher", "data": self.data.identity(),
                      "train": train, "parent_key": self.parent_key})

    def key(self) -> str:
        return key_of(self.canonical())

    def label(self) -> str:
        return recipe_label(self.canonical())


def recipe_label(canonical: dict) -> str:
    """Short human label from a canonical recipe, e.g. 'cnn1d_w16 e30 s0'."""
    t = canonical["train"]
    extra = " es" if t.get("schedule") == "early_stop" else ""
    if canonical.get("parent_key"):
        extra += f" {t['method']}<{canonical['parent_key'][:8]}"
    return f"{t['arch']} e{t['epochs']} s{t['seed']}{extra}"


def _flag(name: str, value) -> str | None:
    """`--name value` as `kdx teachers build` reads it; None for a value that is off or absent."""
    if value is None or value is False or value == [] or value == ():
        return None
    flag = "--" + name.replace("_", "-")
    if value is True:
        return flag
    if isinstance(value, (list, tuple)):
        return f"{flag} {','.join(map(str, value))}"
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


def build_command(canonical: dict, stop_epochs: Iterable[int] = ()) -> str:
    """The `kdx teachers build` command line that (re)builds this teacher: every keyed Recipe field of the
    canonical recipe (`keyed_train`) and its data, so the command builds the same key."""
    d, t = canonical["data"], canonical["train"]
    stops = sorted(set(int(e) for e in stop_epochs))
    recipe = {**{k: t.get(k) for k in _KEYED if k in t}, "views": t.get("views"),
              **{name: t.get("adversarial", {}).get(short) for name, short in _ADVERSARIAL.items()}}
    data = {"val_fraction": d["val_fraction"], "split_seed": d["split_seed"], **d.get("condition", {})}
    parts = ["kdx teachers build", f"--dataset {d['dataset']}", f"--arch {t['arch']}", f"--seeds {t['seed']}",
             _flag("stop_epochs", stops)]
    parts += [_flag(k, v) for k, v in recipe.items()] + [_flag(k, v) for k, v in data.items() if v != 0.0 or
                                                             k in ("val_fraction", "split_seed")]
    return " ".join(p for p in parts if p)


def check_stop_epochs(stop_epochs: Iterable[int], epochs: int) -> list[int]:
    """Sorted distinct stop epochs plus the final epoch; KdxError naming `stop_epochs` otherwise."""
    out = set()
    for e in stop_epochs:
        if isinstance(e, bool) or not isinstance(e, int) or not 1 <= e <= epochs:
            raise bad_value("stop_epochs", e, f"allowed: whole numbers from 1 to {epochs} (the teacher's epochs)")
        out.add(int(e))
    out.add(int(epochs))
    return sorted(out)


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


def manifest_problem(key: str, raw: bytes) -> str | None:
    """What is wrong with the bytes of teacher `key`'s manifest (one phrase), or None when it is a
    well-formed manifest of this schema whose recipe hashes to `key`."""
    try:
        m = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return f"not JSON: {e}"
    if not isinstance(m, dict) or m.get("schema") != SCHEMA_VERSION:
        return "not a kdx teacher manifest of schema version %d" % SCHEMA_VERSION
    try:
        if m["key"] != key or key_of(m["recipe"]) != key:
            return "its recipe does not hash to its key"
        for e, c in m["checkpoints"].items():
            int(e), c["file"], c["sha256"], int(c["bytes"])
        m["arch"], int(m["params"]), int(m["num_classes"]), list(m["input_shape"]), m["created"]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return f"malformed: {type(e).__name__} {e}"
    return None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_manifest(recipe: TeacherRecipe, params: int, num_classes: int, input_shape) -> dict:
    """The manifest of a teacher with nothing kept yet (the builder fills checkpoints, history, builds)."""
    return {"schema": SCHEMA_VERSION, "key": recipe.key(), "label": recipe.label(), "recipe": recipe.canonical(),
            "arch": recipe.train.arch, "params": int(params), "num_classes": int(num_classes),
            "input_shape": list(input_shape), "created": utc_now(), "checkpoints": {}, "history": [], "builds": []}


def plain_metrics(metrics: dict) -> dict:
    """Per-epoch metrics as JSON-safe plain numbers (non-finite floats become None)."""
    out = {}
    for k, v in metrics.items():
        v = v.item() if hasattr(v, "item") else v
        out[k] = None if isinstance(v, float) and not math.isfinite(v) else v
    return out


def manifest_bytes(manifest: dict) -> bytes:
    """The manifest as written: indented, sorted JSON; NaN refused (it would not read back as JSON)."""
    return json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False, default=_json_default).encode()


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
