"""How the executor packs a batch of task results into events-topic messages (pure)."""

from indexify.engine import TaskFinished
from services.common.events import (
    StoredValues,
    TaskFinishedEvent,
    TasksFinishedEvent,
    decode_scheduler_event,
    encode_message,
)
from services.executor.results import MESSAGE_LIMIT, fit_result, pack_results


def _event(invocation_id: str, n: int, size: int = 100) -> tuple[TaskFinishedEvent, bytes]:
    task_id = f"double-{n:04d}"
    event = TaskFinishedEvent(
        namespace="default",
        graph="g",
        invocation_id=invocation_id,
        task_id=task_id,
        finished=TaskFinished(task_id=task_id, outcome="success", output_count=1),
        outputs=StoredValues(content_types=("application/json",), inline=(b"x" * size,)),
    )
    return event, encode_message(event)


def _unpacked(messages: list[tuple[str, bytes]]) -> list[tuple[str, str, str]]:
    """(key, invocation id, task id) of every result, in the order sent."""
    found = []
    for key, value in messages:
        event = decode_scheduler_event(value)
        results = event.results if isinstance(event, TasksFinishedEvent) else (event,)
        for result in results:
            assert isinstance(result, TaskFinishedEvent)
            found.append((key, result.invocation_id, result.task_id or ""))
    return found


def test_one_message_per_invocation_and_a_single_result_stays_plain() -> None:
    batch = [_event("inv-a", 0), _event("inv-b", 1), _event("inv-a", 2), _event("inv-a", 3)]
    messages = pack_results(batch)
    assert [key for key, _ in messages] == ["inv-a", "inv-b"]
    first = decode_scheduler_event(messages[0][1])
    assert isinstance(first, TasksFinishedEvent) and first.invocation_id == "inv-a"
    assert first.results == (batch[0][0], batch[2][0], batch[3][0])  # each result unchanged
    assert messages[1][1] == batch[1][1]  # alone: its own event, byte for byte
    assert pack_results([]) == []


def test_a_batch_over_the_limit_is_split_in_order() -> None:
    batch = [_event("inv", n, size=1000) for n in range(50)]
    one = len(batch[0][1])
    limit = 10 * one  # room for about nine results per message
    messages = pack_results(batch, limit)
    assert len(messages) > 1
    assert all(len(value) <= limit for _, value in messages)
    assert _unpacked(messages) == [("inv", "inv", e.task_id or "") for e, _ in batch]
    # greedy: every message but the last is (nearly) full
    sizes = []
    for _, value in messages:
        event = decode_scheduler_event(value)
        sizes.append(len(event.results) if isinstance(event, TasksFinishedEvent) else 1)
    assert all(size >= 8 for size in sizes[:-1])
    assert sum(sizes) == 50


def test_a_result_as_large_as_the_limit_travels_alone() -> None:
    small, big, small2 = _event("inv", 0), _event("inv", 1, size=5000), _event("inv", 2)
    limit = len(big[1]) + 10
    messages = pack_results([small, big, small2], limit)
    assert [value for _, value in messages][1] == big[1]
    assert all(len(value) <= limit for _, value in messages)
    assert [t for _, _, t in _unpacked(messages)] == ["double-0000", "double-0001", "double-0002"]


def test_fit_result_turns_an_oversized_result_into_a_permanent_failure() -> None:
    event, raw = _event("inv", 0, size=5000)
    assert fit_result(event, raw) == (event, raw)
    failed, failed_raw = fit_result(event, raw, limit=1000)
    assert failed.outputs is None and failed.finished.outcome == "failure"
    assert failed.finished.error is not None
    assert (failed.finished.error.kind, failed.finished.error.type) == (
        "permanent",
        "ResultTooLarge",
    )
    assert len(failed_raw) < 1000 and failed_raw == encode_message(failed)
    assert MESSAGE_LIMIT < 10 * 1024 * 1024
