"""From a search spec to what the trials need: teacher keys, fixed values, per-trial settings.

The plan is computed once on the driver and shipped to every trial (via `tune.with_parameters`),
so trials never re-read the spec and all of them agree on teacher keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from explorer.methods import get_method
from explorer.models import build_model, count_params
from explorer.spec import SearchSpec
from explorer.store import TeacherRecipe
from explorer.tracking import KIND_BASELINE, KIND_SEARCH, NO_TEACHER
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
    teacher_keys: dict[str, str] = field(default_factory=dict)  # slot -> store key
    teacher_params: dict[str, int] = field(default_factory=dict)  # arch -> params
    teacher_epochs: dict[str, int] = field(default_factory=dict)  # slot -> the teacher run's epochs
    recipes: dict[str, TeacherRecipe] = field(default_factory=dict)  # store key -> recipe
    stops: dict[str, list[int]] = field(default_factory=dict)  # store key -> stop epochs to keep

    def settings(self, config: dict, kind: str = KIND_SEARCH) -> dict:
        """Every value of one trial: the fixed ones overlaid with the trial's searched ones."""
        s = dict(self.fixed) | dict(config)
        if kind == KIND_BASELINE:
            s |= {"method": "ce"}
        method = get_method(s["method"])
        hp_names = {h.name for h in method.hparams}
        uses_teacher = method.needs_teacher
        slot = teacher_slot(s["teacher"], s["teacher_stop_epoch"]) if uses_teacher else None
        t_params = self.teacher_params[s["teacher"]] if uses_teacher else None
        return {
            "dataset": self.dataset, "student": self.student, "epochs": self.epochs, "seed": int(s["seed"]),
            "method": s["method"],
            "teacher": s["teacher"] if uses_teacher else NO_TEACHER,
            "teacher_stop_epoch": s["teacher_stop_epoch"] if uses_teacher else None,
            "teacher_epochs": self.teacher_epochs[slot] if uses_teacher else None,
            "teacher_key": self.teacher_keys[slot] if uses_teacher else NO_TEACHER,
            "temperature": s.get("temperature") if "temperature" in hp_names else None,
            "alpha": s.get("alpha") if "alpha" in hp_names else None,
            "kd_stop_epoch": s.get("kd_stop_epoch") if "kd_stop_epoch" in hp_names else None,
            "method_params": {k: s[k] for k in hp_names if k in s},
            "student_params": self.student_params,
            "teacher_params": t_params,
            "capacity_ratio": t_params / self.student_params if uses_teacher else None,
        }

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
    for arch, stop, cfg in spec.teacher_configs():
        teacher = TeacherRecipe(data=data, train=cfg)
        key = teacher.key()
        slot = teacher_slot(arch, stop)
        plan.teacher_keys[slot] = key
        plan.teacher_epochs[slot] = cfg.epochs
        plan.teacher_params.setdefault(arch, size(arch))
        plan.recipes[key] = teacher
        plan.stops.setdefault(key, [])
        if stop not in plan.stops[key]:
            plan.stops[key].append(stop)
    return plan


def trial_label(settings: dict) -> str:
    """A readable MLflow run name, e.g. `cnn1d_w16@e20 T=4.2 a=0.71 s0`."""
    if settings["teacher"] == NO_TEACHER:
        return f"{settings['student']} {settings['method']} s{settings['seed']}"
    parts = [f"{settings['teacher']}@e{settings['teacher_stop_epoch']}"]
    if settings["method"] != "kd":
        parts.append(settings["method"])
    if settings["temperature"] is not None:
        parts.append(f"T={settings['temperature']:.3g}")
    if settings["alpha"] is not None:
        parts.append(f"a={settings['alpha']:.2f}")
    if settings["kd_stop_epoch"] is not None:
        parts.append(f"kdstop={settings['kd_stop_epoch']}")
    parts.append(f"s{settings['seed']}")
    return " ".join(parts)
