"""The report's sections for the seeds' other studies, each written only when the runs hold its data:
adversarial transferability (seed 000 section IV-D, `evaluate.transfer`); the omitted class (seed 003
section 4.1) and the class counts an imbalance left (seed 000 section IV-C); what knowledge a teacher
transfers (seed 002 sections 4-5, the `alter_*` methods); robust accuracy (seed 003 section 4.4, `evaluate.robust`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .knowledge import knowledge_table, write_knowledge
from .omitted import class_count_table, omitted_table, write_omitted
from .robust import robust_table, write_robust
from .transfer import plot_transfer, transfer_table, write_transfer


def write_studies(d, df: pd.DataFrame, out: Path, confidence: float, paths: dict) -> None:
    """Append each study's section to the report `d`, adding its plots to `paths`."""
    table = transfer_table(df, confidence)
    plot = plot_transfer(table, out / "transfer.png")
    if plot is not None:
        paths["transfer"] = str(plot)
    write_transfer(d, table, plot, confidence)
    write_omitted(d, omitted_table(df, confidence), class_count_table(df), confidence)
    write_knowledge(d, knowledge_table(df, confidence), confidence)
    write_robust(d, robust_table(df, confidence), confidence)
