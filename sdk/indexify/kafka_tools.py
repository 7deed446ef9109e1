"""What ``indexify-cli topics`` and ``indexify-cli deadletters`` read from Kafka.

Plain async functions returning plain rows, so the CLI only renders. Needs the server's
dependencies (aiokafka and :mod:`services.common`): install the server with ``pip install -e .``
from the repository. Nothing here joins a consumer group or commits an offset, so inspecting a
running system never disturbs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from pydantic import ValidationError

from services.common.blobs import BlobStore
from services.common.dead_letters import restore
from services.common.events import DeadLetter
from services.common.kafka_bus import MAX_MESSAGE_BYTES
from services.common.names import Names
from services.common.settings import InfraSettings

__all__ = [
    "DeadLetterRow",
    "KafkaToolError",
    "LagRow",
    "PartitionRow",
    "TopicRow",
    "consumer_lag",
    "describe_topic",
    "list_topics",
    "read_deadletters",
    "replay_deadletters",
]

_TIMEOUT_SEC = 15.0
_T = TypeVar("_T")


class KafkaToolError(Exception):
    """Kafka did not answer, or the topic or group asked for does not exist."""


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


async def _bounded(what: str, settings: InfraSettings, awaitable: Awaitable[_T]) -> _T:
    try:
        return await asyncio.wait_for(awaitable, _TIMEOUT_SEC)
    except (TimeoutError, KafkaError, OSError) as exc:
        raise KafkaToolError(
            f"{what}: Kafka at {settings.kafka_bootstrap} did not answer ({exc!r}); "
            "run `make infra-up` or set INDEXIFY_KAFKA_BOOTSTRAP"
        ) from exc


@asynccontextmanager
async def _admin(settings: InfraSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000
    )
    try:
        await _bounded("connecting", settings, admin.start())
        yield admin
    finally:
        await admin.close()


@asynccontextmanager
async def _reader(settings: InfraSettings) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer outside any group: reads offsets and records, commits nothing."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=10_000,
    )
    try:
        await _bounded("connecting", settings, consumer.start())
        yield consumer
    finally:
        await consumer.stop()


async def _partition_counts(
    admin: AIOKafkaAdminClient, settings: InfraSettings, topics: list[str]
) -> dict[str, list[dict[str, Any]]]:
    described = await _bounded("describing topics", settings, admin.describe_topics(topics))
    result: dict[str, list[dict[str, Any]]] = {}
    for item in described:
        if item.get("error_code"):
            continue
        result[item["topic"]] = sorted(item["partitions"], key=lambda p: p["partition"])
    return result


async def _offsets(
    consumer: AIOKafkaConsumer, settings: InfraSettings, partitions: Iterable[TopicPartition]
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    tps = list(partitions)
    if not tps:
        return {}, {}
    earliest = await _bounded("reading offsets", settings, consumer.beginning_offsets(tps))
    latest = await _bounded("reading offsets", settings, consumer.end_offsets(tps))
    return earliest, latest


async def list_topics(settings: InfraSettings, *, everything: bool = False) -> list[TopicRow]:
    """Topics of ``settings.prefix`` (or every topic) with partitions and retained messages."""
    async with _admin(settings) as admin:
        names = await _bounded("listing topics", settings, admin.list_topics())
        mine = sorted(
            n
            for n in names
            if not n.startswith("__") and (everything or n.startswith(f"{settings.prefix}."))
        )
        partitions = await _partition_counts(admin, settings, mine) if mine else {}
    async with _reader(settings) as consumer:
        tps = [TopicPartition(t, p["partition"]) for t, ps in partitions.items() for p in ps]
        earliest, latest = await _offsets(consumer, settings, tps)
    rows = []
    for topic in mine:
        count = sum(
            latest[tp] - earliest[tp] for tp in latest if tp.topic == topic and tp in earliest
        )
        rows.append(TopicRow(topic, len(partitions.get(topic, [])), count))
    return rows


async def describe_topic(settings: InfraSettings, topic: str) -> list[PartitionRow]:
    async with _admin(settings) as admin:
        partitions = (await _partition_counts(admin, settings, [topic])).get(topic)
    if not partitions:
        raise KafkaToolError(
            f"topic {topic!r} does not exist; `indexify-cli topics list --all` shows the topics"
        )
    async with _reader(settings) as consumer:
        tps = [TopicPartition(topic, p["partition"]) for p in partitions]
        earliest, latest = await _offsets(consumer, settings, tps)
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


async def consumer_lag(settings: InfraSettings, group: str | None = None) -> list[LagRow]:
    """Committed offset, latest offset and lag per partition of ``group`` (default: every
    consumer group of ``settings.prefix``)."""
    async with _admin(settings) as admin:
        if group is not None:
            groups = [group]
        else:
            listed = await _bounded("listing groups", settings, admin.list_consumer_groups())
            groups = sorted(g[0] for g in listed if str(g[0]).startswith(f"{settings.prefix}."))
        committed: dict[str, dict[TopicPartition, int]] = {}
        for name in groups:
            offsets = await _bounded(
                f"reading offsets of group {name}",
                settings,
                admin.list_consumer_group_offsets(name),
            )
            committed[name] = {tp: meta.offset for tp, meta in offsets.items()}
    async with _reader(settings) as consumer:
        all_tps = {tp for offsets in committed.values() for tp in offsets}
        _, latest = await _offsets(consumer, settings, all_tps)
    return [
        LagRow(name, tp.topic, tp.partition, offset, latest.get(tp, offset))
        for name, offsets in committed.items()
        for tp, offset in sorted(offsets.items())
    ]


async def read_deadletters(settings: InfraSettings, limit: int = 20) -> list[DeadLetterRow]:
    """The last ``limit`` dead letters per partition of ``<prefix>.deadletter``, oldest first."""
    topic = Names(settings.prefix).deadletter_topic
    async with _admin(settings) as admin:
        partitions = (await _partition_counts(admin, settings, [topic])).get(topic)
    if not partitions:
        raise KafkaToolError(
            f"topic {topic!r} does not exist; start the API once (it creates it) or run "
            "`python -m services.common.bootstrap`"
        )
    async with _reader(settings) as consumer:
        tps = [TopicPartition(topic, p["partition"]) for p in partitions]
        earliest, latest = await _offsets(consumer, settings, tps)
        consumer.assign(tps)
        wanted: dict[TopicPartition, int] = {}
        for tp in tps:
            start = max(earliest[tp], latest[tp] - limit)
            consumer.seek(tp, start)
            if latest[tp] > start:
                wanted[tp] = latest[tp]
        rows: list[DeadLetterRow] = []
        deadline = asyncio.get_running_loop().time() + _TIMEOUT_SEC
        while wanted and asyncio.get_running_loop().time() < deadline:
            batch = await _bounded(
                "reading dead letters", settings, consumer.getmany(timeout_ms=500)
            )
            for tp, records in batch.items():
                rows.extend(
                    _dead_letter_row(r.partition, r.offset, r.value)
                    for r in records
                    if tp in wanted and r.offset < wanted[tp]
                )
            for tp in list(wanted):
                if await consumer.position(tp) >= wanted[tp]:
                    del wanted[tp]
    return sorted(rows, key=lambda r: (r.letter.at if r.letter else 0.0, r.offset))


def _dead_letter_row(partition: int, offset: int, value: bytes | None) -> DeadLetterRow:
    raw = value or b""
    try:
        letter: DeadLetter | None = DeadLetter.model_validate_json(raw)
    except ValidationError:
        letter = None
    return DeadLetterRow(offset=offset, partition=partition, letter=letter, raw=raw)


async def replay_deadletters(settings: InfraSettings, rows: list[DeadLetterRow]) -> int:
    """Publish each dead letter's original bytes to its original topic again (after a fix)."""
    letters = [r.letter for r in rows if r.letter is not None]
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        max_request_size=MAX_MESSAGE_BYTES,
    )
    blobs = BlobStore(settings)  # parts too big for the letter were kept in MinIO
    await _bounded("connecting", settings, producer.start())
    try:
        for letter in letters:
            key, value, headers = await restore(letter, blobs.get)
            await _bounded(
                f"publishing to {letter.topic}",
                settings,
                producer.send_and_wait(letter.topic, value, key=key, headers=headers),
            )
    finally:
        await producer.stop()
    return len(letters)
