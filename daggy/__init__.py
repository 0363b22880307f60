"""daggy: a DAG work-orchestration daemon on Twisted."""

__version__ = "0.1.0"
