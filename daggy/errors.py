"""Typed errors shared by the core, the runner and the HTTP API.

Each carries the HTTP status it maps to, so the API turns any of them into a JSON
``{"error": ...}`` response in one place.  Pure: no Twisted imports.
"""

from __future__ import annotations


class DaggyError(Exception):
    """Base of every error a client can cause; ``status`` is the HTTP status code."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict:
        return {"error": self.message}


class BadRequest(DaggyError):
    status = 400


class SpecInvalid(DaggyError):
    """A DAG run spec failed validation; ``errors`` lists every problem with its path."""

    status = 400

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = list(errors)

    def to_json(self) -> dict:
        return {"error": self.message, "errors": self.errors}


class UnknownRun(DaggyError):
    status = 404

    def __init__(self, run_id):
        super().__init__(f"no such run: {run_id}")
        self.run_id = run_id


class UnknownTask(DaggyError):
    status = 404

    def __init__(self, run_id, task_name: str):
        super().__init__(f"run {run_id} has no task named {task_name!r}")
        self.run_id = run_id
        self.task_name = task_name


class Conflict(DaggyError):
    """The request is valid but the run or task is in a state that forbids it."""

    status = 409


class PayloadTooLarge(DaggyError):
    status = 413


class TooManyRequests(DaggyError):
    """A bounded queue is full; the client may retry once it drains."""

    status = 429


class Unavailable(DaggyError):
    """A collaborator (for example the state store) cannot answer right now."""

    status = 503


def json_type_name(value) -> str:
    """How an error message names the JSON type of ``value`` ("an array", "null", ...)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__
