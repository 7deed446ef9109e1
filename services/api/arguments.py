"""Invocation arguments checked against the start function's annotations, before acceptance.

A graph's definition carries the JSON schema of each annotated parameter of its start function
(``NodeDefinition.parameter_schemas``, made by the SDK with pydantic). JSON arguments are
validated against them here, so ``x="abc"`` for an ``x: int`` is a 400 that names the
parameter and the type it needs, not an invocation that runs with a string (or fans out a list)
on an executor. Parameters without a schema (unannotated, or of a type JSON cannot carry) are
not checked. Validators are built once per graph version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from indexify.definition import GraphDefinition
from services.common.lru import Lru

__all__ = ["ArgumentChecker"]

_CACHED_GRAPHS = 256
_MAX_REPORTED = 3


class ArgumentChecker:
    """``problems(definition, kwargs)``: why the arguments do not fit, or None."""

    def __init__(self) -> None:
        self._validators: Lru[tuple[str, str], dict[str, Draft202012Validator]] = Lru(
            _CACHED_GRAPHS
        )

    def problems(self, definition: GraphDefinition, kwargs: Mapping[str, Any]) -> str | None:
        validators = self._for(definition)
        found: list[str] = []
        for name, value in kwargs.items():
            validator = validators.get(name)
            if validator is None:
                continue
            error = next(iter(validator.iter_errors(value)), None)
            if error is not None:
                found.append(_describe(name, error.json_path, error.message, validator.schema))
            if len(found) >= _MAX_REPORTED:
                break
        if not found:
            return None
        return (
            f"graph {definition.name!r}: the arguments of {definition.start_node!r} do not fit "
            f"its annotations: {'; '.join(found)}"
        )

    def _for(self, definition: GraphDefinition) -> dict[str, Draft202012Validator]:
        key = (definition.name, definition.version)
        validators = self._validators.get(key)
        if validators is None:
            schemas = definition.nodes[definition.start_node].parameter_schemas
            validators = {}
            for name, schema in schemas.items():
                try:
                    Draft202012Validator.check_schema(schema)
                except SchemaError:
                    continue  # a schema we cannot use checks nothing (the worker still does)
                validators[name] = Draft202012Validator(schema)
            self._validators.put(key, validators)
        return validators


def _describe(name: str, path: str, message: str, schema: Mapping[str, Any]) -> str:
    where = name if path == "$" else f"{name}{path[1:]}"
    expected = schema.get("title") or schema.get("type")
    hint = f" (expected {expected})" if expected and path == "$" else ""
    return f"{where}: {message}{hint}"
