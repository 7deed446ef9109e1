"""Every message on the wire, in one module: JSON, frozen, ``extra="forbid"``, versioned.

Envelope: event id, type, schema version, namespace, graph, invocation id, task id, time.
Nothing on Kafka is pickled: user values travel as :class:`StoredValues`, inline (small) or as
a reference to one MinIO object. Decoding failures raise :class:`MessageDecodeError`, which
keeps the raw bytes for the dead-letter topic.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from indexify.definition import BatchDefinition
from indexify.encoding import Payload
from indexify.engine import ErrorInfo, Task, TaskFinished
from indexify.engine.model import InvocationStatus

SCHEMA_VERSION: Literal[1] = 1
_T = TypeVar("_T")


class _EventIds:
    """Unique event ids: this process's random prefix and a number (an event id only tells
    duplicates apart; several events per invocation each took a ``getrandom`` system call
    and a UUID object before)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._numbers = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._numbers):016x}"


_EVENT_IDS = _EventIds()
os.register_at_fork(after_in_child=_EVENT_IDS.reset)  # a forked child numbers on its own


def new_event_id() -> str:
    """32 hex digits, unique (:class:`_EventIds`)."""
    return _EVENT_IDS.next()


class _Frozen(BaseModel):
    """Bytes fields hold raw bytes in Python and base64 in JSON."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )


class StoredValues(_Frozen):
    """Several encoded values: inline bytes, or byte ranges of one object in MinIO."""

    content_types: tuple[str, ...]
    inline: tuple[bytes, ...] | None = None
    object_key: str | None = None
    offsets: tuple[int, ...] | None = None  # cumulative byte offsets, len(content_types) + 1

    @property
    def count(self) -> int:
        return len(self.content_types)

    @property
    def size(self) -> int:
        if self.inline is not None:
            return sum(len(d) for d in self.inline)
        return (self.offsets[-1] - self.offsets[0]) if self.offsets else 0

    def slice(self, start: int, stop: int) -> StoredValues:
        if self.inline is not None:
            return StoredValues(
                content_types=self.content_types[start:stop], inline=self.inline[start:stop]
            )
        assert self.offsets is not None
        return StoredValues(
            content_types=self.content_types[start:stop],
            object_key=self.object_key,
            offsets=self.offsets[start : stop + 1],
        )

    @classmethod
    def from_payloads(cls, payloads: list[Payload]) -> StoredValues:
        return cls(
            content_types=tuple(p.content_type for p in payloads),
            inline=tuple(p.data for p in payloads),
        )

    def inline_payloads(self) -> list[Payload]:
        assert self.inline is not None
        return [
            Payload(content_type=ct, data=data)
            for ct, data in zip(self.content_types, self.inline, strict=True)
        ]


class _Envelope(_Frozen):
    event_id: str = Field(default_factory=new_event_id)
    schema_version: Literal[1] = SCHEMA_VERSION
    namespace: str
    graph: str
    invocation_id: str
    task_id: str | None = None
    at: float = Field(default_factory=time.time)


# -- the events topic (consumed by the scheduler) -------------------------------------------


class InvocationCreatedEvent(_Envelope):
    """A new invocation. ``started``: the first tasks the API sent itself (their messages
    were acknowledged before this event was sent); the scheduler records them as queued and
    does not send them again (:mod:`.task_messages`)."""

    type: Literal["invocation.created"] = "invocation.created"
    graph_version: str
    input: StoredValues
    started: tuple[str, ...] = ()


class TaskFinishedEvent(_Envelope):
    """Sent by an executor after one attempt; ``outputs`` is set on success."""

    type: Literal["task.finished"] = "task.finished"
    finished: TaskFinished
    outputs: StoredValues | None = None
    stdout_key: str | None = None
    stderr_key: str | None = None


class TasksFinishedEvent(_Envelope):
    """Several ``task.finished`` results of one invocation sent as one message (an executor
    batches the results that complete together, e.g. the elements of a chunk). The
    scheduler handles each as if it had arrived alone, in order."""

    type: Literal["tasks.finished"] = "tasks.finished"
    results: tuple[TaskFinishedEvent, ...]


class InvocationCancelEvent(_Envelope):
    type: Literal["invocation.cancel"] = "invocation.cancel"
    reason: str = "cancelled by request"


class InvocationReplayEvent(_Envelope):
    """Compute the invocation again, in place, as ``generation`` on ``graph_version`` (the
    API allocates the generation, so a redelivered request is recognised as a duplicate).
    ``replay_id``: the backfill that asked for it, if any."""

    type: Literal["invocation.replay"] = "invocation.replay"
    graph_version: str
    generation: int = Field(ge=1)
    from_function: str | None = None
    replay_id: str | None = None


class InvocationContinueEvent(_Envelope):
    """The scheduler's note to itself: create the next slice of a big fan-out (sent to the
    back of the events topic, so other invocations' events are handled in between)."""

    type: Literal["invocation.continue"] = "invocation.continue"
    seq: int


SchedulerEvent = Annotated[
    InvocationCreatedEvent
    | TaskFinishedEvent
    | TasksFinishedEvent
    | InvocationCancelEvent
    | InvocationContinueEvent
    | InvocationReplayEvent,
    Field(discriminator="type"),
]

