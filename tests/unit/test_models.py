"""``InvocationInfo``: from a complete in-process state, or from a summary and a page of
task records (what the API answers)."""

from __future__ import annotations

from indexify.engine import InvocationState, Task, TaskRecord
from indexify.engine.model import TaskStatus
from indexify.models import InvocationInfo


def record(task_id: str, status: TaskStatus) -> TaskRecord:
    task = Task(id=task_id, invocation_id="inv", function="f", kind="call", inputs=())
    return TaskRecord(task=task, status=status, output_count=1 if status == "succeeded" else 0)


def state(status: str, counts: dict[str, int], *records: TaskRecord) -> InvocationState:
    return InvocationState.model_validate(
        {
            "invocation_id": "inv",
            "graph": "g",
            "graph_version": "v1",
            "status": status,
            "tasks": {r.task.id: r for r in records},
            "task_counts": counts,
            "output_counts": {"f": 1, "unused": 0},
        }
    )


def test_a_complete_state_and_its_summary_with_every_record_give_the_same_info() -> None:
    records = [record("a", "succeeded"), record("b", "queued")]
    full = state("running", {"succeeded": 1, "queued": 1}, *records)
    info = InvocationInfo.from_state(full)
    summary = full.model_copy(update={"tasks": {}})
    assert InvocationInfo.from_summary(summary, records) == info
    assert [(t.id, t.status) for t in info.tasks] == [("a", "succeeded"), ("b", "queued")]
    assert info.task_counts == {"succeeded": 1, "queued": 1}
    assert info.outputs == {"f": 1}
    assert info.next_tasks_cursor is None
    assert InvocationInfo.from_state(full, with_tasks=False).tasks == []


def test_queued_leftovers_of_a_terminal_invocation_are_cancelled() -> None:
    cancelled = state("cancelled", {"succeeded": 1, "queued": 2, "failed": 0})
    info = InvocationInfo.from_summary(
        cancelled, [record("a", "succeeded"), record("b", "queued")], "42"
    )
    assert [(t.id, t.status) for t in info.tasks] == [("a", "succeeded"), ("b", "cancelled")]
    assert info.task_counts == {"succeeded": 1, "cancelled": 2}
    assert info.next_tasks_cursor == "42"


def test_an_older_payload_without_the_new_fields_parses() -> None:
    info = InvocationInfo.model_validate(
        {"id": "i", "namespace": "n", "graph": "g", "graph_version": "v", "status": "running"}
    )
    assert info.task_counts == {} and info.next_tasks_cursor is None
