"""Markdown and JSON helpers of the report (pandas' to_markdown needs `tabulate`, not a dependency).

markdown_table(df)                     # a GitHub table; NaN as "—", booleans as ✓, HEADERS' names
interval_text(0.12, 0.05, 0.19)        # "+0.120 [+0.050, +0.190]"
json_safe({"p": float("nan")})         # {"p": None}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finalbn.infra.io import json_safe  # noqa: F401  (the report's modules import it from here)

# p-values span many orders of magnitude; an epoch is a whole number unless it is a mean
MD_FORMATS = {
    "p": ".2g",
    "p_holm": ".2g",
    "Holm p (last)": ".2g",
    "Holm p (sel)": ".2g",
    "sel_epoch": ".3g",
    "selected_epoch": ".3g",
}

# A table's code column names as report.md prints them (the CSV files keep the code names): plain
# words, the class by its name, the epoch protocol and what a number is a mean or SD of.
HEADERS = {
    "f1_1": "minority F1",
    "f1_1_std": "minority F1, SD",
    "f1_1_sel": "minority F1, selected epoch",
    "f1_1_prior_corrected": "minority F1, prior-corrected",
    "f1_1_validation_threshold": "minority F1 at the validation cut",
    "auroc": "AUROC",
    "auroc_std": "AUROC, SD",
    "ap": "AP",
    "balanced_accuracy": "balanced accuracy",
    "val_auroc": "validation AUROC",
    "val_f1_1": "validation minority F1",
    "test_f1_1": "test minority F1",
    "test_auroc": "test AUROC",
    "f1_bn": "minority F1, final BN (31)",
    "f1_rival": "minority F1, rival",
    "detectable": "detectable difference (80 % power)",
    "sel_epoch": "selected epoch",
    "selected_epoch": "selected epoch",
    "ece": "ECE",
    "brier": "Brier score",
    "prevalence": "prevalence π",
    "replicates": "replicates",
    "config": "configuration",
    "p": "p",
    "p_holm": "Holm p",
    "estimate": "estimate",
    "ci_low": "95 % CI low",
    "ci_high": "95 % CI high",
    "n": "replicates",
}


def header_text(column: Any) -> str:
    return HEADERS.get(str(column), str(column))


def cell_text(v: Any, floatfmt: str) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "✓" if v else ""
    if v is None or (isinstance(v, (float, np.floating)) and not math.isfinite(v)) or v is pd.NA:
        return "—"
    if isinstance(v, (float, np.floating)):
        return format(float(v), floatfmt)
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f", formats: dict[str, str] | None = None) -> str:
    """A GitHub Markdown table. `formats` maps a column to its float format (default MD_FORMATS,
    else `floatfmt`)."""
    fmts = {**MD_FORMATS, **(formats or {})}
    col_fmt = [fmts.get(str(c), floatfmt) for c in df.columns]
    head = "| " + " | ".join(header_text(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = [
        "| " + " | ".join(cell_text(v, f) for v, f in zip(row, col_fmt)) + " |"
        for row in df.itertuples(index=False, name=None)
    ]
    return "\n".join([head, sep, *body])


def interval_text(est: float, lo: float, hi: float) -> str:
    """An estimate and its interval as a table cell: "—" without an estimate, the estimate alone
    without an interval."""
    if not math.isfinite(est):
        return "—"
    return f"{est:+.3f}" if not math.isfinite(lo) else f"{est:+.3f} [{lo:+.3f}, {hi:+.3f}]"


@dataclass
class Page:
    """report.md's sections gathered in order, and the folder every file goes to."""

    out: Path
    multi_arch: bool
    md: list[str] = field(default_factory=list)

    def section(self, title: str, body: str, notes: Sequence[str] = ()) -> None:
        self.md.extend([f"## {title}", ""])
        self.md.extend(f"> Note: {n}" for n in notes)
        if notes:
            self.md.append("")
        if body:
            self.md.extend([body, ""])

    def table(self, df: pd.DataFrame) -> str:
        """A Markdown table; the arch column only when the study has more than one."""
        return markdown_table(df.drop(columns=[] if self.multi_arch or "arch" not in df else ["arch"]))
