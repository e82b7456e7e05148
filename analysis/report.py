"""The sweet-spot report: Markdown + HTML (same content), PNG plots, a CSV of all trials, a JSON
summary; and `attach_to_parent`, which logs them to the parent search run in MLflow.

A report is a list of section functions (`SECTIONS`), run in order. `build_report` computes once
what they read (the answers, the studies' tables, the plots drawn from them: a `Report`); each
section appends its blocks to the document (`analysis.document.Doc`, rendered to both Markdown and
HTML). The plots are `analysis.plots`, the sentences `analysis.words`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import sweetspot as ss
from .cells import confirmed_cells
from .configs import Answer
from .document import Doc
from .plots import (PLOTS, plot_capacity, plot_confirmed, plot_diag, plot_forest,  # noqa: F401 (PLOTS re-exported)
                    plot_stop, plot_ta)
from .studies import plot_studies, study_tables, write_studies
from .words import (acc, capacity_words, confirmed_words, diag_words, gain_words, interval, isnum, missing, num, signed,
                    stop_words, ta_words)

MAX_LISTED = 50
CELL_HIDDEN = {"teacher_val_acc", "p_holm", "worse_by", "val acc [CI]", "test acc [CI]", "KD gain test [CI]"}


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
    out = piv.map(lambda v: "-" if missing(v) else fmt(v))
    out.columns = [str(c) if not isnum(c) else num(c) for c in out.columns]
    return out.reset_index()


def _answer_table(t: pd.DataFrame) -> pd.DataFrame:
    """The cells table with each interval as one "mean [low, high]" column."""
    t = t.copy()
    for m in ("val", "test"):
        if f"{m}_mean" in t:
            t[f"{m} acc [CI]"] = [interval(a, b, c) if not missing(a) else "-"
                             for a, b, c in zip(t[f"{m}_mean"], t[f"{m}_low"], t[f"{m}_high"])]
    if "gain_test" in t:
        t["KD gain test [CI]"] = [f"{signed(a)} [{signed(b)}, {signed(c)}]" if not missing(a) else "-"
                             for a, b, c in zip(t["gain_test"], t["gain_test_low"], t["gain_test_high"])]
    cols = [c for c in ("student", "teacher", "teacher_params", "teacher_stop_epoch") if c in t]
    cols += [c for c in t.columns if c not in cols and c not in CELL_HIDDEN and not c.startswith(("val_", "test_", "gain_",
                                                                                               "worse_"))]
    return t[[*cols, *(c for c in ("val acc [CI]", "test acc [CI]", "KD gain test [CI]") if c in t)]]


# ------------------------------------------------------------------ what the sections read


@dataclass(frozen=True)
class Report:
    """Everything the sections read, computed once: the trials, the answers (`analysis.sweetspot`),
    the studies' tables (`analysis.studies`) and {name: path} of the plots that had data."""

    df: pd.DataFrame
    title: str
    confidence: float
    meta: dict
    counts: Answer
    cells: Answer
    spots: pd.DataFrame
    cap: Answer
    stop: Answer
    ta: Answer
    gain: Answer
    diag: Answer
    imp: Answer
    studies: dict
    plots: dict


def _draw(df: pd.DataFrame, answers: dict, studies: dict, out: Path) -> dict[str, str]:
    """Draw every plot that has data into `out`; {name: path}, in the order the files list them."""
    plotters = {"confirmed": (plot_confirmed, answers["cells"]), "capacity_curve": (plot_capacity, answers["cap"]),
                "stop_epoch_heatmap": (plot_stop, answers["stop"]), "temperature_alpha": (plot_ta, df),
                "kd_gain_forest": (plot_forest, answers["gain"]), "diagnostics": (plot_diag, answers["diag"])}
    paths = {}
    for name, (fn, ans) in plotters.items():
        p = fn(ans, out / f"{name}.png")
        if p is not None:
            paths[name] = str(p)
    return paths | plot_studies(studies, out)


