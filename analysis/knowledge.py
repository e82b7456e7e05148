"""What knowledge is transferred (seed 002 section 4, figs. 5-6): the normalised accuracy of a student
distilled from a weak teacher t- whose soft labels were altered on one sample subset
(explorer/methods/altered.py: the methods `alter_*`, hyperparameter `subset`).

Per seed, with acc- the student distilled from t- alone and acc+ from t+ alone (same student, teacher
pair, seed and every other setting):

    normalised = (acc - acc-) / (acc+ - acc-)

so 0 is the weak teacher and 1 the strong one (seed 002 fig. 5's caption). The references are, in
order of preference: the runs of the same search that alter nothing (subset 0: KD from t- alone) and
`alter_full` on every sample (subset 5: KD from t+ alone), the same loss as kd from each teacher; else
`kd` runs from each member of the pair alone (teacher `t-` and `t+`, same setting).

Statistics (as in analysis/cells.py): a seed is counted once (its first logged run); the normalised
value is formed per seed, so a cell uses only the seeds where it and both references completed
(paired); mean and Student-t interval over those seeds. Paired comparisons: each cell against the
best cell of its setting (`vs_best_*`) and against full replacement on the same subset (`vs_full_*`),
both as t intervals of the per-seed difference of normalised values. The metric is test accuracy
(nothing here is selected; validation is what a search chooses on).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from explorer.methods import get_method
from explorer.methods.altered import ALL_SUBSET, NONE_SUBSET, SCHEMES, SUBSETS

from .cells import mean_interval, paired_difference, per_seed
from .configs import config_columns, config_keys, config_value, distilled
from .words import acc, plural, signed

SHARED = ("temperature", "alpha")  # the hyperparameters every alter_* method takes besides the subset
OWN = tuple(dict.fromkeys(h.name for m in SCHEMES for h in get_method(m).hparams if h.name not in SHARED))
COLUMNS = ["student", "teacher", "scheme", "subset", "method", "subset_code", "variant", "n_seeds",
           "norm_mean", "norm_low", "norm_high", "acc_mean", "acc_low", "acc_high",
           "acc_minus", "acc_plus", "gap_mean", "gap_low", "gap_high", "gap_seeds", "reference",
           "best", "vs_best_diff", "vs_best_low", "vs_best_high", "vs_full_diff", "vs_full_low", "vs_full_high"]


def _variant(row: pd.Series) -> str:
    """The scheme's own hyperparameters other than the subset ('confidence=0.99'), '' for none."""
    names = [h.name for h in get_method(row["method"]).hparams if h.name not in (*SHARED, "subset")]
    return ", ".join(f"{n}={config_value(row[n])}" for n in names if n in row.index)


def _references(group: pd.DataFrame, runs: pd.DataFrame, setting: list[str], metric: str
                ) -> tuple[pd.Series, pd.Series, str]:
    """(acc- by seed, acc+ by seed, where they came from) for one setting's alteration runs."""
    minus = per_seed(group[group["subset"] == NONE_SUBSET], metric)
    plus = per_seed(group[(group["method"] == "alter_full") & (group["subset"] == ALL_SUBSET)], metric)
    if len(minus) and len(plus):
        return minus, plus, "subset none / alter_full on all"
    members = str(group.iloc[0]["teacher"]).split("+")
    if len(members) != 2:
        return minus, plus, "none"
    others = [c for c in setting if c != "teacher"]
    want = config_keys(group.iloc[:1], others)[0]
    kd = runs[runs["method"] == "kd"]
    kd = kd[[k == want for k in config_keys(kd, others)]] if len(kd) else kd
    kd_minus, kd_plus = (per_seed(kd[kd["teacher"] == m], metric) for m in members)
    if len(kd_minus) and len(kd_plus):
        return kd_minus, kd_plus, "kd from t- / kd from t+"
    return minus, plus, "none"


def _normalised(cell: pd.DataFrame, minus: pd.Series, plus: pd.Series, metric: str) -> pd.Series:
    """(acc - acc-)/(acc+ - acc-) per seed where all three exist (a seed with acc+ == acc- is dropped)."""
    a = per_seed(cell, metric)
    seeds = a.index.intersection(minus.index).intersection(plus.index)
    gap = plus[seeds] - minus[seeds]
    out = (a[seeds] - minus[seeds]) / gap.where(gap != 0)
    return out[np.isfinite(out)]


