"""`kdx generations SPEC`: seed 004 table 4 (last born-again generation vs the ensemble of all
generations vs an ensemble of as many scratch models) from the teacher store; see
analysis/generations.py for the exact definition."""

from __future__ import annotations

from explorer.cli.commands import command, print_json


def _generations_args(p):
    p.add_argument("spec", metavar="SPEC", help="a search spec (YAML): dataset, teacher recipe, teachers.distill")
    p.add_argument("--arch", default=None, help="architecture (default: the spec's first plain teacher architecture)")
    p.add_argument("--generations", type=int, default=None,
                   help="born-again generations g (default: teachers.generations or the largest 'a^g' entry)")
    p.add_argument("--seed", type=int, default=None, help="base seed s (default: teachers.seed)")
    p.add_argument("--store", default=None, help="teacher store path or URI (default ./kdx_runs/teachers)")
    p.add_argument("--build", action="store_true", help="first build the missing models here, in chain order")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="last line: one JSON object with the rows")


@command("generations", "born-again generations vs an ensemble of as many scratch models (seed 004 table 4)",
         _generations_args)
def cmd_generations(args):
    from explorer.spec.search import load_spec
    from explorer.teachers.store import default_store_root
    from explorer.training.loop import default_device

    from .generations import build_generations, compare_generations

    spec, _ = load_spec(args.spec)
    store_root = args.store or default_store_root()
    device = args.device or default_device()
    if args.build:
        build_generations(spec, store_root, args.arch, args.generations, args.seed, device=device,
                          on_build=lambda key, label: print(f"building {label} [{key}]", flush=True))
    df = compare_generations(store_root, spec, args.arch, args.generations, args.seed, device=device)
    for r in df.itertuples():
        print(f"{r.model:<21} {r.n_models} model{'' if r.n_models == 1 else 's'}: val {r.val_acc:.4f} "
              f"test {r.test_acc:.4f}  ({r.members})", flush=True)
    if args.json:
        print_json({"spec": spec.name, "store": store_root, "rows": df.to_dict(orient="records")})
    return 0
