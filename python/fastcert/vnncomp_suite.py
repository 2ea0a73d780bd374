"""Moved to :mod:`fastcert.vnncomp.suite` (this name stays importable)."""

from __future__ import annotations

from fastcert.vnncomp.suite import (
    InstanceRow,
    SuiteResult,
    format_summary,
    read_instances,
    read_verdicts,
    run_suite,
    suite_json,
    tool_summaries,
    write_rows,
)

__all__ = ["InstanceRow", "SuiteResult", "format_summary", "read_instances", "read_verdicts", "run_suite", "suite_json",
           "tool_summaries", "write_rows"]
