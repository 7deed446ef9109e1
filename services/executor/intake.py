"""Task messages on their way in: the fetch loop, the backlog and partition backpressure.

:class:`Intake` owns the executor's side of the consumer:

* **The fetch loop** (:meth:`Intake.run`): start what the backlog holds while
  :class:`.inflight.InFlight` has room, fetch more while the backlog has space (and there
  are topics), refresh the subscription every ``refresh_interval_sec``; return on stop, or
  after ``idle_timeout_sec`` with nothing fetched, running or waiting (burst mode).
* **The backlog**: fetched messages not started yet, queued per owner (invocation and
  function: :func:`owner`) and handed out one owner at a time (:class:`.fairness.
  RoundRobin`), so a quiet invocation's task does not wait behind a huge fan-out's chunks
  (Kafka's fetcher hands out one partition's buffered records before the next partition's).
  A fetched message is *taken* at once (:class:`.offsets.OffsetKeeper`): nothing is
  committed past it until it is done.
* **Backpressure**: a partition with :data:`PARTITION_BACKLOG` messages waiting here is
  paused (resumed at half that), so the fetcher brings other partitions' messages (another
  function's, another invocation's) instead of more of the same backlog.
* **Rebalances**: messages of partitions that went to another executor are dropped from the
  backlog (their new owner fetches them).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import suppress

from services.common.errors import ServiceError
from services.common.kafka_consumer import Consumer, Record, TopicPartition
from services.common.logging import get_logger

from .fairness import RoundRobin
from .inflight import InFlight
from .offsets import OffsetKeeper
from .subscription import Subscription

__all__ = ["PARTITION_BACKLOG", "Intake", "owner"]

#: Fetched messages of one partition waiting here before it pauses.
PARTITION_BACKLOG = 8
_POLL_MS = 200
#: The longest a fetch with room to start tasks waits for records (never past the next
#: subscription refresh): records end the wait at once, so this only paces the idle loop.
_FETCH_WAIT_MS = 1000
_FETCH_RETRY_SEC = 1.0
_log = get_logger(__name__)


class Intake:
    """The fetch loop, backlog and backpressure of one consumer (see the module docstring)."""

    def __init__(
        self,
        consumer: Consumer,
        *,
        stop: asyncio.Event,
        max_buffered: int,
        refresh_interval_sec: float,
    ) -> None:
        self._consumer = consumer
        self._stop = stop
        self.max_buffered = max_buffered  # fetched messages not started yet
        self.refresh_interval_sec = refresh_interval_sec
        self.offsets = OffsetKeeper(consumer, on_lost=self.forget)
        self._backlog: RoundRobin[tuple[TopicPartition, Record]] = RoundRobin()
        self._buffered: Counter[TopicPartition] = Counter()  # backlog messages per partition

    def __len__(self) -> int:
        return len(self._backlog)

    def waiting(self) -> dict[str, int]:
        """Fetched messages not started yet, per topic (the executor's local queue)."""
        counts: Counter[str] = Counter()
        for tp, count in self._buffered.items():
            counts[tp.topic] += count
        return dict(counts)

    async def run(
        self,
        inflight: InFlight,
        subscription: Subscription,
        *,
        idle_timeout_sec: float | None = None,
    ) -> None:
        """Fetch and start task messages until stopped (or, with ``idle_timeout_sec``, until
        nothing has arrived and nothing has run for that long)."""
        consumer = self._consumer
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + self.refresh_interval_sec
        idle_since = loop.time()
        while not self._stop.is_set():
            if loop.time() >= next_refresh:
                await subscription.refresh_quietly()
                next_refresh = loop.time() + self.refresh_interval_sec
            room = inflight.room
            while room > 0 and self._backlog:  # fetched earlier: one invocation at a time
                inflight.start(*self._take())
                room -= 1
            space = self.max_buffered - len(self._backlog)
            self._backpressure()
            if subscription.topics and space > 0:
                until_refresh = int((next_refresh - loop.time()) * 1000)
                wait_ms = max(0, min(_FETCH_WAIT_MS, until_refresh)) if room > 0 else 0
                try:
                    fetched = await self._fetch(timeout_ms=wait_ms, max_records=space)
                except ServiceError as exc:
                    _log.warning("fetching tasks failed; retrying", error=str(exc))
                    await self._sleep(_FETCH_RETRY_SEC)
                    continue
                if fetched and room > 0:
                    continue  # start them at once
            if room <= 0:
                await inflight.wait_one(_POLL_MS / 1000)
            elif not subscription.topics:
                await self._sleep(_POLL_MS / 1000)
            if inflight or self._backlog or (subscription.topics and not consumer.assignment()):
                idle_since = loop.time()
            if idle_timeout_sec is not None and loop.time() - idle_since >= idle_timeout_sec:
                return

    async def _fetch(self, *, timeout_ms: int, max_records: int) -> int:
        """Fetch up to ``max_records`` messages into the backlog; how many came."""
        batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        count = 0
        for records in batch.values():
            for record in records:
                self._add(record)
                count += 1
        return count

    def _add(self, record: Record) -> None:
        """Hold a fetched message until it can start, queued by its owner."""
        tp = TopicPartition(record.topic, record.partition)
        self.offsets.taken(tp, record.offset)  # not committed past, as if running
        self._backlog.add(owner(record), (tp, record))
        self._buffered[tp] += 1

    def _take(self) -> tuple[TopicPartition, Record]:
        tp, record = self._backlog.take()
        self._buffered[tp] -= 1
        return tp, record

    def _backpressure(self) -> None:
        """Pause the partitions with ``PARTITION_BACKLOG`` messages waiting here, resume the
        paused ones with half that or fewer."""
        consumer = self._consumer
        paused = consumer.paused()
        full = {tp for tp, n in self._buffered.items() if n >= PARTITION_BACKLOG}
        if full - paused:  # (the assignment is asked only then: it lists every partition)
            consumer.pause(*((full - paused) & consumer.assignment()))
        drained = {tp for tp in paused if self._buffered[tp] <= PARTITION_BACKLOG // 2}
        if drained:
            consumer.resume(*drained)

    def forget(self, lost: set[TopicPartition]) -> None:
        """Partitions went to another executor: their messages not started are theirs now."""
        dropped = self._backlog.drop(lambda item: item[0] in lost)
        for tp in lost:
            self._buffered.pop(tp, None)
        if dropped:
            _log.info("messages of revoked partitions handed back", messages=len(dropped))

    def clear(self) -> None:
        """Drop every message not started (the consumer unsubscribed from every topic)."""
        self._backlog.drop(lambda item: True)
        self._buffered.clear()

    async def _sleep(self, seconds: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


def owner(record: Record) -> str:
    """Whose turn a task message waits for: its invocation's (from the key,
    ``<invocation>:<task>``) and function's (the topic): a reducer's step is not queued
    behind its own fan-out's chunks, nor a small invocation behind a big one."""
    key = record.key
    if isinstance(key, bytes) and b":" in key:
        return f"{key.split(b':', 1)[0].decode(errors='replace')}@{record.topic}"
    return f"{record.topic}/{record.partition}"
