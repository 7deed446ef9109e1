"""What clients get back: graph, invocation and task summaries (also the REST API's bodies)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .definition import GraphDefinition
from .engine.model import (
    Attempt,
    Computation,
    ErrorInfo,
    InvocationState,
    InvocationStatus,
    TaskRecord,
    TaskStatus,
)


class GraphInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    namespace: str
    name: str
    version: str
    description: str = ""
    created_at: float = 0.0
    definition: GraphDefinition

    @classmethod
    def of(cls, namespace: str, definition: GraphDefinition, created_at: float) -> GraphInfo:
        return cls(
            namespace=namespace,
            name=definition.name,
            version=definition.version,
            description=definition.description,
            created_at=created_at,
            definition=definition,
        )


class TaskInfo(BaseModel):
    """One task. On the server, a task an executor runs now is ``running`` (``executor``,
    ``started_at`` and ``attempt`` say where, since when, which attempt); a queued task that
    no live executor can take says why in ``waiting``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    function: str
    kind: str
    status: TaskStatus
    attempt: int
    output_count: int = 0
    route: tuple[str, ...] | None = None
    error: ErrorInfo | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    executor: str | None = None
    started_at: float | None = None
    waiting: str | None = None
    reused_from: str | None = None
    """Set when a replay reused the result of this earlier task instead of running it."""

    @classmethod
    def of(cls, record: TaskRecord, *, terminal: bool = False) -> TaskInfo:
        """The task of ``record``; in a ``terminal`` invocation a task still queued will
        never run, so it is reported ``cancelled``."""
        status: TaskStatus = (
            "cancelled" if terminal and record.status == "queued" else record.status
        )
        return cls(
            id=record.task.id,
            function=record.task.function,
            kind=record.task.kind,
            status=status,
            attempt=record.task.attempt,
            output_count=record.output_count,
            route=record.route,
            error=record.error,
            attempts=record.attempts,
            reused_from=record.reused_from,
        )


def _task_counts(state: InvocationState) -> dict[str, int]:
    """Tasks per status (the counters, not the records); queued tasks of a terminal
    invocation count as cancelled, as :meth:`TaskInfo.of` reports them."""
    counts = {status: n for status, n in state.task_counts.items() if n > 0}
    if state.terminal and "queued" in counts:
        counts["cancelled"] = counts.get("cancelled", 0) + counts.pop("queued")
    return counts


class InvocationInfo(BaseModel):
    """The status of one invocation: pending, running, succeeded, failed or cancelled.

    ``task_counts`` counts its tasks by status (all of them); ``tasks`` lists them, or one
    page of them from the server: ``next_tasks_cursor`` is then where the next page starts
    (None: no more; ``RemoteClient.invocation_tasks`` follows the pages). ``waiting`` says
    why a live invocation cannot go on, e.g. ``no live executor offers gpu=h100``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    namespace: str
    graph: str
    graph_version: str
    status: InvocationStatus
    error: ErrorInfo | None = None
    error_function: str | None = None
    created_at: float = 0.0
    finished_at: float | None = None
    outputs: dict[str, int] = Field(default_factory=dict)
    task_counts: dict[str, int] = Field(default_factory=dict)
    tasks: list[TaskInfo] = Field(default_factory=list)
    next_tasks_cursor: str | None = None
    waiting: str | None = None
    generation: int = 0
    """Which computation this is: 0 the first, one more per replay (``history`` holds the
    ones replays replaced; their outputs stay readable with ``generation=``)."""
    started_at: float = 0.0
    from_function: str | None = None
    reused: int = 0
    """Tasks of this generation that reused an earlier generation's result."""
    history: list[Computation] = Field(default_factory=list)

    @classmethod
    def from_state(cls, state: InvocationState, *, with_tasks: bool = True) -> InvocationInfo:
        """From a complete state (in-process: every task record in ``state.tasks``); a
        summary (``with_tasks=False``) leaves ``tasks`` empty."""
        records = state.tasks.values() if with_tasks else ()
        return cls.from_summary(state, records)

    @classmethod
    def from_summary(
        cls,
        state: InvocationState,
        records: Iterable[TaskRecord],
        next_tasks_cursor: str | None = None,
    ) -> InvocationInfo:
        """From a summary (its counters; ``state.tasks`` is not read) and one page of its
        task records, with the cursor of the next page (None: this was the last)."""
        return cls(
            id=state.invocation_id,
            namespace=state.namespace,
            graph=state.graph,
            graph_version=state.graph_version,
            status=state.status,
            error=state.error,
            error_function=state.error_function,
            created_at=state.created_at,
            finished_at=state.finished_at,
            outputs={fn: n for fn, n in state.output_counts.items() if n > 0},
            task_counts=_task_counts(state),
            tasks=[TaskInfo.of(r, terminal=state.terminal) for r in records],
            next_tasks_cursor=next_tasks_cursor,
            generation=state.generation,
            started_at=state.started_at or state.created_at,
            from_function=state.from_function,
            reused=state.reused,
            history=state.history,
        )


class TaskLogs(BaseModel):
    """What one task printed, and its traceback when it failed."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    function: str
    stdout: str = ""
    stderr: str = ""
    traceback: str = ""


ReplayStatus = Literal["running", "succeeded", "failed", "cancelled"]


class Replay(BaseModel):
    """A backfill: the invocations of a graph (those that existed when it was asked for)
    computed again, in place, on the graph's current version.

    ``done`` counts the invocations whose replay ended (``failed`` of them failed), out of
    ``total``; ``status`` is ``running`` until every one ended (then ``succeeded``, or
    ``failed`` if any failed) or the replay was ``cancelled`` (the invocations not started
    by then keep their previous computation)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    namespace: str
    graph: str
    graph_version: str
    from_function: str | None = None
    status: ReplayStatus = "running"
    total: int = 0
    done: int = 0
    failed: int = 0
    created_at: float = Field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.status != "running"
