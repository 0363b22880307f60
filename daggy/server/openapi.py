# -*- test-case-name: tests.unit.test_openapi -*-
"""The OpenAPI 3.1 document of daggyd's REST API, served at C{GET /v1/openapi.json}.

Pure data and a builder: nothing here touches the reactor.  The document describes every
route of L{daggy.server.api.DaggyAPI} (tests/unit/test_openapi.py fails when a route and the
document disagree), every response body, and the DAG run spec as JSON Schema.

JSON Schema cannot say everything the spec parser checks (edges naming defined tasks,
cycles, placeholders naming parameters, names unique after expansion, the task limit), so
a spec the schema accepts can still be answered 400; a spec the schema rejects is meant to
be rejected by the parser too (tests/unit/test_openapi.py checks it, and marks the known
exceptions).
"""

from __future__ import annotations

import copy
from typing import Any

from daggy import __version__
from daggy.executors import _slurm_commands as slurm_commands
from daggy.model import State
from daggy.spec.expand import PARAMETER_NAME

__all__ = ["OPENAPI_PATH", "METRICS_PATH", "SITE_PATHS", "JOB_SCHEMAS",
           "build_openapi_document", "run_spec_json_schema"]

#: Where daggyd serves the document.
OPENAPI_PATH = "/v1/openapi.json"
#: Where daggyd serves its Prometheus metrics: a path of the Site, beside the Klein routes.
METRICS_PATH = "/metrics"
#: The documented paths the Site serves itself rather than through a Klein route.
SITE_PATHS = (METRICS_PATH,)
#: The media type of the metrics (the Prometheus text exposition format).
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4"

#: Where daggyd streams its run events (Server-Sent Events), and their media type.
EVENTS_PATH = "/v1/events"
EVENTS_MEDIA_TYPE = "text/event-stream"
_EVENT_ID = {"type": "string", "pattern": "^[0-9]{1,19}$"}
#: One message of the stream: a run event (with its ID), or a gap (without one).
_SSE_EVENT = {
    "type": "object", "required": ["event", "data"],
    "properties": {
        "id": _EVENT_ID,
        "event": {"type": "string", "description": "the run event's name (runCreated, "
                  "taskAdded, runState, taskState, taskExecutorState, taskAttempt), or gap"},
        "data": {"type": "string", "description": "the event object as one line of JSON "
                 "(docs/loggers.md); for a gap, {\"from\": N, \"oldest\": M}"},
    },
}

#: The executor a daemon config names -> the component schema of its jobs.
JOB_SCHEMAS = {
    "ForkingTaskExecutor": "ForkingJob",
    "NoopTaskExecutor": "NoopJob",
    "SlurmTaskExecutor": "SlurmJob",
}

_JSON = "application/json"
_STATE_NAMES = [state.value for state in State]
_RUN_TARGET_STATES = ("QUEUED", "KILLED")
_TASK_TARGET_STATES = ("QUEUED", "COMPLETED", "KILLED")
# Largest finite double: the parser refuses numbers beyond it (a 400-digit integer).
_MAX_DOUBLE = 1.7976931348623157e308
# Patterns are valid both as ECMA 262 (what validators use) and as Python regexes (what
# generators such as schemathesis use).
_NO_NUL = "^[^\\x00]*$"
_NO_CONTROL = "^[^\\x00-\\x1f]*$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _any_case(*words: str) -> str:
    """A pattern matching exactly one of C{words}, in any mix of ASCII upper and lower
    case (the API compares state names case-insensitively)."""
    alternatives = ("".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)
                    for word in words)
    return f"^(?:{'|'.join(alternatives)})$"


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {_JSON: {"schema": schema}}


