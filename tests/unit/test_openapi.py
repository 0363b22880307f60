"""The OpenAPI document: valid OpenAPI 3.1, in step with the Klein routes, served at
/v1/openapi.json, and a run-spec schema that agrees with the spec parser.

The schema may accept a spec the parser rejects (edges, cycles and placeholders are beyond
JSON Schema), but never the other way round: every spec the parser accepts must validate.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR
from treq.testing import StubTreq
from twisted.internet.task import Clock
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

from daggy.errors import SpecInvalid, UnknownRun
from daggy.executors import _slurm_commands as slurm_commands
from daggy.executors import forking
from daggy.executors.noop import NoopTaskExecutor
from daggy.loggers.memory import MemoryStore
from daggy.metrics import DaemonMetrics
from daggy.server.api import DaggyAPI, make_site
from daggy.server.openapi import (
    JOB_SCHEMAS,
    METRICS_MEDIA_TYPE,
    METRICS_PATH,
    OPENAPI_PATH,
    SITE_PATHS,
    build_openapi_document,
    run_spec_json_schema,
)
from daggy.spec.parse import TASK_KEYS, TOP_LEVEL_KEYS, parse_generated_tasks, parse_run_spec

DOCS = Path(__file__).resolve().parents[2] / "docs"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
#: The documented answers that are not JSON: (path, status) -> media types.
NON_JSON_ANSWERS = {(METRICS_PATH, "200"): [METRICS_MEDIA_TYPE],
                    ("/v1/events", "200"): ["text/event-stream"]}
# Sample values for path parameters: enough for the Klein routes to match.
SAMPLE_PATH_VALUES = {"runID": "0", "name": "t", "state": "QUEUED"}


class CommandJobs:
    """The ForkingTaskExecutor's job format, without a reactor."""

    templatable_fields = forking.ForkingTaskExecutor.templatable_fields

    def validate_job(self, job, path):
        return forking.validate_command_job(job, path)


class SlurmJobs:
    """The SlurmTaskExecutor's job format, without a reactor."""

    templatable_fields = ("command", "environment", "workDir", "tmpDir", "partition",
                          "account", "qos", "gres", "sbatchArgs")

    def validate_job(self, job, path):
        return slurm_commands.validate_slurm_job(job, path)


@functools.cache
def spec_validator(executor_name="ForkingTaskExecutor"):
    return jsonschema_rs.validator_for(run_spec_json_schema(executor_name))


@functools.cache
def component_validator(name: str, executor_name="ForkingTaskExecutor"):
    schema = run_spec_json_schema(executor_name)
    return jsonschema_rs.validator_for({"$schema": schema["$schema"], "$defs": schema["$defs"],
                                        "$ref": f"#/$defs/{name}"})


def parser_errors(doc: Any, jobs: Any = None) -> list[str]:
    try:
        parse_run_spec(doc, jobs or CommandJobs())
    except SpecInvalid as e:
        return e.errors
    return []


# -- the document is OpenAPI -----------------------------------------------------------------

@pytest.mark.parametrize("executor_name", [None, *JOB_SCHEMAS])
def test_document_is_valid_openapi_3_1(executor_name):
    """The document validates against the OpenAPI 3.1 meta-schema for every executor."""
    document = build_openapi_document(executor_name)
    errors = [error.message for error in OPENAPI_31_VALIDATOR.iter_errors(document)]
    assert errors == []
    assert document["openapi"] == "3.1.0"
    assert document["info"]["x-daggy-executor"] == executor_name


def test_every_component_schema_is_valid_json_schema():
    """Each component schema is a valid JSON Schema 2020-12 (the OpenAPI 3.1 dialect)."""
    schemas = build_openapi_document()["components"]["schemas"]
    for name, schema in schemas.items():
        assert jsonschema_rs.meta.is_valid(
            {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}), name


def all_refs(value: Any):
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str):
            yield value["$ref"]
        for item in value.values():
            yield from all_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from all_refs(item)


def test_every_reference_resolves():
    """Every $ref in the document points at a component that exists."""
    document = build_openapi_document()
    for ref in set(all_refs(document)):
        assert ref.startswith("#/components/"), ref
        node = document
        for part in ref[2:].split("/"):
            node = node[part]


