"""OffsetTracker: how far a partition may be committed when its messages finish out of order."""

from __future__ import annotations

import pytest

from services.common.kafka_bus import OffsetTracker, TopicPartition

P0 = TopicPartition("t", 0)
P1 = TopicPartition("t", 1)


@pytest.mark.parametrize(
    ("started", "completed", "expected"),
    [
        ([], [], {}),
        ([5], [], {P0: 5}),
        ([5], [5], {P0: 6}),
        ([5, 6, 7], [7], {P0: 5}),
        ([5, 6, 7], [5, 7], {P0: 6}),
        ([5, 6, 7], [7, 6, 5], {P0: 8}),
        ([5, 9, 12], [5, 12], {P0: 9}),  # gaps (compaction, transaction markers) are fine
        ([5, 9, 12], [12, 9, 5], {P0: 13}),
    ],
)
def test_commit_position_is_lowest_unfinished_or_after_highest_done(
    started: list[int], completed: list[int], expected: dict[TopicPartition, int]
) -> None:
    tracker = OffsetTracker()
    for offset in started:
        tracker.start(P0, offset)
    for offset in completed:
        assert tracker.complete(P0, offset)
    assert tracker.committable() == expected
    assert tracker.unfinished(P0) == len(started) - len(completed)


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    tracker.start(P0, 0)
    tracker.start(P1, 10)
    tracker.start(P1, 11)
    tracker.complete(P1, 11)
    assert tracker.committable() == {P0: 0, P1: 10}
    tracker.complete(P1, 10)
    assert tracker.committable() == {P0: 0, P1: 12}
    assert tracker.unfinished() == 1
    assert tracker.partitions == {P0, P1}


def test_mark_committed_reports_only_new_progress() -> None:
    tracker = OffsetTracker()
    for offset in (0, 1, 2):
        tracker.start(P0, offset)
    tracker.complete(P0, 0)
    assert tracker.committable() == {P0: 1}
    tracker.mark_committed({P0: 1})
    assert tracker.committable() == {}
    tracker.complete(P0, 2)
    assert tracker.committable() == {}, "offset 1 still unfinished: no progress"
    tracker.complete(P0, 1)
    assert tracker.committable() == {P0: 3}


def test_forget_drops_revoked_partitions_and_ignores_late_completions() -> None:
    tracker = OffsetTracker()
    tracker.start(P0, 3)
    tracker.start(P1, 7)
    tracker.forget([P0])
    assert not tracker.complete(P0, 3), "a task finishing after revocation moves nothing"
    assert tracker.committable() == {P1: 7}
    assert tracker.partitions == {P1}


def test_completing_unknown_or_twice_is_ignored() -> None:
    tracker = OffsetTracker()
    tracker.start(P0, 1)
    assert not tracker.complete(P0, 2)
    assert tracker.complete(P0, 1)
    assert not tracker.complete(P0, 1)
    assert tracker.committable() == {P0: 2}


def test_duplicate_start_is_counted_once() -> None:
    tracker = OffsetTracker()
    tracker.start(P0, 4)
    tracker.start(P0, 4)
    tracker.complete(P0, 4)
    assert tracker.unfinished() == 0
    assert tracker.committable() == {P0: 5}