def knowledge_table(df: pd.DataFrame, confidence: float = 0.95, metric: str = "test_acc") -> pd.DataFrame:
    """One row per student x teacher pair x setting x scheme x subset (the references excluded): the
    normalised accuracy's mean and interval over seeds, the raw accuracy, the references' means, the
    gap acc+ - acc- with its interval, and the paired comparisons (module docstring). Empty (with the
    columns) when the frame holds no completed alteration run."""
    runs = distilled(df)
    if "subset" not in runs.columns or not len(runs):
        return pd.DataFrame(columns=COLUMNS)
    alter = runs[runs["method"].isin(list(SCHEMES))]
    if not len(alter):
        return pd.DataFrame(columns=COLUMNS)
    setting = [c for c in config_columns(df) if c not in ("method", *OWN)]
    rows = []
    for _, group in alter.groupby(config_keys(alter, setting), sort=False):
        minus, plus, source = _references(group, runs, setting, metric)
        common = minus.index.intersection(plus.index)
        gm, glo, ghi = mean_interval(plus[common] - minus[common], confidence)
        variant = pd.Series([_variant(r) for _, r in group.iterrows()], index=group.index)
        cells = []
        for (method, code, var), cell in group.groupby([group["method"], group["subset"], variant], sort=True):
            code = int(code)
            if code == NONE_SUBSET or (method == "alter_full" and code == ALL_SUBSET):
                continue  # the references themselves (0 and 1 by construction)
            norm = _normalised(cell, minus, plus, metric)
            nm, nlo, nhi = mean_interval(norm, confidence)
            am, alo, ahi = mean_interval(per_seed(cell, metric), confidence)
            first = cell.iloc[0]
            cells.append({"student": first["student"], "teacher": first["teacher"], "scheme": SCHEMES[method],
                          "subset": SUBSETS.get(code, str(code)), "method": method, "subset_code": code,
                          "variant": var, "n_seeds": int(len(norm)), "norm_mean": nm, "norm_low": nlo,
                          "norm_high": nhi, "acc_mean": am, "acc_low": alo, "acc_high": ahi,
                          "acc_minus": float(minus.mean()) if len(minus) else math.nan,
                          "acc_plus": float(plus.mean()) if len(plus) else math.nan,
                          "gap_mean": gm, "gap_low": glo, "gap_high": ghi, "gap_seeds": int(len(common)),
                          "reference": source, "_norm": norm})
        _compare(cells, confidence)
        rows += cells
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "_norm"} for r in rows], columns=COLUMNS)
    order = {m: i for i, m in enumerate(SCHEMES)}  # the seed's order: figs. 5 then 6
    table["_order"] = table["method"].map(order)
    table = table.sort_values(["student", "teacher", "_order", "subset_code"], kind="stable")
    return table.drop(columns="_order").reset_index(drop=True)


def _compare(cells: list[dict], confidence: float) -> None:
    """Paired comparisons within one setting: the best cell by mean minus each cell, and each cell minus
    full replacement on the same subset (same variant-free subset code)."""
    scored = [c for c in cells if len(c["_norm"]) and math.isfinite(c["norm_mean"])]
    best = max(scored, key=lambda c: (len(c["_norm"]) >= 2, c["norm_mean"]), default=None)
    full = {c["subset_code"]: c for c in cells if c["method"] == "alter_full"}
    for c in cells:
        c["best"] = c is best
        for name, other, sign in (("vs_best", best, 1), ("vs_full", full.get(c["subset_code"]), -1)):
            d = {"diff": math.nan, "low": math.nan, "high": math.nan}
            if other is not None and other is not c:
                a, b = (other["_norm"], c["_norm"]) if sign > 0 else (c["_norm"], other["_norm"])
                d = paired_difference(a, b, confidence)
            c.update({f"{name}_diff": d["diff"], f"{name}_low": d["low"], f"{name}_high": d["high"]})


# ------------------------------------------------------------------ words


def _where(r) -> str:
    """Where a cell's interval puts it relative to the weak (0) and the strong (1) teacher."""
    lo, hi = r.norm_low, r.norm_high
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{plural(int(r.n_seeds), 'seed')}, no interval"
    if lo > 1:
        return "above t+"
    if hi < 0:
        return "below t-"
    if lo > 0:
        return "above t-, not separated from t+" if hi >= 1 else "between t- and t+"
    return "not separated from t- or t+" if hi >= 1 else "not separated from t-, below t+"


