"""The executor service: consume task topics, run tasks in worker processes, report back.

``async with Executor(infra, settings) as executor: await executor.run()``

* **Subscription.** Labels are ``image=<settings.image>`` plus ``settings.labels``. The executor
  subscribes to exactly the task topics its labels satisfy (:mod:`.subscription`) and checks
  ``StateStore.graphs_epoch()`` every ``refresh_interval_sec``: a newly registered graph is
  picked up without a restart.
* **Per message**: decode (undecodable -> dead-letter topic); ``StateStore.claim_tasks`` (done
  task or finished invocation -> skip; the claims asked together go in one pipeline; taking
  the lease publishes the ``task.started`` progress event); run it on the
  :class:`WorkerPool`; record a success and release the lease; publish the
  ``TaskFinishedEvent`` (key = invocation id) and, once Kafka acknowledged it, mark the
  offset complete. Completions that happen together are sent as one batch (one Redis
  pipeline, one ``publish_many``, one ``tasks.finished`` message per invocation:
  :mod:`.results`).
* **Chunks** (``task.chunk``: the elements of a fan-out in one message) are handled by
  :class:`.chunks.ChunkRunner`: every element is still a task of its own (claim, lease,
  outputs, result), but the claims take one pipeline and the elements one worker round trip;
  the message is complete once every element's result is acknowledged.
* **Leases and recorded results.** ``claim_tasks`` takes a lease on the task (token per
  process, renewed while it runs): an executor handed a task another live one is running
  (rebalance, duplicate message) waits for it instead of running it twice. A success is
  recorded in Redis before its event is published, so a redelivered task whose outputs are
  stored re-publishes that result instead of running again.
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
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from functools import partial
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaError

from services.common.errors import PlatformUnavailable, ServiceError
from services.common.events import (
    MessageDecodeError,
    ProgressEvent,
    TaskChunkMessage,
    TaskFinishedEvent,
    TaskMessage,
    decode_task_topic_message,
)
from services.common.executor_registry import ExecutorInfo
from services.common.kafka_bus import KafkaBus, TopicPartition, make_consumer
from services.common.logging import get_logger
from services.common.names import Names
from services.common.settings import ExecutorSettings, InfraSettings
from services.common.state_store import StateStore

from .batcher import BatchCaller, Batcher
from .chains import HOLD_SEC, MAX_STEPS, ChainPlanner
from .chunks import ChunkRunner
from .fairness import RoundRobin
from .offsets import OffsetKeeper
from .results import Completion, pack_results
from .subscription import executor_labels, satisfied_topics
from .worker_pool import WorkerPool

__all__ = ["Executor"]

_T = TypeVar("_T")
#: (invocation id, task id, the task.started progress event to publish if the lease is taken)
_ClaimAsked = tuple[str, str, ProgressEvent | None]
_POLL_MS = 200
_PARTITION_BACKLOG = 8  # fetched messages of one partition waiting here before it pauses
_SHUTDOWN_STEP_SEC = 30.0
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
        self.max_buffered = 4 * self.max_in_flight  # fetched messages not started yet
        self._backlog: RoundRobin[tuple[TopicPartition, ConsumerRecord[Any, Any]]] = RoundRobin()
        self._buffered: Counter[TopicPartition] = Counter()  # backlog messages per partition
        self.topics: frozenset[str] = frozenset()
        self.tasks_run = 0
        # Leases: one token per process, so a restarted executor with the same id does not
        # mistake its dead predecessor's leases for its own.
        self._token = f"{self.id}:{uuid.uuid4().hex[:8]}"
        self.lease_ttl_sec = settings.lease_ttl_sec or max(3.0, settings.session_timeout_ms / 1000)
        self._leases: set[tuple[str, str]] = set()
        self._failpoint = _parse_failpoint(settings.failpoint)
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
        self._completions: Batcher[Completion] = Batcher(self._send_finished)
        self._chains: ChainPlanner | None = None
        self._claims: BatchCaller[_ClaimAsked, tuple[str, str]] = BatchCaller(self._claim_batch)
        self._chunks = ChunkRunner(self)

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Executor:
        stack = self._stack
        try:
            self._store = await stack.enter_async_context(StateStore(self.infra))
            self._bus = await stack.enter_async_context(
                KafkaBus(self.infra, client_id=f"executor-{self.id}")
            )
            self._pool = await stack.enter_async_context(
                WorkerPool(
                    self.infra,
                    self.id,
                    self.settings.concurrency,
                    max_outputs=self.settings.max_outputs_per_task,
                )
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
            self._offsets = OffsetKeeper(self._consumer, on_lost=self._forget_partitions)
            self._chains = ChainPlanner(self._store.graphs, self.labels)
            await self.refresh_subscription()
            await self._heartbeat()
        except BaseException:
            await stack.aclose()
            raise
        self._background = [
            asyncio.create_task(self._heartbeat_loop()),
            asyncio.create_task(self._lease_loop()),
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
        # Every step is bounded: a shutdown that waits forever on a broker that is busy
        # rebalancing is worse than one that leaves a few offsets to be redelivered.
        self.request_stop()
        try:
            await self._drain()
            if self._offsets is not None:
                await _bounded(self._offsets.commit(), _SHUTDOWN_STEP_SEC, "final commit")
        finally:
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await _bounded(self._completions.close(), _SHUTDOWN_STEP_SEC, "sending results")
            if self._store is not None:
                try:
                    await self._store.registry.remove_executor(self.id)
                except ServiceError as exc:
                    _log.warning("could not remove the executor record", error=str(exc))
            await _bounded(self._stack.aclose(), _SHUTDOWN_STEP_SEC, "closing clients")
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

    @property
    def pool(self) -> WorkerPool:
        """The worker processes (e.g. ``pool.dispatches``: round trips to workers so far)."""
        return self._require(self._pool)

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
            while room > 0 and self._backlog:  # fetched earlier: one invocation at a time
                tp, record = self._backlog.take()
                self._buffered[tp] -= 1
                self._start(tp, record)
                room -= 1
            space = self.max_buffered - len(self._backlog)
            self._backpressure(consumer)
            if self.topics and space > 0:
                try:
                    batch = await consumer.getmany(
                        timeout_ms=_POLL_MS if room > 0 else 0, max_records=space
                    )
                except KafkaError as exc:
                    _log.warning("fetching tasks failed; retrying", error=str(exc))
                    await self._sleep(1.0)
                    continue
                for tp_records in batch.values():
                    for record in tp_records:
                        self._fetched(record)
                if batch and room > 0:
                    continue  # start them at once
            if room <= 0:
                await asyncio.wait(
                    self._running, timeout=_POLL_MS / 1000, return_when=asyncio.FIRST_COMPLETED
                )
            elif not self.topics:
                await self._sleep(_POLL_MS / 1000)
            if self._running or self._backlog or (self.topics and not consumer.assignment()):
                idle_since = loop.time()
            if idle_timeout_sec is not None and loop.time() - idle_since >= idle_timeout_sec:
                return

    async def _sleep(self, seconds: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _fetched(self, record: ConsumerRecord[Any, Any]) -> None:
        """Hold a fetched message until it can start, queued by its invocation: Kafka's
        fetcher hands out one partition's buffered records before the next partition's, so
        without this a quiet invocation's task would wait behind a huge fan-out's chunks."""
        tp = TopicPartition(record.topic, record.partition)
        self._require(self._offsets).taken(tp, record.offset)  # not committed past, as running
        self._backlog.add(_owner(record), (tp, record))
        self._buffered[tp] += 1

    def _backpressure(self, consumer: AIOKafkaConsumer) -> None:
        """Pause the partitions with ``_PARTITION_BACKLOG`` messages waiting here (resume
        them at half that): the fetcher then brings other partitions' messages (another
        function's, another invocation's) instead of more of the same backlog."""
        assigned = consumer.assignment()
        paused = consumer.paused()
        full = {tp for tp, n in self._buffered.items() if n >= _PARTITION_BACKLOG} & assigned
        if full - paused:
            consumer.pause(*(full - paused))
        drained = {tp for tp in paused if self._buffered[tp] <= _PARTITION_BACKLOG // 2}
        if drained:
            consumer.resume(*drained)

    def _forget_partitions(self, lost: set[TopicPartition]) -> None:
        """Partitions went to another executor: their messages not started are theirs now."""
        dropped = self._backlog.drop(lambda item: item[0] in lost)
        for tp in lost:
            self._buffered.pop(tp, None)
        if dropped:
            _log.info("messages of revoked partitions handed back", messages=len(dropped))

    def _start(self, tp: TopicPartition, record: ConsumerRecord[Any, Any]) -> None:
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
        try:
            message = decode_task_topic_message(record.value or b"")
        except MessageDecodeError as exc:
            await self._dead_letter(exc.reason, record)
            self._complete(tp, record.offset)
            return
        if isinstance(message, TaskChunkMessage):
            done = await self._chunks.process(message, record, ran)
        else:
            done = await self._process_task(message, record, ran)
        if done:
            self._complete(tp, record.offset)

    async def _process_task(
        self,
        message: TaskMessage,
        record: ConsumerRecord[Any, Any],
        ran: Callable[[], None],
        verdict: tuple[str, str] | None = None,
    ) -> bool:
        """Claim one task (``verdict``: its claim was asked already, with a chunk's), then
        run it, re-publish its recorded result, skip it or wait for the process holding its
        lease. ``True`` once its effects are durable; ``False`` if shutdown ended a wait (the
        message must not be committed: the partition's next owner gets it)."""
        log = self._task_log(record, message)
        key = (message.invocation_id, message.task.id)
        started = self._started(message)
        if verdict is None:
            if key in self._leases:  # the same task twice in this process: a duplicate
                verdict = ("wait", "this executor")
            else:
                verdict = await self._claim(key, started)
        kind, detail = verdict
        if kind == "wait":
            # Another live executor process (or this one) runs this task: a rebalance moved
            # its partition, or the message was delivered twice. Wait for its result or for
            # its lease to lapse (it died) instead of running the function a second time.
            log.info("task runs elsewhere; waiting for its lease", holder=detail)
            while kind == "wait":
                await self._sleep(min(1.0, self.lease_ttl_sec / 3))
                if self.stopping:
                    return False
                if key in self._leases:
                    continue
                kind, detail = await self._claim(key, started)
        if kind == "skip":
            log.info("task skipped", reason=detail)
            return True
        if kind == "result":
            await self._publish_recorded(message, detail, log)
            return True
        self._leases.add(key)
        try:
            await self._run_task(record, message, log, ran)
        finally:
            self._leases.discard(key)
        return True

    def _started(self, message: TaskMessage) -> ProgressEvent:
        """The ``task.started`` progress event a claim publishes when it takes the lease."""
        task = message.task
        return ProgressEvent(
            type="task.started",
            invocation_id=message.invocation_id,
            task_id=task.id,
            function=task.function,
            attempt=task.attempt,
            executor=self.id,
        )

    @staticmethod
    def _task_log(record: ConsumerRecord[Any, Any], message: TaskMessage) -> Any:
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

    async def _claim(
        self, key: tuple[str, str], started: ProgressEvent | None = None
    ) -> tuple[str, str]:
        """``StateStore.claim_tasks`` (batched with the claims asked meanwhile), publishing
        ``started`` if it takes the lease. The key is held in ``_leases`` while asking: a
        duplicate message in this process (same token, maybe the same pipeline) waits instead
        of running the task a second time."""
        self._leases.add(key)
        try:
            return await self._retrying(
                "checking the task", lambda: self._claims.call((*key, started))
            )
        finally:
            self._leases.discard(key)

    async def _recheck(self, message: TaskMessage) -> tuple[str, str]:
        """The claim's answer for a task that waited for a worker, leases held or not: the
        invocation may have been cancelled or finished meanwhile ("skip"), or the task
        recorded by another process ("result"); "wait" means our lease lapsed (run it)."""
        inv, task_id = message.invocation_id, message.task.id
        return await self._retrying(
            "checking the task", lambda: self._claims.call((inv, task_id, None))
        )

    async def _run_task(
        self,
        record: ConsumerRecord[Any, Any],
        message: TaskMessage,
        log: Any,
        ran: Callable[[], None],
    ) -> None:
        log.debug("task started")
        verdict: list[tuple[str, str]] = []

        async def still_wanted() -> bool:  # asked when the task waited for a free worker
            answer = await self._recheck(message)
            verdict.append(answer)
            return answer[0] not in ("skip", "result")

        event = await self._require(self._pool).run(message, still_wanted)
        ran()
        if event is None:  # cancelled, finished or recorded while it waited for a worker
            kind, detail = verdict[-1]
            if kind == "result":
                await self._publish_recorded(message, detail, log)
            else:
                log.info("task skipped", reason=detail)
            return
        self.tasks_run += 1
        self._log_finished(log, message, event)
        results = await self._continue_chain(message, event, log)
        await self._report(record, message, results, log)

    async def _continue_chain(
        self, message: TaskMessage, event: TaskFinishedEvent, log: Any
    ) -> list[Completion]:
        """Run the steps that follow ``event`` here while they may (:mod:`.chains`); every
        result but the last is recorded in Redis before the next step runs. Returns the
        chain's results, in order, to be published together."""
        results = [Completion(event)]
        store, pool = self._require(self._store), self._require(self._pool)
        chains = self._require(self._chains)
        held_since = time.monotonic()
        while (
            len(results) < MAX_STEPS
            and time.monotonic() - held_since < HOLD_SEC
            and not self.stopping
        ):
            try:
                step = await chains.next_message(message, event)
            except PlatformUnavailable:
                break  # the scheduler sends the next step as usual
            if step is None:
                break
            key = (step.invocation_id, step.task.id)
            if key in self._leases:
                break
            unrecorded = [r.recorded_as() for r in results if not r.recorded]
            claim = (*key, self._started(step))
            kind, _ = await self._retrying(
                "continuing a chain",
                partial(
                    store.claims.record_and_claim,
                    unrecorded,
                    self._token,
                    claim,
                    self.lease_ttl_sec,
                ),
            )
            for result in results:
                result.recorded = True
            if kind != "run":  # cancelled or finished meanwhile, or run elsewhere
                log.info("chain ends here", next_task=step.task.id, verdict=kind)
                break
            self._leases.add(key)
            try:
                finished = await pool.run(step)  # never None: nothing to ask before it runs
            finally:
                self._leases.discard(key)
            if finished is None:
                break
            event = finished
            message = step
            results.append(Completion(event))
            self.tasks_run += 1
            self._log_finished(self._chained_log(log, step), step, event)
        return results

    @staticmethod
    def _chained_log(log: Any, step: TaskMessage) -> Any:
        task = step.task
        return log.bind(task=task.id, function=task.function, attempt=task.attempt, chained=True)

    async def _report(
        self,
        record: ConsumerRecord[Any, Any],
        message: TaskMessage,
        results: list[Completion],
        log: Any,
    ) -> None:
        """Record and publish the results of a message's task (and of the chain that
        followed it) in one batch; returns once Kafka has them."""
        sent = [self._completions.enqueue(result) for result in results]
        try:
            await asyncio.gather(*sent)
        except ServiceError as exc:  # not retryable (e.g. too large): park the task message
            await asyncio.gather(*sent, return_exceptions=True)
            log.error("cannot report the task; dead-lettering it", error=str(exc))
            reason = f"task {message.task.id} ran but its result cannot be published: {exc}"
            await self._dead_letter(reason, record)

    async def _dead_letter(self, reason: str, record: ConsumerRecord[Any, Any]) -> None:
        """Park ``record`` on the dead-letter topic with ``reason`` (retried while Kafka is
        unavailable): it is then complete, and its offset may be committed."""
        bus = self._require(self._bus)
        await self._retrying("dead-lettering", lambda: bus.dead_letter(reason, record))

    async def _publish_recorded(self, message: TaskMessage, recorded_json: str, log: Any) -> None:
        """A previous run stored the outputs and recorded its result, then maybe died before
        publishing it: publish that result (as this attempt), never run the step again."""
        recorded = TaskFinishedEvent.model_validate_json(recorded_json)
        finished = recorded.finished.model_copy(update={"attempt": message.task.attempt})
        log.info("task result recorded by an earlier run; re-publishing it")
        republished = recorded.model_copy(update={"finished": finished})
        await self._completions.submit(Completion(republished, recorded=True))

    @staticmethod
    def _log_finished(log: Any, message: TaskMessage, event: TaskFinishedEvent) -> None:
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

    async def _send_finished(self, completions: list[Completion]) -> None:
        """One batch of results; the scheduler records their log pointers and outputs.

        Each success is recorded in Redis (its outputs are stored) before it is published: a
        crash between there and Kafka's ack redelivers the task, which then re-publishes the
        recorded result instead of running the function again. The leases are released in
        the same round trip. Each result is recorded as its own event; on Kafka, an
        invocation's results of the batch travel together (:func:`.results.pack_results`).
        """
        bus, store = self._require(self._bus), self._require(self._store)
        encoded = [c.encoded() for c in completions]
        results = [c.recorded_as() for c in completions if not c.recorded]
        if results:
            await self._retrying(
                "recording task results", lambda: store.claims.record_results(results, self._token)
            )
        if self._failpoint is not None and any(
            _function_of(e.finished.task_id) == self._failpoint and e.finished.outcome == "success"
            for e, _ in encoded
        ):
            _log.warning("failpoint exit_before_finish hit: exiting", function=self._failpoint)
            os._exit(1)
        topic = self.names.events_topic
        items = [(topic, key, value) for key, value in pack_results(encoded)]
        await self._retrying("publishing task results", lambda: bus.publish_many(items))

    async def _claim_batch(self, tasks: list[_ClaimAsked]) -> list[tuple[str, str]]:
        """``StateStore.claim_tasks`` for the tasks asked about together, in one round trip."""
        store = self._require(self._store)
        return await store.claims.claim_tasks(tasks, self._token, self.lease_ttl_sec)

    # -- subscription -----------------------------------------------------------------------

    async def refresh_subscription(self) -> bool:
        """Resubscribe if the registered graphs changed; ``True`` if the topics changed."""
        store, consumer = self._require(self._store), self._require(self._consumer)
        epoch = await store.graphs.graphs_epoch()
        if epoch == self._epoch:
            return False
        records = await store.graphs.all_versions()
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
            self._backlog.drop(lambda item: True)
            self._buffered.clear()
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
        await self._require(self._store).registry.heartbeat(
            ExecutorInfo(
                id=self.id,
                labels=self.labels,
                concurrency=self.settings.concurrency,
                running=pool.busy,
                heartbeat_at=time.time(),
            )
        )

    async def _lease_loop(self) -> None:
        """Renew the leases of the tasks running here, three times per lease TTL."""
        store = self._require(self._store)
        while True:
            await asyncio.sleep(self.lease_ttl_sec / 3)
            if not self._leases:
                continue
            try:
                await store.claims.renew_leases(list(self._leases), self._token, self.lease_ttl_sec)
            except ServiceError as exc:
                _log.warning("renewing task leases failed", error=str(exc))

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


async def _bounded(step: Awaitable[object], seconds: float, what: str) -> None:
    try:
        await asyncio.wait_for(step, seconds)
    except TimeoutError:
        _log.warning("shutdown step took too long; going on", step=what, seconds=seconds)


def _owner(record: ConsumerRecord[Any, Any]) -> str:
    """Whose turn a task message waits for: its invocation's (from the key,
    ``<invocation>:<task>``) and function's (the topic): a reducer's step is not queued
    behind its own fan-out's chunks, nor a small invocation behind a big one."""
    key = record.key
    if isinstance(key, bytes) and b":" in key:
        return f"{key.split(b':', 1)[0].decode(errors='replace')}@{record.topic}"
    return f"{record.topic}/{record.partition}"


def _parse_failpoint(spec: str) -> str | None:
    """The function of ``exit_before_finish:<function>`` (a test hook), or None."""
    if not spec:
        return None
    kind, _, function = spec.partition(":")
    if kind != "exit_before_finish" or not function:
        raise ValueError(f"unknown executor failpoint {spec!r}; use exit_before_finish:<function>")
    return function


def _function_of(task_id: str) -> str:
    """``square-1a2b...`` and ``add_up-r3`` -> the function name (see ``task_id_for``)."""
    return task_id.rsplit("-", 1)[0]
