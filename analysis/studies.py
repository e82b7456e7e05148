"""The report's sections for the seeds' other studies, each written only when the runs hold its data:
adversarial transferability (seed 000 section IV-D, `evaluate.transfer`); the omitted class (seed 003
section 4.1) and the class counts an imbalance left (seed 000 section IV-C); what knowledge a teacher
transfers (seed 002 sections 4-5, the `alter_*` methods); robust accuracy (seed 003 section 4.4, `evaluate.robust`).

The tables are computed once (`study_tables`), their plots drawn once (`plot_studies`), then written
(`write_studies`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .knowledge import knowledge_table, write_knowledge
from .omitted import class_count_table, omitted_table, write_omitted
from .robust import robust_table, write_robust
from .transfer import plot_transfer, transfer_table, write_transfer


def study_tables(df: pd.DataFrame, confidence: float) -> dict[str, pd.DataFrame]:
    """Every study's table (empty when the runs hold none of its data)."""
    return {"transfer": transfer_table(df, confidence), "omitted": omitted_table(df, confidence),
            "class_counts": class_count_table(df), "knowledge": knowledge_table(df, confidence),
            "robust": robust_table(df, confidence)}


def plot_studies(tables: dict[str, pd.DataFrame], out: Path) -> dict[str, str]:
    """{name: path} of the studies' plots that had data, drawn into `out`."""
    plot = plot_transfer(tables["transfer"], out / "transfer.png")
    return {} if plot is None else {"transfer": str(plot)}


def write_studies(d, tables: dict[str, pd.DataFrame], confidence: float, plots: dict[str, str]) -> None:
    """Append each study's section to the report `d` (`plots`: from `plot_studies`)."""
    write_transfer(d, tables["transfer"], Path(plots["transfer"]) if "transfer" in plots else None, confidence)
    write_omitted(d, tables["omitted"], tables["class_counts"], confidence)
    write_knowledge(d, tables["knowledge"], confidence)
    write_robust(d, tables["robust"], confidence)
