"""The Kafka adapter: one producer per process, consumers built the same way everywhere.

Why it looks like this:

* Every effect that must survive goes through :class:`KafkaBus` with ``acks="all"`` and the
  idempotent producer, so a publish that returned is durable and a retried publish is not
  duplicated by the producer itself (handlers are idempotent for the rest).
* :meth:`KafkaBus.publish_many` sends a whole batch and only then awaits the acks: one
  round trip per batch instead of one per message, which is what makes fan-out fast.
* Consumers never auto-commit (:func:`make_consumer`): a service commits an offset only after
  the effects of the message are durable; :class:`OffsetTracker` says how far that is when
  the messages of one partition finish out of order. The services consume through
  :class:`services.common.kafka_consumer.Consumer`, which wraps such a consumer.
* :meth:`KafkaBus.dead_letter` parks any message, whatever its size: what would make the
  letter too big for Kafka is stored in MinIO first and referenced from the letter
  (:mod:`.dead_letters`), so a poison message can always be completed and committed.
* A broker whose host drops off the network (no RST: packets just vanish) is noticed within
  ``InfraSettings.kafka_unreachable_ms``, not after a request timeout: every connection of
  every client gets TCP keepalive and ``TCP_USER_TIMEOUT`` (:func:`watch_connections`), so
  the kernel breaks it, its requests in flight fail at once, the client refreshes its
  metadata and retries on the partitions' new leaders, as after a broker's process died; and
  opening a connection is bounded by ``kafka_connect_timeout_ms`` (a cut host answers no SYN).
* aiokafka's exceptions stop here and in :mod:`.kafka_consumer`: :func:`kafka_errors` is the
  one map from them to :mod:`services.common.errors` (:class:`PlatformUnavailable` for
  "Kafka is not answering, retry later", :class:`CommitRejected` for a commit that came after
  a rebalance).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka import client as aiokafka_client
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RebalanceInProgressError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    UnknownMemberIdError,
    UnknownProducerId,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import TopicPartition

from . import metrics
from .blobs import BlobStore
from .dead_letters import ParkedRecord, plan_dead_letter
from .errors import CommitRejected, PayloadTooLarge, PlatformUnavailable, ServiceError
from .logging import get_logger
from .names import Names
from .settings import InfraSettings

__all__ = [
    "MAX_MESSAGE_BYTES",
    "KafkaBus",
    "OffsetTracker",
    "Outgoing",
    "Publisher",
    "SourceRecord",
    "TopicPartition",
    "kafka_errors",
    "make_consumer",
    "watch_connections",
]

#: The broker's ``message.max.bytes`` (infra/kafka/server.properties.template); bigger values
#: go to MinIO, never through Kafka.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
#: Topics get one replica per broker up to this many (``InfraSettings.kafka_replication_factor``
#: overrides): three tolerate one broker lost with ``min.insync.replicas=2``.
MAX_REPLICAS = 3
#: How big a dead letter's JSON may be: the limit less its Kafka key and the record overhead.
_DEAD_LETTER_BUDGET = MAX_MESSAGE_BYTES - 64 * 1024
#: How often aiokafka's fetcher wakes up when nothing told it to (its ``consumer_timeout_ms``;
#: aiokafka's default, 200). Each wake-up walks every assigned partition (over a thousand for
#: an executor with 100 graphs): at 200 ms that was a quarter of an idle executor's CPU. The
#: wake-up paces nothing: a finished fetch, records handed out, a seek, a resume, a new
#: assignment and a metadata update each wake the fetcher at once, and a partition whose
#: records wait to be handed out sets its own (100 ms) backoff.
FETCHER_WAKE_MS = 2_000
_log = get_logger(__name__)


# -- error translation ----------------------------------------------------------------------


#: "Not now": the broker is unreachable or slow, or the group is rebalancing. aiokafka marks
#: some of these ``retriable=False``, so they are listed explicitly.
_TRANSIENT = (
    KafkaConnectionError,
    KafkaTimeoutError,
    RebalanceInProgressError,
    IllegalGenerationError,
    UnknownMemberIdError,
    TimeoutError,
    OSError,
)


#: The idempotent producer's sequence state no longer matches the broker's (typically after
#: the broker restarted and lost it): every later send fails the same way until the producer
#: is replaced by a new one (a new producer id). :class:`KafkaBus` does that and sends the
#: batch once more; a second failure is reported like any "Kafka unavailable" one.
_PRODUCER_STATE = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
)


def _translate(exc: BaseException, what: str) -> ServiceError:
    """The service error for an aiokafka (or socket) failure while doing ``what``."""
    if not isinstance(exc, CommitFailedError):  # a rebalance is no failure of Kafka
        metrics.backend_error("kafka")
    if isinstance(exc, MessageSizeTooLargeError | RecordTooLargeError):
        return PayloadTooLarge(f"{what}: message over the {MAX_MESSAGE_BYTES} byte limit ({exc})")
    if isinstance(exc, CommitFailedError):
        # Harmless: the partitions' new owner gets the uncommitted messages again.
        return CommitRejected(
            f"{what}: the consumer group rebalanced and the partitions moved ({exc}); drop "
            "these offsets, the new owner handles the messages again"
        )
    if isinstance(exc, _TRANSIENT + _PRODUCER_STATE) or (
        isinstance(exc, KafkaError) and exc.retriable
    ):
        return PlatformUnavailable(
            f"{what}: Kafka is unavailable ({exc}); it is retried later. Is the broker up "
            "(`make infra-up`) and does the topic exist?"
        )
    return ServiceError(f"{what}: Kafka refused ({exc})")


@asynccontextmanager
async def kafka_errors(what: str) -> AsyncIterator[None]:
    """Translate aiokafka failures while doing ``what`` (also for consumer calls:
    ``async with kafka_errors("committing offsets"): await consumer.commit(offsets)``)."""
    try:
        yield
    except (KafkaError, TimeoutError, OSError) as exc:
        raise _translate(exc, what) from exc


# -- connections ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Watch:
    connect_timeout_sec: float
    unreachable_ms: int


#: aiokafka's own connection factory, which :func:`_create_conn` wraps.
_AIOKAFKA_CREATE_CONN = aiokafka_client.create_conn
_watch: _Watch | None = None
#: broker address -> until when (``time.monotonic()``) connecting to it fails at once: it let a
#: connection attempt time out (see :func:`_create_conn`)
_unreachable_until: dict[tuple[str, int], float] = {}


def watch_connections(settings: InfraSettings) -> None:
    """Make every Kafka connection this process opens from now on notice an unreachable broker
    (idempotent; the last settings given apply).

    Why: a request in flight to a broker whose host is cut off (cable, switch port, a network
    partition: no RST) otherwise waits out its whole request timeout (30 s), and its partition
    waits with it, although the other brokers moved the leadership away within seconds; a
    producer learns of the move only from that timeout. With ``kafka_unreachable_ms`` the
    kernel breaks such a connection (``TCP_USER_TIMEOUT`` for sent data, keepalive probes for
    an idle one), aiokafka fails its requests with a connection error, refreshes its metadata
    and retries them on the new leaders. A slow but reachable broker is not affected: its
    kernel acknowledges what is sent whatever its process does.

    aiokafka has no hook for socket options or a connect timeout: its client opens every
    connection (bootstrap, leaders, coordinators) through ``aiokafka.client.create_conn``,
    which this replaces with :func:`_create_conn` (tests/unit/test_kafka_connections.py checks
    it is still the name aiokafka calls).
    """
    global _watch
    _watch = _Watch(settings.kafka_connect_timeout_ms / 1000, settings.kafka_unreachable_ms)
    aiokafka_client.create_conn = _create_conn


async def _create_conn(host: str, port: int, **kwargs: Any) -> Any:
    """aiokafka's ``create_conn``, bounded by the connect timeout, its socket set up by
    :func:`detect_unreachable`.

    A broker that let an attempt time out is not tried again for ``kafka_unreachable_ms``:
    attempts fail at once meanwhile (aiokafka counts the node as not ready, asks another node
    for metadata, retries later), as the Java client backs off reconnecting to a node. Without
    that, each metadata refresh, coordinator lookup and send to a stale leader that picks the
    cut host waits out the connect timeout anew, one after the other.
    """
    watch = _watch
    if watch is None:
        return await _AIOKAFKA_CREATE_CONN(host, port, **kwargs)
    address = (host, port)
    if _unreachable_until.get(address, 0.0) > time.monotonic():
        raise KafkaConnectionError(
            f"the broker at {host}:{port} did not answer a connection attempt within "
            f"{watch.connect_timeout_sec:g} s lately; not tried again yet"
        )
    try:
        conn = await asyncio.wait_for(
            _AIOKAFKA_CREATE_CONN(host, port, **kwargs), watch.connect_timeout_sec
        )
    except TimeoutError as exc:
        if watch.unreachable_ms > 0:
            _unreachable_until[address] = time.monotonic() + watch.unreachable_ms / 1000
        # aiokafka counts the node as not ready, refreshes its metadata and tries again
        raise KafkaConnectionError(
            f"no connection to the broker at {host}:{port} within {watch.connect_timeout_sec:g} s"
        ) from exc
    _unreachable_until.pop(address, None)
    writer = getattr(conn, "_writer", None)  # aiokafka 0.14: the connection's StreamWriter
    sock = writer.get_extra_info("socket") if writer is not None else None
    if sock is not None and watch.unreachable_ms > 0:
        detect_unreachable(sock, watch.unreachable_ms)
    return conn


def detect_unreachable(sock: Any, unreachable_ms: int) -> None:
    """Let the kernel break the TCP connection ``sock`` once its peer has acknowledged
    nothing for about ``unreachable_ms``: sent data unacknowledged that long
    (``TCP_USER_TIMEOUT``), or, while idle, keepalive probes (every ``unreachable_ms / 3``,
    at least 1 s) unanswered that long. Options the platform lacks are skipped."""
    probe_sec = max(1, unreachable_ms // 3000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    tcp_options = (
        ("TCP_KEEPIDLE", probe_sec),
        ("TCP_KEEPINTVL", probe_sec),
        # where TCP_USER_TIMEOUT is missing, the probes alone end the connection
        ("TCP_KEEPCNT", max(1, unreachable_ms // 1000 // probe_sec)),
        ("TCP_USER_TIMEOUT", unreachable_ms),
    )
    for name, value in tcp_options:
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


# -- producing ------------------------------------------------------------------------------


class Outgoing(NamedTuple):
    """One message to publish. Its partition is the key's hash, or, with ``spread`` set,
    ``spread`` modulo the topic's partition count: consecutive ``spread`` values land on
    consecutive partitions, so the chunks of one fan-out are shared evenly by the consumers
    of a group (a hash spreads 16 chunks as unevenly as 13 to 3 about one time in fifty),
    and a partition number (:meth:`KafkaBus.partition_for`) is that partition."""

    topic: str
    key: str
    value: bytes
    spread: int | None = None


_Wire = tuple[str, bytes | None, bytes, int | None]
"""``(topic, key bytes, value, spread)`` as :meth:`KafkaBus._send_all` sends it."""


def _wire(item: Outgoing) -> _Wire:
    return item.topic, item.key.encode(), item.value, item.spread


class Publisher(Protocol):
    """What most code needs of Kafka: publish durably (a seam for in-memory fakes)."""

    async def publish(self, topic: str, key: str, value: bytes) -> None: ...

    async def publish_many(self, items: Sequence[Outgoing | tuple[str, str, bytes]]) -> None: ...


SourceRecord = ParkedRecord
"""The parts of a consumed record a dead letter keeps (aiokafka's ``ConsumerRecord``)."""


class KafkaBus:
    """The process's producer and admin client: ``async with KafkaBus(settings) as bus``.

    The constructor does no I/O; entering connects (``PlatformUnavailable`` if Kafka does not
    answer), leaving flushes what is in flight and closes.
    """

    def __init__(
        self,
        settings: InfraSettings,
        *,
        client_id: str | None = None,
        blobs: BlobStore | None = None,
    ):
        self.settings = settings
        self._blobs = blobs
        self.names = Names(settings.prefix)
        self.client_id = client_id or f"{settings.prefix}-{uuid.uuid4().hex[:8]}"
        self._producer: AIOKafkaProducer | None = None
        self._replacing = asyncio.Lock()
        self._admin: AIOKafkaAdminClient | None = None
        self._replicas: int | None = None

    def _new_producer(self) -> AIOKafkaProducer:
        watch_connections(self.settings)
        return AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=0,  # one request in flight per broker batches under load anyway
            compression_type=None,
            max_batch_size=1024 * 1024,
            max_request_size=MAX_MESSAGE_BYTES,
            request_timeout_ms=self.settings.kafka_request_timeout_ms,
        )

    async def __aenter__(self) -> KafkaBus:
        producer = self._new_producer()
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=f"{self.client_id}-admin",
            request_timeout_ms=self.settings.kafka_request_timeout_ms,
        )
        try:
            async with kafka_errors(f"connecting to Kafka at {self.settings.kafka_bootstrap}"):
                await producer.start()
                await admin.start()
        except BaseException:
            await producer.stop()
            await admin.close()
            raise
        self._producer, self._admin = producer, admin
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        producer, admin = self._producer, self._admin
        self._producer = self._admin = None
        try:
            if producer is not None:
                await producer.stop()  # flushes pending sends first
        finally:
            if admin is not None:
                await admin.close()

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("KafkaBus is not started: use `async with KafkaBus(settings)`")
        return self._producer

    @property
    def admin(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            raise RuntimeError("KafkaBus is not started: use `async with KafkaBus(settings)`")
        return self._admin

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, topic: str, key: str, value: bytes) -> None:
        """Send one message and wait until every in-sync replica has it."""
        await self._send_all([(topic, key.encode(), value, None)])

    async def publish_many(self, items: Sequence[Outgoing | tuple[str, str, bytes]]) -> None:
        """Send ``(topic, key, value)`` items (or :class:`Outgoing` s) as one batch; return
        when all are acknowledged.

        On failure some items may have been written: callers retry the whole batch, and
        consumers are idempotent.
        """
        await self._send_all([_wire(Outgoing(*item)) for item in items])

    async def partition_for(self, topic: str, key: str) -> int:
        """The partition a message with ``key`` goes to (aiokafka's default partitioner over
        the topic's partitions), to pin a message there with ``Outgoing(..., spread=it)``."""
        async with kafka_errors(f"reading the partitions of {topic}"):
            partitions = sorted(await self.producer.partitions_for(topic))
        return int(DefaultPartitioner()(key.encode(), partitions, partitions))

    async def dead_letter(self, reason: str, record: SourceRecord) -> None:
        """Park a message that can never be processed, with the reason and its exact bytes,
        whatever its size: parts that would make the letter too big for Kafka go to MinIO
        first, referenced from the letter (:func:`.dead_letters.plan_dead_letter`).
        ``PlatformUnavailable`` when Kafka or MinIO is down (retry:
        :func:`.dead_letters.park` does)."""
        plan = plan_dead_letter(reason, record, self.names, budget=_DEAD_LETTER_BUDGET)
        for key, data in plan.objects.items():
            await self.blobs.put(key, data)
        topic = self.names.deadletter_topic
        await self._send_all([(topic, plan.kafka_key, plan.encoded, None)])
        service = "scheduler" if record.topic == self.names.events_topic else "executor"
        metrics.DEAD_LETTERS.labels(service, metrics.dead_letter_kind(reason)).inc()
        _log.warning(
            "message dead-lettered",
            reason=plan.letter.reason,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            value_bytes=plan.letter.value_size,
            objects=sorted(plan.objects),
        )

    @property
    def blobs(self) -> BlobStore:
        """Where dead letters keep what is too big for Kafka (built on first use)."""
        if self._blobs is None:
            self._blobs = BlobStore(self.settings)
        return self._blobs

    async def _send_all(self, items: Sequence[_Wire]) -> None:
        for topic, _, value, _ in items:
            if len(value) > MAX_MESSAGE_BYTES:
                raise PayloadTooLarge(
                    f"a message of {len(value)} bytes for topic {topic} is over the "
                    f"{MAX_MESSAGE_BYTES} byte limit; store the value in MinIO and send its key"
                )
        what = f"publishing {len(items)} message(s) to {sorted({t for t, _, _, _ in items})}"
        # A producer whose sequence the broker rejects (after a leader moved or a broker lost
        # its state) is replaced and the batch sent again at once, once: every send after it
        # would fail the same way, and a duplicate of what did get written is harmless.
        for attempt in (1, 2):
            producer = self.producer
            results = await self._send_with(producer, items, what)
            stale = next((r for r in results if isinstance(r, _PRODUCER_STATE)), None)
            if stale is not None:
                await self._replace_producer(producer, stale)
                if attempt == 1:
                    continue
            for result in results:
                if isinstance(result, BaseException):
                    raise _translate(result, what) from result
            return

    async def _send_with(
        self, producer: AIOKafkaProducer, items: Sequence[_Wire], what: str
    ) -> list[Any]:
        """Send every item with ``producer``; their acks, or the exception each failed with."""
        futures: list[asyncio.Future[Any]] = []
        try:
            async with kafka_errors(what):
                for topic, key, value, spread in items:
                    partition = None
                    if spread is not None:
                        partition = spread % len(await producer.partitions_for(topic))
                    futures.append(
                        await producer.send(topic, value=value, key=key, partition=partition)
                    )
        finally:
            # Always collect every future, so none is left with an unretrieved exception.
            results = await asyncio.gather(*futures, return_exceptions=True)
        return list(results)

    async def _replace_producer(self, broken: AIOKafkaProducer, exc: BaseException) -> None:
        """Swap a producer whose idempotence state the broker rejects for a new one (once,
        however many sends saw the error); the failed sends are retried by their callers."""
        async with self._replacing:
            if id(self._producer) != id(broken):
                return  # another send replaced it already
            _log.warning(
                "the broker rejected the producer's sequence; replacing it", error=str(exc)
            )
            producer = self._new_producer()
            async with kafka_errors("restarting the Kafka producer"):
                await producer.start()
            self._producer = producer
        with contextlib.suppress(Exception):
            await broken.stop()

    # -- topics -----------------------------------------------------------------------------

    async def list_topics(self) -> set[str]:
        async with kafka_errors("listing topics"):
            return set(await self.admin.list_topics())

    async def replication_factor(self) -> int:
        """How many replicas a topic created here gets: ``kafka_replication_factor``, or the
        number of brokers of the cluster, at most :data:`MAX_REPLICAS` (asked once)."""
        if self._replicas is None:
            configured = self.settings.kafka_replication_factor
            if configured is not None:
                self._replicas = configured
            else:
                async with kafka_errors("describing the Kafka cluster"):
                    brokers = (await self.admin.describe_cluster())["brokers"]
                self._replicas = max(1, min(MAX_REPLICAS, len(brokers)))
        return self._replicas

    async def ensure_topics(self, topics: Mapping[str, int]) -> set[str]:
        """Create the topics of ``{name: partitions}`` that do not exist; return those created.

        Idempotent and safe to race: a topic another process created first counts as there.
        Existing topics keep their partition count.
        """
        existing = await self.list_topics()
        missing = {name: n for name, n in topics.items() if name not in existing}
        if not missing:
            return set()
        replicas = await self.replication_factor()
        new = [
            NewTopic(name, num_partitions=n, replication_factor=replicas)
            for name, n in missing.items()
        ]
        async with kafka_errors(f"creating topics {sorted(missing)}"):
            response = await self.admin.create_topics(new)
        created: set[str] = set()
        for topic, code, *message in response.topic_errors:
            error = for_code(code)
            if code == 0:
                created.add(topic)
            elif error is not TopicAlreadyExistsError:
                detail = message[0] if message and message[0] else error.message
                raise _translate(error(detail), f"creating topic {topic}")
        if created:
            _log.info("topics created", topics=sorted(created))
        return created

    async def delete_topics(self, topics: Iterable[str]) -> None:
        """Delete topics (missing ones are ignored): graph deletion and test cleanup."""
        names = sorted(set(topics) & await self.list_topics())
        if not names:
            return
        async with kafka_errors(f"deleting topics {names}"):
            response = await self.admin.delete_topics(names)
        for topic, code, *_ in response.topic_error_codes:
            error = for_code(code)
            if code != 0 and error is not UnknownTopicOrPartitionError:
                raise _translate(error(), f"deleting topic {topic}")


