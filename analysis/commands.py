"""`kdx analyze NAME`: read a search's runs back from MLflow, write the sweet-spot report, attach it
to the parent search run, print a short summary (with --json, the last line is one JSON object)."""

from __future__ import annotations

from pathlib import Path

from explorer.cli.commands import command, print_json
from explorer.errors import KdxError


def _analyze_args(p):
    p.add_argument("name", help="the search's name (its spec's `name`, the MLflow experiment)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: sqlite:///<abs path of ./kdx_runs/mlflow.db>)")
    p.add_argument("--out", default=None, help="output directory (default: ./kdx_runs/NAME/analysis)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the KD-gain interval")
    p.add_argument("--no-attach", action="store_true", help="do not log the report to the parent MLflow run")
    p.add_argument("--json", action="store_true", help="last line: one JSON object with the summary")


def _fmt(v, spec=".4f"):
    return "n/a" if v is None or (isinstance(v, float) and v != v) else format(v, spec)


def _num(v):
    if v is None or (isinstance(v, float) and v != v):
        return "none"
    return f"{v:g}"


def _other(config: dict | None) -> str:
    """The best config's other set values (`teacher_temperature`, `student.lr`, ...) as ", k=v"."""
    return "".join(f", {k}={_num(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v}"
                   for k, v in (config or {}).items())


def summary_lines(name: str, summ: dict) -> list[str]:
    from .words import confirmed_words

    t = summ["trials"]
    counts = ", ".join(f"{t[s]} {s}" for s in t if s != "total" and t[s])
    lines = [f"{name}: {t.get('total', 0)} trial runs ({counts or 'none'})"]
    lines += [f"  {w}" for w in confirmed_words(summ.get("confirmed", {}))]
    if summ["students"]:
        lines.append("search (best single runs, not confirmed):")
    if not summ["students"]:
        lines.append("no completed distilled trials yet: nothing to compare")
    for s in summ["students"]:
        lines.append(
            f"student {s['student']}: teacher {s['teacher']} (stop epoch {_num(s['teacher_stop_epoch'])} of "
            f"{_num(s['teacher_epochs'])}), T={_num(s['temperature'])}, alpha={_num(s['alpha'])}, "
            f"kd_stop={_num(s['kd_stop_epoch'])}{_other(s.get('other_config'))} -> val {_fmt(s['val_acc'])} "
            f"test {_fmt(s['test_acc'])} "
            f"(config mean over {s['n_seeds']} seed{'' if s['n_seeds'] == 1 else 's'}: val {_fmt(s['val_acc_mean'])})")
        for metric, g in s["kd_gain"].items():
            if g["test"] is None:
                lines.append(f"  KD gain ({metric}): {_fmt(g['diff'], '+.4f')}; {g['verdict']}")
            else:
                lines.append(
                    f"  KD gain ({metric}): {_fmt(g['diff'], '+.4f')} [{_fmt(g['ci_low'], '+.4f')}, "
                    f"{_fmt(g['ci_high'], '+.4f')}] {g['confidence']:.0%} CI, {g['test']} "
                    f"p={_fmt(g['p_value'], '.3g')} "
                    f"({g['n_kd']} vs {g['n_base']} seeds); {g['verdict']}")
    return lines


@command("analyze", "sweet-spot report of a search: capacity gap, stop epochs, T x alpha, KD gain", _analyze_args)
def cmd_analyze(args):
    from .report import _jsonable, attach_to_parent, write_report
    from .runs import default_tracking_uri, load_trials
    from .sweetspot import summary

    if not 0 < args.confidence < 1:
        raise KdxError(f"--confidence: got {args.confidence!r}; allowed: a number strictly between 0 and 1.")
    uri = args.tracking_uri or default_tracking_uri()
    df = load_trials(args.name, uri)
    if not len(df):
        raise KdxError(f"experiment: got {args.name!r}; it has no trial runs (tag kdx.role=trial) at URI {uri}, "
                       "run `kdx search` first.")
    out = Path(args.out) if args.out else Path("kdx_runs") / args.name / "analysis"
    paths = write_report(df, out, f"kdx analysis: {args.name}", confidence=args.confidence,
                         meta={"experiment": args.name, "tracking_uri": uri})
    summ = summary(df, args.confidence)
    parent = None if args.no_attach else attach_to_parent(paths, args.name, uri, metrics=summ["headline"])
    lines = summary_lines(args.name, summ)
    lines.append(f"report: {paths['markdown']} (html: {paths['html']})")
    if parent:
        lines.append(f"attached to parent run {parent} under artifacts/analysis")
    elif not args.no_attach:
        lines.append("no parent search run (tag kdx.role=search) found: report not attached")
    print("\n".join(lines), flush=True)
    if args.json:
        print_json(_jsonable(summ | {"experiment": args.name, "tracking_uri": uri, "report": paths,
                                     "parent_run_id": parent}))
    return 0
