"""Routes for invocations: invoke, status, cancel, delete, rerun, outputs and logs."""

from __future__ import annotations

import json
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response

from indexify.data_objects import FILE_METADATA_HEADER, OCTET_STREAM, file_attributes
from indexify.engine import TERMINAL_STATUSES
from indexify.models import Replay
from services.common.api_keys import Role
from services.common.settings import ApiSettings

from . import outputs
from .auth import AUTH_RESPONSES, Requires, has_role
from .errors import ERROR_RESPONSES
from .fast_routes import FastRoute, FastRoutes
from .routes_graphs import Service
from .schemas import (
    CancelRequested,
    FunctionOutputs,
    InvocationAccepted,
    InvocationDeleted,
    InvocationList,
    InvocationWithOutputs,
    OutputCounts,
    ReplayList,
    ReplayRequested,
    ReplaySelection,
    TaskLogsPage,
)
from .service import MAX_TASKS_PAGE, TASKS_PAGE, AcceptedInvocation, ApiService
from .sse import LongPoll, follow_stream, invoke_streaming, stream_accepted

router = APIRouter(responses={**ERROR_RESPONSES, **AUTH_RESPONSES}, tags=["invocations"])

_READ = [Depends(Requires(Role.read))]
_INVOKE = [Depends(Requires(Role.invoke))]

_GRAPH = "/namespaces/{namespace}/compute_graphs/{graph}"
_INVOCATION = _GRAPH + "/invocations/{invocation_id}"
_TRUE = frozenset({"1", "true", "yes"})
_UNTIL_WAITING = Query(
    description="with `wait_sec`: answer as well as soon as the invocation waits for an "
    "executor nobody offers (`waiting` then says why)",
)

_WITH_OUTPUTS = Query(
    description="with `wait_sec`: once the invocation succeeded, answer with the values of "
    "the functions nothing follows too (`final_outputs`), when they are few and small: the "
    "request that reads them is saved",
)

_INVOKE_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {"type": "object", "additionalProperties": True},
                "example": {"x": 1},
            },
            "application/x-cloudpickle": {
                "schema": {"type": "string", "format": "binary"},
            },
        },
        "description": "A JSON object of the start function's keyword arguments; or, with "
        "`X-Indexify-Encoded: 1`, the data of an SDK-encoded payload "
        "(`indexify.encoding.encode(kwargs)`) of the given Content-Type.",
    }
}


async def _read_body(request: Request) -> bytes:
    """The whole body (the size limit is enforced while it streams, see ``limits``)."""
    chunks = [chunk async for chunk in request.stream()]
    return b"".join(chunks)


_PageCursor = Annotated[
    str | None, Query(max_length=40, description="`next_cursor` of the previous page")
]


#: What both invoke routes answer.
_INVOKE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {}},
        "description": '`{"id": ...}`, or with block_until_finish=true an SSE stream '
        "ending with `event: invocation.finished`",
    }
}
_WaitSec = Annotated[
    float,
    Query(
        ge=0,
        le=60,
        description="answer once the invocation is terminal (or after this many seconds) "
        "with its status: invoke and wait in one request",
    ),
]


@router.post(
    _GRAPH + "/invoke_object",
    openapi_extra=_INVOKE_BODY,
    responses=_INVOKE_RESPONSES,
    response_model=InvocationAccepted,
    dependencies=_INVOKE,
)
async def invoke(
    namespace: str,
    graph: str,
    request: Request,
    service: Service,
    block_until_finish: bool = False,
    wait_sec: _WaitSec = 0,
    encoded: Annotated[str | None, Header(alias="X-Indexify-Encoded")] = None,
    until_waiting: Annotated[bool, _UNTIL_WAITING] = False,
    with_outputs: Annotated[bool, _WITH_OUTPUTS] = False,
) -> Response:
    """Start an invocation; returns its id once the event is durable in Kafka (with
    ``wait_sec``: once it finished, or the wait ran out, with its status)."""
    body = await _read_body(request)
    content_type = request.headers.get("content-type")
    is_encoded = (encoded or "").strip().lower() in _TRUE
    may_pickle = has_role(request, Role.deploy)  # a pickle runs code where it is loaded
    if block_until_finish:
        settings: ApiSettings = request.app.state.api_settings
        return await invoke_streaming(
            service,
            namespace,
            graph,
            body,
            content_type,
            is_encoded,
            settings.sse_keepalive_sec,
            may_pickle=may_pickle,
        )
    accepted = await service.accept_invocation(
        namespace, graph, body, content_type, is_encoded, may_pickle=may_pickle
    )
    return await _published(service, accepted, wait_sec, until_waiting, with_outputs)


