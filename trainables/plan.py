"""From a search spec to what the trials need: teacher keys, fixed values, per-trial settings.

The plan is computed once on the driver and shipped to every trial (via `tune.with_parameters`),
so trials never re-read the spec and all of them agree on teacher keys.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

from explorer.data.registry import dataset_info
from explorer.methods import get_method
from explorer.models import build_model, count_params
from explorer.spec.search import SearchSpec
from explorer.teachers.entries import parse_teacher, teacher_chains, teacher_kind
from explorer.teachers.recipe import TeacherRecipe
from explorer.tracking import KIND_BASELINE, KIND_SEARCH, METHOD_PARAMS, NO_TEACHER, RECIPE_PARAMS
from explorer.training.fused import fused_problem


def teacher_slot(arch: str, stop: int, variant: dict | None = None) -> str:
    """How a trial names the teacher checkpoint it distils from: `<entry>@<stop epoch>`, followed by
    the searched teacher-recipe values when there are any (`cnn1d_w16@30 teachers.recipe.lr=0.1`)."""
    return f"{arch}@{stop}" + "".join(f" {k}={v}" for k, v in sorted((variant or {}).items()))


@dataclass
class Plan:
    name: str
    dataset: str
    student: str  # the spec's student architecture (the first, when it is searched)
    spec: SearchSpec
    epochs: int  # the student's (its recipe; a two-stage method runs its init stage before them)
    num_classes: int
    input_shape: tuple
    fixed: dict
    store_root: str
    sizes: dict[str, int] = field(default_factory=dict)  # architecture -> parameter count
    teacher_keys: dict[str, str] = field(default_factory=dict)  # slot -> store key (comma-joined for ensembles)
    teacher_params: dict[str, int] = field(default_factory=dict)  # teacher entry -> params (ensembles: the sum)
    teacher_kinds: dict[str, str] = field(default_factory=dict)  # teacher entry -> plain | distilled | ensemble
    teacher_chains: dict[str, str] = field(default_factory=dict)  # slot -> 'key<parent key<...' ('+' between members)
    teacher_epochs: dict[str, int] = field(default_factory=dict)  # slot -> the teacher run's epochs
    recipes: dict[str, TeacherRecipe] = field(default_factory=dict)  # store key -> recipe
    stops: dict[str, list[int]] = field(default_factory=dict)  # store key -> stop epochs to keep

    @property
    def student_params(self) -> int:
        return self.sizes[self.student]

    @property
    def trial_epochs(self) -> int:
        """The longest trial of the space (init stages included): ASHA's max_t, and the length taken for
        a report that does not carry its trial's own (trainables/clock.py)."""
        return self.spec.trial_epochs()

    def fuse_problem(self, point: dict, kind: str) -> str | None:
        """Why the seeds of trial `point` cannot train as fused members, or None: the one rule
        (explorer/training/fused.py `fused_problem`) on the trial's own TrainConfig and the data's shape."""
        train = self.settings(point | {"seed": 0}, kind)["train"]
        return fused_problem(train, self.spec.evaluate, self.num_classes, self.input_shape)

    def settings(self, config: dict, kind: str = KIND_SEARCH) -> dict:
        """Every value of one trial, by param name: the fixed ones overlaid with the trial's searched
        ones. Hyperparameters left at null take the method's default; the resolved values are what
        is logged (so a ckm trial logs its own T = 1, not kd's 4)."""
        s = dict(self.fixed) | dict(config.get("point", config))  # fixed-point experiments: {"point": {...}}
        if kind == KIND_BASELINE:
            s |= {"method": "ce"}
        method = get_method(s["method"])
        hp = method.resolve({h.name: s[h.name] for h in method.hparams if s.get(h.name) is not None})
        given = {k: v for k, v in hp.items() if s.get(k) is not None}
        train = self.spec.student_config(s, int(s["seed"]), s["method"], given)
        uses_teacher = method.needs_teacher
        variant = {k: s[k] for k in self.spec.teacher_variants()[0]} if uses_teacher else {}
        slot = teacher_slot(s["teacher"], s["teacher_stop_epoch"], variant) if uses_teacher else None
        t_params = self.teacher_params[s["teacher"]] if uses_teacher else None
        out = {
            "dataset": self.dataset, "student": train.arch, "epochs": self.epochs, "seed": int(s["seed"]),
            "method": s["method"],
            "teacher": s["teacher"] if uses_teacher else NO_TEACHER,
            "teacher_stop_epoch": s["teacher_stop_epoch"] if uses_teacher else None,
            "teacher_epochs": self.teacher_epochs[slot] if uses_teacher else None,
            "teacher_key": self.teacher_keys[slot] if uses_teacher else NO_TEACHER,
            "teacher_kind": self.teacher_kinds[s["teacher"]] if uses_teacher else NO_TEACHER,
            "teacher_chain": self.teacher_chains[slot] if uses_teacher else NO_TEACHER,
            "method_params": given,
            "student_params": self.sizes[train.arch],
            "teacher_params": t_params,
            "capacity_ratio": t_params / self.sizes[train.arch] if uses_teacher else None,
            "train": train,
            # the searched student values (architecture, learning rate, ...), for the run's name
            "searched_student": {k: s[k] for k in self.spec.searched_axes() if k.startswith("student") and k in s},
            "searched_teacher": variant,  # the searched teacher-recipe values (logged as params too)
        }
        out |= variant
        out |= {name: hp.get(name) for name in METHOD_PARAMS}
        out |= {name: getattr(train, name.removeprefix("student.")) for name in RECIPE_PARAMS}
        return out


