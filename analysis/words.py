"""The report's words: numbers formatted one way everywhere, and the sentences that state each
answer (they follow the intervals: "gain" only when the interval excludes 0)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .configs import Answer


def isnum(v) -> bool:
    """A real number (bools are not)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def missing(v) -> bool:
    """None, NaT or a non-finite number: printed as "n/a", "-" or "never", never as "nan"."""
    return v is None or (isnum(v) and not math.isfinite(float(v))) or v is pd.NaT


def acc(v) -> str:
    return "n/a" if missing(v) else f"{float(v):.4f}"


def signed(v) -> str:
    return "n/a" if missing(v) else f"{float(v):+.4f}"


def num(v) -> str:
    if missing(v):
        return "n/a"
    v = float(v)
    if v.is_integer():
        return f"{int(v):,}" if abs(v) >= 1e4 else str(int(v))
    return f"{v:.4g}"


def pval(v) -> str:
    if missing(v):
        return "n/a"
    return f"{v:.3g}" if v >= 1e-4 else f"{v:.1e}"


def stop(v) -> str:
    return "never" if missing(v) else num(v)


def teacher_desc(r: dict) -> str:
    ratio = r.get("sweet_spot_capacity_ratio", r.get("capacity_ratio"))
    params = r.get("sweet_spot_params", r.get("teacher_params"))
    bits = []
    if not missing(params):
        bits.append(f"{num(params)} params")
    if not missing(ratio):
        bits.append(f"capacity ratio {float(ratio):.3g}")
    return f" ({', '.join(bits)})" if bits else ""


