"""Data the engine reads and writes: value references, tasks, invocation state, events, commands.

Everything here is plain data (pydantic, JSON-able) so the scheduler can keep it in Redis and
put it on Kafka. The engine never sees user values, only references to them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

INPUT_TASK_ID = "input"
"""The pseudo task whose single output is the invocation's keyword arguments."""

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
GENERATION_MARK = "~"
"""Task ids of a replay's generation ``g > 0`` end in ``~g``."""


def generation_of(task_id: str) -> int:
    """The generation a task id belongs to (0: the invocation's first computation)."""
    _, mark, generation = task_id.rpartition(GENERATION_MARK)
    return int(generation) if mark and generation.isdigit() else 0


def content_of(task_id: str) -> str:
    """A task id without its generation: tasks of different generations with the same
    content (function code, inputs) share it."""
    return task_id.rpartition(GENERATION_MARK)[0] if generation_of(task_id) else task_id


def in_generation(content: str, generation: int) -> str:
    """The task id of ``content`` in ``generation``."""
    return content if generation == 0 else f"{content}{GENERATION_MARK}{generation}"


REUSE_LOOKBACK = 8
"""How many earlier generations a replay looks in for a task's result to reuse."""


def earlier_tasks(task_id: str, generation: int) -> list[str]:
    """The ids ``task_id``'s content had in the generations before ``generation`` (up to
    :data:`REUSE_LOOKBACK` of them), newest first: where a replay looks for its result."""
    content = content_of(task_id)
    oldest = max(0, generation - REUSE_LOOKBACK)
    return [in_generation(content, g) for g in range(generation - 1, oldest - 1, -1)]


InvocationStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]
TaskStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
"""``running`` is never recorded by the engine: the server reports a queued task as running
while an executor holds it (its claim), see ``services.common.task_claims``."""
TaskKind = Literal["call", "route", "reduce"]
ErrorKind = Literal["user", "platform", "permanent"]
CANCELLED_ERROR_TYPE = "Cancelled"
"""``ErrorInfo.type`` of a cancelled invocation, and of the attempt a cancel stopped (its
worker process killed)."""


class ValueRange(BaseModel):
    """Outputs ``start`` to ``stop - 1`` of task ``task_id`` (run by function ``function``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str
    function: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def split(self, count: int) -> tuple[ValueRange, ValueRange | None]:
        """The first ``count`` values, and the rest (None when nothing is left)."""
        if count >= self.size:
            return self, None
        cut = self.start + count
        head = self.model_copy(update={"stop": cut})
        return head, self.model_copy(update={"start": cut})

    def single(self, index: int) -> ValueRange:
        return self.model_copy(update={"start": index, "stop": index + 1})


class ErrorInfo(BaseModel):
    """Why a task failed. ``kind`` decides whether and how it is retried."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ErrorKind = "user"
    message: str
    type: str = ""
    traceback: str = ""


class Task(BaseModel):
    """One unit of work: call a function on one value, route one value, or reduce a batch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    invocation_id: str
    function: str
    kind: TaskKind
    inputs: tuple[ValueRange, ...]
    accumulator: ValueRange | None = None
    attempt: int = 1

    @property
    def input_count(self) -> int:
        return sum(r.size for r in self.inputs)


class Attempt(BaseModel):
    """One execution of a task, as reported by the executor that ran it."""

    model_config = ConfigDict(extra="forbid")

    attempt: int
    executor: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    outcome: Literal["success", "failure", "cancelled"]
    error: ErrorInfo | None = None
    queued_at: float = 0.0
    """When the task's message was sent to the executors (0: not recorded)."""
    input_read_sec: float | None = None
    """How long the executor took to read the inputs (and code) before the worker ran it."""
    output_write_sec: float | None = None
    """How long the executor took to store the outputs and logs after the worker ran it."""


class TaskRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Task
    status: TaskStatus = "queued"
    reused_from: str | None = None
    """Set when a replay reused a previous computation's result instead of running the task:
    the id of the task whose outputs these are (same function code, same inputs)."""
    user_failures: int = 0
    platform_failures: int = 0
    output_count: int = 0
    route: tuple[str, ...] | None = None
    error: ErrorInfo | None = None
    attempts: list[Attempt] = Field(default_factory=list)


class ReducerState(BaseModel):
    """Progress of one reducer: values waiting, the step in flight, the accumulator so far.

    ``queue`` holds the waiting values the engine can see; ``backlog`` counts waiting entries
    kept elsewhere (the scheduler stores the queue as a Redis list and loads only a window of
    it, large enough for the steps one batch can start). In-process it is always 0."""

    model_config = ConfigDict(extra="forbid")

    queue: list[ValueRange] = Field(default_factory=list)
    backlog: int = 0
    step: int = 0
    running: str | None = None
    accumulator: ValueRange | None = None
    received: int = 0
    reduced: int = 0
    finalized: bool = False


class PendingDelivery(BaseModel):
    """Elements of a fan-out not turned into tasks yet: the next slices of ``values`` go to
    ``target`` (see ``Engine(max_fanout_slice=...)``)."""

    model_config = ConfigDict(extra="forbid")

    target: str
    origin_key: str
    values: list[ValueRange]

    @property
    def size(self) -> int:
        return sum(v.size for v in self.values)


