"""What ``indexify-cli topics`` and ``indexify-cli deadletters`` read from Kafka.

Plain async functions returning plain rows, so the CLI only renders. Nothing here joins a
consumer group or commits an offset, so inspecting a running system never disturbs it.

Fast with thousands of topics: one metadata request describes every topic (partitions and
leaders), and offsets are asked for in batches, one ``ListOffsets`` request per broker per
batch, after the reader learned every topic's leaders in one metadata update (asking
aiokafka's consumer for offsets of topics it does not know yet makes it learn them one
topic per round trip). A broker that does not answer in time is reported as slow, with the
time it was given; one that refuses connections as down.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from aiokafka.structs import TopicPartition
from pydantic import ValidationError

from .blobs import BlobStore
from .dead_letters import restore
from .errors import ServiceError
from .events import DeadLetter
from .kafka_bus import MAX_MESSAGE_BYTES
from .names import Names
from .redis_calls import REDIS_DOWN, text
from .settings import InfraSettings
from .state_store import StateStore

__all__ = [
    "DEFAULT_TIMEOUT_SEC",
    "DeadLetterRow",
    "KafkaToolError",
    "LagRow",
    "PartitionRow",
    "TopicRow",
    "consumer_lag",
    "describe_topic",
    "list_topics",
    "mark_handled",
    "read_deadletters",
    "replay_deadletters",
    "resolve_groups",
    "short_group_name",
]

DEFAULT_TIMEOUT_SEC = 10.0
#: partitions per ListOffsets batch (each batch is one request per broker)
OFFSETS_BATCH = 2000
_T = TypeVar("_T")


class KafkaToolError(Exception):
    """Kafka did not answer (down or too slow), or the topic or group asked for does not
    exist; the message says which, and what to do."""


@dataclass(frozen=True)
class TopicRow:
    name: str
    partitions: int
    messages: int


@dataclass(frozen=True)
class PartitionRow:
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    earliest: int
    latest: int


@dataclass(frozen=True)
class LagRow:
    group: str
    topic: str
    partition: int
    committed: int
    latest: int

    @property
    def lag(self) -> int:
        return max(0, self.latest - max(self.committed, 0))


@dataclass(frozen=True)
class DeadLetterRow:
    offset: int
    partition: int
    letter: DeadLetter | None
    raw: bytes
    handled: bool = False

    @property
    def ref(self) -> str:
        """How ``deadletters --mark-handled`` names it: ``<partition>:<offset>``."""
        return f"{self.partition}:{self.offset}"


# -- consumer groups by their short names ---------------------------------------------------


def short_group_name(group: str, prefix: str) -> str:
    """``<prefix>.indexify-scheduler`` -> ``scheduler`` (what ``lag --group`` accepts)."""
    name = group.removeprefix(f"{prefix}.")
    return name.removeprefix("indexify-")


def resolve_groups(asked: str, existing: Iterable[str], prefix: str) -> list[str]:
    """The groups of ``existing`` that ``asked`` names: a full name, the name without the
    prefix, or the short name (``scheduler``, ``executors``; a missing or extra final ``s``
    is forgiven). Empty when none does."""
    groups = sorted(set(existing))
    if asked in groups:
        return [asked]
    ours = [g for g in groups if g.startswith(f"{prefix}.")]
    wanted = asked.removeprefix(f"{prefix}.")
    for name in (lambda g: g.removeprefix(f"{prefix}."), lambda g: short_group_name(g, prefix)):
        found = [g for g in ours if name(g) == wanted]
        if found:
            return found
    singular = wanted.removeprefix("indexify-").rstrip("s")
    return [g for g in ours if short_group_name(g, prefix).rstrip("s") == singular]


# -- talking to Kafka -----------------------------------------------------------------------


async def _bounded(
    what: str, settings: InfraSettings, awaitable: Awaitable[_T], timeout: float
) -> _T:
    """``awaitable`` within ``timeout`` s, Kafka's errors said as what they mean."""
    where = settings.kafka_bootstrap
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except (TimeoutError, KafkaTimeoutError) as exc:
        raise KafkaToolError(
            f"{what}: Kafka at {where} did not answer within {timeout:g} s (it is reachable "
            "but slow or overloaded); retry, or allow more time with --timeout"
        ) from exc
    except (KafkaConnectionError, OSError) as exc:
        raise KafkaToolError(
            f"{what}: cannot connect to Kafka at {where} ({exc}); start it (`make infra-up` "
            "in the repository) or point INDEXIFY_KAFKA_BOOTSTRAP at it"
        ) from exc
    except KafkaError as exc:
        raise KafkaToolError(f"{what}: Kafka at {where} refused: {exc!r}") from exc


