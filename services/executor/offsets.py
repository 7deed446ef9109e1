"""How far the executor may commit, across tasks finishing out of order and rebalances.

:class:`OffsetKeeper` wraps the shared :class:`OffsetTracker` with what the consumer needs:

* ``taken(record)`` when a message is fetched, ``done(tp, offset)`` when its completion event
  is acknowledged; a background :meth:`OffsetKeeper.commit_loop` commits up to the lowest
  unfinished offset of each partition whenever something completed.
* It is the consumer's rebalance listener. On revocation it commits what it can and keeps
  tracking; on assignment it forgets the partitions that went elsewhere (their unfinished
  messages belong to the next owner) and, for partitions handed back to us, seeks past what
  was already fetched, so tasks still running are not fetched and run a second time; the
  executor is told (``on_lost``) which partitions went elsewhere, to drop what it fetched
  from them and has not started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from services.common.errors import ServiceError
from services.common.kafka_bus import OffsetTracker
from services.common.kafka_consumer import Consumer, TopicPartition
from services.common.logging import get_logger

__all__ = ["OffsetKeeper"]

_log = get_logger(__name__)


class OffsetKeeper:
    """Tracks taken/done offsets of one consumer and commits them; its rebalance listener
    (a :class:`~services.common.kafka_consumer.RebalanceListener`)."""

    def __init__(
        self,
        consumer: Consumer,
        *,
        on_lost: Callable[[set[TopicPartition]], None] = lambda lost: None,
    ):
        self._consumer = consumer
        self._on_lost = on_lost
        self._tracker = OffsetTracker()
        self._fetched: dict[TopicPartition, int] = {}  # next offset to fetch, per partition
        self._wanted = asyncio.Event()

    def taken(self, tp: TopicPartition, offset: int) -> None:
        self._tracker.start(tp, offset)
        self._fetched[tp] = offset + 1

    def done(self, tp: TopicPartition, offset: int) -> None:
        """The message's effects are durable; ignored if the partition was lost meanwhile."""
        if self._tracker.complete(tp, offset):
            self._wanted.set()

    def reset(self) -> None:
        """Forget everything (the consumer unsubscribed from every topic)."""
        self._tracker.forget(self._tracker.partitions)
        self._fetched.clear()

    async def commit_loop(self, min_interval_sec: float = 0.2) -> None:
        """Commit whenever something completed, at most every ``min_interval_sec`` (a crash
        redelivers at most that much more, which the task claims turn into skips)."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await self.commit()
            await asyncio.sleep(min_interval_sec)

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit every assigned partition's progress (of ``only``, if given)."""
        assigned = self._consumer.assignment()
        offsets = {
            tp: offset
            for tp, offset in self._tracker.committable().items()
            if tp in assigned and (only is None or tp in only)
        }
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except ServiceError as exc:  # rebalancing or broker gone: the next commit catches up
            _log.warning("offset commit failed; retried later", error=str(exc))
            return
        self._tracker.mark_committed(offsets)

    # -- RebalanceListener ----------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Keep tracking: a partition handed back in this rebalance keeps its tasks in flight.
        await self.commit(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        lost = (self._tracker.partitions | set(self._fetched)) - assigned
        self._tracker.forget(lost)
        for tp in lost:
            self._fetched.pop(tp, None)
        if lost:
            self._on_lost(lost)
        for tp in assigned & set(self._fetched):
            self._consumer.seek(tp, self._fetched[tp])  # skip what we fetched before
        _log.info("partitions assigned", partitions=len(assigned), kept=len(self._fetched))