class Computation(BaseModel):
    """One computation of an invocation that a replay replaced: on which graph version it
    ran, when, and how it ended (``superseded``: replayed before it finished). Its outputs
    stay readable under its ``generation``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    generation: int
    graph_version: str
    started_at: float = 0.0
    finished_at: float | None = None
    status: Literal["pending", "running", "succeeded", "failed", "cancelled", "superseded"]
    from_function: str | None = None
    outputs: dict[str, int] = Field(default_factory=dict)
    """Values per function (what its output index lists for this generation)."""
    error: ErrorInfo | None = None


class InvocationState(BaseModel):
    """Everything the engine knows about one invocation.

    In-process it is all in memory. The scheduler keeps it in pieces that an event touches
    individually: a small summary (everything but ``tasks``, ``outputs`` and the reducers'
    queues), one record per task, and per-function output indexes. It hands the engine a
    *view*: the summary, the records of the tasks the events name, and nothing in
    ``outputs``; what the engine adds to ``tasks`` and ``outputs`` is then what to write.
    The engine therefore only reads ``tasks`` by the id of an event's task, only appends to
    ``outputs``, and keeps the counters here (``outstanding``, ``task_counts``,
    ``output_counts``) instead of counting records.
    """

    model_config = ConfigDict(extra="forbid")

    invocation_id: str
    namespace: str = "default"
    graph: str
    graph_version: str
    status: InvocationStatus = "pending"
    tasks: dict[str, TaskRecord] = Field(default_factory=dict)
    outstanding: dict[str, int] = Field(default_factory=dict)
    outputs: dict[str, list[ValueRange]] = Field(default_factory=dict)
    reducers: dict[str, ReducerState] = Field(default_factory=dict)
    pending: list[PendingDelivery] = Field(default_factory=list)
    continue_seq: int = 0
    failed_functions: list[str] = Field(default_factory=list)
    function_errors: dict[str, ErrorInfo] = Field(default_factory=dict)
    task_counts: dict[str, int] = Field(default_factory=dict)
    output_counts: dict[str, int] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    error_function: str | None = None
    created_at: float = 0.0
    finished_at: float | None = None
    generation: int = 0
    """Which computation of the invocation this is: 0 the first, one more per replay (task
    ids of generation ``g > 0`` end in ``~g``, see :func:`generation_of`)."""
    started_at: float = 0.0
    """When this generation started (0: at ``created_at``)."""
    from_function: str | None = None
    """The replay of this generation recomputes this function and its descendants even where
    nothing changed (None: only what changed)."""
    forced: list[str] = Field(default_factory=list)
    """``from_function`` and its descendants: their tasks are never reused."""
    reused: int = 0
    """Tasks of this generation that reused an earlier generation's result."""
    history: list[Computation] = Field(default_factory=list)
    """The computations replays replaced, oldest first."""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def output_count(self, function: str) -> int:
        return self.output_counts.get(function, 0)

    def count_task(self, old: str | None, new: str, count: int = 1) -> None:
        """Move ``count`` tasks from status ``old`` (None: new tasks) to ``new``."""
        if old is not None:
            self.task_counts[old] = self.task_counts.get(old, 0) - count
        self.task_counts[new] = self.task_counts.get(new, 0) + count


# -- events: what happened ------------------------------------------------------------------


class InvocationCreated(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["invocation_created"] = "invocation_created"
    at: float = 0.0


class TaskFinished(BaseModel):
    """An executor finished one attempt of a task (successfully or not)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["task_finished"] = "task_finished"
    task_id: str
    attempt: int = 1
    outcome: Literal["success", "failure"]
    output_count: int = 0
    route: tuple[str, ...] | None = None
    error: ErrorInfo | None = None
    executor: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    queued_at: float = 0.0
    input_read_sec: float | None = None
    output_write_sec: float | None = None


class InvocationCancelled(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["invocation_cancelled"] = "invocation_cancelled"
    reason: str = "cancelled by request"
    at: float = 0.0


class InvocationReplayed(BaseModel):
    """Compute the invocation again, as generation ``generation`` on the engine's graph
    version: an earlier or equal generation is a duplicate. ``from_function`` (and its
    descendants) runs again even where nothing changed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["invocation_replayed"] = "invocation_replayed"
    generation: int
    from_function: str | None = None
    at: float = 0.0


class TaskReused(BaseModel):
    """A queued task of a replay has the same function code and inputs as task ``source``
    of the generation it replaces, which succeeded: take its outputs instead of running it
    (the caller copied the stored values to ``task_id``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["task_reused"] = "task_reused"
    task_id: str
    source: str
    output_count: int = 0
    route: tuple[str, ...] | None = None


class DeliveryContinued(BaseModel):
    """Go on with the pending deliveries (the answer to a :class:`ContinueDelivery`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["delivery_continued"] = "delivery_continued"
    seq: int


EngineEvent = Annotated[
    InvocationCreated
    | TaskFinished
    | InvocationCancelled
    | DeliveryContinued
    | InvocationReplayed
    | TaskReused,
    Field(discriminator="type"),
]


# -- commands: what to do -------------------------------------------------------------------


class RunTask(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["run_task"] = "run_task"
    task: Task
    delay_sec: float = 0.0


class FinishInvocation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["finish_invocation"] = "finish_invocation"
    status: InvocationStatus
    error: ErrorInfo | None = None
    error_function: str | None = None


class ContinueDelivery(BaseModel):
    """Send :class:`DeliveryContinued` with ``seq`` back after the other work that is
    waiting (a big fan-out is created slice by slice, behind other invocations' events)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["continue_delivery"] = "continue_delivery"
    seq: int


Command = Annotated[RunTask | FinishInvocation | ContinueDelivery, Field(discriminator="type")]
