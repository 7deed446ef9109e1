"""What each UI page shows, read through the API's own service: one async builder per page.

The builders speak in domain terms and return plain dataclasses the templates render; they
raise the service's errors (:mod:`services.common.errors`), which the routes turn into an
error page. Everything a page reads is bounded: a page of tasks, a page of logs and a few
outputs per function, a limited number of invocations per graph.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from dataclasses import dataclass, field

from indexify.definition import GraphDefinition
from indexify.engine import TERMINAL_STATUSES
from indexify.models import GraphInfo, InvocationInfo, Replay, TaskLogs
from indexify.placement import satisfies
from services.common.api_keys import Principal
from services.common.errors import ServiceError
from services.common.executor_registry import ExecutorInfo
from services.common.graphs import GraphRecord
from services.common.kafka_tools import DeadLetterRow, KafkaToolError, read_deadletters
from services.common.logging import get_logger

from .. import outputs
from ..service import ApiService
from .dag_layout import DagLayout, layout
from .timeline import FunctionState, TaskRow, function_states, task_rows

_log = get_logger(__name__)

#: tasks listed on an invocation page (the first page of its status)
PAGE_TASKS = 500
#: invocations read per graph for the lists
LIST_INVOCATIONS = 200
_LOGS_PER_FUNCTION = 50
_OUTPUTS_PER_FUNCTION = 5
_PREVIEW_CHARS = 400
_DEAD_LETTERS = 50
_DEAD_LETTERS_TIMEOUT_SEC = 5.0

STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")
#: the time filter of the invocation lists: its name -> seconds back from now
SINCE = {"15m": 900, "1h": 3600, "24h": 86400, "7d": 7 * 86400}


# -- graphs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphCard:
    info: GraphInfo
    dag: DagLayout
    counts: dict[str, int]  # invocation status -> how many (of the latest read)


async def overview(service: ApiService, viewer: Principal) -> dict[str, list[GraphCard]]:
    """Namespace -> its graphs with their DAGs and invocation counts by status."""
    found: dict[str, list[GraphCard]] = {}
    for namespace in await service.namespaces():
        if not viewer.covers(namespace):
            continue
        cards = []
        for graph in await service.graphs(namespace):
            invocations = await service.invocations(namespace, graph.name, LIST_INVOCATIONS)
            counts: dict[str, int] = {}
            for inv in invocations:
                counts[inv.status] = counts.get(inv.status, 0) + 1
            cards.append(GraphCard(info=graph, dag=layout(graph.definition), counts=counts))
        found[namespace] = cards
    return found


@dataclass(frozen=True)
class GraphPage:
    info: GraphInfo
    dag: DagLayout
    versions: list[GraphRecord]  # newest first
    invocations: list[InvocationInfo]
    queued: dict[str, int]  # function -> tasks waiting on the live executors
    replays: list[Replay] = field(default_factory=list)  # backfills, newest first


async def graph_page(
    service: ApiService, namespace: str, graph: str, status: str | None, since: str | None
) -> GraphPage:
    info = await service.graph(namespace, graph)
    versions = [
        r
        for r in await service.store.graphs.all_versions()
        if r.namespace == namespace and r.name == graph
    ]
    versions.sort(key=lambda r: r.created_at, reverse=True)
    invocations = await service.invocations(namespace, graph, LIST_INVOCATIONS)
    queues = await service.function_queues(namespace, graph)
    return GraphPage(
        info=info,
        dag=layout(info.definition),
        versions=versions,
        invocations=filter_invocations(invocations, status, since, time.time()),
        queued=queues.queued,
        replays=await service.replays(namespace, graph),
    )


# -- invocation lists ---------------------------------------------------------------------


def filter_invocations(
    invocations: list[InvocationInfo], status: str | None, since: str | None, now: float
) -> list[InvocationInfo]:
    """Those with ``status`` (any when None) created within ``since`` (a key of
    :data:`SINCE`; any time when None), newest first."""
    back = SINCE.get(since or "")
    kept = [
        inv
        for inv in invocations
        if (not status or inv.status == status) and (back is None or inv.created_at >= now - back)
    ]
    return sorted(kept, key=lambda inv: inv.created_at, reverse=True)


async def all_invocations(
    service: ApiService, viewer: Principal, status: str | None, since: str | None
) -> list[InvocationInfo]:
    """The latest invocations of every graph the viewer may read, filtered."""
    found: list[InvocationInfo] = []
    for namespace in await service.namespaces():
        if not viewer.covers(namespace):
            continue
        for graph in await service.graphs(namespace):
            found += await service.invocations(namespace, graph.name, LIST_INVOCATIONS)
    return filter_invocations(found, status, since, time.time())


# -- one invocation -----------------------------------------------------------------------


@dataclass(frozen=True)
class OutputPreview:
    id: str
    content_type: str
    text: str  # the value as text, cut to a preview
    size: int
    cut: bool


@dataclass(frozen=True)
class FunctionOutput:
    function: str
    count: int
    values: list[OutputPreview]
    problem: str = ""


@dataclass(frozen=True)
class InvocationPage:
    info: InvocationInfo
    definition: GraphDefinition
    dag: DagLayout
    states: dict[str, FunctionState]
    rows: list[TaskRow]
    logs: dict[str, TaskLogs]  # task id -> its logs (tasks that ended)
    outputs: dict[str, FunctionOutput]  # function -> its first outputs
    live: bool
    more_tasks: bool = False
    problems: list[str] = field(default_factory=list)


def preview(value_id: str, content_type: str, data: bytes) -> OutputPreview:
    """A value as a short text: JSON as text, anything else as its size and type."""
    if content_type == "application/json":
        text = data.decode("utf-8", errors="replace")
        with contextlib.suppress(ValueError):
            text = json.dumps(json.loads(text), ensure_ascii=False)
    else:
        text = f"<{len(data)} bytes of {content_type}>"
    cut = len(text) > _PREVIEW_CHARS
    return OutputPreview(
        id=value_id,
        content_type=content_type,
        text=text[:_PREVIEW_CHARS] + ("…" if cut else ""),
        size=len(data),
        cut=cut,
    )


async def _outputs(
    service: ApiService, info: InvocationInfo, functions: list[str]
) -> dict[str, FunctionOutput]:
    found: dict[str, FunctionOutput] = {}
    for function in functions:
        count = info.outputs.get(function, 0)
        if not count:
            continue
        try:
            page = await outputs.function_outputs(
                service,
                info.namespace,
                info.graph,
                info.id,
                function,
                limit=_OUTPUTS_PER_FUNCTION,
            )
        except ServiceError as exc:
            found[function] = FunctionOutput(function, count, [], problem=str(exc))
            continue
        values = [preview(v.id, v.content_type, base64.b64decode(v.data)) for v in page.outputs]
        found[function] = FunctionOutput(function, count, values)
    return found


async def _logs(
    service: ApiService, info: InvocationInfo, functions: set[str]
) -> dict[str, TaskLogs]:
    found: dict[str, TaskLogs] = {}
    for function in sorted(functions):
        page = await outputs.task_logs(
            service, info.namespace, info.graph, info.id, function, limit=_LOGS_PER_FUNCTION
        )
        found.update((log.task_id, log) for log in page.logs)
    return found


async def invocation_page(
    service: ApiService, namespace: str, graph: str, invocation_id: str
) -> InvocationPage:
    info = await service.invocation(namespace, graph, invocation_id, limit=PAGE_TASKS)
    definition = await service.placement.definition(namespace, graph, info.graph_version)
    if definition is None:  # its version was deleted: draw the current one
        definition = (await service.require_graph(namespace, graph)).definition
    ended = {t.function for t in info.tasks if t.status in ("succeeded", "failed")}
    problems: list[str] = []
    try:
        logs = await _logs(service, info, ended)
    except ServiceError as exc:
        _log.warning("ui: logs not readable", invocation=invocation_id, error=str(exc))
        logs, problems = {}, [f"logs could not be read: {exc}"]
    return InvocationPage(
        info=info,
        definition=definition,
        dag=layout(definition),
        states=function_states(definition.nodes, info.tasks),
        rows=task_rows(info, definition.start_node, time.time()),
        logs=logs,
        outputs=await _outputs(service, info, list(definition.nodes)),
        live=info.status not in TERMINAL_STATUSES,
        more_tasks=info.next_tasks_cursor is not None,
        problems=problems,
    )


# -- the platform -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutorRow:
    info: ExecutorInfo
    functions: list[str]  # "<namespace>/<graph>/<function>" of current graph versions


def served(executor: ExecutorInfo, graphs: list[GraphRecord]) -> list[str]:
    """The functions of ``graphs`` whose placement the executor's labels satisfy."""
    return sorted(
        f"{g.namespace}/{g.name}/{name}"
        for g in graphs
        for name, node in g.definition.nodes.items()
        if satisfies(executor.labels, node.required_labels)
    )


async def executors(service: ApiService) -> list[ExecutorRow]:
    live = await service.store.registry.executors()
    graphs = await service.store.graphs.all_graphs()
    return [ExecutorRow(e, served(e, graphs)) for e in sorted(live, key=lambda e: e.id)]


@dataclass(frozen=True)
class DeadLetters:
    rows: list[DeadLetterRow]
    problem: str = ""


async def dead_letters(service: ApiService) -> DeadLetters:
    """The latest dead letters (handled ones too, marked), newest first."""
    try:
        rows = await read_deadletters(
            service.infra,
            _DEAD_LETTERS,
            include_handled=True,
            timeout=_DEAD_LETTERS_TIMEOUT_SEC,
        )
    except KafkaToolError as exc:
        _log.warning("ui: dead letters not readable", error=str(exc))
        return DeadLetters([], problem=str(exc))
    return DeadLetters(list(reversed(rows)))
