"""Reading what an invocation produced: output counts, values, single raw values, logs.

Values are found from the invocation state's ``outputs[fn]`` ranges (the outputs the engine
accepted) and the tasks' :class:`StoredValues` in Redis, then read inline or with one ranged
GET per range from MinIO.
"""

from __future__ import annotations

import asyncio
import base64

from indexify.encoding import Payload
from indexify.engine import ErrorInfo, InvocationState, ValueRange
from indexify.models import TaskLogs
from services.common.blobs import load_values
from services.common.errors import NotFound, ServiceError
from services.common.events import StoredValues

from .schemas import FunctionOutputs, OutputCounts, OutputValue
from .service import ApiService


async def _state_and_function(
    service: ApiService, namespace: str, graph: str, invocation_id: str, function: str
) -> InvocationState:
    state = await service.require_state(namespace, graph, invocation_id)
    record = await service.graph_version(state)
    if function not in record.definition.nodes:
        raise NotFound(
            f"graph {graph!r} (version {record.version}) has no function {function!r}; it has "
            f"{sorted(record.definition.nodes)}"
        )
    return state


def _function_error(state: InvocationState, function: str) -> ErrorInfo | None:
    if function not in state.failed_functions:
        return None
    for task in state.tasks.values():
        if task.task.function == function and task.error is not None:
            return task.error
    return state.error


async def _stored(
    service: ApiService, invocation_id: str, ranges: list[ValueRange]
) -> dict[str, StoredValues]:
    stored = await service.store.get_outputs(invocation_id, [r.task_id for r in ranges])
    missing = sorted({r.task_id for r in ranges} - set(stored))
    if missing:
        raise ServiceError(
            f"invocation {invocation_id}: the outputs of tasks {missing} are recorded in its "
            "state but not stored; the invocation's data is inconsistent, rerun it"
        )
    return stored


async def output_counts(
    service: ApiService, namespace: str, graph: str, invocation_id: str
) -> OutputCounts:
    state = await service.require_state(namespace, graph, invocation_id)
    return OutputCounts(
        status=state.status, outputs={fn: state.output_count(fn) for fn in state.outputs}
    )


async def function_outputs(
    service: ApiService, namespace: str, graph: str, invocation_id: str, function: str
) -> FunctionOutputs:
    """Every accepted output of ``function``, in order, base64-encoded."""
    state = await _state_and_function(service, namespace, graph, invocation_id, function)
    ranges = [r for r in state.outputs.get(function, []) if r.size > 0]
    stored = await _stored(service, invocation_id, ranges)
    loaded = await asyncio.gather(
        *(load_values(service.blobs, stored[r.task_id].slice(r.start, r.stop)) for r in ranges)
    )
    values = [
        OutputValue(
            id=f"{r.task_id}:{index}",
            content_type=payload.content_type,
            data=base64.b64encode(payload.data).decode(),
        )
        for r, payloads in zip(ranges, loaded, strict=True)
        for index, payload in zip(range(r.start, r.stop), payloads, strict=True)
    ]
    return FunctionOutputs(
        status=state.status,
        function=function,
        error=_function_error(state, function),
        outputs=values,
    )


async def raw_output(
    service: ApiService,
    namespace: str,
    graph: str,
    invocation_id: str,
    function: str,
    task_id: str,
    index: int,
) -> Payload:
    """One output value, ``<task_id>:<index>`` as listed by :func:`function_outputs`."""
    state = await _state_and_function(service, namespace, graph, invocation_id, function)
    if not any(
        r.task_id == task_id and r.start <= index < r.stop for r in state.outputs.get(function, [])
    ):
        raise NotFound(
            f"function {function!r} has no output {task_id}:{index} in invocation "
            f"{invocation_id}; list them with GET .../fn/{function}/outputs"
        )
    stored = await _stored(
        service,
        invocation_id,
        [ValueRange(task_id=task_id, function=function, start=index, stop=index + 1)],
    )
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
    service: ApiService, namespace: str, graph: str, invocation_id: str, function: str
) -> list[TaskLogs]:
    """stdout and stderr (of the latest attempt) and the traceback of each task of
    ``function``."""
    state = await _state_and_function(service, namespace, graph, invocation_id, function)
    pointers = await service.store.get_logs(invocation_id)
    records = [r for r in state.tasks.values() if r.task.function == function]

    async def one(task_id: str, error: ErrorInfo | None) -> TaskLogs:
        where = pointers.get(task_id, {})
        stdout, stderr = await asyncio.gather(
            _read_text(service, where.get("stdout")), _read_text(service, where.get("stderr"))
        )
        return TaskLogs(
            task_id=task_id,
            function=function,
            stdout=stdout,
            stderr=stderr,
            traceback=error.traceback if error else "",
        )

    return list(await asyncio.gather(*(one(r.task.id, r.error) for r in records)))