def capacity_words(cap: Answer) -> list[str]:
    out = []
    for student, f in cap.by_student.items():
        s = (f"Student `{student}`: the sweet-spot teacher is `{f['sweet_spot_teacher']}`{teacher_desc(f)}, "
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
        if not missing(f.get("baseline_val_acc")):
            s += f" CE-only baseline: mean val acc {acc(f['baseline_val_acc'])} over {plural(f['n_baseline'], 'run')}."
        for t in f.get("teachers_not_completed", []):
            how = ", ".join(f"{n} {st}" for st, n in t["statuses"].items())
            s += (f" Not on the curve: `{t['teacher']}` had {plural(t['n_trials'], 'trial')} and none completed ({how}); "
                  f"its best student reached val acc {acc(t['best_val_acc'])} at epoch {t['at_epoch']}, before it "
                  "was stopped.")
        out.append(s)
    return out


def stop_words(st: Answer) -> list[str]:
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
                s += f"{plural(n_w, 'early-stopped checkpoint')} beat{'s' if n_w == 1 else ''} it: {w}. "
            else:
                s += (f"No early-stopped checkpoint beats it (best early-stopped: `{be['teacher']}` at "
                      f"{num(be['teacher_stop_epoch'])}, {acc(be['val_acc'])}). ")
            lb = f["largest_teacher_early_beats_best_full"]
            if lb is not None:
                s += (f"The largest teacher `{f['largest_teacher']}`, early-stopped, "
                      f"{'beats' if lb else 'does not beat'} the best fully trained teacher.")
        out.append(s)
    return out


def ta_words(ta: Answer) -> list[str]:
    out = []
    for student, f in ta.by_student.items():
        if f["scope"] == "sweet_spot":
            scope = (f"runs with the sweet-spot teacher checkpoint (`{f['teacher']}` at epoch "
                     f"{num(f['teacher_stop_epoch'])}), so T and alpha are not mixed with teacher effects")
        else:
            scope = ("all distilled runs pooled over teachers and stop epochs (T and alpha are confounded with "
                     "the teacher)")
        bc, br = f["best_cell"], f["best_run"]
        s = (f"Student `{student}` ({plural(f['n_runs'], 'run')}, {plural(f['n_cells'], 'cell')}; "
             f"scope: {scope}). Best cell: T = {bc['temperature']}, alpha = {bc['alpha']}, mean val acc "
             f"{acc(bc['mean'])} over {plural(bc['n'], 'run')}; "
             f"best single run: T = {num(br['temperature'])}, alpha = {num(br['alpha'])} ({acc(br['val_acc'])}). "
             f"Cell means span {acc(f['cell_mean_range'])}; the top {plural(f['top_k'], 'run')} lie within "
             f"{acc(f['top_k_spread'])}, so the response near the optimum is "
             f"{'flat' if f['flat'] else 'not flat'} (threshold {acc(f['flat_threshold'])}).")
        out.append(s)
    return out


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def gain_phrase(metric: str, st: dict, short: bool) -> str:
    seeds = f"{st['n_kd']} distilled vs {st['n_base']} baseline seed{'' if st['n_base'] == 1 else 's'}"
    if st["test"] is None:
        return f"{metric} {signed(st['diff'])} ({seeds}): {st['verdict']}"
    ci = f"{st['confidence']:.0%} CI [{signed(st['ci_low'])}, {signed(st['ci_high'])}]"
    if short:
        return f"{metric} {signed(st['diff'])}, {ci}, {st['test']} p = {pval(st['p_value'])}"
    return (f"{metric} {signed(st['diff'])}, {ci} ({st['test']}, p = {pval(st['p_value'])}, Welch p = "
            f"{pval(st['p_value_welch'])}; {seeds}): {st['verdict']}")


def gain_words(gain: Answer, short: bool = False) -> list[str]:
    out = []
    for student, g in gain.by_student.items():
        c = g["config"]
        cfg = (f"`{c['teacher']}` at stop epoch {stop(c['teacher_stop_epoch'])}, method {c['method']}, "
               f"T = {num(c['temperature'])}, alpha = {num(c['alpha'])}, KD stop {stop(c['kd_stop_epoch'])}")
        cfg += "".join(f", {k} = {num(v) if isnum(v) else v}" for k, v in (c.get("other_config") or {}).items())
        parts = [gain_phrase(m, g[m], short) for m in ("val_acc", "test_acc") if m in g]
        if short:
            out.append(f"Student `{student}`: KD gain over the CE baseline: " + "; ".join(parts) + ".")
        else:
            out.append(f"Student `{student}`, best config {cfg}. " + " / ".join(parts) + ".")
    return out


def diag_words(diag: Answer) -> list[str]:
    out = []
    for student, f in diag.by_student.items():
        ra, rk = f["spearman_agreement_vs_params"], f["spearman_kd_loss_vs_params"]
        n = int((diag.table["student"] == student).sum())
        if missing(ra) and missing(rk):
            out.append(f"Student `{student}`: {plural(n, 'teacher')}; too few (or no variation) for a rank "
                       "correlation.")
            continue
        s = f"Student `{student}` ({n} teachers): "
        if not missing(ra):
            trend = "falls" if ra < 0 else "rises" if ra > 0 else "does not change"
            s += f"KD agreement {trend} with teacher size (Spearman rho {ra:+.2f}); "
        if not missing(rk):
            trend = "rises" if rk > 0 else "falls" if rk < 0 else "does not change"
            s += f"KD loss {trend} with teacher size (rho {rk:+.2f}); "
        s += f"lowest agreement with `{f['lowest_agreement_teacher']}` (largest teacher: `{f['largest_teacher']}`)."
        out.append(s)
    return out


def interval(mean, low, high) -> str:
    return f"{acc(mean)} [{acc(low)}, {acc(high)}]"


def _names(items: list[str]) -> str:
    items = [f"`{i}`" for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def confirmed_words(by_student: dict) -> list[str]:
    """The answer in sentences that follow the intervals (analysis.cells): the sweet spot, what could
    not be separated, what is worse and by how much, a rise or a fall of the capacity curve only
    where a smaller or larger teacher is significantly worse, and the KD gain."""
    out = []
    for student, f in by_student.items():
        if not f.get("confirmed"):
            out.append(f"Student `{student}`: no confirmed cells yet (run `kdx confirm NAME`); every number below "
                       "rests on search runs, mostly one seed each, chosen as the maximum of many: read them as "
                       "leads, not answers.")
            continue
        pct = f"{f['confidence']:.0%}"
        b, n = f["best"], f["n_cells"]
        s = (f"Student `{student}`: the best cell on validation is {b['label']}: test acc "
             f"{interval(b['test_mean'], b['test_low'], b['test_high'])} ({pct} CI, {plural(b['n_seeds'], 'seed')}). ")
        sweet = f["sweet_spot"]
        if n == 1:
            s += "It is the only confirmed cell. "
        elif len(sweet) == n:
            s += (f"The {n} confirmed cells cannot be separated: none is significantly worse than the best on "
                  "validation (paired t over seeds, Holm-corrected). ")
        elif len(sweet) > 1:
            s += f"Sweet spot (not significantly worse than the best on validation): {_names(sweet)} are indistinguishable. "
        else:
            s += "Every other confirmed cell is significantly worse on validation. "
        for sep in f["separated"]:
            s += (f"{sep['label']} is worse by {signed(sep['worse_by'])} [{signed(sep['low'])}, {signed(sep['high'])}] "
                  f"(val, Holm p = {pval(sep['p_holm'])}). ")
        out.append(s.strip())
        out.append(_curve_sentence(student, f["teachers"]))
        g = f["kd_gain"]["test_acc"]
        base = f["baseline"]
        out.append(f"Student `{student}`: KD gain of the best cell over the CE baseline ("
                   f"{interval(base['test_mean'], base['test_low'], base['test_high'])}, "
                   f"{plural(base['n_seeds'], 'seed')}): {gain_phrase('test_acc', g, short=False)}.")
    return out


def _curve_sentence(student: str, teachers: list[dict]) -> str:
    if len(teachers) < 2:
        return f"Student `{student}`: one teacher confirmed, so no capacity curve."
    best = next(t for t in teachers if t["side"] == "best")
    smaller = [t["teacher"] for t in teachers if t["side"] == "smaller" and not t["in_sweet_spot"]]
    larger = [t["teacher"] for t in teachers if t["side"] == "larger" and not t["in_sweet_spot"]]
    same = [t["teacher"] for t in teachers if t["side"] != "best" and t["in_sweet_spot"]]
    s = f"Student `{student}`, capacity curve (each teacher at its best confirmed stop epoch): "
    if smaller:
        s += f"it rises from {_names(smaller)} to `{best['teacher']}`"
        s += f", then falls to {_names(larger)}. " if larger else ". "
    elif larger:
        s += f"it falls from `{best['teacher']}` to {_names(larger)}. "
    else:
        s += "no rise or fall is supported by the intervals. "
    if same:
        s += f"{_names(same)} cannot be separated from `{best['teacher']}`."
    return s.strip()