def _object(properties: dict[str, Any], required: list[str] | tuple[str, ...] = (),
            description: str | None = None, closed: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


# -- the DAG run spec ----------------------------------------------------------------------

def _environment_schema(name_schema: dict[str, Any], rule: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Environment variables laid over daggyd's environment; values "
                       f"expand {{{{NAME}}}} placeholders.  Names: {rule}.",
        "propertyNames": name_schema,
        "additionalProperties": {"type": "string", "pattern": _NO_NUL},
    }


_ENV_NAME = "^[A-Za-z_][A-Za-z0-9_]*$"
_SECRET_ENVIRONMENT = {
    "type": "array",
    "uniqueItems": True,
    "items": {"type": "string", "pattern": _ENV_NAME},
    "description": "Names of environment variables whose values the daemon supplies (from "
                   "the executor's secretsFile, else daggyd's environment); the spec holds "
                   "only names, no placeholders.  Each must be a secret the daemon has and "
                   "not also be set in environment (checked by daggyd: 400).",
}

_COMMAND = {
    "type": "array",
    "minItems": 1,
    "description": "The program and its arguments, passed to exec as they are (no shell); "
                   "every element expands {{NAME}} placeholders.",
    "prefixItems": [{"type": "string", "minLength": 1, "pattern": _NO_NUL}],
    "items": {"type": "string", "pattern": _NO_NUL},
}


def _forking_job() -> dict[str, Any]:
    return _object({
        "command": _COMMAND,
        "environment": _environment_schema(
            {"minLength": 1, "pattern": "^[^=\\x00]*$"}, "non-empty, without '=' or NUL"),
        "secretEnvironment": _SECRET_ENVIRONMENT,
        "timeoutSeconds": {
            "type": "number", "exclusiveMinimum": 0, "maximum": _MAX_DOUBLE,
            "description": "The attempt is stopped (SIGTERM, then SIGKILL) after this many "
                           "seconds."},
        "workDir": {"type": "string", "minLength": 1, "pattern": _NO_NUL,
                    "description": "The directory the task runs in; expands placeholders."},
    }, required=["command"], description=(
        "A job of ForkingTaskExecutor: a local process per attempt (see docs/executors.md). "
        "Unknown fields are errors."))


_SLURM_INTEGER_DESCRIPTIONS = {
    "minCPUs": "sbatch --cpus-per-task",
    "minMemoryMB": "sbatch --mem=<n>M",
    "minTmpDiskMB": "sbatch --tmp=<n>M",
    "priority": "sbatch --priority (operators and administrators only)",
    "timeLimitSeconds": "sbatch --time, applied by Slurm in whole minutes",
}
_SLURM_STRING_DESCRIPTIONS = {
    "workDir": "sbatch --chdir",
    "tmpDir": "exported to the job as TMPDIR",
    "partition": "sbatch --partition (overrides the executor's default)",
    "account": "sbatch --account (overrides the executor's default)",
    "qos": "sbatch --qos (overrides the executor's default)",
    "gres": "sbatch --gres, e.g. gpu:1",
}


def _reserved_sbatch_option(option: str) -> dict[str, str]:
    if option.startswith("--"):
        return {"pattern": f"^{option}(?:=|$)"}
    return {"pattern": f"^{option}"}


def _slurm_job() -> dict[str, Any]:
    properties: dict[str, Any] = {
        "command": _COMMAND,
        "environment": _environment_schema(
            {"pattern": _ENV_NAME},
            "shell identifiers (letters, digits and '_', not starting with a digit)"),
        "secretEnvironment": _SECRET_ENVIRONMENT,
    }
    for name, (low, high) in slurm_commands.INTEGER_FIELDS.items():
        properties[name] = {"type": "integer", "minimum": low, "maximum": high,
                            "description": _SLURM_INTEGER_DESCRIPTIONS[name]}
    for name in slurm_commands.STRING_FIELDS:
        properties[name] = {"type": "string", "minLength": 1,
                            "pattern": "^[^\\x00\\n]*$",
                            "description": _SLURM_STRING_DESCRIPTIONS[name]}
    properties["sbatchArgs"] = {
        "type": "array",
        "description": "Extra sbatch arguments, after the executor's own.  Options the "
                       "executor sets itself are refused: "
                       + ", ".join(slurm_commands.RESERVED_SBATCH_OPTIONS) + ".",
        "items": {"type": "string", "pattern": _NO_NUL,
                  "not": {"anyOf": [_reserved_sbatch_option(option)
                                    for option in slurm_commands.RESERVED_SBATCH_OPTIONS]}},
    }
    schema = _object(properties, required=["command"], description=(
        "A job of SlurmTaskExecutor: one Slurm batch job per attempt (see docs/slurm.md). "
        "Placeholders expand in every string field and in sbatchArgs.  Unknown fields are "
        "errors."))
    # The executor passes secrets with --export, so a job with secrets cannot set its own.
    schema["if"] = {"required": ["secretEnvironment"],
                    "properties": {"secretEnvironment": {"minItems": 1}}}
    schema["then"] = {"properties": {"sbatchArgs": {"items": {
        "not": {"pattern": "^--export(?:=|$)"}}}}}
    return schema


def _parameter_values(description: str) -> dict[str, Any]:
    return {
        "type": ["object", "null"],
        "description": description,
        "propertyNames": {"pattern": PARAMETER_NAME.pattern},
        "additionalProperties": {
            "oneOf": [
                {"type": "string", "description": "substituted; does not multiply the task"},
                {"type": "array", "minItems": 1, "items": {"type": "string"},
                 "description": "each value makes one instance of every task using it"},
            ],
        },
    }


def _task_spec() -> dict[str, Any]:
    names = {"type": ["array", "null"], "items": {"type": "string"},
             "description": "Defined task names (of this spec); null means []."}
    return _object({
        "job": _ref("Job"),
        "maxRetries": {"type": "integer", "minimum": 0, "default": 0,
                       "description": "How many more attempts a failed task gets."},
        "retryIntervalSeconds": {"type": "number", "minimum": 0, "maximum": _MAX_DOUBLE,
                                 "default": 0,
                                 "description": "Seconds between a failed attempt and the "
                                                "next."},
        "parents": {**names, "description": "Tasks this task runs after; null means []."},
        "children": {**names, "description": "Tasks that run after this task; null means "
                                             "[]."},
        "isGenerator": {"type": "boolean", "default": False,
                        "description": "The task's output is a tasks object whose tasks are "
                                       "added to the run."},
    }, required=["job"], description="One task of a run spec (see docs/spec.md).  Unknown "
                                     "attributes are errors.")


def _spec_schemas(job_schema: str) -> dict[str, Any]:
    tasks = {
        "type": "object",
        "minProperties": 1,
        "description": "Defined task name -> task.  Names are non-empty and have no control "
                       "characters.",
        "propertyNames": {"minLength": 1, "pattern": _NO_CONTROL},
        "additionalProperties": _ref("TaskSpec"),
    }
    run_spec = _object({
        "tag": {"type": ["string", "null"],
                "description": "A label to list runs by; null means none."},
        "parameters": _ref("Parameters"),
        "taskParameters": {**_ref("Parameters"),
                           "description": "The older name of parameters."},
        "tasks": _ref("Tasks"),
    }, required=["tasks"], description=(
        "A DAG run spec (docs/spec.md), the body of POST /v1/dagrun.  Edges must name "
        "defined tasks and make no cycle, and placeholders must name parameters; those "
        "rules, beyond JSON Schema, are checked by the parser (400)."))
    run_spec["not"] = {"required": ["parameters", "taskParameters"],
                       "description": "parameters and taskParameters are exclusive"}
    return {
        "RunSpec": run_spec,
        "Parameters": _parameter_values(
            "Parameter name -> a string or a non-empty list of strings; {{NAME}} in a job's "
            "templatable fields is replaced by the value.  null means {}."),
        "Tasks": tasks,
        "TaskSpec": _task_spec(),
        "Job": {**_ref(job_schema),
                "description": "The job format of the executor this daggyd runs."},
        "ForkingJob": _forking_job(),
        "SlurmJob": _slurm_job(),
        "NoopJob": {"type": "object",
                    "description": "A job of NoopTaskExecutor: any object is accepted and "
                                   "reported successful without running anything."},
        "AnyJob": {"type": "object",
                   "description": "A job: an object whose format is the executor's "
                                  "(ForkingJob, SlurmJob or NoopJob)."},
    }


# -- answers -------------------------------------------------------------------------------

_RUN_ID = {"type": "integer", "minimum": 0}
_NAMES = {"type": "array", "items": {"type": "string"}}


def _answer_schemas() -> dict[str, Any]:
    time = {"type": "string", "format": "date-time",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$",
            "description": "ISO 8601 UTC with microseconds"}
    state_history = {"type": "array", "items": _ref("StateChange"),
                     "description": "oldest first"}
    summary = {
        "runID": _RUN_ID,
        "tag": {"type": ["string", "null"]},
        "state": _ref("State"),
        "startTime": _ref("Time"),
        "lastUpdate": _ref("Time"),
        "taskCounts": _ref("TaskCounts"),
    }
    by_task = lambda values: {"type": "object", "additionalProperties": values}  # noqa: E731
    return {
        "Error": _object({"error": {"type": "string"}}, required=["error"],
                         description="Every error: the message names the offending part "
                                     "of the request."),
        "SpecError": _object({
            "error": {"type": "string", "description": "the errors joined by '; '"},
            "errors": {**_NAMES, "description": "one '<path>: <message>' per problem"},
        }, required=["error"], description="An invalid spec (with errors) or body."),
        "ValidateError": _object({
            "valid": {"const": False},
            "error": {"type": "string"},
            "errors": _NAMES,
        }, required=["error"], description="An invalid spec (valid, error and errors), or a "
                                           "body that is not a JSON object (error only)."),
        "State": {"type": "string", "enum": _STATE_NAMES},
        "Time": time,
        "TaskCounts": _object({name: {"type": "integer", "minimum": 0}
                               for name in _STATE_NAMES}, required=_STATE_NAMES,
                              description="Number of tasks in each state."),
        "StateChange": _object({"time": _ref("Time"), "state": _ref("State")},
                               required=["time", "state"]),
        "Ready": _object({"msg": {"type": "string"}}, required=["msg"]),
        "NotReady": _object({"msg": {"type": "string"}, "error": {"type": "string"}},
                            required=["msg", "error"]),
        "Submitted": _object({"runID": _RUN_ID}, required=["runID"]),
        "Valid": _object({"valid": {"const": True},
                          "tasks": {**_NAMES, "description": "the expanded task names"}},
                         required=["valid", "tasks"]),
        "RunSummary": _object(summary, required=list(summary)),
        "Run": _object({
            **summary,
            "parameters": {"type": "object", "additionalProperties": {
                "oneOf": [{"type": "string"}, _NAMES]}},
            "stateChanges": state_history,
            "tasks": by_task(_ref("TaskDefinition")),
            "taskStates": by_task(_ref("State")),
            "taskAttempts": by_task({"type": "array", "items": _ref("Attempt")}),
            "taskStateChanges": by_task(state_history),
            "taskExecutorStates": by_task({"type": "object"}),
        }, required=[*summary, "parameters", "stateChanges", "tasks", "taskStates",
                     "taskAttempts", "taskStateChanges", "taskExecutorStates"]),
        "RunState": _object({"runID": _RUN_ID, "state": _ref("State"),
                             "taskCounts": _ref("TaskCounts")},
                            required=["runID", "state", "taskCounts"]),
        "RunStateSet": _object({"runID": _RUN_ID,
                                "state": {"type": "string", "enum": list(_RUN_TARGET_STATES)}},
                               required=["runID", "state"]),
        "TaskDefinition": _object({
            "name": {"type": "string"},
            "definedName": {"type": "string"},
            "job": {"type": "object",
                    "description": "the job with parameters substituted"},
            "maxRetries": {"type": "integer", "minimum": 0},
            "retryIntervalSeconds": {"type": "number", "minimum": 0},
            "parents": _NAMES,
            "children": _NAMES,
            "isGenerator": {"type": "boolean"},
            "expansionValues": {"type": "object",
                                "additionalProperties": {"type": "string"}},
        }, required=["name", "definedName", "job", "maxRetries", "retryIntervalSeconds",
                     "parents", "children", "isGenerator", "expansionValues"]),
        "Attempt": _object({
            "startTime": _ref("Time"),
            "stopTime": _ref("Time"),
            "rc": {"type": ["integer", "null"],
                   "description": "null after a signal or when nothing started"},
            "succeeded": {"type": "boolean"},
            "outputLog": {"type": "string"},
            "errorLog": {"type": "string"},
            "executorLog": {"type": "string"},
            "killed": {"type": "boolean"},
            "timedOut": {"type": "boolean"},
            "outputTruncated": {"type": "boolean"},
            "errorTruncated": {"type": "boolean"},
            "executorState": {"type": "object"},
        }, required=["startTime", "stopTime", "rc", "succeeded", "outputLog", "errorLog",
                     "executorLog", "killed", "timedOut", "outputTruncated",
                     "errorTruncated", "executorState"]),
        "Task": _object({
            "runID": _RUN_ID,
            "name": {"type": "string"},
            "definition": _ref("TaskDefinition"),
            "state": _ref("State"),
            "attempts": {"type": "array", "items": _ref("Attempt")},
            "stateChanges": state_history,
            "executorState": {"type": ["object", "null"]},
        }, required=["runID", "name", "definition", "state", "attempts", "stateChanges",
                     "executorState"]),
        "TaskState": _object({"runID": _RUN_ID, "name": {"type": "string"},
                              "state": _ref("State")}, required=["runID", "name", "state"]),
        "TaskStateSet": _object({
            "runID": _RUN_ID, "name": {"type": "string"},
            "state": {"type": "string", "enum": list(_TASK_TARGET_STATES)},
        }, required=["runID", "name", "state"]),
        "OpenAPIDocument": _object({"openapi": {"type": "string"},
                                    "info": {"type": "object"},
                                    "paths": {"type": "object"}},
                                   required=["openapi", "info", "paths"], closed=False),
    }


# -- paths ---------------------------------------------------------------------------------

def _error_response(description: str, schema: str = "Error") -> dict[str, Any]:
    return {"description": description, "content": _json_content(_ref(schema))}


def _responses() -> dict[str, Any]:
    return {
        "BadRequest": _error_response("A malformed request: the message names the part."),
        "Unauthorized": {
            "description": "Bearer-token auth is enabled and the request carried no token or "
                           "a wrong one.",
            "headers": {"WWW-Authenticate": {
                "description": "Bearer, with the realm", "required": True,
                "schema": {"type": "string", "pattern": "^Bearer"}}},
            "content": _json_content(_ref("Error")),
        },
        "NotFound": _error_response("No such run (or task)."),
        "Conflict": _error_response("The run or task is in a state that forbids the change."),
        "PayloadTooLarge": _error_response("The body is larger than max-request-bytes."),
        "TooManyQueued": _error_response("max-queued-runs runs already wait for a slot; "
                                         "nothing was recorded."),
        "Unavailable": _error_response("daggyd is shutting down, or the run logger's store "
                                       "cannot be reached."),
    }


def _parameters() -> dict[str, Any]:
    return {
        "runID": {"name": "runID", "in": "path", "required": True, "schema": _RUN_ID,
                  "description": "A run ID; one that is not an integer names no run (404)."},
        "taskName": {
            "name": "name", "in": "path", "required": True,
            "schema": {"type": "string", "minLength": 1},
            "description": "An expanded task name as ONE path segment: percent-encode its "
                           "UTF-8 bytes, '/' as %2F.",
        },
        "runTargetState": {
            "name": "state", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": _any_case(*_RUN_TARGET_STATES)},
            "description": "QUEUED (resume a finished run) or KILLED; any case.",
        },
        "taskTargetState": {
            "name": "state", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": _any_case(*_TASK_TARGET_STATES)},
            "description": "QUEUED (run again), COMPLETED (skip) or KILLED; any case.",
        },
    }


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": _json_content(_ref(schema))}


def _use(*names: str) -> dict[str, Any]:
    codes = {"BadRequest": "400", "Unauthorized": "401", "NotFound": "404",
             "Conflict": "409", "PayloadTooLarge": "413", "TooManyQueued": "429",
             "Unavailable": "503"}
    return {codes[name]: {"$ref": f"#/components/responses/{name}"} for name in names}


def _param(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


_EXAMPLE_SPEC = {
    "tag": "nightly",
    "parameters": {"DATE": ["2021-01-01", "2021-01-02"]},
    "tasks": {
        "pull": {"job": {"command": ["/usr/bin/pull", "{{DATE}}"]}, "maxRetries": 2},
        "report": {"job": {"command": ["/usr/bin/report"]}, "parents": ["pull"]},
    },
}


def _paths() -> dict[str, Any]:
    run_links = {
        "GetRun": {"operationId": "getRun",
                   "parameters": {"runID": "$response.body#/runID"}},
        "GetRunState": {"operationId": "getRunState",
                        "parameters": {"runID": "$response.body#/runID"}},
        "KillRun": {"operationId": "killRun",
                    "parameters": {"runID": "$response.body#/runID"}},
    }
    spec_body = {"required": True, "content": {_JSON: {
        "schema": _ref("RunSpec"),
        "examples": {"nightly": {"summary": "Two dates, then a report",
                                 "value": _EXAMPLE_SPEC}},
    }}}
    by_state = {
        "name": "state", "in": "query", "required": False,
        "schema": {"type": "string", "pattern": _any_case(*_STATE_NAMES)},
        "description": "Only runs in this state (any case); without `all`, finished runs "
                       "are included.",
    }
    return {
        "/ready": {"get": {
            "operationId": "getReady", "tags": ["daemon"],
            "summary": "Readiness check (never needs a token)",
            "security": [{}],
            "responses": {
                "200": _ok("daggyd can serve.", "Ready"),
                "503": _ok("The run logger cannot serve (e.g. Redis unreachable); error "
                           "says why.", "NotReady"),
            },
        }},
        OPENAPI_PATH: {"get": {
            "operationId": "getOpenAPI", "tags": ["daemon"],
            "summary": "This document",
            "responses": {"200": _ok("The OpenAPI document.", "OpenAPIDocument"),
                          **_use("Unauthorized")},
        }},
        METRICS_PATH: {"get": {
            "operationId": "getMetrics", "tags": ["daemon"],
            "summary": "Prometheus metrics (docs/metrics.md lists them)",
            "responses": {
                "200": {"description": "Every metric in the Prometheus text exposition "
                                       "format.",
                        "content": {METRICS_MEDIA_TYPE: {"schema": {"type": "string"}}}},
                **_use("Unauthorized"),
            },
        }},
        EVENTS_PATH: {"get": {
            "operationId": "streamEvents", "tags": ["runs"],
            "summary": "Server-Sent Events: every event the run logger records (the "
                       "OStreamLogger's objects), numbered; reconnect with Last-Event-ID "
                       "(docs/api.md#event-stream)",
            "parameters": [
                {"name": "run", "in": "query", "required": False, "schema": _RUN_ID,
                 "description": "Only this run's events (an unknown run is 404)."},
                {"name": "lastEventID", "in": "query", "required": False,
                 "schema": _EVENT_ID,
                 "description": "Send the retained events after this ID first (the "
                                "Last-Event-ID header wins over it)."},
                {"name": "Last-Event-ID", "in": "header", "required": False,
                 "schema": _EVENT_ID,
                 "description": "The ID of the last event the client has: the retained "
                                "events after it come first, after a `gap` event if some "
                                "were not kept."},
            ],
            "responses": {
                "200": {"description": "An endless text/event-stream: `id`, `event` and "
                                       "one `data` line (JSON) per event, `: keep-alive` "
                                       "every 15 s of silence.",
                        # Before OpenAPI 3.2 (itemSchema), the schema of a stream's
                        # media type describes each of its events, as tools read it.
                        "content": {EVENTS_MEDIA_TYPE: {"schema": _SSE_EVENT}}},
                **_use("BadRequest", "Unauthorized", "NotFound", "Unavailable"),
            },
        }},
        "/v1/dagrun": {"post": {
            "operationId": "submitRun", "tags": ["runs"],
            "summary": "Submit a run (also at /v1/dagrun/)",
            "requestBody": spec_body,
            "responses": {
                "200": {**_ok("The run was recorded and queued.", "Submitted"),
                        "links": run_links},
                "400": _error_response("The body is not a JSON object, or the spec is "
                                       "invalid (errors lists every problem).", "SpecError"),
                **_use("Unauthorized", "PayloadTooLarge", "TooManyQueued", "Unavailable"),
            },
        }},
        "/v1/dagrun/validate": {"post": {
            "operationId": "validateSpec", "tags": ["runs"],
            "summary": "Validate and expand a spec without running it; records nothing",
            "requestBody": spec_body,
            "responses": {
                "200": _ok("The spec is valid.", "Valid"),
                "400": _error_response("The spec is invalid, or the body is not a JSON "
                                       "object.", "ValidateError"),
                **_use("Unauthorized", "PayloadTooLarge"),
            },
        }},
        "/v1/dagruns": {"get": {
            "operationId": "listRuns", "tags": ["runs"],
            "summary": "List run summaries in run ID order (also at /v1/dagruns/)",
            "parameters": [
                {"name": "all", "in": "query", "required": False,
                 "schema": {"type": "string",
                            "pattern": _any_case("", "1", "true", "yes", "0", "false", "no")},
                 "description": "1, true, yes or empty: include finished runs; 0, false, "
                                "no: leave them out (the default unless state is given)."},
                {"name": "tag", "in": "query", "required": False,
                 "schema": {"type": "string"}, "description": "Only runs with this tag."},
                by_state,
            ],
            "responses": {
                "200": {"description": "Run summaries.", "content": _json_content(
                    {"type": "array", "items": _ref("RunSummary")})},
                **_use("BadRequest", "Unauthorized", "Unavailable"),
            },
        }},
        "/v1/dagrun/{runID}": {
            "parameters": [_param("runID")],
            "get": {
                "operationId": "getRun", "tags": ["runs"], "summary": "The whole run",
                "responses": {"200": _ok("The run.", "Run"),
                              **_use("BadRequest", "Unauthorized", "NotFound",
                                     "Unavailable")},
            },
            "delete": {
                "operationId": "killRun", "tags": ["runs"],
                "summary": "Kill the run's running tasks and mark it KILLED",
                "responses": {
                    "200": {"description": "Killed.", "content": _json_content(
                        {**_ref("RunStateSet")})},
                    **_use("BadRequest", "Unauthorized", "NotFound", "Conflict",
                           "Unavailable")},
            },
        },
        "/v1/dagrun/{runID}/state": {
            "parameters": [_param("runID")],
            "get": {
                "operationId": "getRunState", "tags": ["runs"],
                "summary": "The run's state and task counts",
                "responses": {"200": _ok("The run's state.", "RunState"),
                              **_use("BadRequest", "Unauthorized", "NotFound",
                                     "Unavailable")},
            },
        },
        "/v1/dagrun/{runID}/state/{state}": {
            "parameters": [_param("runID"), _param("runTargetState")],
            "patch": {
                "operationId": "setRunState", "tags": ["runs"],
                "summary": "Resume a finished run (QUEUED) or kill it (KILLED); no body",
                "responses": {"200": _ok("Done.", "RunStateSet"),
                              **_use("BadRequest", "Unauthorized", "NotFound", "Conflict",
                                     "Unavailable")},
            },
        },
        "/v1/dagrun/{runID}/task/{name}": {
            "parameters": [_param("runID"), _param("taskName")],
            "get": {
                "operationId": "getTask", "tags": ["tasks"],
                "summary": "One task with its definition and attempts",
                "responses": {"200": _ok("The task.", "Task"),
                              **_use("BadRequest", "Unauthorized", "NotFound",
                                     "Unavailable")},
            },
        },
        "/v1/dagrun/{runID}/task/{name}/state": {
            "parameters": [_param("runID"), _param("taskName")],
            "get": {
                "operationId": "getTaskState", "tags": ["tasks"],
                "summary": "One task's state",
                "responses": {"200": _ok("The task's state.", "TaskState"),
                              **_use("BadRequest", "Unauthorized", "NotFound",
                                     "Unavailable")},
            },
        },
        "/v1/dagrun/{runID}/task/{name}/state/{state}": {
            "parameters": [_param("runID"), _param("taskName"), _param("taskTargetState")],
            "patch": {
                "operationId": "setTaskState", "tags": ["tasks"],
                "summary": "Force a task's state: QUEUED (run again), COMPLETED (skip) or "
                           "KILLED; no body",
                "responses": {"200": _ok("Done.", "TaskStateSet"),
                              **_use("BadRequest", "Unauthorized", "NotFound", "Conflict",
                                     "Unavailable")},
            },
        },
    }


# -- the document --------------------------------------------------------------------------

def _job_schema_name(executor_name: str | None) -> str:
    return JOB_SCHEMAS.get(executor_name or "", "AnyJob")


def build_openapi_document(executor_name: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API, as a fresh JSON-able dict.

    @param executor_name: the executor the daemon runs (C{"ForkingTaskExecutor"}, ...):
        the spec's C{job} is described by that executor's job schema, and C{info} names
        it.  Unknown or C{None}: any JSON object is described as a job.
    """
    job_schema = _job_schema_name(executor_name)
    in_use = (f"This daggyd runs the {executor_name}; a task's job is a {job_schema}."
              if job_schema != "AnyJob" else
              "A task's job is described by the executor's job schema (ForkingJob, "
              "SlurmJob or NoopJob).")
    # Deep-copied: parts such as the request body are shared by several operations.
    return copy.deepcopy({
        "openapi": "3.1.0",
        "info": {
            "title": "daggyd",
            "version": __version__,
            "summary": "A DAG work-orchestration daemon",
            "description": (
                "daggyd's REST API (docs/api.md).  Every body is JSON; every error is "
                '{"error": "..."}.  A trailing slash is optional on every path and HEAD is '
                "accepted wherever GET is.  When bearer-token auth is enabled every "
                "endpoint except /ready needs `Authorization: Bearer <token>` (401 "
                f"otherwise).  {in_use}"),
            "x-daggy-executor": executor_name,
        },
        "tags": [{"name": "daemon"}, {"name": "runs"}, {"name": "tasks"}],
        # {} first: a token is optional unless the daemon's config enables auth.
        "security": [{}, {"bearerAuth": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "Optional: enabled by the daemon's auth config.  Tokens "
                               "are compared in constant time."}},
            "parameters": _parameters(),
            "responses": _responses(),
            "schemas": {**_spec_schemas(job_schema), **_answer_schemas()},
        },
    })


def _to_defs(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: (item.replace("#/components/schemas/", "#/$defs/")
                      if key == "$ref" and isinstance(item, str) else _to_defs(item))
                for key, item in value.items()}
    if isinstance(value, list):
        return [_to_defs(item) for item in value]
    return value


def run_spec_json_schema(executor_name: str | None = None) -> dict[str, Any]:
    """The DAG run spec as a standalone JSON Schema (draft 2020-12), with every component
    schema under C{$defs}; C{executor_name} as for L{build_openapi_document}."""
    schemas = copy.deepcopy(_spec_schemas(_job_schema_name(executor_name)))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "daggy DAG run spec",
        **_to_defs(schemas["RunSpec"]),
        "$defs": _to_defs(schemas),
    }

