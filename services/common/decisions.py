"""What one invocation's events decide, as pure functions: the engine's verdict on them.

No Kafka, Redis or MinIO here. :func:`apply_events` runs one invocation's events through the
engine, changing its state in place, and collects everything that must be made durable
(:class:`Decision`): new tasks, outputs, finished tasks, progress, the invocation's end.

The scheduler applies every batch of events this way (:mod:`services.scheduler.handler`),
and so does an executor that finished a chain's last step itself and may save the end of the
invocation without a trip through the scheduler (:mod:`services.executor.finisher`):
both decide with the same code, and their saves are compare-and-sets on the same revision.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    TaskFinished,
    TaskRecord,
    TaskReused,
    earlier_tasks,
    generation_of,
    stopped_by_cancel,
)

from .events import (
    InvocationCancelEvent,
    InvocationContinueEvent,
    InvocationCreatedEvent,
    InvocationReplayEvent,
    ProgressEvent,
    SchedulerEvent,
    StoredValues,
    TaskFinishedEvent,
    TasksFinishedEvent,
)

__all__ = [
    "Decision",
    "accepts",
    "apply_events",
    "apply_reused",
    "expand",
    "fail_permanently",
    "reuse_sources",
    "to_engine_event",
]


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
