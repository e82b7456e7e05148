"""The report's sections for the seeds' other studies, each written only when the runs hold its data:
adversarial transferability (seed 000 section IV-D, `evaluate.transfer`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .transfer import plot_transfer, transfer_table, write_transfer


def write_studies(d, df: pd.DataFrame, out: Path, confidence: float, paths: dict) -> None:
    """Append each study's section to the report `d`, adding its plots to `paths`."""
    table = transfer_table(df, confidence)
    plot = plot_transfer(table, out / "transfer.png")
    if plot is not None:
        paths["transfer"] = str(plot)
    write_transfer(d, table, plot, confidence)
