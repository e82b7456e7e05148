"""The sweet-spot report: Markdown + HTML (same content), PNG plots, a CSV of all trials, a JSON
summary; and `attach_to_parent`, which logs them to the parent search run in MLflow.

Plots use matplotlib's object API (`matplotlib.figure.Figure`, Agg canvas), so importing this
module never changes the pyplot backend of the caller. The HTML page has inline CSS, no scripts
and no external resources; images are referenced by relative path (they sit beside it).
"""

from __future__ import annotations

import datetime as _dt
import html as _html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import sweetspot as ss

PLOTS = ("capacity_curve", "stop_epoch_heatmap", "temperature_alpha", "kd_gain_forest", "diagnostics")
MAX_LISTED = 50

# ------------------------------------------------------------------ formatting


def _isnum(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _nan(v) -> bool:
    return v is None or (_isnum(v) and not math.isfinite(float(v))) or v is pd.NaT


def acc(v) -> str:
    return "n/a" if _nan(v) else f"{float(v):.4f}"


def signed(v) -> str:
    return "n/a" if _nan(v) else f"{float(v):+.4f}"


def num(v) -> str:
    if _nan(v):
        return "n/a"
    v = float(v)
    if v.is_integer():
        return f"{int(v):,}" if abs(v) >= 1e4 else str(int(v))
    return f"{v:.4g}"


def pval(v) -> str:
    if _nan(v):
        return "n/a"
    return f"{v:.3g}" if v >= 1e-4 else f"{v:.1e}"


def stop(v) -> str:
    return "never" if _nan(v) else num(v)


ACC_COLUMNS = {"val_acc", "test_acc", "val_acc_mean", "val_acc_std", "test_acc_mean", "err", "teacher_val_acc",
               "teacher_val_acc_max", "baseline_val_acc", "baseline_test_acc", "mean", "std", "max", "test_mean",
               "kd_mean", "kd_std", "base_mean", "base_std", "kd_agreement", "train_kd", "kd_agreement_all",
               "train_kd_all", "importance", "best_val_acc"}
SIGNED_COLUMNS = {"diff", "ci_low", "ci_high"}


def _cell(col: str, v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if _nan(v):
        return "never" if col == "kd_stop_epoch" and v is not None else ("-" if v is None or _isnum(v) else str(v))
    if col in ACC_COLUMNS:
        return acc(v)
    if col in SIGNED_COLUMNS:
        return signed(v)
    if col.startswith("p_value"):
        return pval(v)
    if _isnum(v):
        return num(v)
    return str(v)


# ------------------------------------------------------------------ document model


class Doc:
    """Blocks rendered to both Markdown and HTML, so the two files say the same thing."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]):
        if items:
            self.blocks.append(("ul", items))

    def table(self, df: pd.DataFrame, columns: list[str] | None = None, headers: dict | None = None):
        if df is None or not len(df):
            self.p("(no rows)")
            return
        columns = [c for c in (columns or list(df.columns)) if c in df.columns]
        headers = headers or {}
        head = [headers.get(c, str(c)) for c in columns]
        rows = [[_cell(str(c), r[c]) for c in columns] for _, r in df.iterrows()]
        self.blocks.append(("table", head, rows))

    def img(self, name: str, alt: str):
        self.blocks.append(("img", name, alt))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "ul":
                out.append("\n".join(f"- {i}" for i in b[1]))
            elif b[0] == "table":
                esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
                lines = ["| " + " | ".join(esc(h) for h in b[1]) + " |", "|" + "---|" * len(b[1])]
                lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in b[2]]
                out.append("\n".join(lines))
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = _html.escape
        body = []
        for b in self.blocks:
            if b[0] == "h":
                body.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                body.append(f"<p>{_inline_code(e(b[1]))}</p>")
            elif b[0] == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline_code(e(i))}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "table":
                head = "".join(f"<th>{e(h)}</th>" for h in b[1])
                rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b[2])
                body.append(f"<div class=\"scroll\"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>"
                            "</table></div>")
            elif b[0] == "img":
                body.append(f"<figure><img src=\"{e(b[1])}\" alt=\"{e(b[2])}\"><figcaption>{e(b[2])}</figcaption>"
                            "</figure>")
        return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                f"<title>{e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
                + "\n".join(body) + "\n</body>\n</html>\n")


def _inline_code(text: str) -> str:
    """`code` spans of the Markdown text as <code> (input already HTML-escaped)."""
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1b1f24;line-height:1.45}
h1{border-bottom:2px solid #ccd;padding-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #dde}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccd;padding:.25em .55em;text-align:right;white-space:nowrap}
th{background:#eef0f5}tr:nth-child(even) td{background:#f8f9fb}
.scroll{overflow-x:auto}figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}code{background:#f0f0f3;padding:0 .2em;border-radius:3px}
"""

# ------------------------------------------------------------------ plots


def _figure(n_panels: int, width: float = 5.0, height: float = 3.8):
    from matplotlib.figure import Figure

    cols = min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), dpi=100, layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def _plot_capacity(cap: ss.Answer, path: Path) -> Path | None:
    from matplotlib.ticker import NullFormatter

    students = sorted(cap.by_student)
    if not students:
        return None
    fig, axes = _figure(len(students))
    for ax, student in zip(axes, students):
        t = cap.table[cap.table["student"] == student]
        info = cap.by_student[student]
        x = t["teacher_params"].to_numpy(float)
        use_log = np.isfinite(x).all() and (x > 0).all()
        if not use_log:
            x = np.arange(len(t), dtype=float)
        y = t["val_acc"].to_numpy(float)
        err = t["err"].to_numpy(float)
        ax.errorbar(x, y, yerr=np.where(np.isfinite(err), err, 0), marker="o", capsize=4, label="best run (±std)")
        multi = t["n_seeds"].to_numpy() >= 2
        if multi.any():
            ax.scatter(x[multi], t["val_acc_mean"].to_numpy(float)[multi], marker="D", facecolors="none",
                       edgecolors="C2", label="mean over seeds of best config", zorder=3)
        peak = t["teacher"].tolist().index(info["sweet_spot_teacher"])
        ax.scatter([x[peak]], [y[peak]], marker="*", s=220, color="C3", zorder=4, label="sweet spot")
        if not _nan(info.get("baseline_val_acc")):
            ax.axhline(info["baseline_val_acc"], ls="--", color="grey", label="CE baseline (mean)")
        for xi, yi, name, ratio in zip(x, y, t["teacher"], t["capacity_ratio"]):
            label = name if _nan(ratio) else f"{name} (x{float(ratio):.3g})"
            ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
        ax.margins(x=0.12, y=0.18)
        if use_log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("teacher parameters (log scale)")
        else:
            ax.set_xticks(x, t["teacher"].tolist())
            ax.set_xlabel("teacher")
        ax.set_ylabel("student val acc (final epoch)")
        ax.set_title(f"student {student}: {info['shape']}")
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _annotated_heatmap(fig, ax, grid: np.ndarray, labels: np.ndarray, cmap: str, bar: str, fontsize: int,
                       origin: str = "upper") -> None:
    """Colour the finite cells of `grid` and write `labels` in them, dark text on light cells."""
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", origin=origin)
    fig.colorbar(im, ax=ax, label=bar)
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, labels[i, j], ha="center", va="center", fontsize=fontsize,
                    color="white" if v < np.nanmean(grid) else "black")


