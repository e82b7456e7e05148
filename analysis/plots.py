"""The report's PNG plots, one function per question, each taking that question's `Answer`.

matplotlib's object API (`matplotlib.figure.Figure`, Agg canvas) only, so importing or calling this
module never changes the pyplot backend of the caller."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .configs import Answer
from .words import missing, num, pval

PLOTS = ("confirmed", "capacity_curve", "stop_epoch_heatmap", "temperature_alpha", "kd_gain_forest", "diagnostics")


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


def plot_capacity(cap: Answer, path: Path) -> Path | None:
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
        if not missing(info.get("baseline_val_acc")):
            ax.axhline(info["baseline_val_acc"], ls="--", color="grey", label="CE baseline (mean)")
        for xi, yi, name, ratio in zip(x, y, t["teacher"], t["capacity_ratio"]):
            label = name if missing(ratio) else f"{name} (x{float(ratio):.3g})"
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


def plot_stop(stop_ans: Answer, path: Path) -> Path | None:
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


# How each search trial ended, as the T x alpha scatter draws it.
_STATUS_MARKS = {"completed": ("o", "completed"), "pruned": ("v", "pruned by ASHA"),
                 "diverged": ("X", "diverged"), "failed": ("s", "failed")}


def plot_ta(df, path: Path) -> Path | None:
    """Every search trial with a teacher at its (T, alpha), coloured by its last val_acc, the marker
    saying how it ended (pruned and diverged trials are the informative ones at the edges)."""
    from matplotlib.ticker import NullFormatter

    from .configs import no_teacher
    from .runs import typed

    d = typed(df)
    d = d[(d["kind"] == "search") & ~no_teacher(d["teacher"]) & np.isfinite(d["temperature"])
          & np.isfinite(d["alpha"])]
    students = sorted(d["student"].dropna().unique())
    if not students:
        return None
    fig, axes = _figure(len(students), width=5.6)
    for ax, student in zip(axes, students):
        g = d[d["student"] == student]
        vals = g["val_acc"].to_numpy(float)
        finite = vals[np.isfinite(vals)]
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        sc = None
        for status, (mark, label) in _STATUS_MARKS.items():
            h = g[g["status"] == status]
            if not len(h):
                continue
            v = h["val_acc"].to_numpy(float)
            sc = ax.scatter(h["temperature"], h["alpha"], c=np.where(np.isfinite(v), v, lo), cmap="viridis",
                            vmin=lo, vmax=hi, marker=mark, s=46, edgecolors="black", linewidths=0.4,
                            label=f"{label} ({len(h)})")
        if sc is not None:
            fig.colorbar(sc, ax=ax, label="student val acc (at its last epoch)")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ticks = [t for t in (1, 2, 4, 8, 16, 32) if g["temperature"].min() <= t * 1.2 and t <= g["temperature"].max() * 1.2]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("temperature T (log scale)")
        ax.set_ylabel("alpha (weight of the KD term)")
        ax.set_title(f"student {student}: every search trial")
        ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_confirmed(cells: Answer, path: Path) -> Path | None:
    """Per student: the capacity curve (each teacher at its best confirmed stop epoch) and test acc
    over teacher stop epochs, every point a mean over its confirmed seeds with its interval and its
    seed count; filled points are in the sweet spot, hollow ones significantly worse."""
    from matplotlib.ticker import NullFormatter

    students = [s for s, f in sorted(cells.by_student.items()) if f.get("confirmed")]
    if not students:
        return None
    fig, axes = _figure(2 * len(students), width=5.4)
    for i, student in enumerate(students):
        f = cells.by_student[student]
        conf = f"{f['confidence']:.0%}"
        a1, a2 = axes[2 * i], axes[2 * i + 1]
        curve = f["teachers"]
        x = np.array([np.nan if missing(t["teacher_params"]) else float(t["teacher_params"]) for t in curve])
        if not (np.isfinite(x).all() and (x > 0).all()):
            x = np.arange(len(curve), dtype=float)
        else:
            a1.set_xscale("log")
            a1.xaxis.set_minor_formatter(NullFormatter())
        _points(a1, x, curve)
        a1.plot(x, [t["test_mean"] for t in curve], color="C0", lw=1, zorder=1)
        for xi, t in zip(x, curve):
            a1.annotate(f"{t['teacher']} @{num(t['teacher_stop_epoch'])}\nn={t['n_seeds']}", (xi, t["test_high"]),
                        textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
        b = f["baseline"]
        if not missing(b["test_low"]):
            a1.axhspan(b["test_low"], b["test_high"], color="grey", alpha=0.2,
                       label=f"CE baseline {conf} CI (n={b['n_seeds']})")
        a1.set_xlabel("teacher parameters" + (" (log scale)" if a1.get_xscale() == "log" else ""))
        a1.set_ylabel(f"student test acc, mean and {conf} CI")
        a1.set_title(f"student {student}: capacity curve (confirmed)")
        a1.margins(x=0.15, y=0.2)
        if a1.get_legend_handles_labels()[0]:
            a1.legend(fontsize=7, loc="lower right")
        t = cells.table[(cells.table["student"] == student) & (cells.table["status"] == "confirmed")]
        for j, (teacher, g) in enumerate(t.groupby("teacher", sort=False)):
            g = g.sort_values("teacher_stop_epoch")
            xs = g["teacher_stop_epoch"].to_numpy(float) + (j - len(t["teacher"].unique()) / 2) * 0.15
            rows = g.to_dict("records")
            _points(a2, xs, rows, color=f"C{j}", label=teacher)
            a2.plot(xs, g["test_mean"], color=f"C{j}", lw=1)
        a2.set_xticks(sorted(t["teacher_stop_epoch"].unique()), [num(v) for v in sorted(t["teacher_stop_epoch"].unique())])
        a2.set_xlabel("teacher stop epoch")
        a2.set_ylabel(f"student test acc, mean and {conf} CI")
        a2.set_title(f"student {student}: stop epochs (n={f['min_seeds']}+ seeds per point)")
        a2.legend(fontsize=7, title="teacher (hollow: worse than best)")
    return _save(fig, path)


def _points(ax, x, rows: list[dict], color: str = "C0", label: str | None = None) -> None:
    """Means with interval bars; filled when in the sweet spot, hollow when significantly worse."""
    for xi, r in zip(x, rows):
        lo, hi = r["test_low"], r["test_high"]
        yerr = [[r["test_mean"] - lo], [hi - r["test_mean"]]] if not missing(lo) else None
        ax.errorbar([xi], [r["test_mean"]], yerr=yerr, fmt="o", color=color, capsize=4,
                    mfc=color if r["in_sweet_spot"] else "white", zorder=3, label=label)
        label = None


def plot_forest(gain: Answer, path: Path) -> Path | None:
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


def plot_diag(diag: Answer, path: Path) -> Path | None:
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
