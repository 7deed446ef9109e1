"""Reading what an invocation produced: output counts, pages of values, single raw values, logs.

Every read is bounded by one page, whatever the size of the invocation. A function's values
are found from its output index in Redis (:meth:`StateStore.output_ranges`: one entry per task
whose outputs were accepted, in order), the tasks' :class:`StoredValues`, then read inline or
with one ranged GET per entry from MinIO. A page of values ends after ``limit`` values or
about :data:`PAGE_BYTES` of them (at least one value), and says where the next page starts:
``next_cursor`` is ``"<entry>.<values of that entry already listed>"``. Logs are read for one
page of the function's task records (:meth:`StateStore.tasks_page`).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from indexify.definition import GraphDefinition
from indexify.encoding import Payload
from indexify.engine import ErrorInfo, InvocationState, ValueRange, generation_of
from indexify.models import TaskLogs
from services.common.blobs import load_values
from services.common.concurrency import gather_bounded
from services.common.errors import BadRequest, NotFound, ServiceError
from services.common.events import StoredValues
from services.common.graphs import GraphRecord

from . import validation
from .schemas import FunctionOutputs, OutputCounts, OutputValue, TaskLogsPage
from .service import ApiService

OUTPUTS_PAGE = 100
"""Values per page of a function's outputs, unless the request asks otherwise."""
MAX_OUTPUTS_PAGE = 1000
PAGE_BYTES = 8 * 1024 * 1024
"""A page of outputs ends once its values reach about this many bytes (base64 adds a third)."""
FINAL_VALUES = 100
"""An answer that waited for an invocation carries the values of its last functions when they
are at most this many (``with_outputs``, :func:`final_outputs`) ..."""
FINAL_BYTES = 64 * 1024
"""... and at most this many bytes (before base64), all stored inline in Redis."""
LOGS_PAGE = 100
MAX_LOGS_PAGE = 1000
_READS_AT_ONCE = 16  # concurrent MinIO reads of one request


async def _state_and_function(
    service: ApiService,
    namespace: str,
    graph: str,
    invocation_id: str,
    function: str,
    generation: int | None = None,
) -> tuple[InvocationState, GraphRecord]:
    """The invocation as of computation ``generation`` (None: the current one) and the
    graph version it ran on, if ``function`` is a function of that version."""
    state = await service.require_state(namespace, graph, invocation_id)
    if generation is not None and generation != state.generation:
        state = _as_of(state, generation)
    record = await service.graph_version(state)
    _check_function(record, graph, function)
    return state, record


async def _state_function_ranges(
    service: ApiService,
    namespace: str,
    graph: str,
    invocation_id: str,
    function: str,
    generation: int | None,
    start: int,
    stop: int,
    *,
    values: int = 0,
    offset: int = 0,
) -> tuple[InvocationState, list[ValueRange], dict[str, StoredValues]]:
    """:func:`_state_and_function`, entries ``start`` to ``stop - 1`` of the function's
    output index and the stored values of the tasks a page of ``values`` values from
    ``offset`` needs, in one round trip when the computation is the one guessed (the asked
    one, else the first); the graph version from :class:`GraphCache` when it is current as
    of the graphs epoch read in that round trip."""
    guess = generation if generation is not None else 0
    loaded, ranges, epoch, stored = await service.store.invocations.load_invocation_outputs(
        invocation_id,
        function,
        start,
        stop,
        generation=guess,
        also_get=service.names.graphs_epoch_key,
        values=values,
        offset=offset,
    )
    state = await service.own_state(loaded, namespace, graph, invocation_id)
    if generation is not None and generation != state.generation:
        state = _as_of(state, generation)
    record = await service.graph_version_at(state, int(epoch or 0))
    _check_function(record, graph, function)
    if state.generation != guess:
        ranges = await service.store.invocations.output_ranges(
            invocation_id, function, start, stop, generation=state.generation
        )
        stored = {}
    return state, ranges, stored


def _check_function(record: GraphRecord, graph: str, function: str) -> None:
    if function not in record.definition.nodes:
        raise NotFound(
            f"graph {graph!r} (version {record.version}) has no function {function!r}; it has "
            f"{sorted(record.definition.nodes)}"
        )