def build_report(df: pd.DataFrame, out: Path, title: str, confidence: float, meta: dict | None) -> Report:
    """Compute every answer of the report once and draw its plots into `out`."""
    answers = {"counts": ss.status_counts(df), "cells": confirmed_cells(df, confidence), "spots": ss.sweet_spot(df),
               "cap": ss.capacity_curve(df), "stop": ss.stop_epoch_table(df), "ta": ss.temperature_alpha_map(df),
               "gain": ss.kd_gain(df, confidence), "diag": ss.diagnostics(df), "imp": ss.param_importance(df)}
    studies = study_tables(df, confidence)
    return Report(df=df, title=title, confidence=confidence, meta=meta or {}, **answers, studies=studies,
                  plots=_draw(df, answers, studies, out))


# ------------------------------------------------------------------ the sections, in order


def _header(d: Doc, r: Report) -> None:
    d.h(1, r.title)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    d.p(f"Generated by `kdx analyze` on {now}.")
    d.bullets([f"{k}: `{v}`" for k, v in r.meta.items()])
    allc = r.counts.by_student.get("all", {})
    statuses = [c for c in r.counts.table.columns if c not in ("student", "total")]
    d.p(f"{allc.get('total', 0)} trial runs: " + ", ".join(f"{allc.get(s, 0)} {s}" for s in statuses)
        + ". Only completed trials enter the comparisons below; a trial's score is its final val_acc.")


def _answer(d: Doc, r: Report) -> None:
    d.h(2, "Answer")
    d.bullets(confirmed_words(r.cells.by_student))
    if "confirmed" in r.plots:
        d.img("confirmed.png", "Confirmed cells: capacity curve and stop epochs, mean and interval over seeds")
    if len(r.cells.table):
        d.p(f"Every cell: its confirmed config (the search's best in the cell, chosen on validation) over fresh "
            f"seeds, mean and {r.confidence:.0%} t interval; sweet spot = not significantly worse than the best on "
            "validation (paired t, Holm); gain = paired difference from the CE baseline with the same seeds.")
        d.table(_answer_table(r.cells.table), headers={"in_sweet_spot": "sweet spot"})
    if r.df.attrs.get("earlier_searches"):
        d.p(f"This experiment holds {r.df.attrs['earlier_searches']} earlier search(es) under other parent runs; only "
            "the latest search is analysed (searches are never pooled).")


def _search_summary(d: Doc, r: Report) -> None:
    d.h(2, "Search summary (search runs, not confirmed)")
    if not len(r.spots):
        d.p("No completed distilled trials yet: nothing to compare.")
        return
    d.p("Best distilled configuration per student (chosen by val_acc; test_acc only reported):")
    other = [c for c in r.spots.columns if c not in ss.SWEET_SPOT_COLUMNS]  # e.g. teacher_temperature, student.lr
    d.table(r.spots, ["student", "teacher", "teacher_params", "capacity_ratio", "teacher_stop_epoch",
                      "teacher_epochs", "method", "temperature", "alpha", "kd_stop_epoch", *other, "val_acc",
                      "test_acc", "val_acc_mean", "n_seeds", "baseline_val_acc", "baseline_test_acc", "n_baseline"])
    d.bullets(gain_words(r.gain, short=True))


def _statuses(d: Doc, r: Report) -> None:
    d.h(2, "1. Trials by status")
    d.table(r.counts.table)
    details = r.counts.details
    if details is not None and len(details):
        d.p(f"Trials that did not complete (excluded from every comparison; {len(details)} in all"
            + (f", first {MAX_LISTED} shown, all in trials.csv" if len(details) > MAX_LISTED else "") + "):")
        d.table(details.head(MAX_LISTED))


def _capacity(d: Doc, r: Report) -> None:
    d.h(2, "2. Capacity gap: student accuracy vs teacher size")
    d.p("Seed 004 section 5.1, seed 001 table 2. One point per teacher architecture: its best run by final "
        "val_acc (best KD hyperparameters and stop epoch for that teacher). Error bars: the std over the seeds "
        "of that config when it has several, else the std of that teacher's top 3 runs.")
    d.bullets(capacity_words(r.cap))
    d.table(r.cap.table, ["student", "teacher", "teacher_params", "capacity_ratio", "teacher_val_acc_max", "val_acc",
                          "test_acc", "val_acc_mean", "err", "n_seeds", "n_runs", "teacher_stop_epoch", "temperature",
                          "alpha", "kd_stop_epoch"])
    if "capacity_curve" in r.plots:
        d.img("capacity_curve.png", "Student val acc vs teacher parameters, best run per teacher")