# -- consuming ------------------------------------------------------------------------------


def make_consumer(
    settings: InfraSettings,
    *,
    group_id: str,
    topics: Sequence[str] = (),
    pattern: str | None = None,
    listener: ConsumerRebalanceListener | None = None,
    max_poll_records: int = 500,
    session_timeout_ms: int = 10_000,
    client_id: str | None = None,
    metadata_max_age_ms: int = 5_000,
) -> AIOKafkaConsumer:
    """A consumer in ``group_id``, subscribed to ``topics`` or ``pattern`` (or neither: the
    caller subscribes later). Not started: ``await consumer.start()`` / ``stop()``.

    Must be called with an event loop running (aiokafka binds to it). No auto-commit: commit
    what :class:`OffsetTracker` says once the effects are durable. ``max_poll_interval_ms`` is
    long because user code runs in worker processes while the loop keeps heartbeating; a short
    ``metadata_max_age_ms`` lets a pattern subscription see new topics within seconds.
    """
    watch_connections(settings)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        client_id=client_id or f"{group_id}-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=max(session_timeout_ms // 3, 100),
        max_poll_interval_ms=30 * 60 * 1000,
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        metadata_max_age_ms=metadata_max_age_ms,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        consumer_timeout_ms=FETCHER_WAKE_MS,
    )
    if topics or pattern:
        consumer.subscribe(topics=list(topics), pattern=pattern, listener=listener)
    return consumer