def _plot_stop(stop_ans: ss.Answer, path: Path) -> Path | None:
    students = sorted(stop_ans.by_student)
    if not students:
        return None
    fig, axes = _figure(len(students))
    for ax, student in zip(axes, students):
        t = stop_ans.table[stop_ans.table["student"] == student]
        teachers = list(dict.fromkeys(t["teacher"]))
        stops = sorted(t["teacher_stop_epoch"].unique())
        grid = np.full((len(teachers), len(stops)), np.nan)
        labels = np.full(grid.shape, "", dtype=object)
        for _, r in t.iterrows():
            i, j = teachers.index(r["teacher"]), stops.index(r["teacher_stop_epoch"])
            grid[i, j] = r["val_acc"]
            labels[i, j] = f"{r['val_acc']:.3f}{'*' if r['full'] is True else ''}"
        _annotated_heatmap(fig, ax, grid, labels, "viridis", "student val acc", 8)
        ax.set_xticks(range(len(stops)), [num(s) for s in stops])
        ax.set_yticks(range(len(teachers)), teachers)
        ax.set_xlabel("teacher stop epoch (* = fully trained)")
        ax.set_ylabel("teacher (small to large)")
        ax.set_title(f"student {student}")
    return _save(fig, path)


def _plot_ta(ta: ss.Answer, path: Path) -> Path | None:
    students = sorted(ta.by_student)
    if not students:
        return None
    fig, axes = _figure(len(students))
    for ax, student in zip(axes, students):
        t = ta.table[ta.table["student"] == student]
        ts = list(dict.fromkeys(t.sort_values("T_lo")["T_bin"]))
        al = list(dict.fromkeys(t.sort_values("alpha_lo")["alpha_bin"]))
        grid = np.full((len(ts), len(al)), np.nan)
        labels = np.full(grid.shape, "", dtype=object)
        for _, r in t.iterrows():
            i, j = ts.index(r["T_bin"]), al.index(r["alpha_bin"])
            grid[i, j], labels[i, j] = r["mean"], f"{r['mean']:.3f}\nn={int(r['n'])}"
        _annotated_heatmap(fig, ax, grid, labels, "magma", "mean student val acc", 7, origin="lower")
        ax.set_xticks(range(len(al)), al, rotation=30)
        ax.set_yticks(range(len(ts)), ts)
        ax.set_xlabel("alpha")
        ax.set_ylabel("temperature T")
        scope = ta.by_student[student]["scope"]
        ax.set_title(f"student {student} ({'sweet-spot checkpoint' if scope == 'sweet_spot' else 'all teachers'})")
    return _save(fig, path)


