"""The DAG run state machine.  Pure: no Twisted imports, no clock."""

from daggy.dag.engine import DagEngine, Outcome

__all__ = ["DagEngine", "Outcome"]
