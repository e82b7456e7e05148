"""The `kdx` command line's core: the command registry, argument helpers and the commands that need
only this package (models, datasets, train, methods).

`trainables` and `analysis` register their own commands into the same registry; the thin `kdx`
package (kdx/cli.py) imports all three and runs the parser, so `explorer` never imports them.
Flags are derived from the one definition of each concept: recipe flags from `Recipe`'s fields,
data flags from the spec's `dataset` section, method flags from the method registry; their rows come
from explorer/cli/flags.py, so a parser is built (and a flag error refused) before torch is imported.

Every user-input problem is a `KdxError`, printed as one line (`kdx: error: ...`), exit code 2; so is
an argument error (argparse's message, with where to find the command's help instead of its usage).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

from explorer.cli.flags import (TYPES, add_field_arguments, flag_rows,  # noqa: F401 (int_list: for the commands)
                                int_list)
from explorer.errors import KdxError, bad_value


@dataclass
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    epilog: str | None = None  # shown after the flags in `kdx NAME --help` (exit statuses, ...)
    check: Callable[[argparse.Namespace], None] | None = None  # cheap flag checks, run before FLAG_CHECKS


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
            epilog: str | None = None, check: Callable[[argparse.Namespace], None] | None = None):
    """Register `fn(args)` as the `kdx NAME` subcommand; `check(args)`, if given, refuses bad flag
    values (KdxError) before the flags that reach outside are checked (FLAG_CHECKS)."""
    def wrap(fn):
        COMMANDS[name] = Command(name, help, add_arguments, fn, epilog, check)
        return fn
    return wrap


# ------------------------------------------------------------------ argument helpers


def str_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The data flags: the spec's `dataset:` fields (`--dataset` is its `name`)."""
    rows = flag_rows()["dataset"]
    name = next(r for r in rows if r["name"] == "name")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=name["default"], help=name["help"])
    add_field_arguments(g, rows, skip=("name",))


def data_spec_from_args(args: argparse.Namespace):
    """The data flags are named like a spec's `dataset:` fields and checked the same way (the data of an
    on-disk dataset included: there, or to be downloaded there)."""
    from explorer.data.registry import check_data_present
    from explorer.data.section import DatasetSection, parse_dataset

    fields = {f: getattr(args, f) for f in DatasetSection.model_fields if f != "name"}
    spec = parse_dataset({"name": args.dataset} | fields)
    check_data_present(spec)
    return spec


TRACKING_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
TRACKING_FORMS = ("allowed: a directory path, file:///PATH, sqlite:///PATH, a database URI "
                  "(postgresql://, mysql://, mssql://), http(s)://HOST:PORT of an MLflow server, or databricks")


def check_tracking_uri(uri: str, flag: str = "--tracking-uri", timeout_s: float = 5.0) -> str:
    """A tracking URI checked before anything is started, in one sentence naming `flag`: a known form,
    a SQLite file whose directory can be made, a server that answers `/health` within `timeout_s`.
    Returns the URI. Light (no MLflow import), so commands call it before their heavy imports."""
    import os
    import urllib.error
    import urllib.request

    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if not uri.strip() or ("://" in uri and scheme not in TRACKING_SCHEMES) or uri.startswith("sqlite:") and \
            not uri.startswith("sqlite:///"):
        raise bad_value(flag, uri, TRACKING_FORMS)
    if scheme in ("http", "https"):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s).read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise KdxError(f"{flag}: got {uri!r}; no MLflow tracking server answered there within "
                           f"{timeout_s:.0f} s ({reason}); start one (mlflow server --host 127.0.0.1 --port 5000) "
                           "or leave the flag out to use the local SQLite store.") from None
    elif scheme in ("sqlite", "file", ""):
        path = uri[len("sqlite:///"):] if scheme == "sqlite" else uri[len("file://"):] if scheme else uri
        where = os.path.dirname(os.path.abspath(os.path.expanduser(path))) if scheme == "sqlite" else path
        try:
            os.makedirs(os.path.abspath(os.path.expanduser(where)), exist_ok=True)
        except OSError as e:
            raise bad_value(flag, uri, f"its directory cannot be created ({e.strerror or e}); allowed: a "
                            "location this user can write") from None
    return uri


# Flags that reach outside (a cluster, a tracking store) are checked the same way for every command that
# has them, before the command runs: argparse dest -> check(value) returning the value to use, raising
# KdxError. The `kdx` package adds the cluster-address check (trainables), explorer knows no cluster.
def check_spec_path(path: str) -> str:
    """The SPEC argument (validate, search, generations): a file that exists, checked before any import."""
    from explorer.spec.file import check_spec_path as check

    check(path)
    return path