@dataclass
class _PartitionProgress:
    unfinished: set[int] = field(default_factory=set)
    heap: list[int] = field(default_factory=list)  # started offsets; finished ones lazily popped
    highest_done: int = -1
    committed: int | None = None


class OffsetTracker:
    """How far each partition may be committed when its messages finish out of order.

    ``start(tp, offset)`` when a message is taken on, ``complete(tp, offset)`` when its effects
    are durable. :meth:`committable` gives, per partition, the offset to commit: the lowest
    unfinished one, or the highest completed + 1 when nothing is unfinished. Committing that
    never skips an unfinished message, so a crash redelivers exactly the unfinished ones (and
    possibly some finished ones after them, which idempotent handlers ignore).
    """

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _PartitionProgress] = {}

    def start(self, tp: TopicPartition, offset: int) -> None:
        progress = self._parts.setdefault(tp, _PartitionProgress())
        if offset not in progress.unfinished:
            progress.unfinished.add(offset)
            heapq.heappush(progress.heap, offset)

    def complete(self, tp: TopicPartition, offset: int) -> bool:
        """Mark ``offset`` done; ``False`` if it was not being tracked (e.g. partition revoked
        while the task ran: its result must not move the new owner's offsets)."""
        progress = self._parts.get(tp)
        if progress is None or offset not in progress.unfinished:
            return False
        progress.unfinished.discard(offset)
        progress.highest_done = max(progress.highest_done, offset)
        while progress.heap and progress.heap[0] not in progress.unfinished:
            heapq.heappop(progress.heap)
        return True

    def committable(self) -> dict[TopicPartition, int]:
        """``{partition: next offset to commit}`` for partitions that moved since the last
        :meth:`mark_committed` (all partitions with progress if it is never called)."""
        result: dict[TopicPartition, int] = {}
        for tp, progress in self._parts.items():
            if progress.heap:
                position = progress.heap[0]
            elif progress.highest_done >= 0:
                position = progress.highest_done + 1
            else:
                continue
            if position != progress.committed:
                result[tp] = position
        return result

    def mark_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Record a successful commit, so :meth:`committable` only reports new progress."""
        for tp, offset in offsets.items():
            if (progress := self._parts.get(tp)) is not None:
                progress.committed = offset

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop revoked partitions: their unfinished messages belong to the next owner."""
        for tp in partitions:
            self._parts.pop(tp, None)

    def unfinished(self, tp: TopicPartition | None = None) -> int:
        """How many messages (of ``tp``, or of all partitions) are started and not complete."""
        if tp is not None:
            progress = self._parts.get(tp)
            return len(progress.unfinished) if progress else 0
        return sum(len(p.unfinished) for p in self._parts.values())

    @property
    def partitions(self) -> set[TopicPartition]:
        return set(self._parts)
