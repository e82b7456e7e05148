"""`kdx` commands that need Ray (registered into explorer.cli.commands's command registry on import).

Imports of Ray, MLflow and torch happen inside the commands, so `kdx --help` stays fast.
"""

from __future__ import annotations

import argparse  # noqa: E402

from explorer.cli.commands import (add_data_arguments, add_recipe_arguments, command, data_spec_from_args,  # noqa: E402
                                   int_list, print_json, recipe_from_args, str_list)
from explorer.errors import KdxError, bad_value  # noqa: E402

# =====================================================================================
# `kdx teachers {build,list,verify,gc}`: the teacher zoo (trainables/zoo.py, explorer/teachers/store.py)
# Self-contained section: everything it uses is imported or defined between these two banners.
# =====================================================================================




def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _teacher_store(args):
    from explorer.teachers.store import TeacherStore, default_store_root

    return TeacherStore(args.store or default_store_root())


def _acc_text(checkpoints: dict) -> str:
    return " | ".join(f"e{e} val {c['val_acc']:.4f} test {c['test_acc']:.4f}" for e, c in sorted(checkpoints.items()))


def _teachers_build_args(p):
    add_data_arguments(p)
    p.add_argument("--arch", type=str_list, required=True, help="teacher architectures, e.g. cnn1d_w8,cnn1d_w32")
    p.add_argument("--stop-epochs", type=int_list, default=[],
                   help="extra checkpoints to keep, e.g. 10,20 (the final epoch is always kept)")
    p.add_argument("--seeds", type=int_list, default=[0], help="one teacher per seed, e.g. 0,1,2")
    add_recipe_arguments(p)
    p.add_argument("--store", default=None, help="teacher store path or URI (default ./kdx_runs/teachers)")
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: a local Ray")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for the teacher runs")
    p.add_argument("--experiment", default=None, help="MLflow experiment of the teacher runs (default kdx_teachers)")
    p.add_argument("--cpus-per-teacher", type=float, default=1.0)
    p.add_argument("--gpus-per-teacher", type=float, default=0.0, help="fractions share a GPU, e.g. 0.25")
    p.add_argument("--retries", type=int, default=2, help="retries of a failed build task")
    p.add_argument("--json", action="store_true", help="last line: one JSON object with every teacher")


def _teachers_build_check(args) -> None:
    """The flags alone, before the address and tracking URI are checked and before Ray starts."""
    if not args.arch:
        raise bad_value("--arch", args.arch, "allowed: one or more architectures, comma-separated")
    if not args.seeds:
        raise bad_value("--seeds", args.seeds, "allowed: one or more whole numbers, comma-separated")
    local = not args.address or args.address == "local"
    if args.num_cpus is not None and (not local or args.num_cpus < 1):
        raise bad_value("--num-cpus", args.num_cpus, "allowed: a whole number >= 1, only with a local Ray "
                        "(no --address)")
    if not args.cpus_per_teacher > 0:
        raise bad_value("--cpus-per-teacher", args.cpus_per_teacher, "allowed: a number > 0")
    if not args.gpus_per_teacher >= 0:
        raise bad_value("--gpus-per-teacher", args.gpus_per_teacher, "allowed: a number >= 0 (fractions share a GPU)")
    if args.retries < 0:
        raise bad_value("--retries", args.retries, "allowed: a whole number >= 0")


def _build_requests(args) -> list:
    """(TeacherRecipe, stop epochs) per architecture and seed of the flags, each checked."""
    from explorer.teachers.store import TeacherRecipe, check_stop_epochs

    spec = data_spec_from_args(args)
    requests = []
    for arch in args.arch:
        for seed in args.seeds:
            recipe = TeacherRecipe(spec, recipe_from_args(args, "", arch, seed))
            recipe.validate()
            check_stop_epochs(args.stop_epochs, recipe.train.epochs)
            requests.append((recipe, list(args.stop_epochs)))
    return requests


def _build_on_ray(args, requests: list, store, tracking_uri: str | None) -> list:
    """The zoo's results; Ray is started (and stopped) only when something has to be built (all reused:
    answered from the store)."""
    import ray

    from .connect import check_cluster_resources
    from .zoo import build_zoo

    local = not args.address or args.address == "local"
    started = False
    if not ray.is_initialized() and any(store.complete(r, s) is None for r, s in requests):
        kwargs = {"include_dashboard": False} if local else {}
        if local and args.num_cpus:
            kwargs["num_cpus"] = args.num_cpus
        try:  # the address was checked (explorer.cli.commands.run, its flag_checks) before this runs
            ray.init(address=args.address or "local", **kwargs)
        except ConnectionError as e:
            raise KdxError(f"--address: could not connect to Ray at {args.address!r} ({e}).") from None
        started = True
    try:
        if started:
            check_cluster_resources([("--cpus-per-teacher", "CPU", args.cpus_per_teacher),
                                     ("--gpus-per-teacher", "GPU", args.gpus_per_teacher)])
        return build_zoo(requests, store.root, cpus_per_teacher=args.cpus_per_teacher,
                         gpus_per_teacher=args.gpus_per_teacher, retries=args.retries,
                         tracking_uri=tracking_uri, experiment=args.experiment, out=print)
    finally:
        if started:
            ray.shutdown()


