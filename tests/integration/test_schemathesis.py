"""Schema fuzzing: schemathesis drives a live daggyd from its own /v1/openapi.json.

schemathesis runs as ``st run`` would (its engine: the examples, coverage, fuzzing and
stateful phases, the last following the document's links from a submitted run to its
other operations), with schema-conforming and schema-violating path, query and body data.
Every answer must be no 5xx and conform to the document: a documented status code, the
JSON content type, the required headers and a body matching the response schema.  Requests
violating the schema must be refused with a 4xx, unknown methods with a 405, and a created
run must be readable.

Not checked, on purpose:
- that every schema-valid spec is accepted: JSON Schema cannot express the parser's
  cross-field rules (edges naming defined tasks, no cycles, placeholders naming
  parameters), which are answered 400 as documented;
- ``use_after_free``: DELETE kills a run, it does not delete it; the run stays readable;
- the Allow header of POST /v1/dagrun/validate: GET there is the run route reading
  ``validate`` as a run ID (a 404), so a GET is not "unsupported".

The daemon runs the NoopTaskExecutor, so fuzzed specs run nothing.  The ForkingTaskExecutor's
job format is fuzzed through POST /v1/dagrun/validate only, which records and runs nothing.

The pytest plugin of schemathesis 4 (``schemathesis.pytest.from_fixture``) fails under
pytest 9 (it reads ``Function._nodeid``), hence the engine.  Set DAGGY_FUZZ_SEED to fuzz
with another seed, DAGGY_FUZZ_EXAMPLES for more examples per operation.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema

from daemon_harness import http
from daggy.server.openapi import build_openapi_document

pytestmark = pytest.mark.integration

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "ensure_resource_availability",
)
SEED = int(os.environ.get("DAGGY_FUZZ_SEED", "6"))
# Examples per operation and phase (scaled by DAGGY_FUZZ_EXAMPLES / 20); with these, and
# the time caps as a backstop, the module takes well under a minute on 2 cores.
SCALE = int(os.environ.get("DAGGY_FUZZ_EXAMPLES", "20")) / 20


def fuzz_config(max_examples: int, max_seconds: int, base_url: str | None = None,
                **extra) -> SchemathesisConfig:
    settings = {
        "seed": SEED,
        "max-time": max(1, int(max_seconds * SCALE)),
        "generation": {"max-examples": max(1, int(max_examples * SCALE)),
                       "database": "none"},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        "phases": {"stateful": {"max-steps": 6}},
        "operations": [{"include-operation-id": "validateSpec",
                        "checks": {"unsupported_method": {"enabled": False}}}],
        **extra,
    }
    if base_url is not None:
        settings["base-url"] = base_url
    return SchemathesisConfig.from_dict(settings)


@dataclass
class Outcome:
    requests: Counter = field(default_factory=Counter)  # by phase
    operations: set = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop_reason: str = ""

    def report(self, what: str) -> str:
        return (f"{what}: {sum(self.requests.values())} requests "
                f"({', '.join(f'{phase} {n}' for phase, n in sorted(self.requests.items()))}) "
                f"to {len(self.operations)} operations, {len(self.failures)} failed checks, "
                f"seed {SEED}, stopped: {self.stop_reason}")


def run_schemathesis(schema) -> Outcome:
    """Run every phase of schemathesis on ``schema``; what it sent and what failed."""
    outcome = Outcome()
    seen = set()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            outcome.requests[str(event.phase)] += len(event.recorder.interactions)
            if event.recorder.interactions and event.label:
                outcome.operations.add(event.label)
            for nodes in event.recorder.checks.values():
                for node in nodes:
                    if node.status != Status.FAILURE or node.failure_info is None:
                        continue
                    failure = node.failure_info.failure
                    key = (event.label, node.name, failure.title)
                    if key not in seen:
                        seen.add(key)
                        outcome.failures.append(
                            f"{event.label} {node.name}: {failure.title}\n{failure.message}\n"
                            f"{node.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError):
            outcome.errors.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            outcome.errors.append(f"schemathesis failed: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            outcome.stop_reason = str(event.stop_reason)
    return outcome


@pytest.fixture(scope="module")
def noop_daemon(daemons):
    """A daggyd with the NoopTaskExecutor (the ``daemons`` fixture stops it at the end of
    the module and fails if it logged an error or a traceback)."""
    return daemons("daggyd", executor="NoopTaskExecutor")


@pytest.fixture(scope="module")
def forking_daemon(daemons):
    """A daggyd with the ForkingTaskExecutor; only its validate endpoint is fuzzed."""
    return daemons("daggyd", executor="ForkingTaskExecutor")


def test_every_operation_conforms_to_the_document(noop_daemon):
    """Fuzzing every operation of a live daggyd, as its own document describes them, finds
    no 5xx and no answer the document does not describe; the daemon stays healthy."""
    schema = schemathesis.openapi.from_url(
        f"http://127.0.0.1:{noop_daemon.port}/v1/openapi.json",
        config=fuzz_config(max_examples=20, max_seconds=30))
    outcome = run_schemathesis(schema)
    print("\n" + outcome.report("every operation"))
    assert outcome.failures == [] and outcome.errors == []
    # schemathesis leaves out the document's own path; every other operation was exercised.
    assert len(outcome.operations) == len(
        [1 for item in schema.raw_schema["paths"].values() for key in item
         if key != "parameters"]) - 1
    assert {"coverage", "fuzzing", "stateful"} <= set(outcome.requests)
    assert noop_daemon.http("GET", "/ready").status == 200
    assert noop_daemon.new_log_errors(0) == []


def test_forking_job_format_conforms_to_the_document(forking_daemon):
    """Fuzzed specs with ForkingTaskExecutor jobs, validated by a daemon running that
    executor, are answered as the document says; nothing is recorded or run."""
    document = build_openapi_document("ForkingTaskExecutor")
    served = http(forking_daemon.port, "GET", "/v1/openapi.json").json
    # The daemon describes the job format of the executor its config names.
    assert served["info"]["x-daggy-executor"] == "ForkingTaskExecutor"
    assert served["components"]["schemas"]["Job"]["$ref"] == "#/components/schemas/ForkingJob"
    assert served["components"]["schemas"]["ForkingJob"] == (
        document["components"]["schemas"]["ForkingJob"])
    # Only the validate path is left in the document: fuzzed commands must never reach an
    # endpoint that would run them (schemathesis' stateful phase ignores operation filters).
    document["paths"] = {"/v1/dagrun/validate": document["paths"]["/v1/dagrun/validate"]}
    schema = schemathesis.openapi.from_dict(document, config=fuzz_config(
        max_examples=60, max_seconds=15, base_url=f"http://127.0.0.1:{forking_daemon.port}"))
    outcome = run_schemathesis(schema)
    print("\n" + outcome.report("validate with ForkingTaskExecutor jobs"))
    assert outcome.failures == [] and outcome.errors == []
    assert outcome.operations == {"POST /v1/dagrun/validate"}
    assert forking_daemon.get("/v1/dagruns?all=1") == []
    assert forking_daemon.new_log_errors(0) == []
