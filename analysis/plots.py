"""The report's PNG plots, one function per question, each taking that question's `Answer`.

matplotlib's object API (`matplotlib.figure.Figure`, Agg canvas) only, so importing or calling this
module never changes the pyplot backend of the caller."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .configs import Answer
from .words import missing, num, pval

PLOTS = ("capacity_curve", "stop_epoch_heatmap", "temperature_alpha", "kd_gain_forest", "diagnostics")

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


def plot_ta(ta: Answer, path: Path) -> Path | None:
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