def _print_built(args, results: list, store) -> int:
    """One line per teacher and a total (the last line: JSON with --json); 1 when a build failed."""
    rows = []
    for r in results:
        if r.status == "failed":
            print(f"{r.key}  failed  {r.label}: {r.error}", flush=True)
        else:
            asked = {e: r.record.checkpoints[e] for e in r.stop_epochs}
            print(f"{r.key}  {r.status:<6}  {r.label:<22} {_acc_text(asked)}", flush=True)
        rows.append({"key": r.key, "label": r.label, "status": r.status, "error": r.error,
                     "stop_epochs": list(r.stop_epochs),
                     "checkpoints": {str(e): {"val_acc": c["val_acc"], "test_acc": c["test_acc"]}
                                     for e, c in (r.record.checkpoints.items() if r.record else [])}})
    failed = sum(r.status == "failed" for r in results)
    print(f"{len(results)} teachers in {store.root}: {sum(r.status == 'built' for r in results)} built, "
          f"{sum(r.status == 'reused' for r in results)} reused, {failed} failed", flush=True)
    if args.json:
        print_json({"store": store.root, "teachers": rows})
    return 1 if failed else 0


def _teachers_build(args) -> int:
    from explorer.tracking import absolute_tracking_uri

    from .tracking.store import prepare_tracking

    requests = _build_requests(args)
    store = _teacher_store(args)
    tracking_uri = absolute_tracking_uri(args.tracking_uri)
    if tracking_uri:
        prepare_tracking(tracking_uri)
    return _print_built(args, _build_on_ray(args, requests, store, tracking_uri), store)


def _teachers_list_args(p):
    p.add_argument("--store", default=None, help="teacher store path or URI (default ./kdx_runs/teachers)")
    p.add_argument("--json", action="store_true", help="one JSON object with every teacher")


def _incomplete_text(item: dict) -> str:
    if item["building"]:
        return f"{item['key']}  incomplete: being built now (its lock is held)"
    how = "no lock can tell whether its build still runs" if item["building"] is None else \
        "a killed build's orphan; `kdx teachers gc` removes it"
    return f"{item['key']}  incomplete: no manifest ({how})"


def _teachers_list(args) -> int:
    store = _teacher_store(args)
    records, partial = store.list(), store.incomplete()
    if args.json:
        print_json({"store": store.root, "teachers": [r.summary() for r in records], "incomplete": partial})
        return 0
    if not records and not partial:
        print(f"no teachers in {store.root}", flush=True)
        return 0
    for r in records:
        print(f"{r.key}  {r.recipe['data']['dataset']:<8} {r.label:<22} {r.params:>11,} params "
              f"{_human_bytes(r.size_bytes):>9}  {_acc_text(r.checkpoints)}", flush=True)
    for item in partial:
        print(_incomplete_text(item), flush=True)
    print(f"{len(records)} teachers, {_human_bytes(sum(r.size_bytes for r in records))} in {store.root}"
          + (f"; {len(partial)} incomplete" if partial else ""), flush=True)
    return 0


def _teachers_verify_args(p):
    p.add_argument("--store", default=None, help="teacher store path or URI (default ./kdx_runs/teachers)")


def _teachers_verify(args) -> int:
    store = _teacher_store(args)
    problems, partial = store.verify(), store.incomplete()
    for line in problems:
        print(f"broken: {line}", flush=True)
    for item in partial:
        print(_incomplete_text(item), flush=True)
    orphans = [i for i in partial if i["building"] is False]
    if problems or orphans:
        print(f"{len(problems)} broken file(s), {len(orphans)} orphan(s) of killed builds in {store.root}; "
              "`kdx teachers build` with the same recipe rebuilds broken files, `kdx teachers gc` removes "
              "orphans", flush=True)
        return 1
    records = store.list()
    print(f"ok: {len(records)} teachers, {sum(len(r.checkpoints) for r in records)} checkpoints verified "
          f"in {store.root}", flush=True)
    return 0


def _teachers_gc_args(p):
    p.add_argument("--store", default=None, help="teacher store path or URI (default ./kdx_runs/teachers)")


def _teachers_gc(args) -> int:
    store = _teacher_store(args)
    removed = store.gc()
    for key in removed:
        print(f"removed {key} (a killed build's orphan)", flush=True)
    left = [i for i in store.incomplete() if i["building"]]
    print(f"{len(removed)} orphan(s) removed from {store.root}"
          + (f"; {len(left)} build(s) in progress left alone" if left else ""), flush=True)
    return 0


_TEACHER_ACTIONS = {
    "build": ("build teachers (in parallel, as Ray tasks) and keep a checkpoint at each stop epoch",
              _teachers_build_args, _teachers_build),
    "list": ("list the teachers in the store", _teachers_list_args, _teachers_list),
    "verify": ("check every checkpoint's checksum and list incomplete teachers; exit 1 if anything is broken "
               "or orphaned", _teachers_verify_args, _teachers_verify),
    "gc": ("remove the orphans of killed builds (teachers without a manifest whose lock nobody holds)",
           _teachers_gc_args, _teachers_gc),
}


def _teachers_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="teachers_action", required=True, metavar="ACTION")
    for name, (help_text, add_args, fn) in _TEACHER_ACTIONS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_args(sp)
        sp.set_defaults(_teachers_run=fn)


def _teachers_check(args) -> None:
    if args.teachers_action == "build":
        _teachers_build_check(args)


@command("teachers", "the teacher store: build, list, verify, gc", _teachers_args, check=_teachers_check)
def cmd_teachers(args) -> int:
    return args._teachers_run(args)


# =====================================================================================
# end of the `kdx teachers` section
# =====================================================================================
