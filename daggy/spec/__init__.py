"""DAG run specs: parsing, validation and parameter expansion.  Pure: no Twisted imports."""

from daggy.spec.parse import ParsedSpec, parse_generated_tasks, parse_run_spec

__all__ = ["ParsedSpec", "parse_run_spec", "parse_generated_tasks"]