async def _published(
    service: ApiService,
    accepted: AcceptedInvocation,
    wait_sec: float,
    until_waiting: bool,
    with_outputs: bool = False,
) -> Response:
    """Publish, then (with ``wait_sec``) wait: a long poll that watches from before the
    publication, so the status needs no check before the wait (it was pending); then answer
    with the status and, if it still runs, why it waits (if it does), or, if it succeeded
    and ``with_outputs``, its final outputs (read with the status)."""
    if wait_sec <= 0:
        await service.publish_accepted([accepted])
        return _accepted_json(accepted.id)
    state = accepted.state
    with LongPoll(service, accepted.id) as poll:
        await service.publish_accepted([accepted])
        known, status = await poll.wait(
            wait_sec,
            until_waiting=until_waiting,
            checked=True,
            version=(state.namespace, state.graph, state.graph_version),
        )
    invocation_id = accepted.id
    values = None
    if with_outputs and (not known or status == "succeeded"):
        ended, values = await outputs.ended_with_outputs(service, state)
        status = ended.status if ended is not None else None
    elif not known:
        status = await service.store.invocations.invocation_status(invocation_id)
    waiting = None
    if status is not None and status not in TERMINAL_STATUSES:
        waiting = await service.waiting_note(invocation_id)
    if waiting is None:
        return _accepted_json(invocation_id, status, values)
    # as FastAPI encodes a returned response_model (pydantic's JSON, by alias)
    accepted_body = InvocationAccepted(id=invocation_id, status=status, waiting=waiting)
    return Response(accepted_body.model_dump_json(by_alias=True), media_type="application/json")


def _accepted_json(
    invocation_id: str,
    status: str | None = None,
    final_outputs: dict[str, list[dict[str, str]]] | None = None,
) -> Response:
    """:class:`InvocationAccepted` as FastAPI would send it, encoded directly: an id, a
    status and a few values need no model."""
    body = {"id": invocation_id, "status": status, "waiting": None, "final_outputs": final_outputs}
    return Response(orjson.dumps(body), media_type="application/json")


_FILE_BODY = {
    "requestBody": {
        "required": False,
        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        "description": "The file's bytes, as they are; its Content-Type is the file's mime "
        "type (leave it out for none).",
    }
}


@router.post(
    _GRAPH + "/invoke_file",
    openapi_extra=_FILE_BODY,
    responses=_INVOKE_RESPONSES,
    response_model=InvocationAccepted,
    dependencies=_INVOKE,
)
async def invoke_file(
    namespace: str,
    graph: str,
    request: Request,
    service: Service,
    block_until_finish: bool = False,
    wait_sec: _WaitSec = 0,
    metadata: Annotated[
        str | None,
        Header(
            alias=FILE_METADATA_HEADER,
            description="the file's metadata: a JSON object (ASCII, as `json.dumps` writes it)",
        ),
    ] = None,
    until_waiting: Annotated[bool, _UNTIL_WAITING] = False,
    with_outputs: Annotated[bool, _WITH_OUTPUTS] = False,
) -> Response:
    """Start an invocation with the body as an `indexify.File` (data, mime type from the
    Content-Type, metadata from the header): the start function gets it as its single
    argument. The file is stored as bytes, so the `invoke` role is enough."""
    body = await _read_body(request)
    accepted = await service.accept_file(
        namespace, graph, body, request.headers.get("content-type"), metadata
    )
    if block_until_finish:
        settings: ApiSettings = request.app.state.api_settings
        return await stream_accepted(service, accepted, settings.sse_keepalive_sec)
    return await _published(service, accepted, wait_sec, until_waiting, with_outputs)


