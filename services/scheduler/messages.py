"""The scheduler's decisions as pure functions: events in, task messages and progress out.

No Kafka, Redis or MinIO here. :func:`apply_events` runs one invocation's events of a poll
batch through the engine and collects everything the service must make durable
(:class:`Decision`); :func:`build_messages` turns the engine's ``RunTask`` commands into
:class:`TaskMessage` s (inputs resolved from stored values) addressed to the function's task
topic, or into delayed items for retries with backoff. The service wraps these in I/O.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from indexify.definition import GraphDefinition, NodeDefinition
from indexify.engine import (
    INPUT_TASK_ID,
    ContinueDelivery,
    DeliveryContinued,
    Engine,
    EngineEvent,
    ErrorInfo,
    FinishInvocation,
    InvocationCancelled,
    InvocationCreated,
    InvocationReplayed,
    InvocationState,
    RunTask,
    Task,
    TaskFinished,
    TaskRecord,
    TaskReused,
    earlier_tasks,
    generation_of,
    stopped_by_cancel,
)
from services.common.events import (
    ChunkItem,
    InvocationCancelEvent,
    InvocationContinueEvent,
    InvocationCreatedEvent,
    InvocationReplayEvent,
    ProgressEvent,
    SchedulerEvent,
    StoredValues,
    TaskChunkMessage,
    TaskFinishedEvent,
    TaskMessage,
    TasksFinishedEvent,
    encode_message,
)
from services.common.kafka_bus import Outgoing
from services.common.names import Names
from services.common.task_messages import (
    MissingValues,
    envelope,
    message_key,
    task_inputs,
    task_message,
    task_topic,
    value_ids,
)

from .chunking import chunk_size, chunks

__all__ = [
    "Decision",
    "DelayedItem",
    "MissingValues",
    "Outgoing",
    "accepts",
    "apply_events",
    "apply_reused",
    "build_messages",
    "expand",
    "fail_permanently",
    "message_key",
    "needed_values",
    "reuse_sources",
    "task_topic",
    "to_engine_event",
]


class DelayedItem(BaseModel):
    """A task message to publish later (a retry with backoff); the sorted-set member."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str
    key: str
    value: str  # the TaskMessage JSON

    def encode(self) -> str:
        return self.model_dump_json()

    @classmethod
    def decode(cls, raw: str) -> DelayedItem:
        return cls.model_validate_json(raw)

    def outgoing(self) -> Outgoing:
        return Outgoing(self.topic, self.key, self.value.encode())


@dataclass
class Decision:
    """What applying one invocation's events produced, before anything is made durable."""

    invocation_id: str
    changed: bool = False
    run: list[RunTask] = field(default_factory=list)
    finished: FinishInvocation | None = None
    outputs: dict[str, StoredValues] = field(default_factory=dict)  # accepted, first seen here
    known: dict[str, StoredValues] = field(default_factory=dict)  # read from events, not new
    done: list[str] = field(default_factory=list)  # tasks that reached a final status
    logs: dict[str, dict[str, Any]] = field(default_factory=dict)  # task id -> log pointers
    progress: list[ProgressEvent] = field(default_factory=list)
    task_progress: bool = True  # task.created/task.finished too (someone listens)
    continue_seq: int | None = None  # ask for the next slice of a fan-out (ContinueDelivery)
    started: set[str] = field(default_factory=set)  # first tasks the API sent itself


# -- events ---------------------------------------------------------------------------------


def expand(event: SchedulerEvent) -> list[SchedulerEvent]:
    """The events a message carries: a batch of results is handled result by result."""
    if isinstance(event, TasksFinishedEvent):
        return list(event.results)
    return [event]


def to_engine_event(event: SchedulerEvent) -> EngineEvent:
    """The engine's view of a wire event."""
    if isinstance(event, InvocationCreatedEvent):
        return InvocationCreated(at=event.at)
    if isinstance(event, TaskFinishedEvent):
        return event.finished
    if isinstance(event, InvocationCancelEvent):
        return InvocationCancelled(reason=event.reason, at=event.at)
    if isinstance(event, InvocationContinueEvent):
        return DeliveryContinued(seq=event.seq)
    if isinstance(event, InvocationReplayEvent):
        return InvocationReplayed(
            generation=event.generation, from_function=event.from_function, at=event.at
        )
    raise TypeError(f"not a scheduler event: {type(event).__name__}")