def _plot_forest(gain: ss.Answer, path: Path) -> Path | None:
    t = gain.table
    if not len(t):
        return None
    fig, axes = _figure(1, width=7.0, height=1.2 + 0.5 * len(t))
    ax = axes[0]
    labels = []
    for i, (_, r) in enumerate(t.iloc[::-1].iterrows()):
        color = "C0" if r["metric"] == "val_acc" else "C1"
        if np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"]):
            ax.errorbar([r["diff"]], [i], xerr=[[r["diff"] - r["ci_low"]], [r["ci_high"] - r["diff"]]], fmt="o",
                        color=color, capsize=4)
            note = f"{r['test']}, p={pval(r['p_value'])}"
        else:
            ax.plot([r["diff"]], [i], "x", color=color)
            note = "not enough seeds" if min(r["n_kd"], r["n_base"]) < 2 else "no interval"
        labels.append(f"{r['student']} {r['metric']} (n={r['n_kd']}/{r['n_base']}; {note})")
    ax.axvline(0, color="grey", ls="--")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    conf = t["confidence"].iloc[0]
    ax.set_xlabel(f"KD - CE baseline (mean difference, {conf:.0%} interval)")
    ax.set_title("KD gain: best distilled config vs CE-only baseline")
    return _save(fig, path)


