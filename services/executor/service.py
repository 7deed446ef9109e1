"""The executor service: consume task topics, run tasks in worker processes, report back.

``async with Executor(infra, settings) as executor: await executor.run()``

:class:`Executor` wires small collaborators together (built in ``__aenter__``; the Redis
store and the Kafka bus may be passed in) and owns the lifecycle. Who does what:

* **Subscription** (:class:`.subscription.Subscription`). Labels are
  ``image=<settings.image>`` plus ``settings.labels``. The executor subscribes to exactly
  the task topics its labels satisfy and checks ``graphs_epoch()`` every
  ``refresh_interval_sec``: a newly registered graph is picked up without a restart.
* **Intake** (:class:`.intake.Intake`): the fetch loop; fetched messages wait in a backlog
  handed out one invocation at a time; a partition with a backlog here is paused. Every
  fetched message is taken by the :class:`.offsets.OffsetKeeper`, which commits only up to
  the lowest unfinished offset of each partition, so a crash redelivers exactly the
  unfinished tasks, and a rebalance that hands a partition back does not fetch its running
  tasks twice.
* **In flight** (:class:`.inflight.InFlight`): started messages, each an asyncio task, and
  the room for more (messages holding or awaiting a worker; messages awaiting Kafka's ack).
* **Per message** (:class:`.handler.TaskHandler`): decode (undecodable -> dead-letter
  topic); claim; run on the :class:`WorkerPool`; continue the chain here
  (:class:`.chains.ChainRunner`: the next step of a result that decides it alone); report.
  **Chunks** (``task.chunk``: the elements of a fan-out in one message) go to
  :class:`.chunks.ChunkRunner`: every element is still a task of its own, but the claims
  take one call and the elements one worker round trip.
* **Leases** (:class:`.leases.Leases`): a claim takes a lease on the task (token per
  process, renewed while it runs; taking it publishes ``task.started``): an executor handed a
  task another live one is running (rebalance, duplicate message) waits for it instead of
  running it twice.
* **Reporting** (:class:`.reporter.Reporter`): a success is recorded in Redis before its
  event is published, so a redelivered task whose outputs are stored re-publishes that result
  instead of running again. Completions that happen together are sent as one batch (one
  Redis pipeline, one ``publish_many``, one ``tasks.finished`` message per invocation:
  :mod:`.results`); the offset is complete once Kafka acknowledged them.
* **Task hints** (:class:`.hints.HintListener`): a new invocation's first task, published
  on Redis by the API beside its Kafka message while the stack is quiet, starts here at
  once when this executor owns its partition and has a free worker; its Kafka copy then
  completes without running it again (:mod:`services.common.task_hints`).
* **Cancels** (:class:`.cancels.CancelWatch`): every second while tasks run, one call reads
  their invocations' status; the workers running tasks of a cancelled one are killed and
  replaced, and those tasks report an error of type ``Cancelled``.
* **Heartbeats** (:class:`.heartbeat.Heartbeat`) every ``heartbeat_interval_sec`` from the
  event loop, which never runs user code; the record is removed on shutdown.
* **Shutdown** (:meth:`Executor.request_stop`, e.g. on SIGTERM): stop fetching, let running
  tasks finish (at most ``drain_timeout_sec``), commit, leave the group, stop the workers.
  ``run(idle_timeout_sec=...)`` returns once nothing arrived and nothing ran for that long
  (burst mode, for tests and one-off drains).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from dataclasses import dataclass

from services.common.concurrency import cancel_and_wait
from services.common.executor_registry import QueuedTasks
from services.common.kafka_bus import KafkaBus
from services.common.kafka_consumer import Consumer, TopicPartition
from services.common.logging import get_logger
from services.common.names import Names
from services.common.settings import ExecutorSettings, InfraSettings
from services.common.state_store import StateStore

from .cancels import CancelWatch
from .chains import ChainPlanner, ChainRunner
from .finisher import Finisher
from .graph_versions import GraphVersions
from .handler import TaskHandler
from .heartbeat import Heartbeat
from .hints import HintListener
from .inflight import InFlight
from .intake import Intake
from .leases import Leases
from .metrics import queue_depth_loop, queued_tasks, watch_slots
from .reporter import Reporter, exit_before_finish
from .subscription import Subscription, executor_labels
from .worker_pool import WorkerPool

__all__ = ["Executor"]

_SHUTDOWN_STEP_SEC = 30.0
_log = get_logger(__name__)


@dataclass
class _Parts:
    """The collaborators of a started executor."""

    pool: WorkerPool
    leases: Leases
    reporter: Reporter
    handler: TaskHandler
    intake: Intake
    inflight: InFlight
    subscription: Subscription
    heartbeat: Heartbeat
    cancels: CancelWatch
    hints: HintListener


class Executor:
    """One executor process's service. The constructor does no I/O."""

    def __init__(
        self,
        infra: InfraSettings,
        settings: ExecutorSettings,
        *,
        drain_timeout_sec: float = 30.0,
        max_in_flight: int | None = None,
        bus: KafkaBus | None = None,
        store: StateStore | None = None,
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
        self.lease_ttl_sec = settings.lease_ttl_sec or max(3.0, settings.session_timeout_ms / 1000)
        # One token per process, so a restarted executor with the same id does not mistake
        # its dead predecessor's leases for its own.
        self._token = f"{self.id}:{uuid.uuid4().hex[:8]}"
        self._failpoint = exit_before_finish(settings.failpoint)
        self._bus = bus
        self._store = store
        self._stop = asyncio.Event()
        self._stack = AsyncExitStack()
        self._parts: _Parts | None = None
        self._background: list[asyncio.Task[None]] = []

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Executor:
        stack = self._stack
        try:
            self._parts = parts = await self._build(stack)
            await parts.subscription.refresh()
            await parts.heartbeat.beat()
        except BaseException:
            await stack.aclose()
            raise
        self._background = [
            asyncio.create_task(parts.heartbeat.loop()),
            asyncio.create_task(parts.leases.renew_loop()),
            asyncio.create_task(parts.cancels.loop()),
            asyncio.create_task(parts.intake.offsets.commit_loop()),
            asyncio.create_task(self._queue_depth_loop(parts)),
            asyncio.create_task(parts.hints.run()),
        ]
        watch_slots(self.settings.concurrency, lambda: parts.pool.busy)
        _log.info(
            "executor started",
            executor=self.id,
            labels=self.labels,
            concurrency=self.settings.concurrency,
            group=self.group_id,
            topics=sorted(self.topics),
        )
        return self

    async def _build(self, stack: AsyncExitStack) -> _Parts:
        """Connect (entering ``stack``) and wire the collaborators together."""
        store, bus = self._store, self._bus
        if store is None:
            store = await stack.enter_async_context(StateStore(self.infra))
        if bus is None:
            bus = await stack.enter_async_context(
                KafkaBus(self.infra, client_id=f"executor-{self.id}")
            )
        settings = self.settings
        pool = await stack.enter_async_context(
            WorkerPool(
                self.infra,
                self.id,
                settings.concurrency,
                max_outputs=settings.max_outputs_per_task,
                worker_user=settings.worker_user,
                worker_group=settings.worker_group,
            )
        )
        consumer = Consumer(
            self.infra,
            group_id=self.group_id,
            max_poll_records=settings.max_poll_records,
            session_timeout_ms=settings.session_timeout_ms,
            client_id=f"executor-{self.id}",
        )
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        leases = Leases(store.claims, self.id, self._token, ttl_sec=self.lease_ttl_sec)
        reporter = Reporter(
            bus, leases, events_topic=self.names.events_topic, before_publish=self._failpoint
        )
        versions = GraphVersions(store.graphs)
        planner = ChainPlanner(versions, self.labels)
        chains = ChainRunner(
            planner,
            leases,
            pool,
            stopping=self._stop.is_set,
            hold_sec=settings.chain_hold_sec,
        )
        finisher = Finisher(
            store.invocations,
            leases,
            planner.engine,
            enabled=settings.finish_here,
            before_save=self._failpoint,
        )
        handler = TaskHandler(leases, reporter, pool, chains, finisher, stop=self._stop)
        intake = Intake(
            consumer,
            stop=self._stop,
            max_buffered=self.max_buffered,
            refresh_interval_sec=settings.refresh_interval_sec,
        )
        return _Parts(
            pool=pool,
            leases=leases,
            reporter=reporter,
            handler=handler,
            intake=intake,
            inflight=InFlight(
                handler.process,
                intake.offsets,
                max_in_flight=self.max_in_flight,
                max_unacknowledged=self.max_unacknowledged,
            ),
            subscription=Subscription(
                consumer,
                store.graphs,
                self.names,
                self.labels,
                offsets=intake.offsets,
                on_cleared=intake.clear,
                versions=versions,
            ),
            heartbeat=Heartbeat(
                store.registry,
                self.id,
                labels=self.labels,
                concurrency=settings.concurrency,
                busy=lambda: pool.busy,
                interval_sec=settings.heartbeat_interval_sec,
                queues=self._queues,
            ),
            cancels=CancelWatch(store.invocations, pool),
            hints=HintListener(store.hints, consumer.owns, handler.take_hint),
        )

    async def __aexit__(self, *exc: object) -> None:
        # Every step is bounded: a shutdown that waits forever on a broker that is busy
        # rebalancing is worse than one that leaves a few offsets to be redelivered.
        self.request_stop()
        parts = self._parts
        try:
            if parts is not None:
                await parts.inflight.drain(self.drain_timeout_sec)
                await parts.handler.stop_hinted()
                await _bounded(parts.intake.offsets.commit(), _SHUTDOWN_STEP_SEC, "final commit")
        finally:
            await cancel_and_wait(self._background)
            if parts is not None:
                await _bounded(parts.reporter.close(), _SHUTDOWN_STEP_SEC, "sending results")
                await parts.heartbeat.remove()
            await _bounded(self._stack.aclose(), _SHUTDOWN_STEP_SEC, "closing clients")
            _log.info("executor stopped", executor=self.id, tasks_run=self.tasks_run)

    async def _queue_depth_loop(self, parts: _Parts) -> None:
        """The local queue per function, for ``indexify_task_queue_depth`` (every topic
        subscribed to is shown, at 0 when nothing waits)."""
        await queue_depth_loop(self.infra.prefix, lambda: _waiting(parts))

    def _queues(self) -> list[QueuedTasks]:
        """The functions with tasks waiting here, for the heartbeat (the status API's and the
        UI's queue depths)."""
        if self._parts is None:
            return []
        return queued_tasks(self.infra.prefix, _waiting(self._parts))

    def request_stop(self) -> None:
        """Stop fetching; :meth:`run` returns and leaving the context drains (SIGTERM)."""
        self._stop.set()

    # -- state ----------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def in_flight(self) -> int:
        """Messages started and not done (running, or waiting for Kafka's ack)."""
        return len(self._parts.inflight) if self._parts is not None else 0

    @property
    def tasks_run(self) -> int:
        """Functions run to a result here (chained steps and chunk elements included)."""
        return self._parts.handler.tasks_run if self._parts is not None else 0

    @property
    def hints_taken(self) -> int:
        """Task hints whose task started here ahead of its Kafka copy."""
        return self._parts.handler.hints_taken if self._parts is not None else 0

    async def hints_ready(self, topic: str, partition: int) -> bool:
        """Whether a task hint for ``partition`` of ``topic`` would be acted on here now:
        the hints channel is subscribed and this executor owns the partition."""
        parts = self._parts
        return (
            parts is not None
            and parts.hints.subscribed.is_set()
            and parts.hints.owns(TopicPartition(topic, partition))
        )

    @property
    def topics(self) -> frozenset[str]:
        """The task topics subscribed to."""
        return self._parts.subscription.topics if self._parts is not None else frozenset()

    @property
    def pool(self) -> WorkerPool:
        """The worker processes (e.g. ``pool.dispatches``: round trips to workers so far)."""
        return self._require().pool

    # -- running --------------------------------------------------------------------------

    async def run(self, *, idle_timeout_sec: float | None = None) -> None:
        """Consume task messages until :meth:`request_stop` (or, with ``idle_timeout_sec``,
        until nothing has arrived and nothing has run for that long)."""
        parts = self._require()
        await parts.intake.run(
            parts.inflight, parts.subscription, idle_timeout_sec=idle_timeout_sec
        )

    async def refresh_subscription(self) -> bool:
        """Resubscribe if the registered graphs changed; ``True`` if the topics changed."""
        return await self._require().subscription.refresh()

    def _require(self) -> _Parts:
        if self._parts is None:
            raise RuntimeError("the executor is not started: use `async with Executor(...)`")
        return self._parts


async def _bounded(step: Awaitable[object], seconds: float, what: str) -> None:
    try:
        await asyncio.wait_for(step, seconds)
    except TimeoutError:
        _log.warning("shutdown step took too long; going on", step=what, seconds=seconds)


def _waiting(parts: _Parts) -> dict[str, int]:
    """Tasks waiting here per task topic: fetched messages not started, and claimed tasks in
    the open batches of batched functions; every topic subscribed to, at 0 when none wait."""
    counts = Counter(dict.fromkeys(parts.subscription.topics, 0))
    counts.update(parts.intake.waiting())
    counts.update(parts.handler.batch_waiting())
    return dict(counts)