def _as_of(state: InvocationState, generation: int) -> InvocationState:
    """A summary of ``state``'s computation ``generation`` from its history: status,
    version, output counts (enough to read its outputs)."""
    for past in state.history:
        if past.generation == generation:
            status = "cancelled" if past.status == "superseded" else past.status
            return state.model_copy(
                update={
                    "generation": generation,
                    "graph_version": past.graph_version,
                    "status": status,
                    "output_counts": dict(past.outputs),
                    "error": past.error,
                    "function_errors": {},
                    "failed_functions": [],
                }
            )
    known = sorted([p.generation for p in state.history] + [state.generation])
    raise NotFound(
        f"invocation {state.invocation_id} has no computation {generation}; it has {known}"
    )


def _function_error(state: InvocationState, function: str) -> ErrorInfo | None:
    error = state.function_errors.get(function)
    if error is None and function in state.failed_functions:
        return state.error  # a summary saved before function_errors was kept
    return error


async def _stored(
    service: ApiService,
    invocation_id: str,
    ranges: Sequence[ValueRange],
    read: dict[str, StoredValues] | None = None,
) -> dict[str, StoredValues]:
    """The stored values of the tasks of ``ranges``; each must hold its range (``read``:
    stored values read already; read here unless they are all there)."""
    if read is not None and all(r.task_id in read for r in ranges):
        stored = read
    else:
        task_ids = [r.task_id for r in ranges]
        stored = await service.store.invocations.get_outputs(invocation_id, task_ids)
    broken = sorted(
        {r.task_id for r in ranges if r.task_id not in stored or stored[r.task_id].count < r.stop}
    )
    if broken:
        raise ServiceError(
            f"invocation {invocation_id}: the outputs of tasks {broken} are recorded in its "
            "state but not stored; the invocation's data is inconsistent, rerun it"
        )
    return stored


def _value_sizes(stored: StoredValues, start: int, stop: int) -> list[int]:
    if stored.inline is not None:
        return [len(data) for data in stored.inline[start:stop]]
    offsets = stored.offsets or ()
    return [offsets[i + 1] - offsets[i] for i in range(start, stop)]


async def output_counts(
    service: ApiService, namespace: str, graph: str, invocation_id: str
) -> OutputCounts:
    state = await service.require_state(namespace, graph, invocation_id)
    return OutputCounts(
        status=state.status,
        outputs={fn: n for fn, n in state.output_counts.items() if n > 0},
    )


async def function_outputs(
    service: ApiService,
    namespace: str,
    graph: str,
    invocation_id: str,
    function: str,
    *,
    cursor: str | None = None,
    limit: int = OUTPUTS_PAGE,
    generation: int | None = None,
) -> FunctionOutputs:
    """One page of the accepted outputs of ``function``, in order, base64-encoded: up to
    ``limit`` values from ``cursor`` (None: the first), at most ``limit + 1`` entries of the
    output index read; of computation ``generation`` (None: the current one)."""
    entry, offset = validation.parse_outputs_cursor(cursor)
    state, ranges, read = await _state_function_ranges(
        service,
        namespace,
        graph,
        invocation_id,
        function,
        generation,
        entry,
        entry + limit + 1,
        values=limit,
        offset=offset,
    )
    if ranges and offset and offset >= ranges[0].size:
        raise BadRequest(
            f"cursor={cursor!r} points past the values of output entry {entry} (it has "
            f"{ranges[0].size}); pass the previous page's `next_cursor` unchanged, or leave "
            "cursor out to start from the first page"
        )
    # The entries this page reaches, by count (candidates[k] is a part of ranges[k]) ...
    candidates: list[ValueRange] = []
    room = limit
    for k, whole in enumerate(ranges):
        if room <= 0:
            break
        part = whole.model_copy(update={"start": whole.start + offset}) if k == 0 else whole
        part = part.split(room)[0]
        candidates.append(part)
        room -= part.size
    stored = await _stored(service, invocation_id, [c for c in candidates if c.size > 0], read)
    # ... then by size: at least one value, about PAGE_BYTES at most.
    taken: list[ValueRange] = []
    budget = PAGE_BYTES
    position = (entry, offset)
    for k, part in enumerate(candidates):
        count = 0
        for size in _value_sizes(stored[part.task_id], part.start, part.stop) if part.size else []:
            if (taken or count) and size > budget:
                break
            budget -= size
            count += 1
        if count:
            taken.append(part.split(count)[0])
        position = (entry + k, part.start + count - ranges[k].start)
        if count < part.size:
            break
    at, done = position
    while at - entry < len(ranges) and done >= ranges[at - entry].size:
        at, done = at + 1, 0
    more = at - entry < len(ranges) or len(ranges) > limit
    loaded = await gather_bounded(
        [load_values(service.blobs, stored[t.task_id].slice(t.start, t.stop)) for t in taken],
        _READS_AT_ONCE,
    )
    values = [
        OutputValue(
            id=f"{t.task_id}:{index}",
            content_type=payload.content_type,
            data=base64.b64encode(payload.data).decode(),
        )
        for t, payloads in zip(taken, loaded, strict=True)
        for index, payload in zip(range(t.start, t.stop), payloads, strict=True)
    ]
    return FunctionOutputs(
        status=state.status,
        function=function,
        error=_function_error(state, function),
        outputs=values,
        next_cursor=validation.outputs_cursor(at, done) if more else None,
    )