def _stop_epochs(d: Doc, r: Report) -> None:
    d.h(2, "3. Teacher stop epoch")
    d.p("Seed 004 section 5.5. Each cell: the best run with that teacher checkpoint. A checkpoint is fully "
        "trained when teacher_stop_epoch == teacher_epochs.")
    d.bullets(stop_words(r.stop))
    for student in sorted(r.stop.by_student):
        t = r.stop.table[r.stop.table["student"] == student]
        d.p(f"Student `{student}`: student val acc by teacher (rows, small to large) and teacher stop epoch "
            "(columns); * marks the fully trained checkpoint.")
        t = t.assign(cell=[f"{acc(v)}{'*' if f is True else ''}" for v, f in zip(t["val_acc"], t["full"])])
        d.table(_pivot(t, "teacher", "teacher_stop_epoch", "cell", list(dict.fromkeys(t["teacher"])),
                       sorted(t["teacher_stop_epoch"].unique()), str))
    if "stop_epoch_heatmap" in r.plots:
        d.img("stop_epoch_heatmap.png", "Student val acc over teacher x teacher stop epoch")


def _temperature_alpha(d: Doc, r: Report) -> None:
    d.h(2, "4. Temperature and alpha")
    d.p("Seed 001 table 1. Mean student val acc per (T, alpha) cell.")
    d.bullets(ta_words(r.ta))
    for student in sorted(r.ta.by_student):
        t = r.ta.table[r.ta.table["student"] == student]
        t = t.assign(cell=[f"{acc(m)} (n={n})" for m, n in zip(t["mean"], t["n"])])
        d.p(f"Student `{student}`: rows T, columns alpha, mean val acc (n runs).")
        d.table(_pivot(t, "T_bin", "alpha_bin", "cell", list(dict.fromkeys(t.sort_values("T_lo")["T_bin"])),
                       list(dict.fromkeys(t.sort_values("alpha_lo")["alpha_bin"])), str))
    if "temperature_alpha" in r.plots:
        d.img("temperature_alpha.png", "Mean student val acc over T x alpha")


def _kd_gain(d: Doc, r: Report) -> None:
    d.h(2, "5. KD gain over the CE-only baseline")
    d.p(f"The best distilled config (all its completed seeds) against the same student's completed CE-only "
        f"baseline runs. Mean difference KD - CE with a {r.confidence:.0%} interval: paired t when both sides have "
        "exactly the same seeds, Welch's t otherwise; runs of one seed are averaged first. Fewer than 2 seeds on "
        "either side: no interval (not enough seeds). The val_acc gain is optimistic (the config was chosen on "
        "val_acc); the test_acc gain is the fairer estimate.")
    d.bullets(gain_words(r.gain))
    d.table(r.gain.table, ["student", "metric", "teacher", "teacher_stop_epoch", "temperature", "alpha", "kd_mean",
                           "n_kd", "base_mean", "n_base", "diff", "ci_low", "ci_high", "test", "p_value",
                           "p_value_welch", "arms_overlap", "verdict"])
    if "kd_gain_forest" in r.plots:
        d.img("kd_gain_forest.png", "KD gain forest plot: mean difference with interval")


def _diagnostics(d: Doc, r: Report) -> None:
    d.h(2, "6. Diagnostics: KD agreement and KD loss vs teacher size")
    d.p("Seed 004 section 5.2. kd_agreement: the fraction of validation samples where student and teacher "
        "predict the same class, at the final epoch; train_kd: the final epoch's KD loss term (runs whose KD "
        "was switched off before the end are left out of it). Values at each teacher's best config (mean "
        "over its seeds) and over all its completed runs (_all).")
    d.bullets(diag_words(r.diag))
    d.table(r.diag.table)
    if "diagnostics" in r.plots:
        d.img("diagnostics.png", "KD agreement and KD loss vs teacher parameters")


