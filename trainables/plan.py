"""From a search spec to what the trials need: teacher keys, fixed values, per-trial settings.

The plan is computed once on the driver and shipped to every trial (via `tune.with_parameters`),
so trials never re-read the spec and all of them agree on teacher keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from explorer.methods import get_method
from explorer.models import build_model, count_params
from explorer.spec import SearchSpec, parse_teacher, teacher_kind
from explorer.store import TeacherRecipe
from explorer.tracking import KIND_BASELINE, KIND_SEARCH, METHOD_PARAMS, NO_TEACHER
from explorer.train import TrainConfig


def teacher_slot(arch: str, stop: int) -> str:
    """How a trial names the teacher checkpoint it distils from: `<arch>@<stop epoch>`."""
    return f"{arch}@{stop}"


@dataclass
class Plan:
    name: str
    dataset: str
    student: str
    student_recipe: dict
    epochs: int
    num_classes: int
    input_shape: tuple
    fixed: dict
    store_root: str
    student_params: int
    teacher_keys: dict[str, str] = field(default_factory=dict)  # slot -> store key (comma-joined for ensembles)
    teacher_params: dict[str, int] = field(default_factory=dict)  # teacher entry -> params (ensembles: the sum)
    teacher_kinds: dict[str, str] = field(default_factory=dict)  # teacher entry -> plain | distilled | ensemble
    teacher_chains: dict[str, str] = field(default_factory=dict)  # slot -> 'key<parent key<...' ('+' between members)
    teacher_epochs: dict[str, int] = field(default_factory=dict)  # slot -> the teacher run's epochs
    recipes: dict[str, TeacherRecipe] = field(default_factory=dict)  # store key -> recipe
    stops: dict[str, list[int]] = field(default_factory=dict)  # store key -> stop epochs to keep

    def settings(self, config: dict, kind: str = KIND_SEARCH) -> dict:
        """Every value of one trial: the fixed ones overlaid with the trial's searched ones.

        Hyperparameters left at null take the method's default; the resolved values are what is
        logged (so a ckm trial logs its own T = 1, not kd's 4)."""
        s = dict(self.fixed) | dict(config.get("point", config))  # fixed-point experiments: {"point": {...}}
        if kind == KIND_BASELINE:
            s |= {"method": "ce"}
        method = get_method(s["method"])
        hp_names = {h.name for h in method.hparams}
        hp = method.resolve({k: s[k] for k in hp_names if s.get(k) is not None})
        uses_teacher = method.needs_teacher
        slot = teacher_slot(s["teacher"], s["teacher_stop_epoch"]) if uses_teacher else None
        t_params = self.teacher_params[s["teacher"]] if uses_teacher else None
        out = {
            "dataset": self.dataset, "student": self.student, "epochs": self.epochs, "seed": int(s["seed"]),
            "method": s["method"],
            "teacher": s["teacher"] if uses_teacher else NO_TEACHER,
            "teacher_stop_epoch": s["teacher_stop_epoch"] if uses_teacher else None,
            "teacher_epochs": self.teacher_epochs[slot] if uses_teacher else None,
            "teacher_key": self.teacher_keys[slot] if uses_teacher else NO_TEACHER,
            "teacher_kind": self.teacher_kinds[s["teacher"]] if uses_teacher else NO_TEACHER,
            "teacher_chain": self.teacher_chains[slot] if uses_teacher else NO_TEACHER,
            "method_params": {k: v for k, v in hp.items() if s.get(k) is not None},
            "student_params": self.student_params,
            "teacher_params": t_params,
            "capacity_ratio": t_params / self.student_params if uses_teacher else None,
        }
        for name in METHOD_PARAMS:
            out[name] = hp.get(name)
        return out

    def train_config(self, settings: dict) -> TrainConfig:
        r = dict(self.student_recipe)
        r["milestones"] = tuple(r["milestones"])
        return TrainConfig(arch=self.student, seed=settings["seed"], method=settings["method"],
                           method_params=settings["method_params"], **r)


def make_plan(spec: SearchSpec, store_root: str) -> Plan:
    data = spec.data_spec()
    from explorer.data import DATASETS

    info = DATASETS[data.dataset]
    size = lambda arch: count_params(build_model(arch, info.num_classes, info.input_shape))  # noqa: E731
    recipe = spec.student.model_dump()
    student = recipe.pop("arch")
    plan = Plan(
        name=spec.name, dataset=data.dataset, student=student, student_recipe=recipe,
        epochs=spec.student.epochs, num_classes=info.num_classes, input_shape=tuple(info.input_shape),
        fixed=spec.fixed_values(), store_root=store_root, student_params=size(student),
    )
    for entry in spec.teachers.entries():
        members = parse_teacher(entry, spec.teachers.seed)
        plan.teacher_kinds[entry] = teacher_kind(members)
        plan.teacher_params[entry] = sum(size(chain[0][0]) for chain in members)
        for stop in spec.teachers.stops():
            keys, chains = [], []
            for links in spec.teacher_links(entry, stop):
                parent, chain_keys = None, []
                for depth, (arch, cfg) in enumerate(links):
                    teacher = TeacherRecipe(data=data, train=cfg, parent_key=parent)
                    key = teacher.key()
                    plan.recipes[key] = teacher
                    plan.stops.setdefault(key, [])
                    head = depth == len(links) - 1
                    want = stop if head else cfg.epochs
                    if want not in plan.stops[key]:
                        plan.stops[key].append(want)
                    parent = key
                    chain_keys.append(key)
                    if head:
                        plan.teacher_epochs[teacher_slot(entry, stop)] = cfg.epochs
                keys.append(parent)
                chains.append("<".join(reversed(chain_keys)))
            slot = teacher_slot(entry, stop)
            plan.teacher_keys[slot] = ",".join(keys)
            plan.teacher_chains[slot] = "+".join(chains)
    return plan


def trial_label(settings: dict) -> str:
    """A readable MLflow run name, e.g. `cnn1d_w16@e20 T=4.2 a=0.71 s0`."""
    if settings["teacher"] == NO_TEACHER:
        extra = "".join(f" {k}={settings[k]:.3g}" for k in ("epsilon", "delta", "temperature")
                        if settings.get(k) is not None and settings["method"] != "ce")
        return f"{settings['student']} {settings['method']}{extra} s{settings['seed']}"
    parts = [f"{settings['teacher']}@e{settings['teacher_stop_epoch']}"]
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
