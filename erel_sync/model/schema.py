"""JSON Schema validation of single documents, with errors a person can act on.

Pure: the schemas are package data read once. Called by `model.validate` for every document
and by the agent when it re-checks a snapshot body. jsonschema's own messages are rewritten so
they name the field, say what is allowed and point at the offending key or value.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import fastjsonschema

if TYPE_CHECKING:  # jsonschema is imported only to explain an invalid document (~8 MiB)
    from jsonschema import Draft7Validator
    from jsonschema.exceptions import ValidationError

from erel_sync.model.problems import json_path

KIND_SCHEMAS = {
    "Release": "release.schema.json",
    "Group": "group.schema.json",
    "Notification": "notification.schema.json",
    "AgentSettings": "agent-settings.schema.json",
}


@cache
def schema_for(kind: str) -> dict[str, Any]:
    text = resources.files("erel_sync").joinpath("schemas", KIND_SCHEMAS[kind]).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def validator_for(kind: str) -> Draft7Validator:
    from jsonschema import Draft7Validator  # noqa: PLC0415

    return Draft7Validator(schema_for(kind))


@cache
def _fast_check(kind: str) -> Any:
    # Compiled to Python once; ~10x faster than walking the schema. It only answers "valid or
    # not": an invalid document is explained by jsonschema, whose errors carry paths.
    return fastjsonschema.compile(schema_for(kind))


# (path, message, points at the key rather than the value)
SchemaIssue = tuple[tuple[str | int, ...], str, bool]
UNKNOWN_FIELD = "unknown field"


def is_unknown_field(issue: SchemaIssue) -> bool:
    """A property the schema does not list: in a snapshot body, the mark of a newer model."""
    _path, message, at_key = issue
    return at_key and message.startswith(UNKNOWN_FIELD + " ")


def check_document(kind: str, doc: Any) -> list[SchemaIssue]:
    try:
        _fast_check(kind)(doc)
        return []
    except fastjsonschema.JsonSchemaValueException as fast:
        refusal = fast
    issues: list[SchemaIssue] = []
    for error in validator_for(kind).iter_errors(doc):
        issues.extend(_explain(error))
    if not issues:
        # The two disagree only where Python's `$` accepts a trailing newline and the compiled
        # check (ECMA semantics) does not: the stricter answer wins.
        path = tuple(p for p in (refusal.path or [])[1:] if isinstance(p, str | int))
        issues.append((path, f"invalid value: {refusal.message}", False))
    return issues


def _explain(error: ValidationError) -> Iterator[SchemaIssue]:
    path = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    value = error.instance
    v = error.validator
    expected: Any = error.validator_value
    if v == "additionalProperties" and isinstance(value, dict):
        allowed = sorted(schema.get("properties", {}))
        for key in value:
            if key not in schema.get("properties", {}):
                hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
                yield (*path, key), f"{UNKNOWN_FIELD} {key!r}{hint}", True
        return
    if v == "required":
        missing = str(expected)
        for name in expected:
            if isinstance(value, dict) and name not in value:
                missing = name
                break
        # Pointing at the key of the incomplete mapping ("spec:") reads better than its first child.
        yield path, f"missing required field {missing!r}", True
        return
    if v == "type":
        want = expected
        got = _json_type(value)
        if want == "string" and got in ("number", "integer"):
            yield (
                path,
                f"expected a string, got the number {value!r}: quote it (a version like 1.10 "
                "written without quotes is read as the number 1.1)",
                False,
            )
        else:
            yield path, f"expected {_article(want)}, got {got} {_short(value)}", False
        return
    if v == "anyOf" and path[-1:] == ("spec",):
        yield path, "a Group needs `hosts` (ids or globs) or a `selector`", False
        return
    description = _field_description(error)
    if v in ("pattern", "oneOf", "anyOf", "not", "propertyNames"):
        yield path, f"invalid value {_short(value)}: {description}", v == "propertyNames"
    elif v == "enum":
        options = ", ".join(str(o) for o in expected)
        yield path, f"{_short(value)} is not one of: {options}", False
    elif v == "const":
        yield path, f"must be {expected!r}, got {_short(value)}", False
    else:
        yield path, f"{error.message}" + (f" ({description})" if description else ""), False


def _field_description(error: ValidationError) -> str:
    """The schema description of the failing field, found by walking the schema path."""
    for candidate in (error.schema, *(c.schema for c in (error.context or []))):
        if isinstance(candidate, dict) and candidate.get("description"):
            return str(candidate["description"])
    parent: Any = error.parent
    while parent is not None:
        if isinstance(parent.schema, dict) and parent.schema.get("description"):
            return str(parent.schema["description"])
        parent = parent.parent
    return f"at {json_path(tuple(error.absolute_path))}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _article(kind: Any) -> str:
    if isinstance(kind, list):
        return " or ".join(_article(k) for k in kind)
    return f"an {kind}" if str(kind)[:1] in "aeiou" else f"a {kind}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
