"""Checks at the API boundary: graph definitions, graph code and invocation bodies.

Everything here is pure (no I/O) and raises :class:`BadRequest` with a message that names
the field and the fix, so nothing invalid is stored or published. The graph rules are the
SDK's (:meth:`GraphDefinition.problems`, :func:`name_problem`), so a graph the SDK builds is
one the API accepts; only what depends on this server (the version it is sent, topic-name
lengths under :class:`Names`) is checked here, and reported with the graph's own problems.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from fastapi import Request
from pydantic import ValidationError

from indexify.data_objects import MAX_METADATA_BYTES, File, file_input_problem
from indexify.definition import GraphDefinition
from indexify.encoding import CONTENT_TYPES, JSON, Payload, encode
from indexify.errors import EncodingError
from indexify.graph_rules import NAME_PATTERN, NAME_RULE, Problem, describe_problems, name_problem
from services.common.errors import BadRequest, Forbidden
from services.common.names import Names

from .arguments import ArgumentChecker

_MAX_TOPIC_LENGTH = 249  # Kafka's limit on topic names


def check_name(name: str, what: str) -> str:
    """``name`` if it follows the SDK's name rule, else :class:`BadRequest` saying why."""
    problem = name_problem(name, what)
    if problem is not None:
        raise BadRequest(problem.message)
    return name


#: What each path parameter may hold: every one becomes part of Redis keys, object keys or
#: topic names, so nothing else (``:``, ``/``, ``*``, spaces, ...) reaches the stores.
PATH_IDS: dict[str, tuple[re.Pattern[str], str]] = {
    "namespace": (NAME_PATTERN, NAME_RULE),
    "graph": (NAME_PATTERN, NAME_RULE),
    "function": (NAME_PATTERN, NAME_RULE),
    "invocation_id": (NAME_PATTERN, f"{NAME_RULE} (the id invoke returned)"),
    "key_id": (NAME_PATTERN, f"{NAME_RULE} (a key's id)"),
    "task_id": (
        re.compile(r"^[A-Za-z0-9_-]{1,200}(~[0-9]{1,9})?$"),
        "1-200 letters, digits, '_' or '-', and '~N' in a replay (a task id from the "
        "invocation's tasks)",
    ),
    "replay_id": (NAME_PATTERN, f"{NAME_RULE} (the id rerun_graph returned)"),
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


def _validation_summary(exc: ValidationError, limit: int = 20) -> str:
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "top level"
        parts.append(f"{where}: {error.get('msg')}")
    more = f" (+{exc.error_count() - limit} more)" if exc.error_count() > limit else ""
    return "; ".join(parts) + more


def parse_definition(raw: dict[str, Any], names: Names, namespace: str) -> GraphDefinition:
    """A complete, consistent graph definition, or one :class:`BadRequest` listing every
    problem: the graph rules (:meth:`GraphDefinition.problems`) and this server's own
    (:func:`server_problems`)."""
    try:
        definition = GraphDefinition.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest(
            f"definition is not a valid graph definition ({_validation_summary(exc)}); send "
            "`Graph.definition().model_dump(mode='json')`"
        ) from None
    problems = [*definition.problems(), *server_problems(definition, names, namespace)]
    if problems:
        raise BadRequest(describe_problems(definition.name, problems))
    return definition


# -- rules of this server, not of graphs ----------------------------------------------------


def server_problems(definition: GraphDefinition, names: Names, namespace: str) -> list[Problem]:
    """What this API needs beyond the graph rules: a version as ``Graph.definition()`` sets
    it, and task topic names within Kafka's length limit under these :class:`Names`."""
    problems = []
    if not NAME_PATTERN.fullmatch(definition.version):
        problems.append(
            Problem(
                f"graph {definition.name!r}: version {definition.version!r} must be {NAME_RULE}; "
                "send the definition from `Graph.definition()`, which sets it"
            )
        )
    for key, node in definition.nodes.items():
        if not NAME_PATTERN.fullmatch(key) or not NAME_PATTERN.fullmatch(node.placement_key):
            continue  # a graph rule reports it; the topic name is not built from it
        topic = names.task_topic(node.placement_key, namespace, definition.name, key)
        if len(topic) > _MAX_TOPIC_LENGTH:
            problems.append(
                Problem(
                    f"function {key!r}: its task topic {topic!r} is {len(topic)} characters, "
                    f"over Kafka's {_MAX_TOPIC_LENGTH}; use shorter namespace, graph or "
                    "function names",
                    function=key,
                )
            )
    return problems


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


def file_payload(
    definition: GraphDefinition, body: bytes, content_type: str | None, metadata: str | None
) -> Payload:
    """The input of a file invocation: the body's bytes as a :class:`File` of the request's
    Content-Type (none: no mime type) with the JSON object of the metadata header, which the
    start function takes as its single argument. A File is stored as bytes, never loaded as
    code, so any key that may invoke may send one."""
    problem = file_input_problem(definition)
    if problem is not None:
        raise BadRequest(problem)
    attached: dict[str, Any] | None = None
    if metadata is not None:
        if len(metadata) > MAX_METADATA_BYTES:
            raise BadRequest(
                f"X-Indexify-File-Metadata is {len(metadata)} bytes, over the "
                f"{MAX_METADATA_BYTES} byte limit; keep a file's metadata small"
            )
        try:
            attached = json.loads(metadata, parse_constant=_reject_constant)
        except ValueError as exc:
            raise BadRequest(f"X-Indexify-File-Metadata is not valid JSON ({exc})") from None
        if not isinstance(attached, dict):
            raise BadRequest(
                'X-Indexify-File-Metadata must be a JSON object (e.g. {"source": "scan"}), got '
                f"{type(attached).__name__}"
            )
    mime_type = content_type.strip() if content_type and content_type.strip() else None
    try:
        return encode(File(data=body, mime_type=mime_type, metadata=attached))
    except EncodingError as exc:
        raise BadRequest(f"{exc} (Content-Type or X-Indexify-File-Metadata)") from None


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
