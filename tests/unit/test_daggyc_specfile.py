"""daggyc's spec files: JSON and YAML parsing, -p NAME=VALUE and --tag overrides."""

from __future__ import annotations

import pytest

from daggy.client.errors import ExitCode, SpecRejected
from daggy.client.specfile import (
    apply_overrides,
    parse_parameter_options,
    parse_spec_text,
    read_spec_file,
)

SPEC = {"tag": "nightly", "parameters": {"DATE": ["d1", "d2"], "ROOT": "/srv"},
        "tasks": {"a": {"job": {"command": ["echo", "{{DATE}}"]}}}}


def test_parameter_options_keep_commas_and_equals_in_values():
    """Only the first '=' splits, so a value keeps its commas and further '=' signs."""
    assert parse_parameter_options(["X=a,b,c", "Y=k=v", "Z="]) == {
        "X": ["a,b,c"], "Y": ["k=v"], "Z": [""]}


def test_repeated_parameter_options_collect_in_order():
    """The same NAME given several times collects its values in the order given."""
    assert parse_parameter_options(["D=2", "E=x", "D=1"]) == {"D": ["2", "1"], "E": ["x"]}


@pytest.mark.parametrize("option, message", [("NOEQUALS", "expected NAME=VALUE"),
                                             ("=value", "the parameter name is empty")])
def test_malformed_parameter_options_are_rejected(option, message):
    """An option without '=' or with an empty name is refused with the reason."""
    with pytest.raises(ValueError, match=message):
        parse_parameter_options([option])


def test_single_override_of_a_string_parameter_stays_a_string():
    """-p NAME=VALUE once sets a string parameter, overriding the spec's value."""
    result = apply_overrides(SPEC, {"ROOT": ["/data,/more"]})
    assert result["parameters"] == {"DATE": ["d1", "d2"], "ROOT": "/data,/more"}
    assert SPEC["parameters"]["ROOT"] == "/srv", "the spec itself is not changed"


def test_single_override_of_a_list_parameter_keeps_it_a_list():
    """A parameter the spec makes a list stays a (one-element) list, so instance names keep
    their shape."""
    assert apply_overrides(SPEC, {"DATE": ["d9"]})["parameters"]["DATE"] == ["d9"]


def test_repeated_override_makes_a_list_and_new_names_are_added():
    """Several values make a list; a name the spec lacks is added."""
    result = apply_overrides(SPEC, {"ROOT": ["/a", "/b"], "NEW": ["x"]})
    assert result["parameters"] == {"DATE": ["d1", "d2"], "ROOT": ["/a", "/b"], "NEW": "x"}


def test_overrides_use_the_taskParameters_alias_when_the_spec_does():
    """A spec written with the older taskParameters key gets its overrides there."""
    spec = {"taskParameters": {"A": "1"}, "tasks": {}}
    assert apply_overrides(spec, {"B": ["2"]}) == {"taskParameters": {"A": "1", "B": "2"},
                                                   "tasks": {}}


def test_tag_override_and_spec_without_parameters():
    """--tag replaces the tag; parameters are created when the spec had none (or null)."""
    result = apply_overrides({"parameters": None, "tasks": {}}, {"A": ["1"]}, tag="t")
    assert result == {"parameters": {"A": "1"}, "tasks": {}, "tag": "t"}


def test_invalid_parameters_are_left_for_validation_to_report():
    """A spec whose parameters is not an object is not silently repaired by -p."""
    spec = {"parameters": ["oops"], "tasks": {}}
    assert apply_overrides(spec, {"A": ["1"]}) == spec


def test_yaml_dates_stay_strings():
    """An unquoted YAML date is the string it reads as, as in JSON."""
    doc = parse_spec_text("parameters:\n  DATE: [2021-01-01, 2021-01-02]\ntasks: {}\n", "s.yaml")
    assert doc["parameters"]["DATE"] == ["2021-01-01", "2021-01-02"]


def test_yaml_numbers_and_booleans_keep_their_types():
    """Only timestamps are kept as strings: maxRetries: 2 is still the integer 2."""
    doc = parse_spec_text("tasks:\n  a: {maxRetries: 2, isGenerator: false}\n", "s.yml")
    assert doc == {"tasks": {"a": {"maxRetries": 2, "isGenerator": False}}}


def test_yaml_duplicate_keys_are_errors():
    """A key given twice in YAML is an invalid spec, not silently the last value."""
    with pytest.raises(SpecRejected, match=r"s.yaml: invalid YAML at line 3 column 3: "
                                           r"duplicate key 'a'") as caught:
        parse_spec_text("tasks:\n  a: {job: {}}\n  a: {job: {}}\n", "s.yaml")
    assert caught.value.exit_code == ExitCode.INVALID_SPEC


def test_json_duplicate_keys_and_nan_are_errors():
    """JSON with a repeated key or NaN is refused with a one-line reason."""
    with pytest.raises(SpecRejected, match="duplicate key 'a'"):
        parse_spec_text('{"a": 1, "a": 2}', "s.json")
    with pytest.raises(SpecRejected, match="NaN is not JSON"):
        parse_spec_text('{"a": NaN}', "s.json")


def test_values_without_a_json_form_are_listed_with_paths():
    """YAML values JSON cannot carry (binary, explicit dates, non-string keys) are errors
    naming their paths."""
    text = ("tasks:\n  a:\n    job: {command: [!!binary aGk=]}\n"
            "parameters: {1: x, D: !!timestamp 2021-01-01}\n")
    with pytest.raises(SpecRejected) as caught:
        parse_spec_text(text, "s.yaml")
    assert caught.value.errors == [
        "parameters.D: a YAML date has no JSON form; quote it to make it a string",
        "parameters: key 1 is not a string; quote it",
        "tasks.a.job.command[0]: a YAML bytes has no JSON form; quote it to make it a string",
    ]


def test_a_file_without_a_known_suffix_is_json_or_yaml():
    """Other names are tried as JSON, then YAML; failing both lists both reasons."""
    assert parse_spec_text('{"tasks": {}}', "spec") == {"tasks": {}}
    assert parse_spec_text("tasks: {}", "spec") == {"tasks": {}}
    with pytest.raises(SpecRejected) as caught:
        parse_spec_text("tasks: [\n", "spec")
    assert caught.value.message == "spec: neither JSON nor YAML:"
    assert caught.value.errors[0].startswith("invalid JSON at line 1 column 1")
    assert caught.value.errors[1].startswith("invalid YAML")


def test_unreadable_and_non_utf8_files(tmp_path):
    """A missing file or one that is not UTF-8 is an invalid-spec error naming it."""
    with pytest.raises(SpecRejected, match="cannot read .*missing.yaml: No such file"):
        read_spec_file(str(tmp_path / "missing.yaml"))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"tag: caf\xe9\n")
    with pytest.raises(SpecRejected, match=r"latin.yaml: not UTF-8 text \(bad byte at offset 8\)"):
        read_spec_file(str(latin))
