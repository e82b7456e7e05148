"""`kdx validate` and `kdx search`, registered with the CLI in explorer/cli.py."""

from __future__ import annotations

from explorer.cli import command, print_json


def _validate_args(p):
    p.add_argument("spec", metavar="SPEC", help="a search spec (YAML), e.g. searches/quickstart.yaml")


@command("validate", "check a search spec without running it", _validate_args)
def cmd_validate(args):
    from explorer.spec import load_spec

    spec, _ = load_spec(args.spec)
    axes = spec.searched_axes()
    print(f"{args.spec}: valid spec {spec.name!r}; searched: {', '.join(axes) or 'nothing'}; "
          f"{len(spec.teacher_configs())} teacher checkpoint(s) across {len(spec.teachers.archs)} architecture(s).")


def _search_args(p):
    p.add_argument("spec", metavar="SPEC", help="a search spec (YAML), e.g. searches/quickstart.yaml")
    p.add_argument("--address", default=None, help="join a running Ray cluster (e.g. auto, or HOST:PORT)")
    p.add_argument("--storage", default=None, help="Ray results and teacher store: a shared path or URI")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: SQLite under ./kdx_runs)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search")
    p.add_argument("--max-concurrent", type=int, default=None, help="override search.max_concurrent")
    p.add_argument("--num-samples", type=int, default=None, help="override search.num_samples")
    p.add_argument("--epochs", type=int, default=None, help="override student.epochs (quick tries)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--json", action="store_true", help="last line: the outcome as one JSON object")


@command("search", "run a search spec on Ray Tune (local by default)", _search_args)
def cmd_search(args):
    from explorer.errors import bad_value
    from explorer.spec import load_spec

    for flag in ("max_concurrent", "num_samples", "epochs"):  # checked before anything heavy is imported
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise bad_value(f"--{flag.replace('_', '-')}", v, "allowed: a whole number >= 1")
    spec, text = load_spec(args.spec)
    if args.epochs:
        spec = spec.replace("student.epochs", args.epochs)
    from .search import run_search  # Ray and MLflow: only once the spec is known to be good

    outcome = run_search(spec, text, address=args.address, storage=args.storage, tracking_uri=args.tracking_uri,
                         resume=args.resume, max_concurrent=args.max_concurrent, num_samples=args.num_samples,
                         dry_run=args.dry_run)
    if args.json and outcome is not None:
        print_json(vars(outcome))
    return 3 if outcome is not None and outcome.interrupted else 0