def last_functions(definition: GraphDefinition) -> list[str]:
    """The functions of a graph that nothing follows (no edges out, not a router): the ones
    whose values are an invocation's result."""
    return [fn for fn in definition.nodes if not definition.children(fn)]


async def _final_functions(service: ApiService, state: InvocationState) -> list[str]:
    """The last functions of ``state``'s graph version, unless its output counts say their
    values are too many to carry (:data:`FINAL_VALUES`)."""
    definition = await service.placement.definition(
        state.namespace, state.graph, state.graph_version
    )
    leaves = last_functions(definition) if definition is not None else []
    if sum(state.output_counts.get(fn, 0) for fn in leaves) > FINAL_VALUES:
        return []
    return leaves


async def final_outputs(
    service: ApiService, state: InvocationState
) -> dict[str, list[dict[str, str]]] | None:
    """The values of the last functions (:func:`last_functions`) of an invocation that
    succeeded (``state``: its summary, read just now) as :class:`OutputValue` dicts, if they
    are at most :data:`FINAL_VALUES` values and :data:`FINAL_BYTES` bytes, all inline in
    Redis; else None (the client reads them page by page, :func:`function_outputs`)."""
    if state.status != "succeeded":
        return None
    leaves = await _final_functions(service, state)
    if not leaves:
        return None
    _, values = await _read_final(service, state, leaves)
    return values


async def ended_with_outputs(
    service: ApiService, started: InvocationState
) -> tuple[InvocationState | None, dict[str, list[dict[str, str]]] | None]:
    """The summary of an invocation that was seen to end (None: deleted) and its
    :func:`final_outputs`, read together in one round trip. ``started``: its summary when it
    was created, whose graph version and computation name the values to read."""
    leaves = await _final_functions(service, started)
    if not leaves:
        loaded = await service.store.invocations.load_invocation(started.invocation_id)
        return (loaded[0] if loaded is not None else None), None
    return await _read_final(service, started, leaves)


async def _read_final(
    service: ApiService, guess: InvocationState, leaves: Sequence[str]
) -> tuple[InvocationState | None, dict[str, list[dict[str, str]]] | None]:
    """The summary and the values of ``leaves`` in computation ``guess.generation``, in one
    round trip; the values are None unless the summary read with them agrees with ``guess``
    (computation, graph version) and says it succeeded."""
    loaded, ranges, stored = await service.store.invocations.function_values(
        guess.invocation_id, leaves, generation=guess.generation, limit=FINAL_VALUES + 1
    )
    if loaded is None:
        return None, None
    state = loaded[0]
    if (
        state.status != "succeeded"
        or state.generation != guess.generation
        or state.graph_version != guess.graph_version
    ):
        return state, None
    return state, _inline_values(leaves, ranges, stored)