def member_points(config: dict) -> list[dict] | None:
    """The points of a fused trial's members, None for a trial of one model. `members` holds the seeds
    of the trial's config, or (a confirmation trial of several configs, trainables/confirm.py) each
    member's own point: its config's searched values and its seed."""
    point = dict(config.get("point", config))
    members = point.pop("members", None)
    return [point | (m if isinstance(m, dict) else {"seed": m}) for m in members] if members else None


def member_tag(member) -> str:
    """A member's `kdx.member` tag in MLflow: its seed, or for a member with a point of its own, the
    point (sorted JSON; a trial of several configs has each seed once per config)."""
    return json.dumps(member, sort_keys=True, default=str) if isinstance(member, dict) else str(member)


def make_plan(spec: SearchSpec, store_root: str) -> Plan:
    data = spec.data_spec()
    info = dataset_info(data.dataset)
    plan = Plan(
        name=spec.name, dataset=data.dataset, student=spec.student.arch, spec=spec,
        epochs=spec.student.epochs, num_classes=info.num_classes, input_shape=tuple(info.input_shape),
        fixed=spec.fixed_values(), store_root=store_root,
    )

    def size(arch: str) -> int:
        if arch not in plan.sizes:
            plan.sizes[arch] = count_params(build_model(arch, info.num_classes, info.input_shape))
        return plan.sizes[arch]

    for arch in spec.student_archs():
        size(arch)
    t = spec.teachers
    for entry, variant, stop in itertools.product(t.entries(), spec.teacher_variants(), t.stops()):
        members = parse_teacher(entry, t.seed)
        plan.teacher_kinds[entry] = teacher_kind(members)
        plan.teacher_params[entry] = sum(size(chain[0][0]) for chain in members)
        slot = teacher_slot(entry, stop, variant)
        keys, chains = [], []
        recipe = spec.teacher_recipe(variant)
        for links in teacher_chains(entry, data, recipe, t.seed, stop, t.distill_method(), t.early_stop_schedule):
            for link in links:
                plan.recipes[link.key] = link.recipe
                wanted = plan.stops.setdefault(link.key, [])
                if link.epoch not in wanted:
                    wanted.append(link.epoch)
            plan.teacher_epochs[slot] = links[-1].recipe.train.epochs
            keys.append(links[-1].key)
            chains.append("<".join(link.key for link in reversed(links)))
        plan.teacher_keys[slot] = ",".join(keys)
        plan.teacher_chains[slot] = "+".join(chains)
    return plan


def _values_text(values: dict, prefix: str, numbers_only: bool = False) -> str:
    """' lr=0.05 cnn1d_w8' for searched values: numbers as name=value (name without `prefix`), others bare."""
    return "".join(f" {k.removeprefix(prefix)}={v:.3g}" if isinstance(v, float) else f" {v}"
                   for k, v in values.items() if isinstance(v, float) or not numbers_only)


def trial_label(settings: dict) -> str:
    """A readable MLflow run name, e.g. `cnn1d_w16@e20 T=4.2 a=0.71 s0` (searched student values,
    such as its architecture or learning rate, come after the teacher)."""
    if settings["teacher"] == NO_TEACHER:
        extra = "".join(f" {k}={settings[k]:.3g}" for k in ("epsilon", "delta", "temperature")
                        if settings.get(k) is not None and settings["method"] != "ce")
        lr = _values_text(settings.get("searched_student", {}), "student.", numbers_only=True)
        return f"{settings['student']} {settings['method']}{extra}{lr} s{settings['seed']}"
    teacher = _values_text(settings.get("searched_teacher", {}), "teachers.recipe.")
    student = _values_text(settings.get("searched_student", {}), "student.")
    parts = [f"{settings['teacher']}@e{settings['teacher_stop_epoch']}{teacher}{student}"]
    if settings["method"] != "kd":
        parts.append(settings["method"])
    if settings["temperature"] is not None:
        parts.append(f"T={settings['temperature']:.3g}")
    if settings["alpha"] is not None:
        parts.append(f"a={settings['alpha']:.2f}")
    if settings["kd_stop_epoch"] is not None:
        parts.append(f"kdstop={settings['kd_stop_epoch']}")
    if settings.get("teacher_temperature") is not None:
        parts.append(f"Tt={settings['teacher_temperature']:.3g}")
    parts.append(f"s{settings['seed']}")
    return " ".join(parts)