# -- task topics (consumed by executors) ----------------------------------------------------


class TaskMessage(_Envelope):
    """Run ``task`` of graph version ``graph_version``; inputs align with ``task.inputs``."""

    type: Literal["task.ready"] = "task.ready"
    graph_version: str
    task: Task
    inputs: tuple[StoredValues, ...]
    accumulator: StoredValues | None = None
    timeout_sec: float | None = None
    batch: BatchDefinition | None = None
    """Set when the function is batched: executors assemble batches of such messages
    (:mod:`services.executor.assembly`); the scheduler never chunks them."""


class ChunkItem(_Frozen):
    """One task of a :class:`TaskChunkMessage`; ``inputs`` align with ``task.inputs``."""

    task: Task
    inputs: tuple[StoredValues, ...]


class TaskChunkMessage(_Envelope):
    """Several tasks of one function and invocation in one message: the elements of a
    fan-out shipped together. Each item is a task of its own (its own id, claim, outputs,
    retries and result); only the transport, the claim round trip and the worker round trip
    are shared."""

    type: Literal["task.chunk"] = "task.chunk"
    graph_version: str
    function: str
    items: tuple[ChunkItem, ...] = Field(min_length=1)
    timeout_sec: float | None = None

    def task_messages(self) -> list[TaskMessage]:
        """One :class:`TaskMessage` per item, as if each had been sent alone."""
        return [
            TaskMessage(
                namespace=self.namespace,
                graph=self.graph,
                invocation_id=self.invocation_id,
                task_id=item.task.id,
                at=self.at,
                graph_version=self.graph_version,
                task=item.task,
                inputs=item.inputs,
                timeout_sec=self.timeout_sec,
            )
            for item in self.items
        ]


TaskTopicMessage = Annotated[TaskMessage | TaskChunkMessage, Field(discriminator="type")]
"""What a task topic carries: one task, or a chunk of tasks of one function."""


# -- dead letters and progress --------------------------------------------------------------


class DeadLetter(_Frozen):
    """A message that could not be processed, kept with its reason and original bytes.

    A part too big to travel in the letter (Kafka's message limit, and base64 makes bytes a
    third bigger) is stored in MinIO instead: ``value_object`` (then ``value`` is empty),
    ``key_object`` (then ``key`` is None) and ``headers_object`` (a JSON list of
    ``[name, base64 value]``; then ``headers`` is empty) name those objects.
    ``value_size`` is the original value's length (None in letters written before it
    existed); ``value_null`` says the message had no value at all.
    """

    type: Literal["deadletter"] = "deadletter"
    schema_version: Literal[1] = SCHEMA_VERSION
    reason: str
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes = b""
    at: float = Field(default_factory=time.time)
    value_size: int | None = None
    value_null: bool = False
    headers: tuple[tuple[str, bytes], ...] = ()
    value_object: str | None = None
    key_object: str | None = None
    headers_object: str | None = None


ProgressType = Literal[
    "invocation.accepted",
    "task.created",
    "task.started",
    "task.finished",
    "invocation.waiting",
    "invocation.finished",
]


class ProgressEvent(_Frozen):
    """Published on Redis for live progress (the API streams these as Server-Sent Events).

    ``invocation.waiting`` is the API's own (not published): ``waiting`` says why the
    invocation cannot go on (no live executor offers a function's placement), or is None
    once it can again."""

    type: ProgressType
    invocation_id: str
    task_id: str | None = None
    function: str | None = None
    attempt: int | None = None
    executor: str | None = None
    outcome: Literal["success", "failure"] | None = None
    status: InvocationStatus | None = None
    error: ErrorInfo | None = None
    waiting: str | None = None
    at: float = Field(default_factory=time.time)


# -- decoding -------------------------------------------------------------------------------


class MessageDecodeError(Exception):
    """The bytes are not a message we understand; ``raw`` goes to the dead-letter topic."""

    def __init__(self, reason: str, raw: bytes):
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


_scheduler_events: TypeAdapter[SchedulerEvent] = TypeAdapter(SchedulerEvent)


def _decode(adapter: TypeAdapter[_T], raw: bytes) -> _T:
    try:
        return adapter.validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise MessageDecodeError(
            f"invalid message ({first.get('type')} at {where or 'top level'}: {first.get('msg')})",
            raw,
        ) from None


def decode_scheduler_event(raw: bytes) -> SchedulerEvent:
    return _decode(_scheduler_events, raw)


_task_messages: TypeAdapter[TaskMessage] = TypeAdapter(TaskMessage)


def decode_task_message(raw: bytes) -> TaskMessage:
    return _decode(_task_messages, raw)


_task_topic_messages: TypeAdapter[TaskMessage | TaskChunkMessage] = TypeAdapter(TaskTopicMessage)


def decode_task_topic_message(raw: bytes) -> TaskMessage | TaskChunkMessage:
    """A task topic's message: a single task or a chunk."""
    return _decode(_task_topic_messages, raw)


def encode_message(message: BaseModel) -> bytes:
    return message.model_dump_json().encode()