def _inline_values(
    functions: Sequence[str],
    ranges: dict[str, list[ValueRange]],
    stored: dict[str, StoredValues],
) -> dict[str, list[dict[str, str]]] | None:
    """``functions``' values from their index entries and stored values, if they are all
    inline and within :data:`FINAL_VALUES` and :data:`FINAL_BYTES`; else None."""
    budget, room = FINAL_BYTES, FINAL_VALUES
    found: dict[str, list[dict[str, str]]] = {}
    for fn in functions:
        values = found[fn] = []
        for entry in ranges[fn]:
            held = stored.get(entry.task_id)
            if held is None or held.inline is None or held.count < entry.stop:
                return None
            for index in range(entry.start, entry.stop):
                data = held.inline[index]
                budget -= len(data)
                room -= 1
                if budget < 0 or room < 0:
                    return None
                values.append(
                    {
                        "id": f"{entry.task_id}:{index}",
                        "content_type": held.content_types[index],
                        "data": base64.b64encode(data).decode(),
                    }
                )
    return found


async def raw_output(
    service: ApiService,
    namespace: str,
    graph: str,
    invocation_id: str,
    function: str,
    task_id: str,
    index: int,
) -> Payload:
    """One output value, ``<task_id>:<index>`` as listed by :func:`function_outputs`: the
    task ran ``function``, succeeded and its output ``index`` was accepted (for a reducer,
    only the final accumulator is an output, not the steps before it)."""
    await _state_and_function(service, namespace, graph, invocation_id, function)
    listed = f"list them with GET .../invocations/{invocation_id}/fn/{function}/outputs"
    missing = NotFound(
        f"function {function!r} has no output {task_id}:{index} in invocation "
        f"{invocation_id}; {listed}"
    )
    record = (await service.store.invocations.get_tasks(invocation_id, [task_id])).get(task_id)
    if record is None or record.task.function != function or index < 0:
        raise missing
    if record.status != "succeeded":
        raise NotFound(
            f"task {task_id} of {function!r} is {record.status}, so it has no outputs; {listed}"
        )
    if record.task.kind == "route":
        raise NotFound(
            f"task {task_id} of router {function!r} chose the next functions, it has no "
            f"outputs; the values it routed are outputs of the functions before it"
        )
    if record.task.kind == "reduce":
        final = await service.store.invocations.output_ranges(
            invocation_id, function, -1, generation=generation_of(task_id)
        )
        if not final or final[-1].task_id != task_id:
            raise NotFound(
                f"task {task_id} is a step of reducer {function!r} (an accumulator so far), "
                f"not an output: only the final accumulator is; {listed}"
            )
        value = final[-1]
    else:
        value = ValueRange(task_id=task_id, function=function, start=0, stop=record.output_count)
    if not value.start <= index < value.stop:
        raise missing
    stored = await _stored(service, invocation_id, [value.single(index)])
    payloads = await load_values(service.blobs, stored[task_id].slice(index, index + 1))
    return payloads[0]


async def _read_text(service: ApiService, key: object) -> str:
    if not isinstance(key, str) or not key:
        return ""
    try:
        data = await service.blobs.get(key)
    except NotFound:
        return ""
    return data.decode("utf-8", errors="replace")


async def task_logs(
    service: ApiService,
    namespace: str,
    graph: str,
    invocation_id: str,
    function: str,
    *,
    cursor: str | None = None,
    limit: int = LOGS_PAGE,
) -> TaskLogsPage:
    """stdout and stderr (of the latest attempt) and the traceback of about ``limit`` tasks
    of ``function``, from ``cursor`` (None: the first page)."""
    start = validation.parse_scan_cursor(cursor, "cursor", "next_cursor")
    state, _ = await _state_and_function(service, namespace, graph, invocation_id, function)
    records, after = await service.store.invocations.tasks_page(
        invocation_id, start, limit, function=function, generation=state.generation
    )
    records.sort(key=lambda r: r.task.id)
    pointers = await service.store.invocations.get_logs(invocation_id, [r.task.id for r in records])

    async def one(task_id: str, error: ErrorInfo | None) -> TaskLogs:
        where = pointers.get(task_id, {})
        stdout = await _read_text(service, where.get("stdout"))
        stderr = await _read_text(service, where.get("stderr"))
        return TaskLogs(
            task_id=task_id,
            function=function,
            stdout=stdout,
            stderr=stderr,
            traceback=error.traceback if error else "",
        )

    logs = await gather_bounded([one(r.task.id, r.error) for r in records], _READS_AT_ONCE)
    return TaskLogsPage(logs=logs, next_cursor=validation.scan_cursor(after))
