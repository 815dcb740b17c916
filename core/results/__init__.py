"""Typed results: pydantic models of every results entry, results.json (v2, reads v1) and headlines.

The stages build these models; results.json stores their JSON; the CLI, the run store's listings and
every page read them back with `read_results`, which validates and names the first bad field.
"""

from core.results.entries import (BudgetReport, BudgetRound, CacheCounts, ComparisonRow, ComparisonSummary,
                                  DatasetInfo, DiagnosticsHeader, DroppedTeacher, EnsembleEntry, GainRecovery,
                                  StudentEntry, TeacherEntry, TeachingInfo, TestScores, ViewsInfo)
from core.results.run import (HEADLINE_KEYS, RESULTS_SCHEMA_VERSION, STAGES, ResultsError, RunResults, headline,
                              read_results)

__all__ = ["BudgetReport", "BudgetRound", "CacheCounts", "ComparisonRow", "ComparisonSummary", "DatasetInfo",
           "DiagnosticsHeader", "DroppedTeacher", "EnsembleEntry", "GainRecovery", "HEADLINE_KEYS",
           "RESULTS_SCHEMA_VERSION", "STAGES", "ResultsError", "RunResults", "StudentEntry", "TeacherEntry",
           "TeachingInfo", "TestScores", "ViewsInfo", "headline", "read_results"]
