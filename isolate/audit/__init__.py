"""`isolate audit`: a battery of real attacks run against this host's sandboxes, with host
canaries checked after each one. tests/security runs the same cases."""

from .battery import Audit, Case, Result, all_cases, run_all, summary, unavailable

__all__ = ["Audit", "Case", "Result", "all_cases", "run_all", "summary", "unavailable"]
