"""The audit's one row format: a model, a check, its number with a standard error, and a plain verdict."""

from __future__ import annotations

from typing import Any

COLUMNS = ("model", "part", "check", "value", "stderr", "unit", "verdict", "detail")


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