def _studies(d: Doc, r: Report) -> None:
    write_studies(d, r.studies, r.confidence, r.plots)


def _importance(d: Doc, r: Report) -> None:
    d.h(2, "7. Parameter importance")
    d.p("Importance, for the final val_acc of completed distilled trials, of every config parameter that took "
        "more than one value among them (numbers as ranges, anything else as categories; different teachers as "
        "their size, teacher_params): optuna.importance with the fANOVA evaluator (fixed seed) on an in-memory "
        "study built from the runs.")
    d.bullets([f"Student `{s}`: {f['note']}" for s, f in r.imp.by_student.items() if f["note"]])
    if len(r.imp.table):
        d.table(r.imp.table)


def _method_notes(d: Doc, r: Report) -> None:
    d.h(2, "8. Method notes")
    d.bullets([
        "Score of a trial = its val_acc at its last logged epoch (ASHA compares trials at the same epoch); "
        "best_val_acc (max over epochs) is in trials.csv but is never used to choose.",
        "Selection uses val_acc only; test_acc is reported beside it.",
        "Only status `completed` enters comparisons; pruned, diverged, failed and running trials are counted "
        "and listed in section 1.",
        "A config = every param a trial logged except the seed and the derived ones (parameter counts, the "
        "teacher's recipe facts), so runs that differ in any method hyperparameter or searched axis are different "
        "configs; a config's seeds come from the search "
        "and from `kdx confirm` re-runs. Picking the max over many configs favours lucky runs; the mean over "
        "the config's seeds and the KD gain across seeds are the checks on that.",
        "Accuracies are fractions (0.8 = 80%); differences are in the same units.",
        "Images are referenced by relative path; view this page from the folder (or artifact directory) "
        "that holds the PNG files.",
    ])


def _files(d: Doc, r: Report) -> None:
    d.h(2, "Files")
    d.bullets(["`trials.csv`: every trial run with params, final metrics, best_val_acc, best_epoch, status",
               "`summary.json`: the summary above as JSON"] + [f"`{Path(p).name}`" for p in r.plots.values()])


SECTIONS = (_header, _answer, _search_summary, _statuses, _capacity, _stop_epochs, _temperature_alpha, _kd_gain,
            _diagnostics, _studies, _importance, _method_notes, _files)


# ------------------------------------------------------------------ the files


def write_report(df: pd.DataFrame, out_dir, title: str, confidence: float = 0.95, meta: dict | None = None) -> dict:
    """Write report.md, report.html, trials.csv, summary.json and the PNG plots into `out_dir`.

    `meta` (e.g. experiment name, tracking URI) is listed at the top. The document is `SECTIONS`,
    in order, over one `build_report`. Returns {name: path} for every file written: markdown, html,
    csv, summary, and one key per plot that had data.
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(df, out, title, confidence, meta)
    csv = out / "trials.csv"
    df.to_csv(csv, index=False)
    summ = ss.summary(df, confidence) | {"title": title, "meta": meta or {}}
    (out / "summary.json").write_text(json.dumps(_jsonable(summ), indent=2, sort_keys=True) + "\n")
    d = Doc()
    for section in SECTIONS:
        section(d, report)
    md, page = out / "report.md", out / "report.html"
    md.write_text(d.markdown())
    page.write_text(d.html(title))
    return {"markdown": str(md), "html": str(page), "csv": str(csv), "summary": str(out / "summary.json")} | report.plots


def attach_to_parent(paths, experiment: str, tracking_uri: str | None = None, artifact_path: str = "analysis",
                     metrics: dict | None = None):
    """Log the report files as artifacts of the latest parent search run, under `artifact_path`, and
    `metrics` (the summary's `headline`: best confirmed val/test acc, KD gain and its interval) as
    the parent's metrics, so searches compare in the MLflow UI.

    `paths`: the dict `write_report` returns, or any iterable of file paths. Returns the parent's
    run id, or None when the experiment has no run tagged kdx.role=search.
    """
    import time

    from mlflow.entities import Metric
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
    if metrics:
        now = int(time.time() * 1000)
        client.log_batch(parent.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    return parent.info.run_id
