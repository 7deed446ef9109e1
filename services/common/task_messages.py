"""Task messages as pure functions: the message an executor needs to run one task.

Shared by the scheduler, which sends every task of an invocation, and the API, which sends
an invocation's first task itself (:func:`start_messages`): that saves the hop through the
scheduler at the start of every invocation. No Kafka, Redis or MinIO here.

Starting directly, the invocation's record is the only thing that says it started:

* The API sends the first task's message and awaits Kafka's ack, and only then applies
  ``invocation.created`` naming the tasks it sent (``InvocationCreatedEvent.started``) to the
  invocation's record itself, with the scheduler's decision code and a compare-and-set on
  the revision it created the record with (``services/api/first_tasks.py``): the record says
  the invocation runs and those tasks are queued, and the scheduler gets no event. If that
  save fails, the API publishes ``invocation.created`` instead, and the scheduler records
  the tasks as queued without sending them again.
* If the API dies between the two, the record stays ``pending``. The task still runs, and
  its result tells whoever applies it (the scheduler, or the executor that ends the
  invocation) that the invocation started (``apply_events`` applies the creation first: the
  record, written before anything was sent, holds the rest). A result can also simply be
  applied before the API's save; that save then loses its compare-and-set, and nothing is
  left to do.
* Task ids are deterministic (the engine is pure), so the API and the scheduler name the
  same task; a scheduler on another engine version would name another one and send that,
  which is only wasted work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from indexify.definition import GraphDefinition
from indexify.engine import INPUT_TASK_ID, Engine, InvocationCreated, InvocationState, RunTask, Task

from .events import StoredValues, TaskChunkMessage, TaskMessage, encode_message
from .kafka_bus import Outgoing
from .names import Names

__all__ = [
    "MissingValues",
    "envelope",
    "message_key",
    "start_messages",
    "task_inputs",
    "task_message",
    "task_topic",
    "value_ids",
]


class MissingValues(LookupError):
    """A task's input refers to outputs that were never recorded (state and outputs disagree)."""

    def __init__(self, task_id: str, missing: Sequence[str]):
        super().__init__(
            f"task {task_id} needs the outputs of {list(missing)}, which are not recorded; "
            "the invocation's Redis keys were probably deleted while it ran"
        )
        self.task_id = task_id
        self.missing = tuple(missing)


_M = TypeVar("_M", TaskMessage, TaskChunkMessage)


def task_topic(names: Names, definition: GraphDefinition, namespace: str, function: str) -> str:
    node = definition.nodes[function]
    return names.task_topic(node.placement_key, namespace, definition.name, function)


def message_key(invocation_id: str, task_id: str) -> str:
    """The Kafka key of a task message: different across invocations and across the elements
    of a fan-out, so a function's tasks spread over all partitions of its topic (and every
    executor in its consumer group gets a share)."""
    return f"{invocation_id}:{task_id}"


def envelope(kind: type[_M], state: InvocationState, task_id: str, **fields: Any) -> _M:
    return kind(
        namespace=state.namespace,
        graph=state.graph,
        invocation_id=state.invocation_id,
        task_id=task_id,
        graph_version=state.graph_version,
        **fields,
    )


def value_ids(task: Task) -> list[str]:
    """The tasks (``"input"``: the invocation input) whose outputs ``task`` reads."""
    ids = [r.task_id for r in task.inputs]
    if task.accumulator is not None:
        ids.append(task.accumulator.task_id)
    return ids


def task_inputs(task: Task, values: Mapping[str, StoredValues]) -> tuple[StoredValues, ...]:
    """``task``'s inputs sliced from stored values (:class:`MissingValues` if unknown)."""
    missing = [tid for tid in value_ids(task) if tid not in values]
    if missing:
        raise MissingValues(task.id, missing)
    return tuple(values[r.task_id].slice(r.start, r.stop) for r in task.inputs)


def task_message(
    task: Task,
    state: InvocationState,
    definition: GraphDefinition,
    values: Mapping[str, StoredValues],
) -> TaskMessage:
    """The message an executor needs to run ``task``: inputs sliced from stored values."""
    inputs = task_inputs(task, values)
    accumulator = None
    if task.accumulator is not None:
        acc = task.accumulator
        accumulator = values[acc.task_id].slice(acc.start, acc.stop)
    return envelope(
        TaskMessage,
        state,
        task.id,
        task=task,
        inputs=inputs,
        accumulator=accumulator,
        timeout_sec=definition.nodes[task.function].timeout_sec,
        batch=definition.nodes[task.function].batch,
    )


def start_messages(
    engine: Engine, state: InvocationState, names: Names, stored_input: StoredValues
) -> list[tuple[str, Outgoing]]:
    """``(task id, message)`` of the tasks a new invocation starts with, as the scheduler
    would send them on ``invocation.created`` (the module docstring says who sends them).
    ``state`` (a new invocation's, ``pending``) is not changed."""
    if state.status != "pending" or state.generation:
        raise ValueError("only a new invocation's first tasks can be started directly")
    started = state.model_copy(deep=True)
    commands = engine.handle(started, InvocationCreated(at=state.created_at))
    values = {INPUT_TASK_ID: stored_input}
    messages = []
    for command in commands:
        if not isinstance(command, RunTask) or command.delay_sec > 0:
            continue
        task = command.task
        message = task_message(task, started, engine.definition, values)
        topic = task_topic(names, engine.definition, state.namespace, task.function)
        outgoing = Outgoing(
            topic, message_key(state.invocation_id, task.id), encode_message(message)
        )
        messages.append((task.id, outgoing))
    return messages
