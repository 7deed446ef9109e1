"""The scheduler: consume the events topic, drive the engine with state in Redis, emit tasks.

``async with Scheduler(infra, settings) as scheduler: await scheduler.run()``

Per poll batch (all partitions this process owns; the batch work is :mod:`.handler`):

1. decode each record; an undecodable one (of any size: see :mod:`services.common.dead_letters`)
   goes to the dead-letter topic and the rest flows; an event whose handling fails with
   anything but ``PlatformUnavailable`` is dead-lettered with the error (:meth:`Scheduler.
   _apply`), so no one message stops the loop;
2. group the events by invocation (partition order is kept), load the states in one pipeline,
   and apply each invocation's events through the pure engine (:mod:`services.common.decisions`);
3. resolve the new tasks' inputs (this batch's outputs, else ``StateStore.get_outputs``);
4. **publish** the task messages (``publish_many``, all acks awaited) and park retries in the
   delayed set, then **save** each changed state with its compare-and-set (new outputs and
   finished tasks in the same Lua call, which also publishes progress), then **commit** the
   offsets: at most every ``commit_interval_sec`` while events flow, and whenever a poll
   comes back empty (a crash replays what was handled since, as duplicates).

A crash anywhere re-derives the same deterministic tasks from the last saved state; a
duplicate event changes nothing (the engine ignores it and the state is not saved). When
Redis or Kafka is briefly unavailable the batch is retried from its first offsets after a
backoff; nothing is committed past an unprocessed event. A lost compare-and-set (another
scheduler saved first after a rebalance) reloads the state and applies the events again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack, suppress
from types import TracebackType

from services.common.dead_letters import park
from services.common.errors import CommitRejected, PlatformUnavailable, ServiceError
from services.common.kafka_bus import KafkaBus
from services.common.kafka_consumer import Consumer, Record, TopicPartition
from services.common.logging import get_logger
from services.common.names import Names
from services.common.settings import InfraSettings, SchedulerSettings
from services.common.state_store import StateStore

from .delayed import DelayedTasks
from .handler import EventHandler
from .lag import LagProbe
from .replays import ReplayDriver
from .states import StateCache
from .topics import TaskTopics

__all__ = ["Scheduler"]

_log = get_logger(__name__)
_SLOW_BATCH_SEC = 0.5  # batches slower than this are logged (other invocations wait)


class _OnRevoke:
    """The scheduler's rebalance listener: commit what is handled before partitions go."""

    def __init__(self, scheduler: Scheduler, states: StateCache) -> None:
        self._scheduler = scheduler
        self._states = states

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._states.clear()
        await self._scheduler.commit_handled()  # the next owner starts after our work

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        pass


