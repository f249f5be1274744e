"""The audit's one row format: a model, a check, its number with a standard error, and a plain verdict."""

from __future__ import annotations

from typing import Any

import pandas as pd

COLUMNS = ("model", "part", "check", "value", "stderr", "unit", "verdict", "detail")
BELOW_TRUTH = "below truth"
"""How every verdict of an NLL below the exact NLL of its data begins (a bug, or a biased estimate)."""


def finding(
    model: str, part: str, check: str, value: float | None, stderr: float | None, unit: str, verdict: str,
    detail: str = "",
) -> dict[str, Any]:
    """One row of summary.csv; `stderr` is None where the number has no sampling error."""
    return {
        "model": model, "part": part, "check": check,
        "value": None if value is None else float(value),
        "stderr": None if stderr is None else float(stderr),
        "unit": unit, "verdict": verdict, "detail": detail,
    }


def below_truth(frame: pd.DataFrame) -> pd.DataFrame:
    """The findings whose NLL lies below the truth: what `audit-likelihood` exits 1 on."""
    return frame[frame["verdict"].str.startswith(BELOW_TRUTH)]
