"""The `kdx` command line's core: the command registry, argument helpers and the commands that need
only this package (models, datasets, train, methods).

`trainables` and `analysis` register their own commands into the same registry; the thin `kdx`
package (kdx/cli.py) imports all three and runs the parser, so `explorer` never imports them.
Flags are derived from the one definition of each concept: recipe flags from `Recipe`'s fields,
data flags from the spec's `dataset` section, method flags from the method registry.

Every user-input problem is a `KdxError`, printed as one line (`kdx: error: ...`), exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from typing import Callable

from .errors import KdxError, bad_value


@dataclass
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register `fn(args)` as the `kdx NAME` subcommand."""
    def wrap(fn):
        COMMANDS[name] = Command(name, help, add_arguments, fn)
        return fn
    return wrap


# ------------------------------------------------------------------ argument helpers


def int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: comma-separated whole numbers") from None


def str_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _flag_type(annotation, default):
    """argparse type of a pydantic field: int, float, str, bool (a switch) or a list of ints."""
    text = str(annotation)
    if "tuple[int" in text or "list[int" in text:
        return int_list
    for t in (bool, int, float):
        if annotation in (t, t | None) or isinstance(default, t):
            return t
    return str


def add_model_arguments(group, model, prefix: str = "", skip: tuple[str, ...] = (), overrides: dict | None = None):
    """One flag per field of the pydantic `model` (`--<prefix><field>`), its default and help from the field."""
    for name, f in model.model_fields.items():
        if name in skip:
            continue
        default = (overrides or {}).get(name, f.default)
        typ = _flag_type(f.annotation, default)
        flag = f"--{prefix}{name.replace('_', '-')}"
        if typ is bool:
            group.add_argument(flag, action="store_true", help=f.description)
        else:
            shown = list(default) if isinstance(default, tuple) else default
            group.add_argument(flag, type=typ, default=shown, help=f"{f.description or name} (default {shown})")


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The data flags: the spec's `dataset:` fields (`--dataset` is its `name`)."""
    from .data import DatasetSection

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=DatasetSection.model_fields["name"].default,
                   help=DatasetSection.model_fields["name"].description)
    add_model_arguments(g, DatasetSection, skip=("name",))


def data_spec_from_args(args: argparse.Namespace):
    """The data flags are named like a spec's `dataset:` fields and checked the same way."""
    from .data import DatasetSection, parse_dataset


    fields = {f: getattr(args, f) for f in DatasetSection.model_fields if f != "name"}
    return parse_dataset({"name": args.dataset} | fields)


