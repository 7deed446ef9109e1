"""The scheduler's task messages as pure functions: a decision's new tasks, ready to send.

No Kafka, Redis or MinIO here. What a batch's events decide is
:func:`services.common.decisions.apply_events` (a :class:`~services.common.decisions.Decision`);
:func:`build_messages` turns its ``RunTask`` commands into :class:`TaskMessage` s (inputs
resolved from stored values) addressed to the function's task topic, or into delayed items for
retries with backoff. The service wraps these in I/O.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from indexify.definition import GraphDefinition, NodeDefinition
from indexify.engine import (
    InvocationState,
    Task,
)
from services.common.decisions import Decision
from services.common.events import (
    ChunkItem,
    InvocationContinueEvent,
    ProgressEvent,
    StoredValues,
    TaskChunkMessage,
    TaskMessage,
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
    "DelayedItem",
    "MissingValues",
    "Outgoing",
    "build_messages",
    "message_key",
    "needed_values",
    "task_topic",
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
