"""What the executor logs about one task message: the bound logger and the finished line.

Every line about a task carries its topic, partition, offset, invocation, task, function and
attempt (:func:`task_log`), so a task's story can be followed across its claim, its run, the
chain continued after it and its report; :func:`log_finished` is the one line per run.
"""

from __future__ import annotations

from typing import Any

from services.common.events import TaskFinishedEvent, TaskMessage
from services.common.kafka_consumer import Record
from services.common.logging import get_logger

__all__ = ["log_finished", "task_log"]

_log = get_logger("services.executor")


def task_log(record: Record, message: TaskMessage) -> Any:
    """The logger bound to one task message."""
    task = message.task
    return _log.bind(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        invocation=message.invocation_id,
        task=task.id,
        function=task.function,
        attempt=task.attempt,
    )


def log_finished(log: Any, message: TaskMessage, event: TaskFinishedEvent) -> None:
    """One line per finished run: debug for a success, a warning with the error otherwise."""
    finished = event.finished
    duration = round(max(0.0, finished.finished_at - finished.started_at), 4)
    if finished.outcome == "success":
        log.debug("task finished", outcome="success", duration_sec=duration)
        return
    error = finished.error
    log.warning(
        "task failed",
        kind=error.kind if error else None,
        error_type=error.type if error else None,
        error=error.message if error else None,
        timeout_sec=message.timeout_sec,
        duration_sec=duration,
    )