def accepts(state: InvocationState, event: EngineEvent) -> bool:
    """Whether the engine would change ``state`` for ``event`` (False: a duplicate or stale).
    A terminal invocation takes only the report of an attempt its cancel stopped, and replays."""
    if isinstance(event, InvocationReplayed):
        return event.generation > state.generation
    if state.terminal:
        return stopped_by_cancel(state, event)
    if isinstance(event, InvocationCreated):
        return state.status == "pending"
    if isinstance(event, TaskFinished):
        record = state.tasks.get(event.task_id)
        return (
            record is not None
            and record.status == "queued"
            and record.task.attempt == event.attempt
            and generation_of(event.task_id) == state.generation
        )
    if isinstance(event, DeliveryContinued):
        return event.seq == state.continue_seq and bool(state.pending)
    return True  # a cancel of a live invocation


def apply_events(
    engine: Engine,
    state: InvocationState,
    events: Iterable[SchedulerEvent],
    *,
    task_progress: bool = True,
) -> Decision:
    """Apply ``events`` (one invocation's, in partition order) to ``state`` in place.

    ``task_progress=False`` (nobody listens to the invocation's progress) leaves out the
    per-task progress events: a fan-out of thousands would encode thousands of messages that
    nobody reads. ``invocation.finished`` is always there."""
    decision = Decision(invocation_id=state.invocation_id, task_progress=task_progress)
    for event in events:
        engine_event = to_engine_event(event)
        if isinstance(engine_event, TaskFinished) and _started_elsewhere(state, engine_event):
            # The API started this invocation itself and its result came first (or its
            # invocation.created never will): that result says it was created.
            created = InvocationCreated(at=state.created_at)
            commands = engine.handle(state, created)
            first = {c.task.id for c in commands if isinstance(c, RunTask)}
            if engine_event.task_id in first:  # else not the API's task: send them here
                decision.started.update(first)
            _collect(state, commands, decision)
            decision.changed = True
        if not accepts(state, engine_event):
            continue
        decision.changed = True
        commands = engine.handle(state, engine_event)
        if isinstance(event, InvocationCreatedEvent):
            decision.known[INPUT_TASK_ID] = event.input
            decision.started.update(event.started)
        if isinstance(event, TaskFinishedEvent):
            _record_finished(state, event, decision)
        _collect(state, commands, decision)
    decision.run = _still_wanted(state, decision.run)
    return decision


def _started_elsewhere(state: InvocationState, event: TaskFinished) -> bool:
    """Whether ``event`` is the result of a first task the API sent itself, reaching a new
    invocation before its ``invocation.created`` (see :mod:`services.common.task_messages`):
    nothing else can run a task of an invocation the scheduler has not started."""
    return (
        state.status == "pending"
        and state.generation == 0
        and not state.tasks
        and generation_of(event.task_id) == 0
    )


def _collect(state: InvocationState, commands: Iterable[Any], decision: Decision) -> None:
    for command in commands:
        if isinstance(command, RunTask):
            decision.run.append(command)
        elif isinstance(command, ContinueDelivery):
            decision.continue_seq = command.seq
        elif isinstance(command, FinishInvocation):
            decision.finished = command
            decision.progress.append(
                ProgressEvent(
                    type="invocation.finished",
                    invocation_id=state.invocation_id,
                    status=command.status,
                    error=command.error,
                    function=command.error_function,
                )
            )


def reuse_sources(
    state: InvocationState, decision: Decision, tried: set[str]
) -> dict[str, list[str]]:
    """Task id -> the tasks of earlier computations whose result it may reuse (same content,
    see :mod:`indexify.engine.engine`), newest first, for the new tasks of a replay not
    ``tried`` yet (first attempts of calls and routes: a reducer step is never reused)."""
    if state.generation == 0:
        return {}
    return {
        command.task.id: earlier_tasks(command.task.id, state.generation)
        for command in decision.run
        if command.task.id not in tried
        and command.task.kind != "reduce"
        and command.task.attempt == 1
        and generation_of(command.task.id) == state.generation
    }