def _plot_diag(diag: ss.Answer, path: Path) -> Path | None:
    from matplotlib.ticker import NullFormatter

    t = diag.table
    if not len(t):
        return None
    fig, (a1, a2) = _figure(2)
    for student, g in t.groupby("student"):
        x = g["teacher_params"].to_numpy(float)
        a1.plot(x, g["kd_agreement"], marker="o", label=student)
        a2.plot(x, g["train_kd"], marker="o", label=student)
        for xi, yi, name in zip(x, g["kd_agreement"], g["teacher"]):
            a1.annotate(name, (xi, yi), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    for ax, yl in ((a1, "KD agreement (student = teacher on val, final epoch)"),
                   (a2, "KD loss train_kd (final epoch)")):
        x = t["teacher_params"].to_numpy(float)
        if np.isfinite(x).all() and (x > 0).all():
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.1, y=0.12)
        ax.set_xlabel("teacher parameters")
        ax.set_ylabel(yl, fontsize=8)
        ax.legend(title="student", fontsize=7)
    a1.set_title("agreement vs teacher size")
    a2.set_title("KD loss vs teacher size")
    return _save(fig, path)


# ------------------------------------------------------------------ words


def _teacher_desc(r: dict) -> str:
    ratio = r.get("sweet_spot_capacity_ratio", r.get("capacity_ratio"))
    params = r.get("sweet_spot_params", r.get("teacher_params"))
    bits = []
    if not _nan(params):
        bits.append(f"{num(params)} params")
    if not _nan(ratio):
        bits.append(f"capacity ratio {float(ratio):.3g}")
    return f" ({', '.join(bits)})" if bits else ""


def _capacity_words(cap: ss.Answer) -> list[str]:
    out = []
    for student, f in cap.by_student.items():
        s = (f"Student `{student}`: the sweet-spot teacher is `{f['sweet_spot_teacher']}`{_teacher_desc(f)}, "
             f"student val acc {acc(f['sweet_spot_val_acc'])} (test {acc(f['sweet_spot_test_acc'])}). ")
        n = len(f["teachers"])
        order = "ordered by size" if f["sizes_known"] else "ordered by size where logged (some sizes missing)"
        if f["shape"] == "rises then falls":
            s += (f"Over {n} teachers {order} the curve rises then falls: it rises by "
                  f"{acc(f['rise_to_peak'])} up to `{f['sweet_spot_teacher']}`, then falls from "
                  f"`{f['falls_after']}` on, ending {acc(f['fall_from_peak'])} below the peak. ")
        elif f["shape"] == "rises":
            s += f"Over {n} teachers {order} the curve rises to the largest teacher (no fall seen). "
        elif f["shape"] == "falls":
            s += f"Over {n} teachers {order} the curve falls from the smallest teacher on. "
        else:
            s += f"Curve: {f['shape']}. "
        if f["most_accurate_teacher"] is not None:
            s += (f"The most accurate teacher is `{f['most_accurate_teacher']}`; it "
                  f"{'is' if f['best_is_most_accurate'] else 'is not'} the best teacher.")
        if not _nan(f.get("baseline_val_acc")):
            s += f" CE-only baseline: mean val acc {acc(f['baseline_val_acc'])} over {_plural(f['n_baseline'], 'run')}."
        for t in f.get("teachers_not_completed", []):
            how = ", ".join(f"{n} {st}" for st, n in t["statuses"].items())
            s += (f" Not on the curve: `{t['teacher']}` had {_plural(t['n_trials'], 'trial')} and none completed ({how}); "
                  f"its best student reached val acc {acc(t['best_val_acc'])} at epoch {t['at_epoch']}, before it "
                  "was stopped.")
        out.append(s)
    return out


