"""The consuming side of Kafka: :class:`Consumer`, the one place services read topics through.

``async with Consumer(settings, group_id=...) as consumer: consumer.subscribe(topics, listener)``

* **Same settings everywhere**: a :class:`Consumer` owns the consumer that
  :func:`~.kafka_bus.make_consumer` builds: no auto-commit (commit what is durable,
  :meth:`Consumer.commit`), ``earliest`` for a new group, long ``max_poll_interval_ms``.
* **Our types only.** Records are :data:`Record`; a rebalance listener is any object with the
  two methods of :class:`RebalanceListener`; every aiokafka (or socket) failure comes out as a
  :mod:`services.common.errors` error through the one map in :func:`.kafka_bus.kafka_errors`:
  :class:`PlatformUnavailable` ("retry later"), :class:`CommitRejected` (a commit after the
  partitions moved), else :class:`ServiceError`. Nothing above this module imports aiokafka.
* **The fetch wait** (how long the broker holds a fetch that found nothing): the broker
  answers at once when data arrives on a partition that is in the request, so an idle
  consumer can wait long (:data:`IDLE_FETCH_WAIT_MS`) and costs the broker a few fetches a
  second instead of fifty per partition. The wait hurts in one case: aiokafka's fetcher sends
  one fetch per broker at a time, and a partition that becomes fetchable while one is in
  flight (resumed after a pause, or whose buffered records were just handed out after the
  fetcher moved on without it) waits for that fetch to end. So the consumer uses the short
  wait (``InfraSettings.kafka_fetch_max_wait_ms``) while any partition is paused, a busy one
  (:data:`BUSY_FETCH_WAIT_MS`) until its fetches have found nothing for :data:`BUSY_SEC`,
  and the long one then (:func:`fetch_wait_ms`). Idle means asked and found nothing: a
  caller that stops asking because its backlog is full (an executor running a burst) is
  busy however long it takes, else the partitions whose records were buffered when a long
  fetch left would wait out that fetch (seconds) once those records are handed out.
* **Metadata** is refreshed every :data:`METADATA_MAX_AGE_MS`, and sooner while a
  subscribed topic has none (after :data:`MISSING_METADATA_RETRY_SEC`, doubling): a topic
  created a moment ago may have no leader yet, and aiokafka leaves such a topic out of its
  metadata (no partitions, nothing assigned) until its next refresh. Each refresh of an
  executor's hundreds of task topics costs both ends, so it is not done every few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from types import TracebackType
from typing import Any, Protocol, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord

from .errors import PlatformUnavailable, ServiceError
from .kafka_bus import TopicPartition, kafka_errors, make_consumer
from .logging import get_logger
from .settings import InfraSettings

__all__ = [
    "BUSY_FETCH_WAIT_MS",
    "BUSY_SEC",
    "IDLE_FETCH_WAIT_MS",
    "METADATA_MAX_AGE_MS",
    "MISSING_METADATA_RETRY_SEC",
    "Consumer",
    "RebalanceListener",
    "Record",
    "TopicPartition",
    "fetch_wait_ms",
    "record_of",
]

#: A consumed record: ``topic``, ``partition``, ``offset``, ``key`` and ``value`` (bytes).
Record: TypeAlias = ConsumerRecord[bytes, bytes]


def record_of(topic: str, partition: int, key: bytes, value: bytes) -> Record:
    """A record that did not come from a fetch (a task hint's copy of one that will): offset
    -1, timestamped now."""
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=-1,
        timestamp=int(time.time() * 1000),
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key),
        serialized_value_size=len(value),
        headers=(),
    )


#: How long the broker may hold the fetch of a consumer with nothing paused and no records
#: lately. A record arriving on any partition of the request ends the wait at once, so this
#: bounds nothing a user waits for; it sets how often an idle consumer re-lists every
#: partition it owns (an executor with 100 graphs owns over a thousand): a data-less fetch
#: every 3 s per consumer.
IDLE_FETCH_WAIT_MS = 3_000
#: A consumer that got records within this many seconds (and has nothing paused) lets the
#: broker hold its fetch this long: a record on any partition of the request ends the wait at
#: once, and a partition left out of the fetch in flight (its records were still buffered
#: when it was sent) is one whose next record seldom follows within this time. Shorter, the
#: fetches that find nothing cost the broker more than the work: a 10 MB-payload chain took
#: 40 ms of the broker's CPU per invocation at 20 ms, 18 ms at 100 ms.
BUSY_FETCH_WAIT_MS = 100
#: A consumer whose fetches found nothing for this many seconds is idle; busy until then
#: (:data:`BUSY_FETCH_WAIT_MS`).
BUSY_SEC = 1.0
#: How old the consumer's metadata may get: subscriptions are explicit topic lists (a new
#: topic is asked for when it is subscribed to) and partitions are never added; a leader that
#: moved fails a fetch or a connection, which refreshes at once (a leader behind a cut link
#: too: the kernel breaks its connection after ``InfraSettings.kafka_unreachable_ms``, see
#: :func:`.kafka_bus.watch_connections`). An executor's refresh of hundreds of task topics
#: every 5 s took a fifth of its idle CPU.
METADATA_MAX_AGE_MS = 20_000
#: While a subscribed topic has no metadata, ask again after this long, then twice as long
#: each time up to ``_MISSING_METADATA_MAX_SEC`` (a topic that stays missing, e.g. deleted,
#: costs little).
MISSING_METADATA_RETRY_SEC = 0.5
_MISSING_METADATA_MAX_SEC = 5.0
_log = get_logger(__name__)


def fetch_wait_ms(
    *, paused: bool, idle_sec: float, short_ms: int, busy_ms: int, long_ms: int
) -> int:
    """The fetch wait for the next fetch requests: ``short_ms`` while a partition is paused
    (a resume must not wait for a long fetch in flight), ``busy_ms`` until the consumer's
    fetches have found nothing for :data:`BUSY_SEC` (``idle_sec``: how long they have; the
    fetcher may hold more records, whose partition is fetched again once they are handed
    out), else ``long_ms``."""
    if paused:
        return short_ms
    return busy_ms if idle_sec < BUSY_SEC else long_ms


class RebalanceListener(Protocol):
    """Told about rebalances (from within :meth:`Consumer.getmany`, between fetches)."""

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Before the partitions go: commit what is done (the consumer still owns them)."""

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """The new assignment (partitions kept through the rebalance included)."""


class _Listener(ConsumerRebalanceListener):
    """aiokafka's listener class (its ``subscribe`` insists on it) around ours."""

    def __init__(self, listener: RebalanceListener) -> None:
        self._listener = listener

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._listener.on_partitions_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._listener.on_partitions_assigned(set(assigned))


class Consumer:
    """A group member reading topics; the constructor does no I/O.

    ``start()``/``stop()`` (or ``async with``) join and leave the group; the rest is
    aiokafka's consumer API in our types (see the module docstring).
    """

    def __init__(
        self,
        settings: InfraSettings,
        *,
        group_id: str,
        max_poll_records: int = 500,
        session_timeout_ms: int = 10_000,
        client_id: str | None = None,
        idle_fetch_wait_ms: int = IDLE_FETCH_WAIT_MS,
        busy_fetch_wait_ms: int = BUSY_FETCH_WAIT_MS,
        metadata_max_age_ms: int = METADATA_MAX_AGE_MS,
    ) -> None:
        self.settings = settings
        self.group_id = group_id
        self._options: dict[str, Any] = {
            "group_id": group_id,
            "max_poll_records": max_poll_records,
            "session_timeout_ms": session_timeout_ms,
            "client_id": client_id,
            "metadata_max_age_ms": metadata_max_age_ms,
        }
        self._short_wait_ms = settings.kafka_fetch_max_wait_ms
        self._busy_wait_ms = max(busy_fetch_wait_ms, self._short_wait_ms)
        self._long_wait_ms = max(idle_fetch_wait_ms, self._busy_wait_ms)
        # since when getmany has found nothing (None: its last call returned records); a
        # caller too busy to ask (its backlog full) is not idle
        self._empty_since: float | None = float("-inf")
        self._paused: set[TopicPartition] = set()  # paused through this wrapper
        self._unseen: set[str] = set()  # subscribed topics not in the metadata yet
        self._metadata_asked_at = float("-inf")
        self._metadata_retry_sec = MISSING_METADATA_RETRY_SEC
        self._consumer: AIOKafkaConsumer | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and join the group (``PlatformUnavailable`` if Kafka does not answer)."""
        # Built here, not in __init__: aiokafka binds to the running event loop.
        consumer = make_consumer(self.settings, **self._options)
        try:
            async with kafka_errors(f"joining consumer group {self.group_id}"):
                await consumer.start()
        except BaseException as exc:
            with suppress(Exception):
                await consumer.stop()
            if not isinstance(exc, ServiceError):
                raise
            raise PlatformUnavailable(
                f"cannot join consumer group {self.group_id} at {self.settings.kafka_bootstrap} "
                f"({exc.__cause__ or exc}); is Kafka up (`make infra-up`) and "
                "INDEXIFY_KAFKA_BOOTSTRAP its address?"
            ) from exc
        self._consumer = consumer
        self._apply_fetch_wait()

    async def stop(self) -> None:
        """Leave the group (its partitions move at once) and close; idempotent."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            async with kafka_errors(f"leaving consumer group {self.group_id}"):
                await consumer.stop()

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("the consumer is not started: `await consumer.start()` first")
        return self._consumer

    # -- subscription ---------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener | None = None) -> None:
        """Consume exactly ``topics`` (replaces the previous subscription; rebalances)."""
        wrapped = _Listener(listener) if listener is not None else None
        self._started.subscribe(topics=list(topics), listener=wrapped)
        self._unseen = set(topics)
        self._metadata_asked_at = time.monotonic()  # subscribe() asked for it
        self._metadata_retry_sec = MISSING_METADATA_RETRY_SEC

    def unsubscribe(self) -> None:
        self._started.unsubscribe()
        self._unseen = set()

    def assignment(self) -> set[TopicPartition]:
        """The partitions this member owns now."""
        return set(self._started.assignment())

    def owns(self, partition: TopicPartition) -> bool:
        """Whether this member owns ``partition`` now (no copy of the assignment, which lists
        every partition: over a thousand for an executor with 100 graphs)."""
        return partition in self._started.assignment()

    # -- reading --------------------------------------------------------------------------

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]:
        """Records fetched so far (of ``partitions``, or of all assigned ones), at most
        ``max_records``; waits up to ``timeout_ms`` when there are none. Rebalance
        listeners run inside this call."""
        if self._unseen:
            self._ask_for_missing_metadata()
        if timeout_ms > 0 and self._fetch_pending() is False:
            self._wake_fetcher()  # asleep with no fetch out: see _fetch_pending
        async with kafka_errors("fetching records"):
            batch = await self._started.getmany(
                *partitions, timeout_ms=timeout_ms, max_records=max_records
            )
        if batch:
            self._empty_since = None
        elif self._empty_since is None:
            self._empty_since = time.monotonic()
        self._apply_fetch_wait()
        return batch

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop fetching ``partitions`` (still assigned: no rebalance)."""
        self._started.pause(*partitions)
        self._paused.update(partitions)
        self._apply_fetch_wait()

    def resume(self, *partitions: TopicPartition) -> None:
        self._started.resume(*partitions)
        self._paused.difference_update(partitions)
        self._apply_fetch_wait()
        self._wake_fetcher()

    def paused(self) -> set[TopicPartition]:
        """The assigned partitions paused by :meth:`pause` (kept here: asking aiokafka walks
        every assigned partition, over a thousand for an executor with 100 graphs)."""
        if self._paused:
            self._paused.intersection_update(self._started.paused())  # a rebalance unpauses
        return set(self._paused)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Fetch ``partition`` from ``offset`` next."""
        self._started.seek(partition, offset)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit ``{partition: next offset to read}``. ``CommitRejected`` if the group moved
        the partitions meanwhile, ``PlatformUnavailable`` if Kafka is not answering."""
        async with kafka_errors(f"committing offsets of {len(offsets)} partition(s)"):
            await self._started.commit(dict(offsets))

    def _wake_fetcher(self) -> None:
        """Make aiokafka's fetcher look at its partitions again now. Its background routine
        sleeps until a fetch ends, records are handed out, a partition it saw paused is
        resumed, or ``fetcher_timeout`` passes; a resume it was not waiting for (seen under a
        burst of task messages: the partition was not paused when it last looked) left every
        partition of the node unfetched until then, and the executor idle for 2 s with
        hundreds of messages waiting. aiokafka 0.14 (consumer/fetcher.py) has no public call
        for it; its own ``seek_to`` wakes the routine through the same future. Should a later
        aiokafka drop these, nothing breaks: the routine still wakes on its timeout
        (tests/unit/test_kafka_boundary.py checks they are there)."""
        fetcher = getattr(self._consumer, "_fetcher", None)
        notify = getattr(fetcher, "_notify", None)
        if notify is not None:
            notify(getattr(fetcher, "_wait_consume_future", None))

    def _fetch_pending(self) -> bool | None:
        """Whether aiokafka's fetcher has a fetch out (None: it does not say). A caller about
        to wait for records while none is out wakes it (:meth:`_wake_fetcher`): its routine
        can fall asleep for its whole timeout (``FETCHER_WAKE_MS``, 2 s) with nothing asked
        of the broker. Seen under W3 bursts, about one run in ten: a fetch ended in the same
        turn of the loop as records were handed out; the routine, woken by the hand-out,
        dropped the finished fetch from its pending tasks before the fetch's own callback
        cleared the broker from its in-flight set, so it built no request (the broker "had
        one in flight") and then waited on nothing but its timeout, the executor idle with
        hundreds of task messages on the broker. aiokafka 0.14 (consumer/fetcher.py) keeps
        the fetches out in ``_pending_tasks``; without it, this check does nothing."""
        fetcher = getattr(self._consumer, "_fetcher", None)
        pending = getattr(fetcher, "_pending_tasks", None)
        return None if pending is None else bool(pending)

    # -- metadata -------------------------------------------------------------------------

    def _ask_for_missing_metadata(self) -> None:
        """While a subscribed topic has no partitions in the metadata, ask for fresh metadata
        (after :data:`MISSING_METADATA_RETRY_SEC`, doubling); once it has, the group
        rebalances and its partitions are assigned."""
        now = time.monotonic()
        if now - self._metadata_asked_at < self._metadata_retry_sec:
            return
        consumer = self._started
        self._unseen = {t for t in self._unseen if not consumer.partitions_for_topic(t)}
        if not self._unseen:
            return
        if self._metadata_retry_sec == MISSING_METADATA_RETRY_SEC:
            _log.info("subscribed topics have no metadata yet; asking", topics=len(self._unseen))
        self._metadata_asked_at = now
        self._metadata_retry_sec = min(2 * self._metadata_retry_sec, _MISSING_METADATA_MAX_SEC)
        # aiokafka's consumer has no public call for it; its client's (aiokafka 0.14,
        # client.py) returns a future that the next metadata response completes: not
        # awaited, the fetch goes on meanwhile. Without it, the topic waits for the periodic
        # refresh (metadata_max_age_ms).
        client = getattr(consumer, "_client", None)
        force = getattr(client, "force_metadata_update", None)
        if force is not None:
            force()

    # -- the fetch wait -------------------------------------------------------------------

    @property
    def fetch_wait_ms(self) -> int | None:
        """The wait the next fetch requests carry (None before start, or when aiokafka does
        not expose it: then it stays at the short wait the consumer was built with)."""
        fetcher = getattr(self._consumer, "_fetcher", None)
        wait = getattr(fetcher, "_fetch_max_wait_ms", None)
        return wait if isinstance(wait, int) else None

    def _apply_fetch_wait(self) -> None:
        """Set the fetch wait for the next fetch requests (see :func:`fetch_wait_ms`)."""
        wait = fetch_wait_ms(
            paused=bool(self._paused),
            idle_sec=0.0 if self._empty_since is None else time.monotonic() - self._empty_since,
            short_ms=self._short_wait_ms,
            busy_ms=self._busy_wait_ms,
            long_ms=self._long_wait_ms,
        )
        # aiokafka has no API to change ``fetch_max_wait_ms`` after start; its fetcher reads
        # this private attribute whenever it builds a FetchRequest (aiokafka 0.14,
        # consumer/fetcher.py, Fetcher._get_actions_per_node). Should a later aiokafka drop
        # it, nothing breaks: the consumer keeps the short wait it was built with
        # (tests/unit/test_kafka_consumer.py checks the attribute is there).
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
            fetcher._fetch_max_wait_ms = wait