def test_every_operation_declares_json_answers_and_auth():
    """Every operation has an operationId and JSON answers, and each one except /ready
    documents the 401 of bearer-token auth; /ready alone needs no token."""
    document = build_openapi_document()
    assert document["security"] == [{}, {"bearerAuth": []}]
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        **document["components"]["securitySchemes"]["bearerAuth"],
        "type": "http", "scheme": "bearer"}
    unauthorized = document["components"]["responses"]["Unauthorized"]
    assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True
    ids = set()
    for path, item in document["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            operation = item[method]
            ids.add(operation["operationId"])
            responses = operation["responses"]
            if path == "/ready":
                assert operation["security"] == [{}]
                assert "401" not in responses
            else:
                assert "security" not in operation
                assert responses["401"] == {"$ref": "#/components/responses/Unauthorized"}
            for code, response in responses.items():
                if "$ref" in response:
                    response = document["components"]["responses"][
                        response["$ref"].rsplit("/", 1)[1]]
                expected = NON_JSON_ANSWERS.get((path, code), ["application/json"])
                assert list(response["content"]) == expected, (path, code)
    assert len(ids) == 14


# -- the document and the routes agree ---------------------------------------------------------

def documented_operations(document: dict) -> list[tuple[str, str]]:
    """(sample path, METHOD) for every documented operation."""
    operations = []
    for template, item in document["paths"].items():
        path = re.sub(r"\{(\w+)\}", lambda m: SAMPLE_PATH_VALUES[m.group(1)], template)
        operations += [(path, method.upper()) for method in METHODS if method in item]
    return operations


def route_mismatches(url_map: Map, document: dict) -> list[str]:
    """What the Klein routes serve and the document lacks, and the reverse.

    A documented operation must match a route for its method.  Every route (and method)
    must be reached by some documented operation, its path as documented or with a
    trailing slash (the aliases "/v1/dagrun/" and "/v1/dagruns/" count as one path).
    HEAD and OPTIONS, which werkzeug adds to routes by itself, are left out.
    """
    adapter = url_map.bind("daggy.test")
    problems = []
    reached = set()
    for path, method in documented_operations(document):
        if path in SITE_PATHS:
            continue  # served by the Site, not a Klein route
        for candidate in (path, path + "/"):
            try:
                endpoint, _ = adapter.match(candidate, method=method)
            except (NotFound, MethodNotAllowed):
                if candidate == path:
                    problems.append(f"documented {method} {path} has no route")
                continue
            reached.add((endpoint, method))
    for rule in url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if (rule.endpoint, method) not in reached:
                problems.append(f"route {method} {rule.rule} is not documented")
    return problems


def test_document_and_klein_routes_agree():
    """Every documented operation has a Klein route and every Klein route is documented."""
    assert route_mismatches(DaggyAPI.app.url_map, build_openapi_document()) == []


def copy_of_routes(*extra: Rule) -> Map:
    original = DaggyAPI.app.url_map
    return Map([rule.empty() for rule in original.iter_rules()] + list(extra),
               strict_slashes=False, converters=original.converters)


def test_an_undocumented_route_is_reported():
    """A route the document lacks (or a method it lacks) is a mismatch."""
    url_map = copy_of_routes(Rule("/v1/dagrun/<run_id>/logs", methods=["GET"], endpoint="logs"),
                             Rule("/ready", methods=["POST"], endpoint="poke"))
    assert route_mismatches(url_map, build_openapi_document()) == [
        "route GET /v1/dagrun/<run_id>/logs is not documented",
        "route POST /ready is not documented",
    ]


def test_a_documented_operation_without_a_route_is_reported():
    """A documented path or method no route serves is a mismatch."""
    document = build_openapi_document()
    document["paths"]["/v1/dagrun/{runID}/logs"] = {"get": {"responses": {}}}
    document["paths"]["/ready"]["delete"] = {"responses": {}}
    assert route_mismatches(DaggyAPI.app.url_map, document) == [
        "documented DELETE /ready has no route",
        "documented GET /v1/dagrun/0/logs has no route",
    ]


class UnknownRuns:
    """A runner for which no run exists."""

    def validate(self, doc):
        return parse_run_spec(doc, NoopTaskExecutor(Clock())).tasks

    def submit(self, doc):
        raise UnknownRun(0)

    def kill_run(self, run_id):
        raise UnknownRun(run_id)

    resume_run = kill_run

    def set_task_state(self, run_id, name, state):
        raise UnknownRun(run_id)


def site_root(api: DaggyAPI, **options):
    """The root resource of the Site daggyd serves C{api} with (C{/metrics} included)."""
    return make_site(api, 1 << 20, metrics=DaemonMetrics(process_metrics=False),
                     **options).resource


def request(api: DaggyAPI, method: str, path: str, body: bytes | None = None):
    client = StubTreq(site_root(api))
    answers = []
    client.request(method, "http://daggy.test" + path, data=body).addCallback(
        lambda response: client.content(response).addCallback(
            lambda content: answers.append((response, content))))
    client.flush()
    [(response, content)] = answers
    return response, content


def test_every_documented_operation_is_answered_by_its_route():
    """Each documented operation, requested on the real resource, reaches a route: never
    'no such endpoint' or 405 (this covers the task routes, which Klein matches as one
    pattern and the API dispatches itself)."""
    api = DaggyAPI(UnknownRuns(), MemoryStore(), Clock())
    for path, method in documented_operations(build_openapi_document()):
        body = b'{"tasks": {"a": {"job": {}}}}' if method == "POST" else None
        response, content = request(api, method, path, body)
        if path == METRICS_PATH:
            assert response.code == 200, (method, path)
            continue
        answer = json.loads(content)
        assert response.code != 405, (method, path, answer)
        if isinstance(answer, dict):
            assert "no such endpoint" not in answer.get("error", ""), (method, path, answer)


def answer_validator(document: dict, name: str):
    """A validator for the component schema C{name} of an answer."""
    return jsonschema_rs.validator_for({"components": document["components"],
                                        "$ref": f"#/components/schemas/{name}"})


def test_auth_answers_are_as_documented():
    """With bearer tokens on, every documented operation but /ready answers a request
    without a token with the documented 401 (Error body, WWW-Authenticate: Bearer), and a
    request with the token is let through."""
    token = "a-test-token-that-is-long-enough-0123456789"
    document = build_openapi_document()
    challenge = re.compile(document["components"]["responses"]["Unauthorized"]["headers"][
        "WWW-Authenticate"]["schema"]["pattern"])
    error_body = answer_validator(document, "Error")
    api = DaggyAPI(UnknownRuns(), MemoryStore(), Clock())
    client = StubTreq(site_root(api, auth_tokens=[token]))
    for path, method in documented_operations(document):
        for headers in ({}, {"Authorization": f"Bearer {token}"}):
            answers = []
            client.request(method, "http://daggy.test" + path, headers=headers).addCallback(
                lambda response: client.content(response).addCallback(
                    lambda content: answers.append((response, content))))
            client.flush()
            [(response, content)] = answers
            if path == "/ready" or headers:
                assert response.code != 401, (method, path, headers)
                continue
            assert response.code == 401, (method, path)
            assert error_body.is_valid(json.loads(content))
            [header] = response.headers.getRawHeaders("www-authenticate")
            assert challenge.match(header), header


# -- serving the document ----------------------------------------------------------------------

def test_openapi_json_is_served():
    """GET /v1/openapi.json answers 200 with the document as JSON, naming the executor."""
    api = DaggyAPI(UnknownRuns(), MemoryStore(), Clock(), executor_name="NoopTaskExecutor")
    response, content = request(api, "GET", OPENAPI_PATH)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    assert json.loads(content) == build_openapi_document("NoopTaskExecutor")
    assert request(api, "GET", OPENAPI_PATH + "/")[1] == content


def test_head_openapi_json_has_no_body():
    """HEAD /v1/openapi.json answers 200 with no body, like every GET route."""
    api = DaggyAPI(UnknownRuns(), MemoryStore(), Clock())
    response, content = request(api, "HEAD", OPENAPI_PATH)
    assert (response.code, content) == (200, b"")


@pytest.mark.parametrize("executor_name, job_schema", [
    ("ForkingTaskExecutor", "ForkingJob"), ("SlurmTaskExecutor", "SlurmJob"),
    ("NoopTaskExecutor", "NoopJob"), ("SomethingElse", "AnyJob"), (None, "AnyJob"),
])
def test_job_schema_follows_the_executor(executor_name, job_schema):
    """A task's job is described by the job schema of the executor in use."""
    document = build_openapi_document(executor_name)
    assert document["components"]["schemas"]["Job"]["$ref"] == (
        f"#/components/schemas/{job_schema}")
    assert job_schema in document["info"]["description"] or job_schema == "AnyJob"


# -- the run spec schema -----------------------------------------------------------------------

def test_spec_schema_lists_exactly_the_parsers_and_executors_fields():
    """Top-level keys, task attributes and each executor's job fields are exactly those the
    parser and the executors accept, so a field added there fails here until documented."""
    schemas = build_openapi_document()["components"]["schemas"]
    assert set(schemas["RunSpec"]["properties"]) == set(TOP_LEVEL_KEYS)
    assert set(schemas["TaskSpec"]["properties"]) == set(TASK_KEYS)
    assert set(schemas["ForkingJob"]["properties"]) == set(forking.JOB_FIELDS)
    assert set(schemas["SlurmJob"]["properties"]) == set(slurm_commands.JOB_FIELDS)
    assert SlurmJobs.templatable_fields == __import__(
        "daggy.executors.slurm", fromlist=["SlurmTaskExecutor"]
    ).SlurmTaskExecutor.templatable_fields


def test_standalone_spec_schema_has_no_component_references():
    """run_spec_json_schema is self-contained: every $ref points into its own $defs."""
    schema = run_spec_json_schema("SlurmTaskExecutor")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    refs = set(all_refs(schema))
    assert refs and all(ref.startswith("#/$defs/") for ref in refs)
    assert jsonschema_rs.meta.is_valid(schema)


def json_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```json\n(.*?)```", markdown.read_text(), re.S)


def test_spec_examples_in_the_docs_validate_and_parse():
    """The run specs shown in docs/spec.md and docs/api.md satisfy the schema and parse."""
    examples = [json.loads(block)
                for block in json_blocks(DOCS / "spec.md") + json_blocks(DOCS / "api.md")
                if block.lstrip().startswith('{\n  "tag"')]
    assert len(examples) == 2
    body = build_openapi_document()["paths"]["/v1/dagrun"]["post"]["requestBody"]
    examples += [example["value"] for example in body["content"]["application/json"][
        "examples"].values()]
    validator = spec_validator()
    for example in examples:
        assert list(validator.iter_errors(example)) == []
        assert parser_errors(example) == []


def test_generator_output_example_validates_as_a_tasks_object():
    """The generator output example of docs/spec.md is a valid Tasks object."""
    [output] = [json.loads(block) for block in json_blocks(DOCS / "spec.md")
                if '"merge"' in block]
    assert list(component_validator("Tasks").iter_errors(output)) == []
    spec = {"parameters": {"DATE": ["d1"]}, "tasks": {"gen": {"job": {"command": ["g"]}}}}
    [generator] = parse_run_spec(spec, CommandJobs()).tasks
    parse_generated_tasks(output, CommandJobs(), {"DATE": ["d1"]}, generator, set())


def test_job_example_of_docs_executors_validates():
    """The ForkingTaskExecutor job example of docs/executors.md is a valid ForkingJob."""
    [job_block] = [block for block in json_blocks(DOCS / "executors.md")
                   if block.lstrip().startswith('"job"')]
    job = json.loads("{" + job_block + "}")["job"]
    assert list(component_validator("ForkingJob").iter_errors(job)) == []
    assert forking.validate_command_job(job, "job") == []


def spec_with(task: dict | None = None, **top: Any) -> dict:
    return {"tasks": {"a": task if task is not None else {"job": {"command": ["ls"]}}}, **top}


def with_job(**job: Any) -> dict:
    return spec_with({"job": {"command": ["ls"], **job}})


INVALID_SPECS = [
    ([], "body: a DAG run spec must be a JSON object"),
    ({}, "tasks: required"),
    ({"tasks": {}}, "tasks: must define at least one task"),
    ({"tasks": [{"job": {"command": ["ls"]}}]}, "tasks: must be an object"),
    (spec_with(tsks={}), "tsks: unknown spec key"),
    (spec_with(tag=5), "tag: must be a string"),
    (spec_with(parameters=["DATE"]), "parameters: must be an object"),
    (spec_with(parameters={"1DATE": "x"}), "parameters.1DATE: parameter names must match"),
    (spec_with(parameters={"DATE\n": "x"}), "parameters.DATE\n: parameter names must match"),
    (spec_with(parameters={"D": []}), "parameters.D: must not be an empty list"),
    (spec_with(parameters={"D": ["a", 1]}), "parameters.D[1]: parameter values must be "),
    (spec_with(parameters={"D": 3}), "parameters.D: must be a string or a list of strings"),
    (spec_with(parameters={}, taskParameters={}), "taskParameters: give either parameters"),
    ({"tasks": {"a": "ls"}}, "tasks.a: must be an object with at least a job"),
    ({"tasks": {"": {"job": {"command": ["ls"]}}}}, "tasks.: task names must not be empty"),
    ({"tasks": {"a\nb": {"job": {"command": ["ls"]}}}}, "must not contain control"),
    (spec_with({"job": {"command": ["ls"]}, "parent": []}), "unknown task attribute 'parent'"),
    (spec_with({"maxRetries": 1}), "tasks.a.job: required"),
    (spec_with({"job": None}), "tasks.a.job: required"),
    (spec_with({"job": ["ls"]}), "tasks.a.job: must be an object"),
    (spec_with({"job": {"command": ["ls"]}, "maxRetries": -1}), "tasks.a.maxRetries"),
    (spec_with({"job": {"command": ["ls"]}, "maxRetries": True}), "tasks.a.maxRetries"),
    (spec_with({"job": {"command": ["ls"]}, "maxRetries": "3"}), "tasks.a.maxRetries"),
    (spec_with({"job": {"command": ["ls"]}, "maxRetries": 1.5}), "tasks.a.maxRetries"),
    (spec_with({"job": {"command": ["ls"]}, "retryIntervalSeconds": -1}),
     "tasks.a.retryIntervalSeconds"),
    (spec_with({"job": {"command": ["ls"]}, "retryIntervalSeconds": False}),
     "tasks.a.retryIntervalSeconds"),
    (spec_with({"job": {"command": ["ls"]}, "retryIntervalSeconds": 10 ** 400}),
     "tasks.a.retryIntervalSeconds"),
    # Found by schemathesis: an integer that only rounds down to the largest double.
    (spec_with({"job": {"command": ["ls"]}, "retryIntervalSeconds": int(1.7976931348623157e308)
                + 1}), "tasks.a.retryIntervalSeconds"),
    (spec_with({"job": {"command": ["ls"]}, "isGenerator": "yes"}), "tasks.a.isGenerator"),
    (spec_with({"job": {"command": ["ls"]}, "parents": "b"}), "tasks.a.parents: must be"),
    (spec_with({"job": {"command": ["ls"]}, "children": [1]}), "tasks.a.children: must be"),
    (spec_with({"job": {}}), "tasks.a.job.command: is required"),
    (spec_with({"job": {"command": []}}), "tasks.a.job.command: must be a non-empty list"),
    (spec_with({"job": {"command": "ls -l"}}), "tasks.a.job.command: must be a non-empty"),
    (spec_with({"job": {"command": ["ls", 1]}}), "tasks.a.job.command[1]: must be a string"),
    (spec_with({"job": {"command": [""]}}), "tasks.a.job.command[0]: must name the program"),
    (spec_with({"job": {"command": ["ls\0"]}}), "tasks.a.job.command[0]: must not contain"),
    (with_job(colour="red"), "tasks.a.job.colour: unknown job field"),
    (with_job(timeoutSeconds=0), "tasks.a.job.timeoutSeconds: must be a number > 0"),
    (with_job(timeoutSeconds=True), "tasks.a.job.timeoutSeconds: must be a number > 0"),
    (with_job(timeoutSeconds="60"), "tasks.a.job.timeoutSeconds: must be a number > 0"),
    (with_job(workDir=""), "tasks.a.job.workDir: must be a non-empty string"),
    (with_job(workDir=5), "tasks.a.job.workDir: must be a non-empty string"),
    (with_job(environment=["A=1"]), "tasks.a.job.environment: must be an object"),
    (with_job(environment={"A=B": "x"}), "tasks.a.job.environment.A=B: variable names"),
    (with_job(environment={"": "x"}), "tasks.a.job.environment.: variable names"),
    (with_job(environment={"A": 1}), "tasks.a.job.environment.A: must be a string"),
    (with_job(secretEnvironment="TOKEN"), "tasks.a.job.secretEnvironment: must be a list"),
    (with_job(secretEnvironment=["1TOKEN"]), "tasks.a.job.secretEnvironment[0]: must be an"),
    (with_job(secretEnvironment=["{{T}}"]), "tasks.a.job.secretEnvironment[0]: placeholders"),
    (with_job(secretEnvironment=["T", "T"]), "tasks.a.job.secretEnvironment[1]: 'T' is listed"),
]


@pytest.mark.parametrize("spec, message", INVALID_SPECS,
                         ids=[message for _, message in INVALID_SPECS])
def test_invalid_specs_are_rejected_by_schema_and_parser(spec, message):
    """A spec the schema can tell is invalid is rejected by both, the parser naming it."""
    assert not spec_validator().is_valid(spec)
    errors = parser_errors(spec)
    assert any(message in error for error in errors), errors


SLURM_JOBS_INVALID = [
    ({"command": ["ls"], "minCPUs": 0}, "job.minCPUs: must be an integer from 1"),
    ({"command": ["ls"], "minCPUs": "2"}, "job.minCPUs: must be an integer from 1"),
    ({"command": ["ls"], "timeLimitSeconds": 365 * 24 * 3600 + 1}, "job.timeLimitSeconds"),
    ({"command": ["ls"], "priority": -1}, "job.priority"),
    ({"command": ["ls"], "partition": ""}, "job.partition: must be a non-empty string"),
    ({"command": ["ls"], "qos": "a\nb"}, "job.qos: must not contain NUL or newline"),
    ({"command": ["ls"], "sbatchArgs": "--exclusive"}, "job.sbatchArgs: must be a list"),
    ({"command": ["ls"], "sbatchArgs": [1]}, "job.sbatchArgs[0]: must be a string"),
    ({"command": ["ls"], "sbatchArgs": ["--output=x"]}, "job.sbatchArgs[0]: --output is set"),
    ({"command": ["ls"], "sbatchArgs": ["--job-name"]}, "job.sbatchArgs[0]: --job-name is"),
    ({"command": ["ls"], "sbatchArgs": ["-ofile"]}, "job.sbatchArgs[0]: -ofile is set"),
    ({"command": ["ls"], "environment": {"1A": "x"}}, "job.environment.1A: variable names"),
    ({"command": ["ls"], "timeoutSeconds": 5}, "job.timeoutSeconds: unknown job field"),
    ({"command": ["ls"], "secretEnvironment": ["T"], "sbatchArgs": ["--export=NONE"]},
     "job.sbatchArgs[0]: --export cannot be combined with secretEnvironment"),
    ({"command": ["ls"], "secretEnvironment": "T"}, "job.secretEnvironment: must be a list"),
]


@pytest.mark.parametrize("job, message", SLURM_JOBS_INVALID,
                         ids=[message for _, message in SLURM_JOBS_INVALID])
def test_invalid_slurm_jobs_are_rejected_by_schema_and_executor(job, message):
    """A Slurm job the schema rejects is rejected by the Slurm executor too."""
    assert not component_validator("SlurmJob").is_valid(job)
    errors = slurm_commands.validate_slurm_job(job, "job")
    assert any(message in error for error in errors), errors


def test_valid_slurm_job_passes_schema_and_executor():
    """A job using every Slurm field validates against SlurmJob and the executor."""
    job = {"command": ["srun", "hostname"], "environment": {"OMP_THREADS": "4"},
           "secretEnvironment": ["API_TOKEN"],
           "minCPUs": 4, "minMemoryMB": 1024, "minTmpDiskMB": 0, "priority": 10,
           "timeLimitSeconds": 3600, "workDir": "/srv", "tmpDir": "/scratch",
           "partition": "batch", "account": "lab", "qos": "normal", "gres": "gpu:1",
           "sbatchArgs": ["--exclusive", "--outputs-are-not-an-option"]}
    assert set(job) == set(slurm_commands.JOB_FIELDS)
    assert list(component_validator("SlurmJob").iter_errors(job)) == []
    assert slurm_commands.validate_slurm_job(job, "job") == []


@pytest.mark.parametrize("parameter, value, valid", [
    ("runTargetState", "QUEUED", True), ("runTargetState", "kIlLeD", True),
    ("runTargetState", "RUNNING", False), ("runTargetState", "k\u0131lled", False),
    ("runTargetState", "QUEUED\n", False),
    ("taskTargetState", "completed", True), ("taskTargetState", "RETRY", False),
])
def test_state_path_parameters_match_any_ascii_case(parameter, value, valid):
    """State path parameters accept the allowed names in any ASCII case, and nothing else."""
    schema = build_openapi_document()["components"]["parameters"][parameter]["schema"]
    assert jsonschema_rs.validator_for(schema).is_valid(value) is valid


def test_non_ascii_state_names_are_rejected_by_the_api():
    """A state name that only upper-cases to a valid one (dotless i) is a 400, as the
    document says."""
    api = DaggyAPI(UnknownRuns(), MemoryStore(), Clock())
    response, content = request(api, "PATCH", "/v1/dagrun/0/state/" + quote("k\u0131lled"))
    assert response.code == 400, content
    response, content = request(api, "GET", "/v1/dagruns?state=" + quote("k\u0131lled"))
    assert response.code == 400, content


# -- the schema is never stricter than the parser ------------------------------------------------

VALID_JOBS = {
    "ForkingTaskExecutor": st.fixed_dictionaries(
        {"command": st.lists(st.sampled_from(["ls", "-l", "{{DATE}}", "x y"]), min_size=1,
                             max_size=3)},
        optional={"environment": st.dictionaries(st.sampled_from(["A", "B_1"]),
                                                 st.sampled_from(["x", "{{DATE}}", ""])),
                  "secretEnvironment": st.lists(st.sampled_from(["T", "U"]), unique=True),
                  "workDir": st.sampled_from(["/tmp", "{{DATE}}", "rel"]),
                  "timeoutSeconds": st.floats(0.001, 1e308) | st.integers(1, 10 ** 300)}),
    "SlurmTaskExecutor": st.fixed_dictionaries(
        {"command": st.lists(st.sampled_from(["ls", "-l", "{{DATE}}"]), min_size=1,
                             max_size=3)},
        optional={"environment": st.dictionaries(st.sampled_from(["A", "B_1"]),
                                                 st.sampled_from(["x", "{{DATE}}"])),
                  "secretEnvironment": st.lists(st.sampled_from(["T", "U"]), unique=True),
                  "minCPUs": st.integers(1, 1_000_000),
                  "timeLimitSeconds": st.integers(1, 365 * 24 * 3600),
                  "partition": st.sampled_from(["batch", "{{DATE}}"]),
                  "sbatchArgs": st.lists(st.sampled_from(["--exclusive", "--export-file=f",
                                                          "--outputs", "-O"]), max_size=2)}),
    "NoopTaskExecutor": st.dictionaries(st.sampled_from(["command", "x", "sbatchArgs"]),
                                        st.sampled_from(["ls", 1, None, ["{{DATE}}"]])),
}
#: Values a mutation puts somewhere in a valid spec: each is near a line the parser draws.
EDGE_VALUES = [
    -1, 0, 1, 1.0, 1.5, True, False, None, "", "x", "a\n", "a\0", "{{DATE}}", "{{NOPE}}",
    [], {}, [1], ["x"], ["", "x"], ["T", "T"], ["1T"], ["--output=x"], ["-ofile"],
    ["--export=NONE"], {"A=B": "x"}, {"": "x"}, {"A": 1}, {"1A": "x"}, 10 ** 7,
    365 * 24 * 3600 + 1, 2 ** 1023, 1.7976931348623157e308, {"job": {}}, "--export",
    {"DATE\n": "x"},
]
EDGE_KEYS = ["", "a\n", "DATE\n", "x\x1f", "1D", "A B", "D.x-1", "tsks", "parent", "colour",
             "taskParameters", "timeoutSeconds", "minCPUs", "a[DATE=d1]", "A=B", "{{DATE}}"]


@st.composite
def valid_specs(draw, executor_name):
    """Specs the parser accepts (nearly always): edges only point back to earlier tasks."""
    names = draw(st.lists(st.sampled_from(["a", "b", "c", "é/..", "a[x]"]), min_size=1,
                          max_size=3, unique=True))
    tasks = {}
    for index, name in enumerate(names):
        task = {"job": draw(VALID_JOBS[executor_name])}
        task.update(draw(st.fixed_dictionaries({}, optional={
            "maxRetries": st.integers(0, 3), "retryIntervalSeconds": st.floats(0, 1e308),
            "isGenerator": st.booleans(),
            "parents": st.lists(st.sampled_from(names[:index] or ["x"]), unique=True)
            .filter(lambda parents: "x" not in parents)})))
        tasks[name] = task
    spec = {"tasks": tasks,
            "parameters": {"DATE": draw(st.sampled_from(["d", ["d1"], ["d1", "d2"]]))}}
    spec.update(draw(st.fixed_dictionaries({}, optional={"tag": st.text(max_size=3) | st.none()})))
    return spec


def locations(value):
    """Every (container, key) inside a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield value, key
            yield from locations(item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield value, index
            yield from locations(item)


@st.composite
def mutated_specs(draw, executor_name):
    """A valid spec with up to two values replaced by edge values, or a key renamed."""
    # Copies: sampled values are shared between examples and must not be changed in place.
    spec = copy.deepcopy(draw(valid_specs(executor_name)))
    for _ in range(draw(st.integers(0, 2))):
        container, key = draw(st.sampled_from(list(locations(spec))))
        if isinstance(container, dict) and draw(st.booleans()):
            container[draw(st.sampled_from(EDGE_KEYS))] = container.pop(key)
        else:
            container[key] = copy.deepcopy(draw(st.sampled_from(EDGE_VALUES)))
    return spec


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(sorted(VALID_JOBS)).flatmap(
    lambda name: st.tuples(st.just(name), mutated_specs(name))))
def test_every_spec_the_parser_accepts_validates(case):
    """For random spec-like documents near the parser's limits: whatever the parser accepts,
    the schema accepts, so a client checking specs against the schema never refuses one
    daggyd would run; and the parser never crashes."""
    executor_name, spec = case
    if not parser_errors(spec, JOB_FORMATS[executor_name]):
        assert list(spec_validator(executor_name).iter_errors(spec)) == []


JOB_FORMATS = {"ForkingTaskExecutor": CommandJobs(), "SlurmTaskExecutor": SlurmJobs(),
               "NoopTaskExecutor": NoopTaskExecutor(Clock())}


# -- numbers the schema and the executors refuse alike ------------------------------------------

def test_timeout_beyond_float_range_is_an_error_not_a_crash():
    """A timeoutSeconds integer too large for a float is refused like any bad timeout (the
    schema refuses it with its maximum)."""
    job = {"command": ["ls"], "timeoutSeconds": 10 ** 400}
    assert not component_validator("ForkingJob").is_valid(job)
    assert forking.validate_command_job(job, "job") == [
        "job.timeoutSeconds: must be a number > 0"]


def test_timeout_just_beyond_the_largest_double_is_refused():
    """timeoutSeconds one above the largest double is refused by the executor, as by the
    schema."""
    job = {"command": ["ls"], "timeoutSeconds": int(1.7976931348623157e308) + 1}
    assert not component_validator("ForkingJob").is_valid(job)
    assert forking.validate_command_job(job, "job") == [
        "job.timeoutSeconds: must be a number > 0"]
