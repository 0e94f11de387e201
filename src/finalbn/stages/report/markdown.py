"""Markdown and JSON helpers of the report (pandas' to_markdown needs `tabulate`, not a dependency).

    markdown_table(df)                     # a GitHub table; NaN as "—", booleans as ✓
    interval_text(0.12, 0.05, 0.19)        # "+0.120 [+0.050, +0.190]"
    json_safe({"p": float("nan")})         # {"p": None}
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# p-values span many orders of magnitude; mean epochs need one decimal
MD_FORMATS = {"p": ".2g", "p_holm": ".2g", "Holm p (last)": ".2g", "Holm p (sel)": ".2g", "sel_epoch": ".1f",
              "selected_epoch": ".1f"}


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
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell_text(v, f) for v, f in zip(row, col_fmt)) + " |"
            for row in df.itertuples(index=False, name=None)]
    return "\n".join([head, sep, *body])


def interval_text(est: float, lo: float, hi: float) -> str:
    """An estimate and its interval as a table cell: "—" without an estimate, the estimate alone
    without an interval."""
    if not math.isfinite(est):
        return "—"
    return f"{est:+.3f}" if not math.isfinite(lo) else f"{est:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def json_safe(obj: Any) -> Any:
    """Plain JSON types; NaN and infinities become null."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or obj is pd.NA:
        return None
    return obj


@dataclass
class Page:
    """report.md's sections gathered in order, and the folder every file goes to."""

    out: Path
    multi_arch: bool
    md: list[str] = field(default_factory=list)

    def section(self, title: str, body: str, notes: list[str] = ()) -> None:
        self.md.extend([f"## {title}", ""])
        self.md.extend(f"> Note: {n}" for n in notes)
        if notes:
            self.md.append("")
        if body:
            self.md.extend([body, ""])

    def table(self, df: pd.DataFrame) -> str:
        """A Markdown table; the arch column only when the study has more than one."""
        return markdown_table(df.drop(columns=[] if self.multi_arch or "arch" not in df else ["arch"]))