def apply_reused(
    engine: Engine,
    state: InvocationState,
    sources: Mapping[str, Sequence[str]],
    records: Mapping[str, TaskRecord],
    values: Mapping[str, StoredValues],
    decision: Decision,
) -> int:
    """Settle the tasks in ``sources`` of which an earlier task succeeded (its ``records``)
    with its stored ``values`` found, by reusing those instead of running them; the tasks
    that follow go into ``decision``. Returns how many were reused."""
    reused = 0
    for task_id, candidates in sources.items():
        found = [
            (source, records[source])
            for source in candidates
            if source in records
            and records[source].status == "succeeded"
            and (source in values or not records[source].output_count)
        ]
        if not found:
            continue  # never computed, or its values are not recorded: run it
        source, record = found[0]
        stored = values.get(source)
        queued = state.tasks.get(task_id)
        if queued is None or queued.status != "queued":
            continue  # settled meanwhile
        event = TaskReused(
            task_id=task_id, source=source, output_count=record.output_count, route=record.route
        )
        commands = engine.handle(state, event)
        reused += 1
        decision.changed = True
        if stored is not None:
            decision.outputs[task_id] = stored
        _collect(state, commands, decision)
    decision.run = _still_wanted(state, decision.run)
    return reused


def _record_finished(state: InvocationState, event: TaskFinishedEvent, out: Decision) -> None:
    finished = event.finished
    record = state.tasks[finished.task_id]
    if finished.outcome == "success" and event.outputs is not None:
        out.outputs[finished.task_id] = event.outputs
    if record.status != "queued":
        out.done.append(finished.task_id)
    if event.stdout_key or event.stderr_key:
        out.logs[finished.task_id] = {
            "stdout": event.stdout_key,
            "stderr": event.stderr_key,
            "attempt": finished.attempt,
        }
    if not out.task_progress:
        return
    out.progress.append(
        ProgressEvent(
            type="task.finished",
            invocation_id=state.invocation_id,
            task_id=finished.task_id,
            function=record.task.function,
            attempt=finished.attempt,
            executor=finished.executor or None,
            outcome=finished.outcome,
            error=finished.error,
        )
    )


def _still_wanted(state: InvocationState, run: list[RunTask]) -> list[RunTask]:
    """Drop commands overtaken within the batch (task settled, retried again, cancelled)."""
    wanted: dict[tuple[str, int], RunTask] = {}
    for command in run:
        record = state.tasks.get(command.task.id)
        if (
            record is not None
            and record.status == "queued"
            and record.task.attempt == command.task.attempt
        ):
            wanted[(command.task.id, command.task.attempt)] = command
    return list(wanted.values())


def fail_permanently(
    state: InvocationState, error: ErrorInfo, *, at: float | None = None
) -> Decision:
    """End a live invocation as failed without the engine (e.g. its graph version is gone)."""
    decision = Decision(invocation_id=state.invocation_id)
    if state.terminal:
        return decision
    for record in state.tasks.values():  # the loaded ones; the API reads the rest as cancelled
        if record.status == "queued":
            record.status = "cancelled"
    state.count_task("queued", "cancelled", state.task_counts.get("queued", 0))
    state.outstanding = {}
    state.status = "failed"
    state.error = error
    state.finished_at = at if at is not None else time.time()
    decision.changed = True
    decision.finished = FinishInvocation(status="failed", error=error)
    decision.progress.append(
        ProgressEvent(
            type="invocation.finished",
            invocation_id=state.invocation_id,
            status="failed",
            error=error,
        )
    )
    return decision


# -- task messages --------------------------------------------------------------------------