@asynccontextmanager
async def _admin(settings: InfraSettings, timeout: float) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=int(timeout * 1000)
    )
    try:
        await _bounded("connecting", settings, admin.start(), timeout)
        yield admin
    finally:
        await admin.close()


@asynccontextmanager
async def _reader(settings: InfraSettings, timeout: float) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer outside any group: reads offsets and records, commits nothing."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=int(timeout * 1000),
    )
    try:
        await _bounded("connecting", settings, consumer.start(), timeout)
        yield consumer
    finally:
        await consumer.stop()


async def _describe(
    admin: AIOKafkaAdminClient,
    settings: InfraSettings,
    timeout: float,
    topics: list[str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Partitions (with leaders and replicas) of ``topics``, or of every topic: one
    metadata request. Topics that do not exist are left out."""
    described = await _bounded(
        "describing topics", settings, admin.describe_topics(topics), timeout
    )
    result: dict[str, list[dict[str, Any]]] = {}
    for item in described:
        if item.get("error_code"):
            continue
        result[item["topic"]] = sorted(item["partitions"], key=lambda p: p["partition"])
    return result


async def _offsets(
    consumer: AIOKafkaConsumer,
    settings: InfraSettings,
    timeout: float,
    partitions: Iterable[TopicPartition],
    *,
    earliest_too: bool = True,
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """Earliest and latest offsets of ``partitions``, in batches of :data:`OFFSETS_BATCH`.

    The partitions are assigned (and paused: nothing is fetched) first, which makes the
    reader learn all their leaders in one metadata update."""
    tps = sorted(set(partitions))
    if not tps:
        return {}, {}
    consumer.assign(tps)
    consumer.pause(*tps)
    earliest: dict[TopicPartition, int] = {}
    latest: dict[TopicPartition, int] = {}
    for start in range(0, len(tps), OFFSETS_BATCH):
        batch = tps[start : start + OFFSETS_BATCH]
        if earliest_too:
            earliest.update(
                await _bounded(
                    "reading offsets", settings, consumer.beginning_offsets(batch), timeout
                )
            )
        latest.update(
            await _bounded("reading offsets", settings, consumer.end_offsets(batch), timeout)
        )
    return earliest, latest


async def list_topics(
    settings: InfraSettings, *, everything: bool = False, timeout: float = DEFAULT_TIMEOUT_SEC
) -> list[TopicRow]:
    """Topics of ``settings.prefix`` (or every topic) with partitions and retained messages."""
    async with _admin(settings, timeout) as admin:
        described = await _describe(admin, settings, timeout)
    mine = {
        topic: partitions
        for topic, partitions in described.items()
        if not topic.startswith("__") and (everything or topic.startswith(f"{settings.prefix}."))
    }
    async with _reader(settings, timeout) as consumer:
        tps = [TopicPartition(t, p["partition"]) for t, ps in mine.items() for p in ps]
        earliest, latest = await _offsets(consumer, settings, timeout, tps)
    counts = dict.fromkeys(mine, 0)
    for tp, end in latest.items():
        counts[tp.topic] += end - earliest.get(tp, end)
    return [TopicRow(topic, len(mine[topic]), counts[topic]) for topic in sorted(mine)]


async def describe_topic(
    settings: InfraSettings, topic: str, *, timeout: float = DEFAULT_TIMEOUT_SEC
) -> list[PartitionRow]:
    async with _admin(settings, timeout) as admin:
        partitions = (await _describe(admin, settings, timeout, [topic])).get(topic)
    if not partitions:
        raise KafkaToolError(
            f"topic {topic!r} does not exist; `indexify-cli topics list --all` shows the topics"
        )
    async with _reader(settings, timeout) as consumer:
        tps = [TopicPartition(topic, p["partition"]) for p in partitions]
        earliest, latest = await _offsets(consumer, settings, timeout, tps)
    return [
        PartitionRow(
            partition=p["partition"],
            leader=p["leader"],
            replicas=tuple(p["replicas"]),
            isr=tuple(p["isr"]),
            earliest=earliest[TopicPartition(topic, p["partition"])],
            latest=latest[TopicPartition(topic, p["partition"])],
        )
        for p in partitions
    ]


async def consumer_lag(
    settings: InfraSettings, group: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_SEC
) -> list[LagRow]:
    """Committed offset, latest offset and lag per partition of ``group`` (a full or short
    name, see :func:`resolve_groups`; default: every consumer group of ``settings.prefix``)."""
    async with _admin(settings, timeout) as admin:
        listed = await _bounded(
            "listing consumer groups", settings, admin.list_consumer_groups(), timeout
        )
        existing = [str(g[0]) for g in listed]
        if group is None:
            groups = sorted(g for g in existing if g.startswith(f"{settings.prefix}."))
        else:
            groups = resolve_groups(group, existing, settings.prefix)
            if not groups:
                known = sorted(
                    short_group_name(g, settings.prefix)
                    for g in existing
                    if g.startswith(f"{settings.prefix}.")
                )
                raise KafkaToolError(
                    f"no consumer group {group!r} of prefix {settings.prefix!r}; its groups "
                    f"are {', '.join(known) or 'none (no service consumed yet)'}"
                )
        answers = await asyncio.gather(
            *(
                _bounded(
                    f"reading offsets of group {name}",
                    settings,
                    admin.list_consumer_group_offsets(name),
                    timeout,
                )
                for name in groups
            )
        )
    committed = {
        name: {tp: meta.offset for tp, meta in offsets.items()}
        for name, offsets in zip(groups, answers, strict=True)
    }
    async with _reader(settings, timeout) as consumer:
        all_tps = {tp for offsets in committed.values() for tp in offsets}
        _, latest = await _offsets(consumer, settings, timeout, all_tps, earliest_too=False)
    return [
        LagRow(name, tp.topic, tp.partition, offset, latest.get(tp, offset))
        for name, offsets in committed.items()
        for tp, offset in sorted(offsets.items())
    ]


# -- dead letters ---------------------------------------------------------------------------


async def read_deadletters(
    settings: InfraSettings,
    limit: int = 20,
    *,
    include_handled: bool = False,
    timeout: float = DEFAULT_TIMEOUT_SEC,
) -> list[DeadLetterRow]:
    """The last ``limit`` dead letters per partition of ``<prefix>.deadletter``, oldest
    first; those marked handled (:func:`mark_handled`) only with ``include_handled``."""
    topic = Names(settings.prefix).deadletter_topic
    async with _admin(settings, timeout) as admin:
        partitions = (await _describe(admin, settings, timeout, [topic])).get(topic)
    if not partitions:
        raise KafkaToolError(
            f"topic {topic!r} does not exist; start the API once (it creates it) or run "
            "`python -m services.common.bootstrap`"
        )
    handled = await _handled(settings)
    async with _reader(settings, timeout) as consumer:
        tps = [TopicPartition(topic, p["partition"]) for p in partitions]
        earliest, latest = await _offsets(consumer, settings, timeout, tps)
        consumer.resume(*tps)
        wanted: dict[TopicPartition, int] = {}
        for tp in tps:
            start = max(earliest[tp], latest[tp] - limit)
            consumer.seek(tp, start)
            if latest[tp] > start:
                wanted[tp] = latest[tp]
        rows: list[DeadLetterRow] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while wanted and asyncio.get_running_loop().time() < deadline:
            batch = await _bounded(
                "reading dead letters", settings, consumer.getmany(timeout_ms=500), timeout
            )
            for tp, records in batch.items():
                rows.extend(
                    _dead_letter_row(r.partition, r.offset, r.value, handled)
                    for r in records
                    if tp in wanted and r.offset < wanted[tp]
                )
            for tp in list(wanted):
                if await consumer.position(tp) >= wanted[tp]:
                    del wanted[tp]
    shown = [r for r in rows if include_handled or not r.handled]
    return sorted(shown, key=lambda r: (r.letter.at if r.letter else 0.0, r.offset))


def _dead_letter_row(
    partition: int, offset: int, value: bytes | None, handled: set[str]
) -> DeadLetterRow:
    raw = value or b""
    try:
        letter: DeadLetter | None = DeadLetter.model_validate_json(raw)
    except ValidationError:
        letter = None
    return DeadLetterRow(
        offset=offset,
        partition=partition,
        letter=letter,
        raw=raw,
        handled=f"{partition}:{offset}" in handled,
    )


async def _handled(settings: InfraSettings) -> set[str]:
    """``<partition>:<offset>`` of the dead letters marked handled (kept in Redis)."""
    key = Names(settings.prefix).handled_deadletters_key
    try:
        async with StateStore(settings) as store:
            return {text(ref) for ref in await store.redis.hkeys(key)}
    except REDIS_DOWN as exc:
        raise KafkaToolError(f"reading handled dead letters: Redis is unavailable ({exc})") from exc
    except ServiceError as exc:  # PlatformUnavailable from the store's ping
        raise KafkaToolError(f"reading handled dead letters: {exc}") from exc


async def mark_handled(settings: InfraSettings, refs: Sequence[str], note: str = "") -> list[str]:
    """Record the dead letters ``<partition>:<offset>`` of ``refs`` as handled (listing then
    hides them); returns the refs recorded. Marking one twice keeps its first record."""
    for ref in refs:
        partition, sep, offset = ref.partition(":")
        if not (sep and partition.isdigit() and offset.isdigit()):
            raise KafkaToolError(
                f"{ref!r} names no dead letter: use <partition>:<offset> as listed by "
                "`indexify-cli deadletters`"
            )
    if not refs:
        return []
    key = Names(settings.prefix).handled_deadletters_key
    record = json.dumps({"at": time.time(), "note": note})
    try:
        async with StateStore(settings) as store, store.redis.pipeline(False) as pipe:
            for ref in refs:
                pipe.hsetnx(key, ref, record)
            await pipe.execute()
    except REDIS_DOWN as exc:
        raise KafkaToolError(f"marking dead letters handled: Redis is unavailable ({exc})") from exc
    except ServiceError as exc:  # PlatformUnavailable from the store's ping
        raise KafkaToolError(f"marking dead letters handled: {exc}") from exc
    return list(refs)


async def replay_deadletters(
    settings: InfraSettings, rows: list[DeadLetterRow], *, timeout: float = DEFAULT_TIMEOUT_SEC
) -> int:
    """Publish each dead letter's original bytes to its original topic again (after a fix)."""
    letters = [r.letter for r in rows if r.letter is not None]
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        max_request_size=MAX_MESSAGE_BYTES,
    )
    blobs = BlobStore(settings)  # parts too big for the letter were kept in MinIO
    await _bounded("connecting", settings, producer.start(), timeout)
    try:
        for letter in letters:
            key, value, headers = await restore(letter, blobs.get)
            await _bounded(
                f"publishing to {letter.topic}",
                settings,
                producer.send_and_wait(letter.topic, value, key=key, headers=headers),
                timeout,
            )
    finally:
        await producer.stop()
    return len(letters)
