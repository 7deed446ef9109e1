"""Queue depths per function: what an executor's heartbeat reports (``queued_tasks``) and what
the API sums over the live executors (``queued_by_function``), without servers."""

from __future__ import annotations

from services.common.executor_registry import ExecutorInfo, QueuedTasks, queued_by_function
from services.executor.metrics import queued_tasks


def test_an_executor_reports_the_functions_with_tasks_waiting_summed_over_placements() -> None:
    waiting = {
        "p.tasks.image=default.ns.g.embed": 3,
        "p.tasks.gpu=a100.image=default.ns.g.embed": 2,  # another version placed it elsewhere
        "p.tasks.image=default.ns.g.split": 0,  # subscribed, nothing waits: not reported
        "p.tasks.image=default.other.h.f": 1,
        "p.events": 7,  # not a task topic
        "q.tasks.image=default.ns.g.embed": 9,  # another stack's prefix
    }
    assert queued_tasks("p", waiting) == [
        QueuedTasks(namespace="ns", graph="g", function="embed", depth=5),
        QueuedTasks(namespace="other", graph="h", function="f", depth=1),
    ]
    assert queued_tasks("p", {}) == []


def test_the_api_sums_a_graphs_functions_over_the_live_executors() -> None:
    def executor(name: str, *q: tuple[str, str, str, int]) -> ExecutorInfo:
        return ExecutorInfo(
            id=name,
            labels={},
            concurrency=2,
            heartbeat_at=0.0,
            queues=[QueuedTasks(namespace=n, graph=g, function=f, depth=d) for n, g, f, d in q],
        )

    executors = [
        executor("a", ("ns", "g", "embed", 3), ("ns", "g", "split", 1)),
        executor("b", ("ns", "g", "embed", 4), ("ns", "other", "embed", 8)),
        executor("c"),  # an entry written before queues were reported reads as none
    ]
    assert queued_by_function(executors, "ns", "g") == {"embed": 7, "split": 1}
    assert queued_by_function(executors, "elsewhere", "g") == {}
    old = ExecutorInfo.model_validate_json(
        '{"id": "old", "labels": {}, "concurrency": 1, "running": 0, "heartbeat_at": 1.0}'
    )
    assert old.queues == []