class Scheduler:
    """Consumes ``<prefix>.events`` in the consumer group ``<prefix>.<group_id>``."""

    def __init__(
        self,
        infra: InfraSettings,
        settings: SchedulerSettings,
        *,
        bus: KafkaBus | None = None,
        store: StateStore | None = None,
        poll_timeout_ms: int = 1000,
        max_backoff_sec: float = 5.0,
    ) -> None:
        self.infra = infra
        self.settings = settings
        self.names = Names(infra.prefix)
        self.group_id = f"{infra.prefix}.{settings.group_id}"
        self._bus = bus
        self._store = store
        self._poll_timeout_ms = poll_timeout_ms
        self._max_backoff = max_backoff_sec
        self._stack = AsyncExitStack()
        self._consumer: Consumer | None = None
        self._stop = asyncio.Event()
        self._handler: EventHandler | None = None
        self.delayed: DelayedTasks | None = None
        self.handled = 0  # records handled (duplicates and dead letters too)
        # Offsets of handled records not committed yet (see _consume: commits are throttled).
        self._handled_offsets: dict[TopicPartition, int] = {}
        self._committed_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Scheduler:
        try:
            if self._bus is None:
                self._bus = await self._stack.enter_async_context(
                    KafkaBus(self.infra, client_id=f"{self.infra.prefix}-scheduler")
                )
            if self._store is None:
                self._store = await self._stack.enter_async_context(StateStore(self.infra))
            await self._bus.ensure_topics(
                {
                    self.names.events_topic: self.infra.events_partitions,
                    self.names.deadletter_topic: 1,
                }
            )
            topics = TaskTopics(self._bus, self.infra.task_partitions)
            # Twice what one batch can take from a reducer queue (one step's worth, see
            # InvocationRepository.load_views).
            states = StateCache(self._store, window=2 * self.settings.max_reduce_batch)
            self.delayed = DelayedTasks(self._bus, self._store, topics)
            self._handler = EventHandler(
                self._bus,
                self._store,
                self.settings,
                topics=topics,
                states=states,
                on_parked=self.delayed.wake,
            )
            consumer = Consumer(
                self.infra,
                group_id=self.group_id,
                max_poll_records=self.settings.max_batch,
                session_timeout_ms=self.settings.session_timeout_ms,
                client_id=f"{self.group_id}-{id(self):x}",
            )
            await consumer.start()  # PlatformUnavailable, naming the fix, if Kafka is down
            consumer.subscribe([self.names.events_topic], listener=_OnRevoke(self, states))
            self._consumer = consumer
        except BaseException:
            await self._stack.aclose()
            raise
        _log.info("scheduler started", group=self.group_id, topic=self.names.events_topic)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.commit_handled()
        except PlatformUnavailable as exc:  # the next owner replays them: effects are idempotent
            _log.warning("final offset commit failed", error=str(exc))
        consumer, self._consumer = self._consumer, None
        try:
            if consumer is not None:
                await consumer.stop()  # leaves the group: partitions move at once
        finally:
            await self._stack.aclose()
        _log.info("scheduler stopped", events_handled=self.handled)

    def stop(self) -> None:
        """Finish the batch in hand, commit it, and return from :meth:`run`."""
        self._stop.set()

    @property
    def bus(self) -> KafkaBus:
        if self._bus is None:
            raise RuntimeError("Scheduler is not started: use `async with Scheduler(...)`")
        return self._bus

    @property
    def store(self) -> StateStore:
        if self._store is None:
            raise RuntimeError("Scheduler is not started: use `async with Scheduler(...)`")
        return self._store

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("Scheduler is not started: use `async with Scheduler(...)`")
        return self._consumer

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, *, idle_sec: float | None = None) -> None:
        """Consume until :meth:`stop` (SIGTERM), or, with ``idle_sec``, until partitions are
        assigned, no event arrived for ``idle_sec`` and no retry is parked (burst mode)."""
        assert self.delayed is not None
        background = [asyncio.create_task(self.delayed.run(self._stop), name="delayed-tasks")]
        replays = ReplayDriver(self.bus, self.store, window=self.settings.replay_window)
        background.append(asyncio.create_task(replays.run(self._stop), name="replays"))
        if self.settings.metrics_port:  # someone scrapes: measure the consumer lag too
            probe = LagProbe(
                self.infra,
                executors_group=f"{self.infra.prefix}.{self.settings.executors_group_id}",
                scheduler_group=self.group_id,
                interval_sec=self.settings.lag_interval_sec,
            )
            background.append(asyncio.create_task(probe.run(self._stop), name="lag-probe"))
        try:
            await self._consume(idle_sec)
        finally:
            self._stop.set()
            await asyncio.gather(*background)

    async def run_until_idle(self, idle_sec: float = 1.0) -> None:
        """Burst mode for tests and one-off jobs: drain what is there, then return."""
        await self.run(idle_sec=idle_sec)

    async def _consume(self, idle_sec: float | None) -> None:
        consumer = self.consumer
        backoff = 0.1
        last_activity = time.monotonic()
        while not self._stop.is_set():
            records = await self._fetch(consumer)
            if not records:
                await self._commit_quietly()
                if idle_sec is not None and await self._idle(last_activity, idle_sec):
                    return
                continue
            last_activity = time.monotonic()
            try:
                await self._apply(records)
                self._handled(records)
                self.handled += len(records)
                backoff = 0.1
                took = time.monotonic() - last_activity
                if took >= _SLOW_BATCH_SEC:
                    _log.info("slow batch", messages=len(records), duration_sec=round(took, 3))
            except PlatformUnavailable as exc:
                backoff = min(backoff * 2, self._max_backoff)
                _log.warning(
                    "platform unavailable; retrying the batch",
                    error=str(exc),
                    retry_in=backoff,
                    events=len(records),
                )
                self._rewind(records)
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=backoff)
                continue
            if time.monotonic() - self._committed_at >= self.settings.commit_interval_sec:
                await self._commit_quietly()

    async def _apply(self, records: Sequence[Record]) -> None:
        """Handle a batch so that no one event can stop the loop: when the batch fails with
        anything but ``PlatformUnavailable`` (a bug, or an event no check foresaw), its
        events are handled one at a time and each one that fails again is dead-lettered
        with the error (:func:`park`: retried until it is, never skipped). Its effects, if
        any, are idempotent: handling the rest again only repeats them."""
        try:
            await self.handle_batch(records)
            return
        except PlatformUnavailable:
            raise
        except Exception as exc:
            _log.exception("batch failed; handling its events one at a time", events=len(records))
            if len(records) == 1:
                await self._poison(records[0], exc)
                return
        for record in records:
            try:
                await self.handle_batch([record])
            except PlatformUnavailable:
                raise
            except Exception as exc:
                await self._poison(record, exc)

    async def _poison(self, record: Record, exc: Exception) -> None:
        _log.error(
            "event cannot be handled; dead-lettering it",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=f"{type(exc).__name__}: {exc}",
        )
        reason = f"the scheduler failed on this event: {type(exc).__name__}: {exc}"
        if not await park(self.bus, reason, record, stop=self._stop):
            raise PlatformUnavailable("stopping before the event could be dead-lettered")

    async def _fetch(self, consumer: Consumer) -> list[Record]:
        """The next batch: a share of ``max_batch`` from every assigned partition that has
        events buffered, so one partition's backlog (a huge fan-out's results all land on
        its invocation's partition) cannot fill batch after batch while the others wait:
        Kafka's fetcher hands out one partition's buffered records before the next's."""
        assigned = sorted(consumer.assignment())
        records: list[Record] = []
        if assigned:
            quota = max(1, self.settings.max_batch // len(assigned))
            for tp in assigned:
                got = await consumer.getmany(tp, timeout_ms=0, max_records=quota)
                records.extend(got.get(tp, ()))
        if records:
            return records
        # An event ends this wait at once: its length only paces the idle loop (and how soon
        # stop() is noticed), so it is long.
        batch = await consumer.getmany(
            timeout_ms=self._poll_timeout_ms, max_records=self.settings.max_batch
        )
        return [record for part in batch.values() for record in part]

    async def _idle(self, last_activity: float, idle_sec: float) -> bool:
        if not self.consumer.assignment():
            return False
        if time.monotonic() - last_activity < idle_sec:
            return False
        assert self.delayed is not None
        try:
            return await self.delayed.pending() == 0
        except PlatformUnavailable:
            return False

    def _rewind(self, records: Sequence[Record]) -> None:
        """Seek each partition back to its first record of the failed batch."""
        first: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            first[tp] = min(first.get(tp, record.offset), record.offset)
        assigned = self.consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)

    def _handled(self, records: Sequence[Record]) -> None:
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            self._handled_offsets[tp] = max(self._handled_offsets.get(tp, 0), record.offset + 1)

    async def commit_handled(self) -> None:
        """Commit the offsets of every handled record (their effects are durable already).

        Called at most every ``commit_interval_sec`` while events flow, when a poll comes
        back empty, on revocation and on shutdown: a crash replays at most that much, which
        the handlers ignore as duplicates, and the broker is not asked for one commit per
        batch."""
        self._committed_at = time.monotonic()
        offsets, self._handled_offsets = self._handled_offsets, {}
        if self._consumer is None:
            return
        assigned = self._consumer.assignment()
        offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except CommitRejected as exc:  # partitions moved: their new owner replays them
            _log.warning("offset commit rejected after a rebalance", error=str(exc))
        except ServiceError as exc:
            for tp, offset in offsets.items():  # keep them for the next commit
                self._handled_offsets[tp] = max(self._handled_offsets.get(tp, 0), offset)
            if isinstance(exc, PlatformUnavailable):
                raise
            raise PlatformUnavailable(f"committing offsets {offsets}: {exc}") from exc

    async def _commit_quietly(self) -> None:
        if not self._handled_offsets:
            return
        try:
            await self.commit_handled()
        except PlatformUnavailable as exc:
            _log.warning("offset commit failed; retried later", error=str(exc))

    async def handle_batch(self, records: Sequence[Record]) -> None:
        """Apply a batch of event records; every effect is durable when this returns."""
        if self._handler is None:
            raise RuntimeError("Scheduler is not started: use `async with Scheduler(...)`")
        await self._handler.handle(records)
