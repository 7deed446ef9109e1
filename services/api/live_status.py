"""An invocation's status as it is now: its recorded tasks, with what executors do with them.

The invocation's record (saved by the scheduler, or by the API or an executor with the same
compare-and-set) holds a task ``queued`` until its result is applied. What happens in
between is kept by the executors with their claims
(:class:`~services.common.task_claims.TaskActivity`, read in one call), and by the registry of
live executors (:mod:`.waiting`). :func:`live_info` overlays both on a live invocation's
status, a pure function of what was read:

* a queued task an executor started is ``running``, with its ``executor``, ``attempt`` and
  ``started_at`` (the step a chain continues on its executor, not recorded by the scheduler
  yet, is listed on the first page as well);
* a queued task whose success an executor recorded (the steps before the one a chain runs
  now) is ``succeeded``;
* a queued task of a function no live executor may run says why in ``waiting``, and so does
  the invocation.

``task_counts`` move the same tasks from ``queued``. A terminal invocation is left as it is.
"""

from __future__ import annotations

from collections.abc import Mapping

from indexify.definition import GraphDefinition
from indexify.engine import TERMINAL_STATUSES
from indexify.models import InvocationInfo, TaskInfo
from services.common.task_claims import TaskActivity

__all__ = ["live_info"]


def _live_task(task: TaskInfo, activity: TaskActivity, waiting: Mapping[str, str]) -> TaskInfo:
    if task.status != "queued":
        return task
    started = activity.running.get(task.id)
    if started is not None and (started.attempt or task.attempt) >= task.attempt:
        return task.model_copy(
            update={
                "status": "running",
                "attempt": started.attempt or task.attempt,
                "executor": started.executor,
                "started_at": started.at,
            }
        )
    if task.id in activity.recorded:
        return task.model_copy(update={"status": "succeeded"})
    reason = waiting.get(task.function)
    if reason is not None:
        return task.model_copy(update={"waiting": reason})
    return task


def _unrecorded(activity: TaskActivity, definition: GraphDefinition) -> list[TaskInfo]:
    """The running tasks the scheduler has no record of yet (a chain's next steps)."""
    found = []
    for task_id in sorted(activity.unrecorded):
        started = activity.running[task_id]
        node = definition.nodes.get(started.function or "")
        if node is None:
            continue
        found.append(
            TaskInfo(
                id=task_id,
                function=started.function or "",
                kind="route" if node.kind == "router" else "call",  # chains never reduce
                status="running",
                attempt=started.attempt or 1,
                executor=started.executor,
                started_at=started.at,
            )
        )
    return found


def _counts(counts: Mapping[str, int], activity: TaskActivity) -> dict[str, int]:
    moved = dict(counts)
    queued = moved.get("queued", 0)
    running = min(queued, len(activity.running) - len(activity.unrecorded))
    queued -= running
    succeeded = min(queued, len(activity.recorded))
    queued -= succeeded
    moved["queued"] = queued
    moved["running"] = moved.get("running", 0) + running + len(activity.unrecorded)
    moved["succeeded"] = moved.get("succeeded", 0) + succeeded
    return {status: n for status, n in moved.items() if n > 0}


def live_info(
    info: InvocationInfo,
    activity: TaskActivity,
    *,
    waiting: Mapping[str, str],
    note: str | None,
    definition: GraphDefinition | None,
    first_page: bool,
) -> InvocationInfo:
    """``info`` (one page of a live invocation's status) as it is now: see the module
    docstring. ``waiting``: function -> why its queued tasks wait; ``note``: the same for the
    invocation, in one line; ``definition``: of its graph version (None: unknown);
    ``first_page``: the page is the first (it lists the chain steps not recorded yet)."""
    if info.status in TERMINAL_STATUSES:
        return info
    tasks = [_live_task(task, activity, waiting) for task in info.tasks]
    if first_page and definition is not None:
        tasks += _unrecorded(activity, definition)
    return info.model_copy(
        update={
            "tasks": tasks,
            "task_counts": _counts(info.task_counts, activity),
            "waiting": note,
        }
    )
