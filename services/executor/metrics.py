"""What an executor reports to Prometheus (the definitions: :mod:`services.common.metrics`).

* every task run's outcome and duration, counted where the run ends
  (:meth:`.worker_pool.WorkerPool.run` and each result of a chunk): :func:`observe_task`;
* its worker slots, busy ones read at scrape time: :func:`watch_slots`;
* its local queue per function (fetched task messages waiting for a worker), sampled from the
  intake's backlog every ``interval_sec`` by :func:`queue_depth_loop`: a few dictionary reads,
  no I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from indexify.engine import CANCELLED_ERROR_TYPE
from services.common import metrics
from services.common.events import TaskFinishedEvent, TaskMessage
from services.common.executor_registry import QueuedTasks

__all__ = [
    "observe_task",
    "queue_depth_loop",
    "queued_tasks",
    "update_queue_depth",
    "watch_slots",
]


def observe_task(message: TaskMessage, event: TaskFinishedEvent) -> None:
    """Count one finished run of ``message``'s task (its outcome and duration)."""
    finished = event.finished
    error = finished.error
    if finished.outcome == "success":
        outcome = "success"
    elif error is not None and error.type == CANCELLED_ERROR_TYPE:
        outcome = "cancelled"  # its invocation was cancelled and its worker stopped
    else:
        outcome = error.kind if error is not None else "failure"
    labels = (message.namespace, message.graph, message.task.function, outcome)
    metrics.TASKS.labels(*labels).inc()
    duration = max(0.0, finished.finished_at - finished.started_at)
    metrics.TASK_DURATION.labels(*labels).observe(duration)


def watch_slots(size: int, busy: Callable[[], int]) -> None:
    """Report ``size`` worker slots, and ``busy()`` of them busy whenever scraped."""
    metrics.EXECUTOR_SLOTS.set(size)
    metrics.EXECUTOR_SLOTS_BUSY.set_function(lambda: float(busy()))


def update_queue_depth(prefix: str, waiting: Mapping[str, int], shown: set[str]) -> set[str]:
    """Set the queue depth of the functions of the topics in ``waiting`` (topic -> messages)
    and of those ``shown`` before (0 when no longer in ``waiting``); returns every topic shown,
    so a function's gauge stays (at 0) once it appeared."""
    topics = shown | set(waiting)
    depth: dict[metrics.FunctionKey, int] = {}
    for topic in topics:
        key = metrics.function_of_topic(topic, prefix)
        if key is not None:
            depth[key] = depth.get(key, 0) + waiting.get(topic, 0)
    for key, count in depth.items():
        metrics.TASK_QUEUE_DEPTH.labels(key.namespace, key.graph, key.function).set(count)
    return topics


def queued_tasks(prefix: str, waiting: Mapping[str, int]) -> list[QueuedTasks]:
    """The functions of the task topics in ``waiting`` (topic -> tasks) with tasks waiting,
    summed per function (a function's versions may place it on several topics)."""
    depth: dict[metrics.FunctionKey, int] = {}
    for topic, count in waiting.items():
        key = metrics.function_of_topic(topic, prefix)
        if key is not None and count > 0:
            depth[key] = depth.get(key, 0) + count
    return [
        QueuedTasks(namespace=k.namespace, graph=k.graph, function=k.function, depth=n)
        for k, n in sorted(
            depth.items(), key=lambda item: (item[0].namespace, item[0].graph, item[0].function)
        )
    ]


async def queue_depth_loop(
    prefix: str, waiting: Callable[[], Mapping[str, int]], interval_sec: float = 1.0
) -> None:
    """Sample the local queue (``waiting()``: messages per topic) until cancelled; the
    gauges are set only when it changed (one per task topic: hundreds, mostly at 0)."""
    shown: set[str] = set()
    last: dict[str, int] | None = None
    while True:
        now = dict(waiting())
        if now != last:
            shown = update_queue_depth(prefix, now, shown)
            last = now
        await asyncio.sleep(interval_sec)