# The flags every command checks alike (dest -> check); the `kdx` layer adds the ones explorer cannot check
# (a Ray --address) through `run(..., flag_checks=...)`.
FLAG_CHECKS: Mapping[str, Callable[[str], object]] = MappingProxyType(
    {"spec": check_spec_path, "tracking_uri": check_tracking_uri})


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
    from explorer.models import build_model, count_params, list_models

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
    from explorer.data.registry import listed_datasets

    rows = [{"name": d.name, "num_classes": d.num_classes, "input_shape": list(d.input_shape),
             "augment": d.augment, "description": d.description} for d in listed_datasets()]
    if args.json:
        print_json({"datasets": rows})
    else:
        for r in rows:
            print(f"{r['name']:<24} {r['num_classes']:>4} classes  input {tuple(r['input_shape'])!s:<12} "
                  f"augment={r['augment']:<9} {r['description']}")


def add_recipe_arguments(p: argparse.ArgumentParser, prefix: str = "", overrides: dict | None = None) -> None:
    """Optimiser/schedule flags from `Recipe`'s fields; `prefix` = 'teacher-' gives the teacher's own."""
    add_field_arguments(p.add_argument_group(f"{prefix or 'student '}recipe"), flag_rows()["recipe"], prefix,
                        overrides=overrides)


def recipe_from_args(args, prefix: str, arch: str, seed: int, method: str = "ce", method_params=None):
    from explorer.config import Recipe, TrainConfig

    fields = {f: getattr(args, prefix + f) for f in Recipe.model_fields}
    return TrainConfig(arch=arch, seed=seed, method=method, method_params=method_params or {}, **fields)


def add_hparam_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per method hyperparameter of the registry, with each method's default in the help."""
    g = p.add_argument_group("method hyperparameters (default: the method's own, see `kdx methods`)")
    for row in flag_rows()["hparams"]:
        text = f"{row['help']} (defaults: {row['defaults']})".replace("%", "%%")
        g.add_argument(f"--{row['name'].replace('_', '-')}", type=TYPES[row["type"]], default=None, help=text)


def _methods_args(p):
    p.add_argument("--json", action="store_true", help="one JSON object: every method with its hyperparameters")


@command("methods", "list distillation methods with their hyperparameters, defaults and sources", _methods_args)
def cmd_methods(args):
    from explorer.methods import METHODS

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


class _Parser(argparse.ArgumentParser):
    """argparse, with an argument error as one line like every other refusal: `kdx: error: ...`, and where
    the command's help is instead of its (long) usage; exit status 2 as argparse's."""

    def error(self, message):
        refuse(self.prog, message)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = super().parse_known_args(args, namespace)
        if not hasattr(namespace, "_prog"):  # the innermost (sub)command's parser returns first
            namespace._prog = self.prog
        return namespace, extra


def refuse(prog: str, message: str):
    """An argument error of the (sub)command `prog` ('kdx teachers build'): one line, exit status 2."""
    import sys

    where = prog.removeprefix("kdx").strip()
    print(f"kdx: error: {where + ': ' if where else ''}{message.rstrip('.')}; see `{prog} --help`.",
          file=sys.stderr, flush=True)
    raise SystemExit(2)



def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every registered command (`kdx/cli.py` registers the other layers' first), or of
    the command `only` (its flags alone are built: a flag error never waits for other commands' imports)."""
    from explorer import __version__

    parser = _Parser(prog="kdx", description="Explore knowledge-distillation hyperparameters "
                                     "and the teacher-student capacity gap.")
    parser.add_argument("--version", action="version", version=f"kdx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in COMMANDS.values():
        if only is not None and c.name != only:
            continue
        formatter = argparse.RawDescriptionHelpFormatter if c.epilog else argparse.HelpFormatter
        sp = sub.add_parser(c.name, help=c.help, description=c.help, epilog=c.epilog, formatter_class=formatter)
        c.add_arguments(sp)
        sp.set_defaults(_run=c.run, _check=c.check)
    return parser


def run(argv: list[str] | None = None, only: str | None = None,
        flag_checks: Mapping[str, Callable[[str], object]] | None = None) -> int:
    """Parse and run one command (`only`: build that command's parser alone); user-input problems
    print one line and return 2. `flag_checks` add to (or replace) `FLAG_CHECKS` for this run."""
    import sys

    parser = build_parser(only)
    args, extra = parser.parse_known_args(argv)
    if extra:  # named after the command they were given to, not after `kdx`
        refuse(args._prog, f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args._check is not None:  # the command's own flags first: cheap, and about the command line alone
            args._check(args)
        for dest, check in (dict(FLAG_CHECKS) | dict(flag_checks or {})).items():  # every command's alike
            if getattr(args, dest, None) is not None:
                setattr(args, dest, check(getattr(args, dest)))
        return int(args._run(args) or 0)
    except KdxError as e:
        print(f"kdx: error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("kdx: interrupted", file=sys.stderr, flush=True)
        return 130