def _stop_words(st: ss.Answer) -> list[str]:
    out = []
    for student, f in st.by_student.items():
        per = ", ".join(f"`{t}` {num(e)}" for t, e in f["best_stop_by_teacher"].items())
        s = f"Student `{student}`: best teacher stop epoch per teacher: {per}. "
        bf, be = f["best_full"], f["best_early"]
        if bf is None:
            s += ("No fully trained teacher checkpoint was used (teacher_stop_epoch == teacher_epochs), "
                  "so no comparison. ")
        elif be is None:
            s += "Only fully trained teachers were used, so no early-stopped comparison. "
        else:
            s += (f"The best fully trained teacher is `{bf['teacher']}` (epoch {num(bf['teacher_stop_epoch'])}), "
                  f"student val acc {acc(bf['val_acc'])}. ")
            if f["early_beats_best_full"]:
                w = "; ".join(f"`{c['teacher']}` stopped at {num(c['teacher_stop_epoch'])} of "
                              f"{num(c['teacher_epochs'])}: {acc(c['val_acc'])}" for c in f["early_winners"])
                n_w = len(f["early_winners"])
                s += f"{_plural(n_w, 'early-stopped checkpoint')} beat{'s' if n_w == 1 else ''} it: {w}. "
            else:
                s += (f"No early-stopped checkpoint beats it (best early-stopped: `{be['teacher']}` at "
                      f"{num(be['teacher_stop_epoch'])}, {acc(be['val_acc'])}). ")
            lb = f["largest_teacher_early_beats_best_full"]
            if lb is not None:
                s += (f"The largest teacher `{f['largest_teacher']}`, early-stopped, "
                      f"{'beats' if lb else 'does not beat'} the best fully trained teacher.")
        out.append(s)
    return out


def _ta_words(ta: ss.Answer) -> list[str]:
    out = []
    for student, f in ta.by_student.items():
        if f["scope"] == "sweet_spot":
            scope = (f"runs with the sweet-spot teacher checkpoint (`{f['teacher']}` at epoch "
                     f"{num(f['teacher_stop_epoch'])}), so T and alpha are not mixed with teacher effects")
        else:
            scope = ("all distilled runs pooled over teachers and stop epochs (T and alpha are confounded with "
                     "the teacher)")
        bc, br = f["best_cell"], f["best_run"]
        s = (f"Student `{student}` ({_plural(f['n_runs'], 'run')}, {_plural(f['n_cells'], 'cell')}; "
             f"scope: {scope}). Best cell: T = {bc['temperature']}, alpha = {bc['alpha']}, mean val acc "
             f"{acc(bc['mean'])} over {_plural(bc['n'], 'run')}; "
             f"best single run: T = {num(br['temperature'])}, alpha = {num(br['alpha'])} ({acc(br['val_acc'])}). "
             f"Cell means span {acc(f['cell_mean_range'])}; the top {_plural(f['top_k'], 'run')} lie within "
             f"{acc(f['top_k_spread'])}, so the response near the optimum is "
             f"{'flat' if f['flat'] else 'not flat'} (threshold {acc(f['flat_threshold'])}).")
        out.append(s)
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _gain_phrase(metric: str, st: dict, short: bool) -> str:
    seeds = f"{st['n_kd']} distilled vs {st['n_base']} baseline seed{'' if st['n_base'] == 1 else 's'}"
    if st["test"] is None:
        return f"{metric} {signed(st['diff'])} ({seeds}): {st['verdict']}"
    ci = f"{st['confidence']:.0%} CI [{signed(st['ci_low'])}, {signed(st['ci_high'])}]"
    if short:
        return f"{metric} {signed(st['diff'])}, {ci}, {st['test']} p = {pval(st['p_value'])}"
    return (f"{metric} {signed(st['diff'])}, {ci} ({st['test']}, p = {pval(st['p_value'])}, Welch p = "
            f"{pval(st['p_value_welch'])}; {seeds}): {st['verdict']}")


def _gain_words(gain: ss.Answer, short: bool = False) -> list[str]:
    out = []
    for student, g in gain.by_student.items():
        c = g["config"]
        cfg = (f"`{c['teacher']}` at stop epoch {stop(c['teacher_stop_epoch'])}, method {c['method']}, "
               f"T = {num(c['temperature'])}, alpha = {num(c['alpha'])}, KD stop {stop(c['kd_stop_epoch'])}")
        parts = [_gain_phrase(m, g[m], short) for m in ("val_acc", "test_acc") if m in g]
        if short:
            out.append(f"Student `{student}`: KD gain over the CE baseline: " + "; ".join(parts) + ".")
        else:
            out.append(f"Student `{student}`, best config {cfg}. " + " / ".join(parts) + ".")
    return out


