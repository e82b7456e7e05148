"""`kdx train`: one student (and its teacher, from the teacher store), registered with the CLI in
explorer/cli/commands.py. The flags derive from the one definition of each concept: the data flags from the
spec's `dataset` section, the recipe flags from `Recipe` (the teacher's own, `--teacher-*`, default
to the student's where left out), the method flags from the method registry."""

from __future__ import annotations

from explorer.cli.commands import (add_data_arguments, add_hparam_arguments, add_recipe_arguments, command,
                                   data_spec_from_args, print_json, recipe_from_args)
from explorer.errors import bad_value


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
    p.add_argument("--seed", type=int, default=0, help="the student's seed (init, data order, augmentation)")
    p.add_argument("--teacher-seed", type=int, default=0,
                   help="the teacher's seed, fixed whatever --seed is, as a spec's teachers.seed (default 0); "
                        "'a:sN' in --teacher sets one link's")
    p.add_argument("--baseline", action="store_true", help="also train the CE-only student (same seed)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="last line: one JSON object with the final metrics")
    add_recipe_arguments(p)
    add_recipe_arguments(p, "teacher-", overrides={"epochs": None})
    for action in p._actions:  # the teacher trains as long as the student unless told otherwise
        if action.dest == "teacher_epochs":
            action.help = "the teacher's epochs (default: the student's --epochs)"
    p.add_argument("--store", default=None,
                   help="teacher store: a path or a URI pyarrow understands (default ./kdx_runs/teachers)")
    p.add_argument("--teacher-stop-epoch", type=int, default=None,
                   help="use the teacher's checkpoint at this epoch (default: its last epoch, --teacher-epochs)")
    # the values and their meaning are defined once, explorer/data/condition.py TEACHER_CONDITIONS (checked in cmd_train)
    p.add_argument("--teacher-data-condition", default="same",
                   help="the teacher's training data, as a spec's teachers.data_condition: same (the data flags' "
                        "condition) or clean (no --label-noise, imbalance or --omit-classes; default same)")


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
    (explorer/teachers/entries.py; ',' also joins an ensemble). Links below the teacher used are distilled
    with `--chain-method` at its defaults and used at their final epoch.
    Returns (StoredTeacher or a list of them, metrics at the stop epoch, teacher kind)."""
    from types import SimpleNamespace

    from explorer.config import Recipe
    from explorer.methods import get_method
    from explorer.teachers.entries import parse_teacher, teacher_chains, teacher_kind
    from explorer.teachers.store import TeacherStore, default_store_root
    from explorer.training.build import ensure_teacher
    from explorer.training.loop import default_device

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
    for links in teacher_chains(entry, spec, recipe, args.teacher_seed, stop, (args.chain_method, {}), field="--teacher"):
        for link in links:
            show = _progress(f"teacher {link.arch}" + (f" <{link.recipe.parent_key[:8]}" if link.recipe.parent_key else ""))
            view = SimpleNamespace(cfg=link.recipe.train)  # what _progress reads from a trainer
            same_data = link.recipe.data.identity() == spec.identity()  # else (a clean teacher) the store loads its own
            record, built = ensure_teacher(store, link.recipe, [link.epoch], device=device, splits=splits if same_data else None,
                                         on_epoch=lambda e, m, show=show, v=view: show(e, m, v))
            how = "built and kept" if built else "reused"
            print(f"teacher {record.label} [{record.key}] epoch {link.epoch}: {how} in {store.root}", flush=True)
        model, info = store.teacher(links[-1].key, stop, device=device or default_device())
        models.append(model)
        infos.append(info)
    kind = teacher_kind(parse_teacher(entry, args.teacher_seed, field="--teacher"))
    if len(models) == 1:
        info = infos[0]
        return models[0], {"val_acc": info["val_acc"], "test_acc": info["test_acc"], "epoch": stop,
                           "key": info["key"]}, kind
    return models, {"val_acc": None, "test_acc": None, "epoch": stop,
                    "key": ",".join(i["key"] for i in infos)}, kind


def _check_teacher(args, method) -> None:
    """`--teacher` fits `--method` and `--student` (the spec's one check: `distillation_problem`), and every
    link's recipe is valid, before any compute."""
    from explorer.teachers.entries import distillation_problem, parse_teacher

    entry = args.teacher.replace(",", "+") if args.teacher else None
    problem = distillation_problem(method, args.student, entry, args.teacher_seed, field="--teacher")
    if problem:
        raise bad_value("--teacher", args.teacher, problem)
    for chain in parse_teacher(entry, args.teacher_seed, field="--teacher") if entry else []:
        for arch, seed in chain:
            recipe_from_args(args, "teacher_", arch, seed).validate()


def _student_config(args):
    """The student's TrainConfig and method from the flags, every flag checked before any compute."""
    from explorer.methods import get_method, hparam_names

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
    _check_teacher(args, m)
    student_cfg.validate()  # all checks before any compute
    return student_cfg, method


def _data_spec(args):
    from dataclasses import replace

    from explorer.data.condition import TEACHER_CONDITIONS

    if args.teacher_data_condition not in TEACHER_CONDITIONS:
        raise bad_value("--teacher-data-condition", args.teacher_data_condition,
                        f"allowed: {', '.join(f'{k} ({v})' for k, v in TEACHER_CONDITIONS.items())}")
    return replace(data_spec_from_args(args), teacher_condition=args.teacher_data_condition)


def _teacher(args, spec, splits) -> tuple:
    """(the teacher module or an ensemble's list, its result fields) from the store."""
    from explorer.teachers.views import module_of
    from explorer.training.evaluation import TeacherEnsemble, evaluate

    teacher, t_final, kind = obtain_teacher(args, spec, splits, args.device)
    if t_final["val_acc"] is None:  # an ensemble: evaluate it as one
        ens, s = TeacherEnsemble([module_of(t) for t in teacher]), splits
        t_final["val_acc"] = evaluate(ens, s.val_x, s.val_y)[0]
        t_final["test_acc"] = evaluate(ens, s.test_x, s.test_y)[0]
    return teacher, {"teacher": args.teacher, "teacher_seed": args.teacher_seed, "teacher_kind": kind,
                     "teacher_key": t_final["key"],
                     "teacher_val_acc": t_final["val_acc"], "teacher_test_acc": t_final["test_acc"]}


def _summary(args, method: str, result: dict) -> str:
    summary = [f"student {args.student} ({method}): val {result['val_acc']:.4f} test {result['test_acc']:.4f}"]
    if args.teacher:
        summary.insert(0, f"teacher {args.teacher}: val {result['teacher_val_acc']:.4f} test {result['teacher_test_acc']:.4f}")
    if "test_acc_omitted" in result:  # the student's training split lacks some classes
        summary.append("on the classes the student never saw: test " + ", ".join(
            f"{who} {result[key]:.4f}" for who, key in (("student", "test_acc_omitted"),
                                                         ("teacher", "teacher_test_acc_omitted")) if key in result))
    if args.baseline:
        summary.append(f"student {args.student} (ce only): val {result['baseline_val_acc']:.4f} "
                       f"test {result['baseline_test_acc']:.4f}")
    return "\n".join(summary)


@command("train", "train one student (and its teacher, if named)", _train_args)
def cmd_train(args):
    if args.teacher_epochs is None:
        args.teacher_epochs = args.epochs
    if args.device and args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise bad_value("--device", args.device, "this machine has no CUDA GPU that torch can use; allowed: cpu")
    from explorer.data.splits import load_splits
    from explorer.training.loop import Trainer

    student_cfg, method = _student_config(args)
    spec = _data_spec(args)
    splits = load_splits(spec)
    result = {"dataset": args.dataset, "student": args.student, "method": method, "seed": args.seed}
    teacher = None
    if args.teacher:
        teacher, fields = _teacher(args, spec, splits)
        result |= fields
    trainer = Trainer(student_cfg, splits, args.device, teacher=teacher)
    result |= {"method_params": trainer.hp}
    trainer.run(_progress(f"student {args.student} {method}"))
    result |= trainer.history[-1]
    if args.baseline:
        base = Trainer(recipe_from_args(args, "", args.student, args.seed), splits, args.device)
        base.run(_progress(f"student {args.student} ce"))
        result |= {"baseline_val_acc": base.history[-1]["val_acc"], "baseline_test_acc": base.history[-1]["test_acc"]}
    print(_summary(args, method, result), flush=True)
    if args.json:
        print_json(result)