@router.get(_GRAPH + "/invocations", dependencies=_READ)
async def list_invocations(
    namespace: str,
    graph: str,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> InvocationList:
    """The graph's invocations, newest first, without their tasks."""
    return InvocationList(invocations=await service.invocations(namespace, graph, limit))


@router.get(_INVOCATION, response_model=InvocationWithOutputs, dependencies=_READ)
async def get_invocation(
    namespace: str,
    graph: str,
    invocation_id: str,
    service: Service,
    wait_sec: Annotated[float, Query(ge=0, le=60)] = 0,
    tasks_cursor: Annotated[
        str | None,
        Query(max_length=40, description="`next_tasks_cursor` of the previous page"),
    ] = None,
    limit: Annotated[
        int,
        Query(
            ge=0,
            le=MAX_TASKS_PAGE,
            description="about how many tasks to list (a page may hold a few more); 0: none, "
            "only the summary",
        ),
    ] = TASKS_PAGE,
    until_waiting: Annotated[bool, _UNTIL_WAITING] = False,
    with_outputs: Annotated[bool, _WITH_OUTPUTS] = False,
) -> Response:
    """Status (pending, running, succeeded, failed, cancelled), error, counts of tasks by
    status and of outputs by function, and one page of the tasks: ask for the next page with
    ``tasks_cursor=<next_tasks_cursor>`` until ``next_tasks_cursor`` is null. Tasks still
    queued when the invocation ended are listed as cancelled.

    With ``wait_sec`` (a long poll), an invocation still running is answered once it
    finishes, or after ``wait_sec`` seconds with its status then.

    While it runs, a task an executor runs now is ``running`` (with its executor, attempt
    and start time), and a task no live executor may take says why in ``waiting`` (so does
    the invocation, e.g. `no live executor offers gpu=h100`).

    With ``with_outputs``, a succeeded invocation's answer carries the values of the
    functions nothing follows (``final_outputs``), when they are few and small."""
    cursor = service.tasks_cursor(tasks_cursor)
    if wait_sec > 0:
        # Watch, read the state (with its page of tasks); if it still runs, wait (cheap
        # status checks meanwhile) and read it again.
        with LongPoll(service, invocation_id) as poll:
            state, read = await service.state_and_page(
                namespace, graph, invocation_id, cursor, limit
            )
            if not state.terminal:
                await poll.wait(wait_sec, until_waiting=until_waiting, checked=True, state=state)
                state, read = await service.state_and_page(
                    namespace, graph, invocation_id, cursor, limit
                )
    else:
        state, read = await service.state_and_page(namespace, graph, invocation_id, cursor, limit)
    info = await service.invocation_info(state, read, cursor, limit)
    # Serialized once by pydantic: the model is validated already, and long polls make
    # this the API's busiest route.
    body = info.model_dump_json().encode()
    if with_outputs:
        # InvocationWithOutputs: the status's JSON object with one more member
        values = await outputs.final_outputs(service, state)
        body = body[:-1] + b',"final_outputs":' + orjson.dumps(values) + b"}"
    return Response(body, media_type="application/json")


@router.delete(_INVOCATION, dependencies=_INVOKE)
async def delete_invocation(
    namespace: str, graph: str, invocation_id: str, service: Service
) -> InvocationDeleted:
    await service.delete_invocation(namespace, graph, invocation_id)
    return InvocationDeleted(id=invocation_id)


@router.post(_INVOCATION + "/cancel", status_code=202, dependencies=_INVOKE)
async def cancel_invocation(
    namespace: str, graph: str, invocation_id: str, service: Service
) -> CancelRequested:
    """Ask the scheduler to cancel; ``requested`` is false if it had already finished."""
    status, requested = await service.cancel_invocation(namespace, graph, invocation_id)
    return CancelRequested(id=invocation_id, status=status, requested=requested)


_FromFunction = Annotated[
    str | None,
    Query(
        max_length=200,
        description="recompute this function and its descendants even where nothing changed "
        "(default: only the steps whose code or inputs changed)",
    ),
]
_Generation = Annotated[
    int | None,
    Query(
        ge=0,
        description="read a computation a replay replaced (see the status's `history`); "
        "default: the current one",
    ),
]


@router.post(_INVOCATION + "/rerun", status_code=202, dependencies=_INVOKE)
async def rerun_invocation(
    namespace: str,
    graph: str,
    invocation_id: str,
    service: Service,
    from_function: _FromFunction = None,
) -> ReplayRequested:
    """Compute the invocation again, in place (same id), on the graph's current version.
    Steps whose function code and inputs did not change reuse their outputs; the previous
    computation goes to the status's `history`, its outputs readable with `generation=`. A
    replay of a running invocation supersedes it."""
    generation = await service.rerun_invocation(
        namespace, graph, invocation_id, from_function=from_function
    )
    return ReplayRequested(id=invocation_id, generation=generation)


@router.post(_GRAPH + "/rerun", status_code=202, dependencies=_INVOKE)
async def rerun_graph(
    namespace: str,
    graph: str,
    service: Service,
    from_function: _FromFunction = None,
    selection: ReplaySelection | None = None,
) -> Replay:
    """Backfill: replay every invocation the graph has now (or those of the body's
    `invocations`), in place, on its current version, a window at a time. Follow it with
    GET .../replays/{id}."""
    return await service.rerun_graph(
        namespace,
        graph,
        from_function=from_function,
        invocations=selection.invocations if selection is not None else None,
    )


@router.get(_GRAPH + "/replays", dependencies=_READ)
async def list_replays(namespace: str, graph: str, service: Service) -> ReplayList:
    """The graph's replays, newest first (the last 100)."""
    return ReplayList(replays=await service.replays(namespace, graph))


@router.get(_GRAPH + "/replays/{replay_id}", dependencies=_READ)
async def get_replay(namespace: str, graph: str, replay_id: str, service: Service) -> Replay:
    """A replay's progress: invocations `total`, `done` (ended) and `failed`."""
    return await service.replay(namespace, graph, replay_id)


@router.post(_GRAPH + "/replays/{replay_id}/cancel", status_code=202, dependencies=_INVOKE)
async def cancel_replay(namespace: str, graph: str, replay_id: str, service: Service) -> Replay:
    """Stop a replay: the invocations it has not started keep their computation; those in
    flight finish."""
    return await service.cancel_replay(namespace, graph, replay_id)


@router.get(_INVOCATION + "/outputs", dependencies=_READ)
async def output_counts(
    namespace: str, graph: str, invocation_id: str, service: Service
) -> OutputCounts:
    """How many outputs each function produced so far."""
    return await outputs.output_counts(service, namespace, graph, invocation_id)


@router.get(_INVOCATION + "/fn/{function}/outputs", dependencies=_READ)
async def function_outputs(
    namespace: str,
    graph: str,
    invocation_id: str,
    function: str,
    service: Service,
    cursor: _PageCursor = None,
    limit: Annotated[
        int, Query(ge=1, le=outputs.MAX_OUTPUTS_PAGE, description="values per page at most")
    ] = outputs.OUTPUTS_PAGE,
    generation: _Generation = None,
) -> FunctionOutputs:
    """One page of the values ``function`` produced, in order (base64 of the encoded value,
    with its content type): ask for the next page with ``cursor=<next_cursor>`` until
    ``next_cursor`` is null. A page also ends after about 8 MiB of values. When the function
    failed the answer is still 200, with ``status: failed`` and ``error`` set."""
    return await outputs.function_outputs(
        service,
        namespace,
        graph,
        invocation_id,
        function,
        cursor=cursor,
        limit=limit,
        generation=generation,
    )


@router.get(
    _INVOCATION + "/fn/{function}/output/{task_id}/{index}",
    response_class=Response,
    responses={
        200: {
            "content": {"application/json": {}, "application/x-cloudpickle": {}, "*/*": {}},
            "description": "the encoded value; a File's raw bytes with its mime type, and its "
            f"metadata in the `{FILE_METADATA_HEADER}` header",
        }
    },
    dependencies=_READ,
)
async def raw_output(
    namespace: str,
    graph: str,
    invocation_id: str,
    function: str,
    task_id: str,
    index: int,
    service: Service,
) -> Response:
    """One encoded value, with its content type; a File as its bytes with its mime type."""
    payload = await outputs.raw_output(
        service, namespace, graph, invocation_id, function, task_id, index
    )
    attributes = file_attributes(payload.content_type)
    if attributes is None:
        return Response(content=payload.data, media_type=payload.content_type)
    headers = {"Content-Type": attributes.mime_type or OCTET_STREAM}
    if attributes.metadata is not None:
        headers[FILE_METADATA_HEADER] = json.dumps(attributes.metadata, separators=(",", ":"))
    return Response(content=payload.data, headers=headers)


@router.get(
    _INVOCATION + "/events",
    response_class=Response,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "the invocation's progress from now on (`task.created`, "
            "`task.started`, `task.finished`), ending with `event: invocation.finished`",
        }
    },
    dependencies=_READ,
)
async def invocation_events(
    namespace: str, graph: str, invocation_id: str, request: Request, service: Service
) -> Response:
    """Follow an invocation that runs already: its progress as Server-Sent Events."""
    await service.invocation(namespace, graph, invocation_id, limit=0)  # 404 if unknown
    settings: ApiSettings = request.app.state.api_settings
    return await follow_stream(service, invocation_id, settings.sse_keepalive_sec)


@router.get(_INVOCATION + "/fn/{function}/logs", dependencies=_READ)
async def task_logs(
    namespace: str,
    graph: str,
    invocation_id: str,
    function: str,
    service: Service,
    cursor: _PageCursor = None,
    limit: Annotated[
        int,
        Query(
            ge=1,
            le=outputs.MAX_LOGS_PAGE,
            description="about how many tasks per page (a page may hold a few more)",
        ),
    ] = outputs.LOGS_PAGE,
) -> TaskLogsPage:
    """stdout, stderr and traceback of one page of the tasks of ``function``: ask for the
    next page with ``cursor=<next_cursor>`` until ``next_cursor`` is null."""
    return await outputs.task_logs(
        service, namespace, graph, invocation_id, function, cursor=cursor, limit=limit
    )


def fast_routes(app: FastAPI) -> FastRoutes:
    """The hot routes, answered by their endpoints without FastAPI's machinery
    (:mod:`.fast_routes`): invoke (not its ``block_until_finish`` stream) and the status."""
    return FastRoutes(
        app,
        [
            FastRoute.of(app, router, invoke, leave={"block_until_finish"}),
            FastRoute.of(app, router, get_invocation, leave=()),
        ],
    )