def _diag_words(diag: ss.Answer) -> list[str]:
    out = []
    for student, f in diag.by_student.items():
        ra, rk = f["spearman_agreement_vs_params"], f["spearman_kd_loss_vs_params"]
        n = int((diag.table["student"] == student).sum())
        if _nan(ra) and _nan(rk):
            out.append(f"Student `{student}`: {_plural(n, 'teacher')}; too few (or no variation) for a rank "
                       "correlation.")
            continue
        s = f"Student `{student}` ({n} teachers): "
        if not _nan(ra):
            trend = "falls" if ra < 0 else "rises" if ra > 0 else "does not change"
            s += f"KD agreement {trend} with teacher size (Spearman rho {ra:+.2f}); "
        if not _nan(rk):
            trend = "rises" if rk > 0 else "falls" if rk < 0 else "does not change"
            s += f"KD loss {trend} with teacher size (rho {rk:+.2f}); "
        s += f"lowest agreement with `{f['lowest_agreement_teacher']}` (largest teacher: `{f['largest_teacher']}`)."
        out.append(s)
    return out


# ------------------------------------------------------------------ report


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    v = ss.plain(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _pivot(table: pd.DataFrame, index: str, columns: str, values: str, row_order, col_order, fmt) -> pd.DataFrame:
    piv = table.pivot_table(index=index, columns=columns, values=values, aggfunc="first", sort=False)
    piv = piv.reindex(index=[r for r in row_order if r in piv.index],
                      columns=[c for c in col_order if c in piv.columns])
    out = piv.map(lambda v: "-" if _nan(v) else fmt(v))
    out.columns = [str(c) if not _isnum(c) else num(c) for c in out.columns]
    return out.reset_index()


def write_report(df: pd.DataFrame, out_dir, title: str, confidence: float = 0.95, meta: dict | None = None) -> dict:
    """Write report.md, report.html, trials.csv, summary.json and the PNG plots into `out_dir`.

    `meta` (e.g. experiment name, tracking URI) is listed at the top. Returns {name: path} for
    every file written: markdown, html, csv, summary, and one key per plot that had data.
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    counts = ss.status_counts(df)
    spots = ss.sweet_spot(df)
    cap = ss.capacity_curve(df)
    stop_ans = ss.stop_epoch_table(df)
    ta = ss.temperature_alpha_map(df)
    gain = ss.kd_gain(df, confidence)
    diag = ss.diagnostics(df)
    imp = ss.param_importance(df)

    paths: dict[str, str] = {}
    plotters = {"capacity_curve": (_plot_capacity, cap), "stop_epoch_heatmap": (_plot_stop, stop_ans),
                "temperature_alpha": (_plot_ta, ta), "kd_gain_forest": (_plot_forest, gain),
                "diagnostics": (_plot_diag, diag)}
    for name, (fn, ans) in plotters.items():
        p = fn(ans, out / f"{name}.png")
        if p is not None:
            paths[name] = str(p)

    csv = out / "trials.csv"
    df.to_csv(csv, index=False)
    summ = ss.summary(df, confidence) | {"title": title, "meta": meta or {}}
    (out / "summary.json").write_text(json.dumps(_jsonable(summ), indent=2, sort_keys=True) + "\n")

    d = Doc()
    d.h(1, title)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    d.p(f"Generated by `kdx analyze` on {now}.")
    d.bullets([f"{k}: `{v}`" for k, v in (meta or {}).items()])
    allc = counts.by_student.get("all", {})
    statuses = [c for c in counts.table.columns if c not in ("student", "total")]
    d.p(f"{allc.get('total', 0)} trial runs: " + ", ".join(f"{allc.get(s, 0)} {s}" for s in statuses)
        + ". Only completed trials enter the comparisons below; a trial's score is its final val_acc.")

    d.h(2, "Summary")
    if len(spots):
        d.p("Best distilled configuration per student (chosen by val_acc; test_acc only reported):")
        d.table(spots, ["student", "teacher", "teacher_params", "capacity_ratio", "teacher_stop_epoch",
                        "teacher_epochs", "method", "temperature", "alpha", "kd_stop_epoch", "val_acc", "test_acc",
                        "val_acc_mean", "n_seeds", "baseline_val_acc", "baseline_test_acc", "n_baseline"])
        d.bullets(_gain_words(gain, short=True))
    else:
        d.p("No completed distilled trials yet: nothing to compare.")

    d.h(2, "1. Trials by status")
    d.table(counts.table)
    if counts.details is not None and len(counts.details):
        d.p(f"Trials that did not complete (excluded from every comparison; {len(counts.details)} in all"
            + (f", first {MAX_LISTED} shown, all in trials.csv" if len(counts.details) > MAX_LISTED else "") + "):")
        d.table(counts.details.head(MAX_LISTED))

    d.h(2, "2. Capacity gap: student accuracy vs teacher size")
    d.p("Seed 004 section 5.1, seed 001 table 2. One point per teacher architecture: its best run by final "
        "val_acc (best KD hyperparameters and stop epoch for that teacher). Error bars: the std over the seeds "
        "of that config when it has several, else the std of that teacher's top 3 runs.")
    d.bullets(_capacity_words(cap))
    d.table(cap.table, ["student", "teacher", "teacher_params", "capacity_ratio", "teacher_val_acc_max", "val_acc",
                        "test_acc", "val_acc_mean", "err", "n_seeds", "n_runs", "teacher_stop_epoch", "temperature",
                        "alpha", "kd_stop_epoch"])
    if "capacity_curve" in paths:
        d.img("capacity_curve.png", "Student val acc vs teacher parameters, best run per teacher")

    d.h(2, "3. Teacher stop epoch")
    d.p("Seed 004 section 5.5. Each cell: the best run with that teacher checkpoint. A checkpoint is fully "
        "trained when teacher_stop_epoch == teacher_epochs.")
    d.bullets(_stop_words(stop_ans))
    for student in sorted(stop_ans.by_student):
        t = stop_ans.table[stop_ans.table["student"] == student]
        d.p(f"Student `{student}`: student val acc by teacher (rows, small to large) and teacher stop epoch "
            "(columns); * marks the fully trained checkpoint.")
        t = t.assign(cell=[f"{acc(v)}{'*' if f is True else ''}" for v, f in zip(t["val_acc"], t["full"])])
        d.table(_pivot(t, "teacher", "teacher_stop_epoch", "cell", list(dict.fromkeys(t["teacher"])),
                       sorted(t["teacher_stop_epoch"].unique()), str))
    if "stop_epoch_heatmap" in paths:
        d.img("stop_epoch_heatmap.png", "Student val acc over teacher x teacher stop epoch")

    d.h(2, "4. Temperature and alpha")
    d.p("Seed 001 table 1. Mean student val acc per (T, alpha) cell.")
    d.bullets(_ta_words(ta))
    for student in sorted(ta.by_student):
        t = ta.table[ta.table["student"] == student]
        t = t.assign(cell=[f"{acc(m)} (n={n})" for m, n in zip(t["mean"], t["n"])])
        d.p(f"Student `{student}`: rows T, columns alpha, mean val acc (n runs).")
        d.table(_pivot(t, "T_bin", "alpha_bin", "cell", list(dict.fromkeys(t.sort_values("T_lo")["T_bin"])),
                       list(dict.fromkeys(t.sort_values("alpha_lo")["alpha_bin"])), str))
    if "temperature_alpha" in paths:
        d.img("temperature_alpha.png", "Mean student val acc over T x alpha")

    d.h(2, "5. KD gain over the CE-only baseline")
    d.p(f"The best distilled config (all its completed seeds) against the same student's completed CE-only "
        f"baseline runs. Mean difference KD - CE with a {confidence:.0%} interval: paired t when both sides have "
        "exactly the same seeds, Welch's t otherwise; runs of one seed are averaged first. Fewer than 2 seeds on "
        "either side: no interval (not enough seeds). The val_acc gain is optimistic (the config was chosen on "
        "val_acc); the test_acc gain is the fairer estimate.")
    d.bullets(_gain_words(gain))
    d.table(gain.table, ["student", "metric", "teacher", "teacher_stop_epoch", "temperature", "alpha", "kd_mean",
                         "n_kd", "base_mean", "n_base", "diff", "ci_low", "ci_high", "test", "p_value",
                         "p_value_welch", "arms_overlap", "verdict"])
    if "kd_gain_forest" in paths:
        d.img("kd_gain_forest.png", "KD gain forest plot: mean difference with interval")

    d.h(2, "6. Diagnostics: KD agreement and KD loss vs teacher size")
    d.p("Seed 004 section 5.2. kd_agreement: the fraction of validation samples where student and teacher "
        "predict the same class, at the final epoch; train_kd: the final epoch's KD loss term (runs whose KD "
        "was switched off before the end are left out of it). Values at each teacher's best config (mean "
        "over its seeds) and over all its completed runs (_all).")
    d.bullets(_diag_words(diag))
    d.table(diag.table)
    if "diagnostics" in paths:
        d.img("diagnostics.png", "KD agreement and KD loss vs teacher parameters")

    d.h(2, "7. Parameter importance")
    d.p("Importance of the searched parameters that varied (temperature, alpha, teacher_params, "
        "teacher_stop_epoch, kd_stop_epoch) for the final val_acc of completed distilled trials: "
        "optuna.importance with the fANOVA evaluator (fixed seed) on an in-memory study built from the runs.")
    d.bullets([f"Student `{s}`: {f['note']}" for s, f in imp.by_student.items() if f["note"]])
    if len(imp.table):
        d.table(imp.table)

    d.h(2, "8. Method notes")
    d.bullets([
        "Score of a trial = its val_acc at its last logged epoch (ASHA compares trials at the same epoch); "
        "best_val_acc (max over epochs) is in trials.csv but is never used to choose.",
        "Selection uses val_acc only; test_acc is reported beside it.",
        "Only status `completed` enters comparisons; pruned, diverged, failed and running trials are counted "
        "and listed in section 1.",
        "A config = all params except the seed (and derived parameter counts); its seeds come from the search "
        "and from `kdx confirm` re-runs. Picking the max over many configs favours lucky runs; the mean over "
        "the config's seeds and the KD gain across seeds are the checks on that.",
        "Accuracies are fractions (0.8 = 80%); differences are in the same units.",
        "Images are referenced by relative path; view this page from the folder (or artifact directory) "
        "that holds the PNG files.",
    ])
    d.h(2, "Files")
    d.bullets(["`trials.csv`: every trial run with params, final metrics, best_val_acc, best_epoch, status",
               "`summary.json`: the summary above as JSON"] + [f"`{Path(p).name}`" for k, p in paths.items()])

    md, page = out / "report.md", out / "report.html"
    md.write_text(d.markdown())
    page.write_text(d.html(title))
    return {"markdown": str(md), "html": str(page), "csv": str(csv), "summary": str(out / "summary.json")} | paths


def attach_to_parent(paths, experiment: str, tracking_uri: str | None = None, artifact_path: str = "analysis"):
    """Log the report files as artifacts of the latest parent search run, under `artifact_path`.

    `paths`: the dict `write_report` returns, or any iterable of file paths. Returns the parent's
    run id, or None when the experiment has no run tagged kdx.role=search.
    """
    from mlflow.tracking import MlflowClient

    from .runs import default_tracking_uri, find_parent_run

    uri = tracking_uri or default_tracking_uri()
    parent = find_parent_run(experiment, uri)
    if parent is None:
        return None
    files = list(paths.values()) if isinstance(paths, dict) else list(paths)
    client = MlflowClient(tracking_uri=uri)
    for p in dict.fromkeys(files):
        client.log_artifact(parent.info.run_id, str(p), artifact_path=artifact_path)
    return parent.info.run_id