def needed_values(decision: Decision) -> set[str]:
    """Task ids (``"input"`` for the invocation input) whose stored outputs the new tasks
    read and that this batch did not record itself: look these up in Redis."""
    needed = {
        tid
        for command in decision.run
        if not _sent_by_api(command.task, decision)
        for tid in value_ids(command.task)
    }
    return needed - decision.outputs.keys() - decision.known.keys()


def _sent_by_api(task: Task, decision: Decision) -> bool:
    return task.attempt == 1 and task.id in decision.started


def build_messages(
    decision: Decision,
    state: InvocationState,
    definition: GraphDefinition,
    names: Names,
    values: Mapping[str, StoredValues],
    *,
    now: float | None = None,
    slots: int = 1,
) -> tuple[list[Outgoing], list[tuple[float, DelayedItem]]]:
    """Task messages to publish now, and ``(due_at, item)`` retries to publish later.

    ``values`` maps task ids to their stored outputs (the decision's own outputs are used
    first). Tasks the API sent itself (``decision.started``) get no message. Ready tasks of
    one function that may share a worker (calls and routes without a
    timeout, not batched: :func:`_alone`) travel as :class:`TaskChunkMessage` s sized by
    :func:`.chunking.chunk_size` for ``slots`` live worker slots. Adds a ``task.created``
    progress event per task to ``decision.progress``. Raises :class:`MissingValues` when an
    input's outputs are unknown.
    """
    now = time.time() if now is None else now
    lookup = {**values, **decision.known, **decision.outputs}
    ready: list[Outgoing] = []
    delayed: list[tuple[float, DelayedItem]] = []
    groups: dict[str, list[ChunkItem]] = {}
    for command in decision.run:
        task = command.task
        topic = task_topic(names, definition, state.namespace, task.function)
        key = message_key(state.invocation_id, task.id)
        if _sent_by_api(task, decision):
            pass  # the API sent its message (services.common.task_messages)
        elif command.delay_sec > 0:
            retry = task_message(task, state, definition, lookup)
            item = DelayedItem(topic=topic, key=key, value=encode_message(retry).decode())
            delayed.append((now + command.delay_sec, item))
        elif task.kind == "reduce" or _alone(definition.nodes[task.function]):
            ready.append(
                Outgoing(topic, key, encode_message(task_message(task, state, definition, lookup)))
            )
        else:  # built once, as a chunk's item (or as a message of its own if alone)
            groups.setdefault(task.function, []).append(
                ChunkItem(task=task, inputs=task_inputs(task, lookup))
            )
        if decision.task_progress:
            decision.progress.append(
                ProgressEvent(
                    type="task.created",
                    invocation_id=state.invocation_id,
                    task_id=task.id,
                    function=task.function,
                    attempt=task.attempt,
                )
            )
    if decision.continue_seq is not None:
        event = InvocationContinueEvent(
            namespace=state.namespace,
            graph=state.graph,
            invocation_id=state.invocation_id,
            seq=decision.continue_seq,
        )
        ready.append(Outgoing(names.events_topic, state.invocation_id, encode_message(event)))
    for function, items in groups.items():
        topic = task_topic(names, definition, state.namespace, function)
        size = chunk_size(len(items), slots)
        parts = chunks(items, size)
        # Several messages: one after another over the topic's partitions (from a partition
        # of the invocation's), so every consumer of the function gets its share.
        first_partition = zlib.crc32(f"{state.invocation_id}:{function}".encode())
        for index, part in enumerate(parts):
            first = part[0].task
            key = message_key(state.invocation_id, first.id)
            message: BaseModel
            if len(part) == 1:
                message = envelope(TaskMessage, state, first.id, task=first, inputs=part[0].inputs)
            else:
                message = envelope(
                    TaskChunkMessage, state, first.id, function=function, items=tuple(part)
                )
            spread = first_partition + index if len(parts) > 1 else None
            ready.append(Outgoing(topic, key, encode_message(message), spread))
    return ready, delayed


def _alone(node: NodeDefinition) -> bool:
    """Tasks of ``node`` travel one per message: with a timeout (a chunk runs on one worker,
    and a timeout kills it), or batched (executors assemble batches across invocations from
    single messages)."""
    return node.timeout_sec is not None or node.batch is not None
