"""`kdx validate` and `kdx search`, registered with the CLI in explorer/cli/commands.py."""

from __future__ import annotations

from explorer.cli.commands import command, print_json

EXIT_OK, EXIT_USER, EXIT_INTERRUPTED, EXIT_TRIALS_FAILED = 0, 2, 3, 4
SEARCH_EPILOG = f"""exit status:
  {EXIT_OK}  the search finished and no trial failed
  1  an unexpected error (a bug: please report the traceback)
  {EXIT_USER}  refused: a bad spec, flag, path, address or tracking URI (one line on stderr), or a teacher
     build failed
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C or some trials never ran); continue with --resume
  {EXIT_TRIALS_FAILED}  finished, but at least one trial failed (errored); its MLflow run is FAILED, and so is the
     parent run
"""


def _validate_args(p):
    p.add_argument("spec", metavar="SPEC", help="a search spec (YAML), e.g. searches/quickstart.yaml")


@command("validate", "check a search spec without running it", _validate_args)
def cmd_validate(args):
    from explorer.spec.search import load_spec

    spec, _ = load_spec(args.spec)
    axes = spec.searched_axes()
    print(f"{args.spec}: valid spec {spec.name!r}; searched: {', '.join(axes) or 'nothing'}; "
          f"{len(spec.teacher_configs())} teacher checkpoint(s) across {len(spec.teachers.archs)} architecture(s).")


def _search_args(p):
    p.add_argument("spec", metavar="SPEC", help="a search spec (YAML), e.g. searches/quickstart.yaml")
    p.add_argument("--address", default=None, help="join a running Ray cluster (e.g. auto, or HOST:PORT)")
    p.add_argument("--storage", default=None, help="a shared path or URI holding the Ray results (ray_results/) and "
                   "the teacher store (teachers/), laid out as ./kdx_runs is by default; the search's parent run "
                   "records it for --resume and `kdx confirm`")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: SQLite under ./kdx_runs)")
    p.add_argument("--resume", action="store_true", help="continue the experiment's last search (interrupted or "
                   "not): finished trials are kept, unfinished ones continue from their checkpoints")
    p.add_argument("--fresh", action="store_true", help="start another search in an experiment that already has "
                   "one (the earlier search's runs stay in MLflow; its Ray results are moved aside)")
    p.add_argument("--max-concurrent", type=int, default=None, help="override search.max_concurrent")
    p.add_argument("--num-samples", type=int, default=None, help="override search.num_samples")
    p.add_argument("--epochs", type=int, default=None, help="override student.epochs (quick tries)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--json", action="store_true", help="last line: the outcome as one JSON object")


def _search_check(args):
    """Flags first, before anything heavy is imported (torch, Ray, MLflow): each refusal is one sentence.
    (--address and --tracking-uri are checked next, for every command: explorer.cli.commands.run, its flag_checks.)"""
    from explorer.errors import bad_value

    for flag in ("max_concurrent", "num_samples", "epochs"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise bad_value(f"--{flag.replace('_', '-')}", v, "allowed: a whole number >= 1")
    if args.fresh and args.resume:
        raise bad_value("--fresh", True, "allowed: --fresh or --resume, not both")


@command("search", "run a search spec on Ray Tune (local by default)", _search_args, epilog=SEARCH_EPILOG,
         check=_search_check)
def cmd_search(args):
    from explorer.errors import bad_value
    from explorer.spec.search import load_spec

    spec, text = load_spec(args.spec)
    if args.epochs:
        spec = spec.replace("student.epochs", args.epochs)
    if args.num_samples and spec.search.trials_per_cell:
        raise bad_value("--num-samples", args.num_samples, "allowed: leave it out with search.trials_per_cell, "
                        "which sets the number of trials (trials_per_cell x cells)")
    from .search import run_search  # Ray and MLflow: only once the spec is known to be good

    outcome = run_search(spec, text, address=args.address, storage=args.storage, tracking_uri=args.tracking_uri,
                         resume=args.resume, fresh=args.fresh, max_concurrent=args.max_concurrent,
                         num_samples=args.num_samples, dry_run=args.dry_run)
    if args.json and outcome is not None:
        print_json(vars(outcome))
    if outcome is None:
        return EXIT_OK
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_TRIALS_FAILED if outcome.trials.get("failed") else EXIT_OK
