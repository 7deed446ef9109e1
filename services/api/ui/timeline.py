"""What an invocation page draws from its status: each function's state, and a timeline of
its tasks with each attempt's anatomy. Pure functions of an :class:`InvocationInfo`.

**Function states** (the DAG's colours): a function is ``running`` if a task of it runs,
else ``failed`` if one failed, ``waiting`` if one waits for an executor nobody offers,
``queued`` if one is queued, ``succeeded`` if all succeeded, ``cancelled`` if all that ran
were cancelled, and ``idle`` when it has no task (not reached, or not chosen by a router).

**Attempt anatomy** (what executors record, :class:`indexify.engine.Attempt`): the
executor and the outcome; the **queue wait** from when the task's message was sent
(``queued_at``) until the executor began reading its inputs (it includes the hand-over to a
worker); the **input read** (inputs and, the first time, the graph's code); the
**execution** of the function in the worker (``started_at`` to ``finished_at``); the
**output write** (outputs and logs stored). Attempts recorded before executors kept
``queued_at`` fall back to what is known: a retry's wait since the previous attempt ended,
the start function's wait since the invocation was created. A task running now has only its
start time.

Timeline coordinates are in pixels of a track :data:`TRACK_PX` wide spanning the invocation
from its creation to its end (or ``now`` while it runs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from indexify.engine import ErrorInfo
from indexify.models import InvocationInfo, TaskInfo

__all__ = [
    "AttemptRow",
    "FunctionState",
    "TaskRow",
    "function_states",
    "task_rows",
]

TRACK_PX = 560.0
_MIN_BAR_PX = 2.0

StateName = Literal["running", "failed", "waiting", "queued", "succeeded", "cancelled", "idle"]
_PRECEDENCE: tuple[StateName, ...] = ("running", "failed", "waiting", "queued", "succeeded")


@dataclass(frozen=True)
class FunctionState:
    state: StateName
    counts: dict[str, int]  # task status -> how many

    @property
    def summary(self) -> str:
        return ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items()))


def _task_state(task: TaskInfo) -> str:
    return "waiting" if task.status == "queued" and task.waiting else task.status


def function_states(
    functions: Iterable[str], tasks: Sequence[TaskInfo]
) -> dict[str, FunctionState]:
    """Function -> its state and task counts (see the module docstring)."""
    counts: dict[str, dict[str, int]] = {name: {} for name in functions}
    for task in tasks:
        per = counts.setdefault(task.function, {})
        status = _task_state(task)
        per[status] = per.get(status, 0) + 1
    found: dict[str, FunctionState] = {}
    for name, per in counts.items():
        state: StateName = "idle"
        for candidate in _PRECEDENCE:
            if per.get(candidate):
                state = candidate
                break
        else:
            if per.get("cancelled"):
                state = "cancelled"
        found[name] = FunctionState(state=state, counts=per)
    return found


@dataclass(frozen=True)
class AttemptRow:
    attempt: int
    executor: str
    outcome: str  # success, failure, cancelled, running
    started_at: float
    finished_at: float | None  # None: still running
    execution_sec: float
    wait_sec: float | None  # before this attempt started, where known
    wait_from: str  # what the wait is measured from ("" when unknown)
    error: ErrorInfo | None
    input_read_sec: float | None
    output_write_sec: float | None
    # the bars, in pixels of the track
    wait_x: float
    wait_px: float
    read_x: float
    read_px: float
    run_x: float
    run_px: float
    write_x: float
    write_px: float


@dataclass(frozen=True)
class TaskRow:
    task: TaskInfo
    state: str
    attempts: tuple[AttemptRow, ...]

    @property
    def retries(self) -> int:
        return max(0, len([a for a in self.attempts if a.outcome != "running"]) - 1)


class _Track:
    """Times -> pixels on the invocation's span."""

    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.span = max(end - start, 1e-3)

    def x(self, at: float) -> float:
        return round(min(max((at - self.start) / self.span, 0.0), 1.0) * TRACK_PX, 1)

    def width(self, start: float, end: float) -> float:
        return max(self.x(end) - self.x(start), _MIN_BAR_PX)


def _end(info: InvocationInfo, now: float) -> float:
    latest = [info.finished_at or 0.0, info.started_at or info.created_at]
    for task in info.tasks:
        latest += [a.finished_at + (a.output_write_sec or 0.0) for a in task.attempts]
        if task.started_at:
            latest.append(now)
    if info.finished_at is None:
        latest.append(now)
    return max(latest)


class _Span(NamedTuple):
    attempt: int
    executor: str
    outcome: str
    started_at: float
    finished_at: float | None
    error: ErrorInfo | None = None
    queued_at: float = 0.0
    input_read_sec: float | None = None
    output_write_sec: float | None = None


def _spans(task: TaskInfo) -> list[_Span]:
    spans = [
        _Span(
            a.attempt,
            a.executor,
            a.outcome,
            a.started_at,
            a.finished_at,
            a.error,
            a.queued_at,
            a.input_read_sec,
            a.output_write_sec,
        )
        for a in sorted(task.attempts, key=lambda a: a.attempt)
    ]
    if task.status == "running" and task.started_at is not None:
        spans.append(_Span(task.attempt, task.executor or "", "running", task.started_at, None))
    return spans


def _attempts(
    task: TaskInfo, info: InvocationInfo, start_function: str, track: _Track, now: float
) -> tuple[AttemptRow, ...]:
    rows: list[AttemptRow] = []
    previous_end: float | None = None
    for span in _spans(task):
        started = span.started_at
        read = span.input_read_sec or 0.0
        reading = started - read
        if span.queued_at:
            wait_start = min(span.queued_at, reading)
            wait_from = "its message was sent"
        elif previous_end is not None:
            wait_start, wait_from = min(previous_end, reading), "the previous attempt's end"
        elif task.function == start_function and span.attempt == 1:
            start = info.started_at or info.created_at
            origin = "the replay's start" if info.generation else "the invocation's creation"
            wait_start, wait_from = min(start, reading), origin
        else:
            wait_start, wait_from = reading, ""
        end = span.finished_at if span.finished_at is not None else now
        written = end + (span.output_write_sec or 0.0)
        rows.append(
            AttemptRow(
                attempt=span.attempt,
                executor=span.executor,
                outcome=span.outcome,
                started_at=started,
                finished_at=span.finished_at,
                execution_sec=max(0.0, end - started),
                wait_sec=reading - wait_start if wait_from else None,
                wait_from=wait_from,
                error=span.error,
                input_read_sec=span.input_read_sec,
                output_write_sec=span.output_write_sec,
                wait_x=track.x(wait_start),
                wait_px=track.x(reading) - track.x(wait_start),
                read_x=track.x(reading),
                read_px=track.x(started) - track.x(reading),
                run_x=track.x(started),
                run_px=track.width(started, end),
                write_x=track.x(end),
                write_px=track.x(written) - track.x(end),
            )
        )
        previous_end = written
    return tuple(rows)


def task_rows(info: InvocationInfo, start_function: str, now: float) -> list[TaskRow]:
    """One row per listed task, in the order they started (tasks not started last), with
    their attempts placed on the invocation's track."""
    track = _Track(info.started_at or info.created_at, _end(info, now))

    def first_start(task: TaskInfo) -> tuple[float, str]:
        times = [a.started_at for a in task.attempts] + [task.started_at or float("inf")]
        return (min(times), task.id)

    return [
        TaskRow(
            task=task,
            state=_task_state(task),
            attempts=_attempts(task, info, start_function, track, now),
        )
        for task in sorted(info.tasks, key=first_start)
    ]