def print_json(obj) -> None:
    """One JSON object on one line; NaN/inf become null so every JSON parser reads it."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    print(json.dumps(clean(obj), sort_keys=True), flush=True)


# ------------------------------------------------------------------ core commands


def _models_args(p):
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--input-shape", type=int_list, default=None,
                   help="per-sample input shape, e.g. 3,32,32 (default: 1,40 for cnn1d/mlp, 3,32,32 otherwise)")
    p.add_argument("--json", action="store_true")


@command("models", "list architectures with their parameter counts", _models_args)
def cmd_models(args):
    from .models import build_model, count_params, list_models

    rows = []
    for name in list_models():
        shape = tuple(args.input_shape) if args.input_shape else (
            (1, 40) if name.startswith(("cnn1d", "mlp")) else (3, 32, 32))
        rows.append({"arch": name, "params": count_params(build_model(name, args.num_classes, shape)),
                     "input_shape": list(shape)})
    if args.json:
        print_json({"num_classes": args.num_classes, "models": rows})
    else:
        for r in rows:
            print(f"{r['arch']:<14} {r['params']:>12,}  input {tuple(r['input_shape'])}")


def _datasets_args(p):
    p.add_argument("--json", action="store_true")


@command("datasets", "list datasets with their shapes", _datasets_args)
def cmd_datasets(args):
    from .data import DATASETS

    rows = [{"name": d.name, "num_classes": d.num_classes, "input_shape": list(d.input_shape),
             "augment": d.augment, "description": d.description} for d in DATASETS.values()]
    if args.json:
        print_json({"datasets": rows})
    else:
        for r in rows:
            print(f"{r['name']:<10} {r['num_classes']:>4} classes  input {tuple(r['input_shape'])!s:<12} "
                  f"augment={r['augment']:<9} {r['description']}")


def add_recipe_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """Optimiser/schedule flags from `Recipe`'s fields; `prefix` = 'teacher-' gives the teacher's own."""
    from .config import Recipe

    add_model_arguments(p.add_argument_group(f"{prefix or 'student '}recipe"), Recipe, prefix)


def recipe_from_args(args, prefix: str, arch: str, seed: int, method: str = "ce", method_params=None):
    from .config import Recipe, TrainConfig

    fields = {f: getattr(args, prefix + f) for f in Recipe.model_fields}
    return TrainConfig(arch=arch, seed=seed, method=method, method_params=method_params or {}, **fields)


def add_hparam_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per method hyperparameter of the registry, with each method's default in the help."""
    from .methods import hparam_declarations, hparam_names

    g = p.add_argument_group("method hyperparameters (default: the method's own, see `kdx methods`)")
    for name in hparam_names():
        decls = hparam_declarations(name)
        defaults = ", ".join(f"{m.name} {h.default}" for m, h in decls)
        g.add_argument(f"--{name.replace('_', '-')}", type=int if decls[0][1].integer else float, default=None,
                       help=f"{decls[0][1].help} (defaults: {defaults})")


