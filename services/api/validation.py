"""Checks at the API boundary: graph definitions, graph code and invocation bodies.

Everything here is pure (no I/O) and raises :class:`BadRequest` with a message that names
the field and the fix, so nothing invalid is stored or published.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from fastapi import Request
from pydantic import ValidationError

from indexify.definition import GraphDefinition, NodeDefinition
from indexify.encoding import CONTENT_TYPES, JSON, Payload, encode
from services.common.errors import BadRequest, Forbidden
from services.common.names import Names

from .arguments import ArgumentChecker

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_TOPIC_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_MAX_TOPIC_LENGTH = 249  # Kafka's limit on topic names


def check_name(name: str, what: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise BadRequest(
            f"{what} name {name!r} is invalid: use 1-100 letters, digits, '_' or '-' "
            "(names become part of Kafka topic names)"
        )
    return name


#: What each path parameter may hold: every one becomes part of Redis keys, object keys or
#: topic names, so nothing else (``:``, ``/``, ``*``, spaces, ...) reaches the stores.
PATH_IDS: dict[str, tuple[re.Pattern[str], str]] = {
    "namespace": (NAME_PATTERN, "1-100 letters, digits, '_' or '-'"),
    "graph": (NAME_PATTERN, "1-100 letters, digits, '_' or '-'"),
    "function": (NAME_PATTERN, "1-100 letters, digits, '_' or '-'"),
    "invocation_id": (NAME_PATTERN, "1-100 letters, digits, '_' or '-' (the id invoke returned)"),
    "key_id": (NAME_PATTERN, "1-100 letters, digits, '_' or '-' (a key's id)"),
    "task_id": (
        re.compile(r"^[A-Za-z0-9_-]{1,200}$"),
        "1-200 letters, digits, '_' or '-' (a task id from the invocation's tasks)",
    ),
}


def check_path_ids(params: dict[str, Any]) -> None:
    """:class:`BadRequest` naming the first path parameter that is not a well-formed id."""
    for name, value in params.items():
        rule = PATH_IDS.get(name)
        if rule is not None and not rule[0].fullmatch(str(value)):
            raise BadRequest(f"{name} {str(value)[:120]!r} is invalid: use {rule[1]}")


async def valid_path_ids(request: Request) -> None:
    """Router/app dependency: every id in the path is checked (:func:`check_path_ids`)
    before any route builds a key from it: a 400 with what is allowed."""
    check_path_ids(request.path_params)


def _validation_summary(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "top level"
        parts.append(f"{where}: {error.get('msg')}")
    more = f" (+{exc.error_count() - limit} more)" if exc.error_count() > limit else ""
    return "; ".join(parts) + more


def parse_definition(raw: dict[str, Any], names: Names, namespace: str) -> GraphDefinition:
    """A complete, consistent graph definition, or :class:`BadRequest` saying what is wrong."""
    try:
        definition = GraphDefinition.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest(
            f"definition is not a valid graph definition ({_validation_summary(exc)}); send "
            "`Graph.definition().model_dump(mode='json')`"
        ) from None
    check_name(definition.name, "graph")
    if not definition.version or not _TOPIC_SAFE.fullmatch(definition.version):
        raise BadRequest(
            f"graph {definition.name!r}: version {definition.version!r} must be 1-100 letters, "
            "digits, '_' or '-'; send the definition from `Graph.definition()`, which sets it"
        )
    if not definition.nodes:
        raise BadRequest(f"graph {definition.name!r} has no functions; add at least one")
    for key, node in definition.nodes.items():
        _check_node(definition.name, key, node, names, namespace)
    nodes = definition.nodes
    if definition.start_node not in nodes:
        raise BadRequest(
            f"graph {definition.name!r}: start node {definition.start_node!r} is not one of "
            f"its functions {sorted(nodes)}"
        )
    for kind, links in (("edge", definition.edges), ("route", definition.routes)):
        for source, targets in links.items():
            for endpoint in (source, *targets):
                if endpoint not in nodes:
                    raise BadRequest(
                        f"graph {definition.name!r}: {kind} {source!r} -> {list(targets)} names "
                        f"{endpoint!r}, which is not one of its functions {sorted(nodes)}"
                    )
    _check_acyclic(definition)
    return definition


def _check_node(graph: str, key: str, node: NodeDefinition, names: Names, namespace: str) -> None:
    check_name(key, "function")
    if node.name != key:
        raise BadRequest(
            f"graph {graph!r}: nodes[{key!r}] is named {node.name!r}; the key must be its name"
        )
    if not _TOPIC_SAFE.fullmatch(node.placement_key):
        raise BadRequest(
            f"function {key!r}: placement key {node.placement_key!r} must be 1-100 letters, "
            "digits, '_' or '-'"
        )
    unknown = set(node.required_parameters) - set(node.parameters)
    if unknown:
        raise BadRequest(
            f"function {key!r}: required_parameters {sorted(unknown)} are not in parameters "
            f"{list(node.parameters)}"
        )
    topic = names.task_topic(node.placement_key, namespace, graph, key)
    if len(topic) > _MAX_TOPIC_LENGTH:
        raise BadRequest(
            f"function {key!r}: its task topic {topic!r} is {len(topic)} characters, over "
            f"Kafka's {_MAX_TOPIC_LENGTH}; use shorter namespace, graph or function names"
        )


def _check_acyclic(definition: GraphDefinition) -> None:
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in done:
            return
        if node in visiting:
            cycle = [*path[path.index(node) :], node]
            raise BadRequest(
                f"graph {definition.name!r} has a cycle {' -> '.join(cycle)}; graphs must be "
                "acyclic"
            )
        visiting.add(node)
        for child in definition.children(node):
            visit(child, [*path, node])
        visiting.discard(node)
        done.add(node)

    for node in definition.nodes:
        visit(node, [])


def decode_code(code: str) -> bytes:
    try:
        data = base64.b64decode(code, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            "code is not valid base64; send base64.b64encode(graph.serialize()).decode()"
        ) from None
    if not data:
        raise BadRequest("code is empty; send base64 of `Graph.serialize()`")
    return data


# -- invocation bodies ----------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    if not data.strip():
        return {}
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BadRequest(
            f'{what} must be a JSON object of keyword arguments (e.g. {{"x": 1}}), got '
            f"{type(value).__name__}"
        )
    return value


def check_arguments(
    definition: GraphDefinition, kwargs: dict[str, Any], checker: ArgumentChecker | None = None
) -> None:
    """The start node must accept every keyword and get every required one, each of the type
    its annotation says (with a ``checker``)."""
    problem = definition.argument_problems(kwargs)
    if problem is None and checker is not None:
        problem = checker.problems(definition, kwargs)
    if problem is not None:
        raise BadRequest(problem)


def invocation_payload(
    definition: GraphDefinition,
    body: bytes,
    content_type: str | None,
    encoded: bool,
    *,
    checker: ArgumentChecker | None = None,
    may_pickle: bool = True,
) -> Payload:
    """The invocation's input payload from a request body.

    Plain bodies are a JSON object of keyword arguments. With ``X-Indexify-Encoded: 1`` the
    body is the data of an SDK-encoded payload of ``content_type`` (JSON or cloudpickle);
    only JSON arguments can be checked here (a pickle is never loaded by the API), and a
    pickle is accepted only when ``may_pickle`` (the caller's key may deploy code: an executor
    unpickling it runs whatever it says).
    """
    media = (content_type or JSON).split(";", 1)[0].strip().lower() or JSON
    if encoded:
        if media not in CONTENT_TYPES:
            raise BadRequest(
                f"X-Indexify-Encoded bodies must have Content-Type {' or '.join(CONTENT_TYPES)}, "
                f"got {media!r}"
            )
        if media != JSON and not may_pickle:
            raise Forbidden(
                "pickled arguments run code on the executors, so they need a key with the "
                "`deploy` role; send the arguments as JSON (plain data and pydantic models, "
                "as the SDK does when the start function's annotations allow it)"
            )
        if media == JSON:
            check_arguments(definition, parse_json_object(body, "the encoded arguments"), checker)
        elif not body:
            raise BadRequest("the encoded arguments are empty; send `encode(kwargs).data`")
        return Payload(content_type=media, data=body)
    if media != JSON:
        raise BadRequest(
            f"Content-Type {media!r} is not supported: send a JSON object of keyword arguments "
            f"({JSON}), or an SDK-encoded payload with the header X-Indexify-Encoded: 1"
        )
    kwargs = parse_json_object(body, "the request body")
    check_arguments(definition, kwargs, checker)
    return encode(kwargs)


# -- page cursors ---------------------------------------------------------------------------

_SCAN_CURSOR = re.compile(r"^[0-9]{1,20}$")
_OUTPUTS_CURSOR = re.compile(r"^([0-9]{1,15})\.([0-9]{1,15})$")
_MAX_SCAN_CURSOR = 2**64  # Redis's SCAN cursors are unsigned 64-bit


def _bad_cursor(param: str, value: str, returned_as: str) -> BadRequest:
    return BadRequest(
        f"{param}={value!r} is not a cursor this API returned: pass the previous page's "
        f"`{returned_as}` unchanged, or leave {param} out to start from the first page"
    )


def parse_scan_cursor(value: str | None, param: str, returned_as: str) -> int:
    """A cursor over task records (empty or absent: the start)."""
    if not value:
        return 0
    if not _SCAN_CURSOR.fullmatch(value) or int(value) >= _MAX_SCAN_CURSOR:
        raise _bad_cursor(param, value, returned_as)
    return int(value)


def scan_cursor(cursor: int) -> str | None:
    """The cursor to return for a scan position (None: the scan is complete)."""
    return str(cursor) if cursor else None


def parse_outputs_cursor(value: str | None, param: str = "cursor") -> tuple[int, int]:
    """``(entry of the output index, values of that entry already listed)``."""
    if not value:
        return 0, 0
    match = _OUTPUTS_CURSOR.fullmatch(value)
    if match is None:
        raise _bad_cursor(param, value, "next_cursor")
    return int(match[1]), int(match[2])


def outputs_cursor(entry: int, offset: int) -> str:
    return f"{entry}.{offset}"
