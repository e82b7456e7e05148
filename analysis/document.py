"""The report's document model: blocks (headings, paragraphs, bullets, tables, images) rendered to
both Markdown and HTML, so the two files say the same thing. Table cells are formatted by column:
accuracies as `acc`, signed differences as `signed`, p-values as `pval` (analysis.words).

The HTML page has inline CSS, no scripts and no external resources; images are referenced by
relative path (they sit beside it).
"""

from __future__ import annotations

import html as _html

import numpy as np
import pandas as pd

from .words import acc, isnum, missing, num, pval, signed

ACC_COLUMNS = {"val_acc", "test_acc", "val_acc_mean", "val_acc_std", "test_acc_mean", "err", "teacher_val_acc",
               "teacher_val_acc_max", "baseline_val_acc", "baseline_test_acc", "mean", "std", "max", "test_mean",
               "kd_mean", "kd_std", "base_mean", "base_std", "kd_agreement", "train_kd", "kd_agreement_all",
               "train_kd_all", "importance", "best_val_acc"}
SIGNED_COLUMNS = {"diff", "ci_low", "ci_high"}


def _cell(col: str, v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if missing(v):
        return "never" if col == "kd_stop_epoch" and v is not None else ("-" if v is None or isnum(v) else str(v))
    if col in ACC_COLUMNS:
        return acc(v)
    if col in SIGNED_COLUMNS:
        return signed(v)
    if col.startswith("p_value"):
        return pval(v)
    if isnum(v):
        return num(v)
    return str(v)


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