def _train_args(p):
    add_data_arguments(p)
    p.add_argument("--student", required=True, help="student architecture (see `kdx models`)")
    p.add_argument("--teacher", default=None,
                   help="teacher: an architecture, 'a<b' (a distilled from b; takd), 'a^g' (born-again generation "
                        "g), 'a:sN' (seed N), 'a+b' or 'a,b' (an ensemble; mkd); trained first (or reused)")
    p.add_argument("--method", default=None, help="distillation method (default: kd with a teacher, else ce)")
    add_hparam_arguments(p)
    p.add_argument("--chain-method", default="kd",
                   help="how links of a teacher chain ('a<b', 'a^g') are distilled (default kd at its defaults)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline", action="store_true", help="also train the CE-only student (same seed)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="last line: one JSON object with the final metrics")
    add_recipe_arguments(p)
    add_recipe_arguments(p, "teacher-")
    p.add_argument("--store", default=None,
                   help="teacher store: a path or a URI pyarrow understands (default ./kdx_runs/teachers)")
    p.add_argument("--teacher-stop-epoch", type=int, default=None,
                   help="use the teacher's checkpoint at this epoch (default: its last epoch, --teacher-epochs)")


def _progress(label: str):
    def show(epoch, m, trainer):
        extra = f" kd_agree {m['kd_agreement']:.3f}" if "kd_agreement" in m else ""
        print(f"[{label}] epoch {epoch:>3}/{trainer.cfg.epochs} loss {m['train_loss']:.4f} "
              f"val_acc {m['val_acc']:.4f} test_acc {m['test_acc']:.4f}{extra} "
              f"({m['samples_per_second']:,.0f} samples/s)", flush=True)
    return show


def obtain_teacher(args, spec, splits, device):
    """The teacher(s) for `kdx train`, from the teacher store: reused when there, else built (or
    extended to `--teacher-stop-epoch`) once and kept. `--teacher` takes the spec's teacher syntax
    (explorer/teachers.py; ',' also joins an ensemble). Links below the teacher used are distilled
    with `--chain-method` at its defaults and used at their final epoch.
    Returns (model or list of models, metrics at the stop epoch, teacher kind)."""
    from types import SimpleNamespace

    from .config import Recipe
    from .methods import get_method
    from .store import TeacherStore, default_store_root
    from .teachers import parse_teacher, teacher_chains, teacher_kind
    from .train import default_device

    entry = args.teacher.replace(",", "+")
    recipe = Recipe(**{f: getattr(args, "teacher_" + f) for f in Recipe.model_fields})
    stop = recipe.epochs if args.teacher_stop_epoch is None else args.teacher_stop_epoch
    if isinstance(stop, bool) or not isinstance(stop, int) or not 1 <= stop <= recipe.epochs:
        raise bad_value("--teacher-stop-epoch", stop, f"allowed: a whole number from 1 to {recipe.epochs} "
                        f"(--teacher-epochs)")
    chain_method = get_method(args.chain_method)
    if not chain_method.needs_teacher or "plain" not in chain_method.teacher_kinds:
        raise bad_value("--chain-method", args.chain_method, "allowed: a method that distils from one teacher "
                        "(kd, ckm, wsl)")
    store = TeacherStore(args.store or default_store_root())
    models, infos = [], []
    for links in teacher_chains(entry, spec, recipe, args.seed, stop, (args.chain_method, {}), field="--teacher"):
        for link in links:
            show = _progress(f"teacher {link.arch}" + (f" <{link.recipe.parent_key[:8]}" if link.recipe.parent_key else ""))
            view = SimpleNamespace(cfg=link.recipe.train)  # what _progress reads from a trainer
            record, built = store.ensure(link.recipe, [link.epoch], device=device, splits=splits,
                                         on_epoch=lambda e, m, show=show, v=view: show(e, m, v))
            how = "built and kept" if built else "reused"
            print(f"teacher {record.label} [{record.key}] epoch {link.epoch}: {how} in {store.root}", flush=True)
        model, info = store.load_model(links[-1].key, stop, device=device or default_device())
        models.append(model)
        infos.append(info)
    kind = teacher_kind(parse_teacher(entry, args.seed, field="--teacher"))
    if len(models) == 1:
        info = infos[0]
        return models[0], {"val_acc": info["val_acc"], "test_acc": info["test_acc"], "epoch": stop,
                           "key": info["key"]}, kind
    return models, {"val_acc": None, "test_acc": None, "epoch": stop,
                    "key": ",".join(i["key"] for i in infos)}, kind


@command("train", "train one student (and its teacher, if named)", _train_args)
def cmd_train(args):
    from .data import load_splits
    from .methods import get_method, hparam_names
    from .train import Trainer, evaluate

    method = args.method or ("kd" if args.teacher else "ce")
    m = get_method(method)
    given = {k: getattr(args, k) for k in hparam_names() if getattr(args, k) is not None}
    known = {h.name for h in m.hparams}
    unused = sorted(set(given) - known)
    if unused:
        raise bad_value(f"--{unused[0].replace('_', '-')}", given[unused[0]],
                        f"method {method!r} takes: {', '.join(sorted(known)) or 'no hyperparameters'}")
    student_cfg = recipe_from_args(args, "", args.student, args.seed, method, given)
    if m.needs_teacher and not args.teacher and m.same_arch_teacher:
        args.teacher = args.student  # tf_kd_self: the student's own architecture, trained with CE first
    if m.needs_teacher and not args.teacher:
        raise bad_value("--teacher", None, f"method {method!r} needs a teacher; name one with --teacher")
    if args.teacher and m.needs_teacher:
        from .teachers import parse_teacher, teacher_kind

        members = parse_teacher(args.teacher.replace(",", "+"), args.seed, field="--teacher")
        problem = m.teacher_problem(teacher_kind(members), same_arch=members[0][0][0] == args.student)
        if problem:
            raise bad_value("--teacher", args.teacher, problem)
        for chain in members:
            for arch, seed in chain:
                recipe_from_args(args, "teacher_", arch, seed).validate()
    elif args.teacher:
        raise bad_value("--teacher", args.teacher, f"method {method!r} takes no teacher")
    student_cfg.validate()  # all checks before any compute
    spec = data_spec_from_args(args)
    splits = load_splits(spec)
    result = {"dataset": args.dataset, "student": args.student, "method": method, "seed": args.seed}
    teacher = None
    if args.teacher:
        teacher, t_final, kind = obtain_teacher(args, spec, splits, args.device)
        result |= {"teacher": args.teacher, "teacher_kind": kind, "teacher_key": t_final["key"]}
        if t_final["val_acc"] is None:  # an ensemble: evaluate it as one
            from .train import TeacherEnsemble

            ens = TeacherEnsemble(teacher)
            s = splits
            t_final["val_acc"] = evaluate(ens, s.val_x, s.val_y)[0]
            t_final["test_acc"] = evaluate(ens, s.test_x, s.test_y)[0]
        result |= {"teacher_val_acc": t_final["val_acc"], "teacher_test_acc": t_final["test_acc"]}
    trainer = Trainer(student_cfg, splits, args.device, teacher=teacher)
    result |= {"method_params": trainer.hp}
    trainer.run(_progress(f"student {args.student} {method}"))
    result |= trainer.history[-1]
    if args.baseline:
        base_cfg = recipe_from_args(args, "", args.student, args.seed)
        base = Trainer(base_cfg, splits, args.device)
        base.run(_progress(f"student {args.student} ce"))
        result |= {"baseline_val_acc": base.history[-1]["val_acc"], "baseline_test_acc": base.history[-1]["test_acc"]}
    summary = [f"student {args.student} ({method}): val {result['val_acc']:.4f} test {result['test_acc']:.4f}"]
    if args.teacher:
        summary.insert(0, f"teacher {args.teacher}: val {result['teacher_val_acc']:.4f} test {result['teacher_test_acc']:.4f}")
    if args.baseline:
        summary.append(f"student {args.student} (ce only): val {result['baseline_val_acc']:.4f} "
                       f"test {result['baseline_test_acc']:.4f}")
    print("\n".join(summary), flush=True)
    if args.json:
        print_json(result)


def _methods_args(p):
    p.add_argument("--json", action="store_true", help="one JSON object: every method with its hyperparameters")


@command("methods", "list distillation methods with their hyperparameters, defaults and sources", _methods_args)
def cmd_methods(args):
    from .methods import METHODS

    rows = []
    for m in METHODS.values():
        rows.append({
            "name": m.name, "description": m.description, "source": m.source,
            "needs_teacher": m.needs_teacher, "teacher_kinds": list(m.teacher_kinds),
            "same_arch_teacher": m.same_arch_teacher,
            "hparams": [{"name": h.name, "default": h.default, "range": h.range_text(), "integer": h.integer,
                         "optional": h.optional, "help": h.help} for h in m.hparams],
        })
    if args.json:
        print_json({"methods": rows})
        return
    for r in rows:
        teacher = ("teacher: " + "/".join(r["teacher_kinds"])) if r["needs_teacher"] else "no teacher"
        print(f"{r['name']:<11} {r['description']}  [{teacher}]")
        for h in r["hparams"]:
            print(f"    {h['name']:<20} default {h['default']!s:<6} {h['range']:<32} {h['help']}")
        print(f"    source: {r['source']}")


# ------------------------------------------------------------------ the parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of every registered command (`kdx/cli.py` registers the other layers' first)."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="kdx", description="Explore knowledge-distillation hyperparameters "
                                     "and the teacher-student capacity gap.")
    parser.add_argument("--version", action="version", version=f"kdx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in COMMANDS.values():
        sp = sub.add_parser(c.name, help=c.help, description=c.help)
        c.add_arguments(sp)
        sp.set_defaults(_run=c.run)
    return parser


def run(argv: list[str] | None = None) -> int:
    """Parse and run one command; user-input problems print one line and return 2."""
    import sys

    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KdxError as e:
        print(f"kdx: error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("kdx: interrupted", file=sys.stderr, flush=True)
        return 130