def _cell(r) -> str:
    extra = f" ({r.variant})" if r.variant else ""
    return f"{r.subset}{extra} {signed(r.norm_mean)} [{signed(r.norm_low)}, {signed(r.norm_high)}]: {_where(r)}"


def knowledge_words(table: pd.DataFrame, confidence: float = 0.95) -> list[str]:
    """The answer in sentences that follow the intervals: the reference gap, each scheme's subsets
    placed against t- (0) and t+ (1), the best cell and the cells it cannot be separated from, and
    which schemes cannot be separated from full replacement (seed 002: full and confidence act alike)."""
    out = []
    pct = f"{confidence:.0%}"
    for (student, teacher), t in table.groupby(["student", "teacher"], sort=True):
        r0 = t.iloc[0]
        pair = str(teacher).split("+")
        weak, strong = (pair + ["?", "?"])[:2]
        gap = (f"acc+ - acc- = {signed(r0.gap_mean)} [{signed(r0.gap_low)}, {signed(r0.gap_high)}] "
               f"({pct} CI, {plural(int(r0.gap_seeds), 'seed')}; acc- {acc(r0.acc_minus)}, acc+ {acc(r0.acc_plus)}; "
               f"references: {r0.reference})")
        if math.isfinite(r0.gap_low) and r0.gap_low > 0:
            gap += ": the strong teacher gives the better student, so the scale is anchored."
        else:
            gap += (": the interval does not put acc+ above acc-, so the normalised values divide by a difference "
                    "the seeds do not separate from 0; read them as leads, not answers.")
        out.append(f"Student `{student}`, weak teacher `{weak}`, strong teacher `{strong}`: {gap}")
        for scheme, s in t.groupby("scheme", sort=False):
            out.append(f"`{student}`, scheme {scheme}, normalised accuracy by subset ({pct} CI): "
                       + "; ".join(_cell(r) for r in s.itertuples()) + ".")
        best = t[t["best"].astype(bool)]
        if len(best):
            b = best.iloc[0]
            ties = t[(t["vs_best_low"] <= 0) & (t["vs_best_high"] >= 0)]
            untested = t[t["vs_best_diff"].notna() & t["vs_best_low"].isna()]
            s = f"`{student}`: the highest mean is {b.scheme} on {b.subset} ({signed(b.norm_mean)}). "
            if len(ties):
                s += ("Paired over seeds, it cannot be separated from "
                      + ", ".join(f"{r.scheme} on {r.subset}" for r in ties.itertuples()) + ". ")
            if len(untested):
                s += f"{plural(len(untested), 'cell')} had too few shared seeds for a paired interval."
            out.append(s.strip())
        alike = t[(t["vs_full_low"] <= 0) & (t["vs_full_high"] >= 0)]
        differ = t[(t["vs_full_low"] > 0) | (t["vs_full_high"] < 0)]
        if len(alike) or len(differ):
            s = f"`{student}`, against full replacement on the same subset (paired, {pct} CI): "
            if len(alike):
                s += "not separated: " + ", ".join(f"{r.scheme} on {r.subset}" for r in alike.itertuples()) + ". "
            if len(differ):
                s += "separated: " + ", ".join(
                    f"{r.scheme} on {r.subset} {signed(r.vs_full_diff)} [{signed(r.vs_full_low)}, "
                    f"{signed(r.vs_full_high)}]" for r in differ.itertuples()) + "."
            out.append(s.strip())
    return out


def write_knowledge(d, table: pd.DataFrame, confidence: float) -> None:
    """The report's section on what knowledge is transferred (nothing when no alteration run completed)."""
    if not len(table):
        return
    d.h(2, "What knowledge is transferred (seed 002 sections 4-5)")
    d.p(f"Normalised test accuracy (acc - acc-)/(acc+ - acc-) of students distilled from the weak teacher t- whose "
        f"soft labels were altered on one subset, formed per seed against the references of the same seed "
        f"(0 = t- alone, 1 = t+ alone); mean and {confidence:.0%} t interval over seeds; comparisons paired by seed.")
    d.bullets(knowledge_words(table, confidence))
    d.table(table, ["student", "teacher", "scheme", "subset", "variant", "n_seeds", "norm_mean", "norm_low",
                    "norm_high", "acc_mean", "acc_minus", "acc_plus", "gap_mean", "gap_low", "gap_high", "best"])
