"""The executor service: consume task topics, run tasks in worker processes, report back.

``async with Executor(infra, settings) as executor: await executor.run()``

* **Subscription.** Labels are ``image=<settings.image>`` plus ``settings.labels``. The executor
  subscribes to exactly the task topics its labels satisfy (:mod:`.subscription`) and checks
  ``StateStore.graphs_epoch()`` every ``refresh_interval_sec``: a newly registered graph is
  picked up without a restart.
* **Per message**: decode (undecodable -> dead-letter topic); ``StateStore.should_skip`` (done
  task or finished invocation -> skip); publish a ``task.started`` progress event; run it on
  the :class:`WorkerPool`; publish the ``TaskFinishedEvent`` (key = invocation id) and, once
  Kafka acknowledged it, mark the offset complete. Completions that happen together are sent
  as one batch (``publish_many``).
* **Offsets.** Many tasks of one partition run at once; :class:`.offsets.OffsetKeeper` commits
  only up to the lowest unfinished offset, so a crash redelivers exactly the unfinished tasks,
  and a rebalance that hands a partition back does not fetch its running tasks twice.
* **Heartbeats** (``StateStore.heartbeat``) every ``heartbeat_interval_sec`` from the event
  loop, which never runs user code; the record is removed on shutdown.
* **Shutdown** (:meth:`Executor.request_stop`, e.g. on SIGTERM): stop fetching, let running
  tasks finish (at most ``drain_timeout_sec``), commit, leave the group, stop the workers.
  ``run(idle_timeout_sec=...)`` returns once nothing arrived and nothing ran for that long
  (burst mode, for tests and one-off drains).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from services.common.errors import PlatformUnavailable, ServiceError
from services.common.events import (
    MessageDecodeError,
    ProgressEvent,
    TaskFinishedEvent,
    TaskMessage,
    decode_task_message,
    encode_message,
)
from services.common.kafka_bus import KafkaBus, TopicPartition, make_consumer
from services.common.logging import get_logger
from services.common.names import Names
from services.common.settings import ExecutorSettings, InfraSettings
from services.common.state_store import ExecutorInfo, GraphRecord, StateStore

from .batcher import Batcher
from .offsets import OffsetKeeper
from .subscription import executor_labels, satisfied_topics
from .worker_pool import WorkerPool

__all__ = ["Executor"]

_T = TypeVar("_T")
_POLL_MS = 200
_log = get_logger(__name__)


class Executor:
    """One executor process's service. The constructor does no I/O."""

    def __init__(
        self,
        infra: InfraSettings,
        settings: ExecutorSettings,
        *,
        drain_timeout_sec: float = 30.0,
        max_in_flight: int | None = None,
    ):
        self.infra = infra
        self.settings = settings
        self.id = settings.id
        self.names = Names(infra.prefix)
        self.labels = executor_labels(settings.image, settings.labels)
        # Groups are named from the prefix like everything else, so stacks (and tests)
        # sharing one Kafka never join each other's group.
        self.group_id = f"{infra.prefix}.{settings.group_id}"
        self.drain_timeout_sec = drain_timeout_sec
        self.max_in_flight = max_in_flight or max(16, 4 * settings.concurrency)
        self.max_unacknowledged = 20 * self.max_in_flight
        self.topics: frozenset[str] = frozenset()
        self.tasks_run = 0
        self._epoch: int | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._unfinished_runs = 0  # messages taken whose task has not finished running
        self._background: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._stack = AsyncExitStack()
        self._store: StateStore | None = None
        self._bus: KafkaBus | None = None
        self._pool: WorkerPool | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._offsets: OffsetKeeper | None = None
        self._completions: Batcher[TaskFinishedEvent] = Batcher(self._send_finished)
        self._progress: Batcher[ProgressEvent] = Batcher(self._send_progress)

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Executor:
        stack = self._stack
        try:
            self._store = await stack.enter_async_context(StateStore(self.infra))
            self._bus = await stack.enter_async_context(
                KafkaBus(self.infra, client_id=f"executor-{self.id}")
            )
            self._pool = await stack.enter_async_context(
                WorkerPool(self.infra, self.id, self.settings.concurrency)
            )
            self._consumer = make_consumer(
                self.infra,
                group_id=self.group_id,
                max_poll_records=self.settings.max_poll_records,
                session_timeout_ms=self.settings.session_timeout_ms,
                client_id=f"executor-{self.id}",
            )
            try:
                await self._consumer.start()
            except (KafkaError, OSError) as exc:
                raise PlatformUnavailable(f"cannot start the task consumer: {exc}") from exc
            stack.push_async_callback(self._consumer.stop)
            self._offsets = OffsetKeeper(self._consumer)
            await self.refresh_subscription()
            await self._heartbeat()
        except BaseException:
            await stack.aclose()
            raise
        self._background = [
            asyncio.create_task(self._heartbeat_loop()),
            asyncio.create_task(self._offsets.commit_loop()),
        ]
        _log.info(
            "executor started",
            executor=self.id,
            labels=self.labels,
            concurrency=self.settings.concurrency,
            group=self.group_id,
            topics=sorted(self.topics),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.request_stop()
        try:
            await self._drain()
            if self._offsets is not None:
                await self._offsets.commit()
        finally:
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await self._completions.close()
            await self._progress.close()
            if self._store is not None:
                try:
                    await self._store.remove_executor(self.id)
                except ServiceError as exc:
                    _log.warning("could not remove the executor record", error=str(exc))
            await self._stack.aclose()
            _log.info("executor stopped", executor=self.id, tasks_run=self.tasks_run)

    def request_stop(self) -> None:
        """Stop fetching; :meth:`run` returns and leaving the context drains (SIGTERM)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    # -- the consume loop -----------------------------------------------------------------

    async def run(self, *, idle_timeout_sec: float | None = None) -> None:
        """Consume task messages until :meth:`request_stop` (or, with ``idle_timeout_sec``,
        until nothing has arrived and nothing has run for that long)."""
        consumer = self._require(self._consumer)
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + self.settings.refresh_interval_sec
        idle_since = loop.time()
        while not self._stop.is_set():
            if loop.time() >= next_refresh:
                await self._refresh_quietly()
                next_refresh = loop.time() + self.settings.refresh_interval_sec
            # Tasks waiting only for Kafka's ack of their result do not count: they hold no
            # worker, and the batch they wait for grows with how many there are.
            room = min(
                self.max_in_flight - self._unfinished_runs,
                self.max_unacknowledged - len(self._running),
            )
            if room <= 0:
                await asyncio.wait(
                    self._running, timeout=_POLL_MS / 1000, return_when=asyncio.FIRST_COMPLETED
                )
                continue
            if not self.topics:
                await self._sleep(_POLL_MS / 1000)
            else:
                try:
                    batch = await consumer.getmany(timeout_ms=_POLL_MS, max_records=room)
                except KafkaError as exc:
                    _log.warning("fetching tasks failed; retrying", error=str(exc))
                    await self._sleep(1.0)
                    continue
                for records in batch.values():
                    for record in records:
                        self._take(record)
            if self._running or (self.topics and not consumer.assignment()):
                idle_since = loop.time()
            if idle_timeout_sec is not None and loop.time() - idle_since >= idle_timeout_sec:
                return

    async def _sleep(self, seconds: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _take(self, record: ConsumerRecord[Any, Any]) -> None:
        tp = TopicPartition(record.topic, record.partition)
        self._require(self._offsets).taken(tp, record.offset)
        self._unfinished_runs += 1
        task = asyncio.create_task(self._handle(tp, record))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord[Any, Any]) -> None:
        counted = True

        def ran() -> None:  # the message no longer needs a worker
            nonlocal counted
            if counted:
                counted = False
                self._unfinished_runs -= 1

        try:
            await self._process(tp, record, ran)
        finally:
            ran()

    async def _process(
        self, tp: TopicPartition, record: ConsumerRecord[Any, Any], ran: Callable[[], None]
    ) -> None:
        log = _log.bind(topic=record.topic, partition=record.partition, offset=record.offset)
        try:
            message = decode_task_message(record.value or b"")
        except MessageDecodeError as exc:
            bus, why = self._require(self._bus), exc.reason
            await self._retrying("dead-lettering", lambda: bus.dead_letter(why, record))
            self._complete(tp, record.offset)
            return
        task = message.task
        log = log.bind(
            invocation=message.invocation_id,
            task=task.id,
            function=task.function,
            attempt=task.attempt,
        )
        store = self._require(self._store)
        reason = await self._retrying(
            "checking the task", lambda: store.should_skip(message.invocation_id, task.id)
        )
        if reason is not None:
            log.info("task skipped", reason=reason)
            self._complete(tp, record.offset)
            return
        log.debug("task started")
        self._progress.submit_nowait(
            ProgressEvent(
                type="task.started",
                invocation_id=message.invocation_id,
                task_id=task.id,
                function=task.function,
                attempt=task.attempt,
                executor=self.id,
            )
        )
        started = time.monotonic()
        event = await self._require(self._pool).run(message)
        ran()
        try:
            await self._completions.submit(event)
        except ServiceError as exc:  # not retryable (e.g. too large): park the task message
            log.error("cannot report the task; dead-lettering it", error=str(exc))
            bus = self._require(self._bus)
            reason = f"the task ran but its result cannot be published: {exc}"
            await self._retrying("dead-lettering", lambda: bus.dead_letter(reason, record))
        self.tasks_run += 1
        self._complete(tp, record.offset)
        self._log_finished(log, message, event, time.monotonic() - started)

    @staticmethod
    def _log_finished(
        log: Any, message: TaskMessage, event: TaskFinishedEvent, duration: float
    ) -> None:
        finished = event.finished
        if finished.outcome == "success":
            log.debug("task finished", outcome="success", duration_sec=round(duration, 4))
            return
        error = finished.error
        log.warning(
            "task failed",
            kind=error.kind if error else None,
            error_type=error.type if error else None,
            error=error.message if error else None,
            timeout_sec=message.timeout_sec,
            duration_sec=round(duration, 4),
        )

    def _complete(self, tp: TopicPartition, offset: int) -> None:
        self._require(self._offsets).done(tp, offset)

    async def _retrying(self, what: str, op: Callable[[], Awaitable[_T]]) -> _T:
        """Retry ``op`` while Kafka/Redis/MinIO are unavailable (cancelled on shutdown)."""
        delay = 0.1
        while True:
            try:
                return await op()
            except PlatformUnavailable as exc:
                _log.warning(f"{what} failed; retrying", error=str(exc), delay=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- sending (batched) ------------------------------------------------------------------

    async def _send_finished(self, events: list[TaskFinishedEvent]) -> None:
        """One batch of results; the scheduler records their log pointers and outputs."""
        bus = self._require(self._bus)
        items = [(self.names.events_topic, e.invocation_id, encode_message(e)) for e in events]
        await self._retrying("publishing task results", lambda: bus.publish_many(items))

    async def _send_progress(self, events: list[ProgressEvent]) -> None:
        try:
            await self._require(self._store).publish_progress(events)
        except ServiceError as exc:  # progress is best effort: the state in Redis is the truth
            _log.warning("progress events dropped", count=len(events), error=str(exc))

    # -- subscription -----------------------------------------------------------------------

    async def refresh_subscription(self) -> bool:
        """Resubscribe if the registered graphs changed; ``True`` if the topics changed."""
        store, consumer = self._require(self._store), self._require(self._consumer)
        epoch = await store.graphs_epoch()
        if epoch == self._epoch:
            return False
        records = await _all_graph_versions(store)
        topics = satisfied_topics(self.names, self.labels, records)
        self._epoch = epoch
        if topics == self.topics:
            return False
        added, removed = sorted(topics - self.topics), sorted(self.topics - topics)
        if topics:
            consumer.subscribe(topics=sorted(topics), listener=self._require(self._offsets))
        else:
            consumer.unsubscribe()
            self._require(self._offsets).reset()
        self.topics = topics
        _log.info("subscription changed", topics=len(topics), added=added, removed=removed)
        return True

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh_subscription()
        except ServiceError as exc:
            _log.warning("cannot refresh the subscription; retrying", error=str(exc))

    # -- heartbeats -------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        pool = self._require(self._pool)
        await self._require(self._store).heartbeat(
            ExecutorInfo(
                id=self.id,
                labels=self.labels,
                concurrency=self.settings.concurrency,
                running=pool.busy,
                heartbeat_at=time.time(),
            )
        )

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_sec)
            try:
                await self._heartbeat()
            except ServiceError as exc:
                _log.warning("heartbeat failed", error=str(exc))

    # -- shutdown ---------------------------------------------------------------------------

    async def _drain(self) -> None:
        if not self._running:
            return
        _log.info("waiting for running tasks", tasks=len(self._running))
        _, pending = await asyncio.wait(self._running, timeout=self.drain_timeout_sec)
        if pending:
            _log.warning(
                "tasks still running at shutdown; they will be redelivered", tasks=len(pending)
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    @staticmethod
    def _require(value: _T | None) -> _T:
        if value is None:
            raise RuntimeError("the executor is not started: use `async with Executor(...)`")
        return value


async def _all_graph_versions(store: StateStore) -> list[GraphRecord]:
    """Every registered version of every graph (the store lists only current versions)."""
    current = await store.all_graphs()
    pipe = store.redis.pipeline(transaction=False)
    for record in current:
        pipe.hvals(store.names.graph_versions_key(record.namespace, record.name))
    try:
        rows = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise PlatformUnavailable(f"Redis is unavailable ({exc}); retry when it is back") from exc
    records = {(r.namespace, r.name, r.version): r for r in current}
    for row in rows:
        for raw in row:
            record = GraphRecord.model_validate_json(raw)
            records.setdefault((record.namespace, record.name, record.version), record)
    return list(records.values())
