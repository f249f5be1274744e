"""Suite registry: name -> Suite class."""

from __future__ import annotations

from typing import Any

from baselines.registry import UnknownNameError
from benchmarks.suites.base import NotApplicable, Suite, SuiteResult
from benchmarks.suites.clipscore import ClipScoreSuite
from benchmarks.suites.fid import FidSuite
from benchmarks.suites.geneval import GenevalSuite
from benchmarks.suites.geneval_real import GenevalRealSuite
from benchmarks.suites.nll import NllSuite
from benchmarks.suites.speed import SpeedSuite

SUITES: dict[str, type[Suite]] = {s.name: s for s in (GenevalSuite, NllSuite, FidSuite, ClipScoreSuite, SpeedSuite, GenevalRealSuite)}


def available_suites() -> list[str]:
    return sorted(SUITES)


def get_suite(name: str, options: dict[str, Any] | None = None) -> Suite:
    if name not in SUITES:
        raise UnknownNameError("suite", name, list(SUITES))
    return SUITES[name](options)


__all__ = ["SUITES", "NotApplicable", "Suite", "SuiteResult", "available_suites", "get_suite"]
