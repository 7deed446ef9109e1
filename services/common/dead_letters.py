"""Dead letters: any consumed message, whatever its size or shape, parked with its reason.

Why it looks like this:

* A dead letter keeps the message's exact key, value and headers, as base64 in JSON
  (:class:`~.events.DeadLetter`), which makes bytes a third bigger: a 7.5 MiB value already
  does not fit Kafka's 10 MiB limit (:data:`~.kafka_bus.MAX_MESSAGE_BYTES`).
  :func:`plan_dead_letter` (pure) keeps everything inline when it fits, and otherwise moves
  its value, key or headers to MinIO objects named in the letter, until it
  fits (the biggest part first). So every message can be parked, and its offset committed.
* Parking must not give up and must not skip: :func:`park` retries every failure (Kafka or
  MinIO down, a bucket missing) with a growing delay (:func:`retry_delay`) until the letter
  is durable, logging each failure, or until the caller stops (then the message is not
  complete and its offset is not committed: the next owner parks it).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.common.backoff import doubling_delay

from .events import DeadLetter, encode_message
from .logging import get_logger
from .names import Names

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_REASON_CHARS",
    "DeadLetterPlan",
    "DeadLetterSink",
    "ParkedRecord",
    "park",
    "plan_dead_letter",
    "restore",
    "retry_delay",
]

#: A dead letter carries the original key as its own Kafka key up to this size.
MAX_KEY_BYTES = 4096
#: Reasons are cut to this many characters (an error message may quote a whole payload).
MAX_REASON_CHARS = 4000
_FIRST_DELAY_SEC = 0.1
_MAX_DELAY_SEC = 10.0
_log = get_logger(__name__)

Header = tuple[str, bytes]


class ParkedRecord(Protocol):
    """The parts of a consumed record a dead letter keeps (aiokafka's ``ConsumerRecord``;
    its ``headers`` are read when there are any)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class DeadLetterSink(Protocol):
    """Whatever parks a record (:meth:`.kafka_bus.KafkaBus.dead_letter`)."""

    async def dead_letter(self, reason: str, record: ParkedRecord) -> None: ...


@dataclass(frozen=True)
class DeadLetterPlan:
    """What to write: ``objects`` (MinIO key -> bytes) first, then ``letter`` on the
    dead-letter topic with ``kafka_key`` as its key."""

    letter: DeadLetter
    kafka_key: bytes | None
    objects: dict[str, bytes] = field(default_factory=dict)

    @property
    def encoded(self) -> bytes:
        return encode_message(self.letter)


def record_headers(record: ParkedRecord) -> tuple[Header, ...]:
    """The record's headers as ``(name, bytes)`` pairs (none for records without any)."""
    raw = getattr(record, "headers", None) or ()
    return tuple((str(name), bytes(value or b"")) for name, value in raw)


def plan_dead_letter(
    reason: str,
    record: ParkedRecord,
    names: Names,
    *,
    budget: int,
    at: float | None = None,
) -> DeadLetterPlan:
    """The dead letter of ``record``, at most ``budget`` bytes once encoded: inline when it
    fits, else with the biggest of the value, the key and the headers moved to an object
    named by :meth:`Names.deadletter_object`, then the next biggest, until it fits
    (``ValueError`` if even the bare letter is over)."""
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS] + f"... ({len(reason)} characters)"
    key, value = record.key, record.value
    headers = record_headers(record)
    fields: dict[str, object] = {
        "reason": reason,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": key,
        "value": value or b"",
        "value_size": len(value or b""),
        "value_null": value is None,
        "headers": headers,
    }
    if at is not None:
        fields["at"] = at
    kafka_key = key if key is not None and len(key) <= MAX_KEY_BYTES else None
    objects: dict[str, bytes] = {}

    def where(part: str) -> str:
        return names.deadletter_object(record.topic, record.partition, record.offset, part)

    moves: Sequence[tuple[str, str, object, bytes | None]] = sorted(
        (
            ("value", "value_object", b"", value),
            ("key", "key_object", None, key),
            ("headers", "headers_object", (), _headers_json(headers)),
        ),
        key=lambda move: -len(move[3] or b""),
    )
    letter = DeadLetter.model_validate(fields)
    for part, ref, empty, data in moves:
        if len(encode_message(letter)) <= budget:
            break
        if data:
            objects[where(part)] = data
            fields[part], fields[ref] = empty, where(part)
            letter = DeadLetter.model_validate(fields)
    size = len(encode_message(letter))
    if size > budget:
        raise ValueError(f"a dead letter of {size} bytes is over the {budget} byte budget")
    return DeadLetterPlan(letter=letter, kafka_key=kafka_key, objects=objects)


def _headers_json(headers: tuple[Header, ...]) -> bytes | None:
    if not headers:
        return None
    return json.dumps([[n, base64.b64encode(v).decode()] for n, v in headers]).encode()


async def restore(
    letter: DeadLetter, read: Callable[[str], Awaitable[bytes]]
) -> tuple[bytes | None, bytes | None, list[Header]]:
    """The original message's ``(key, value, headers)``, reading the parts kept in objects
    with ``read`` (``BlobStore.get``): what a replay publishes again."""
    key = await read(letter.key_object) if letter.key_object else letter.key
    value: bytes | None = await read(letter.value_object) if letter.value_object else letter.value
    if letter.value_null:
        value = None
    headers = list(letter.headers)
    if letter.headers_object:
        stored = json.loads(await read(letter.headers_object))
        headers = [(str(name), base64.b64decode(data)) for name, data in stored]
    return key, value, headers


def retry_delay(failures: int) -> float:
    """The wait after ``failures`` failures in a row: 0.1 s doubling, at most 10 s."""
    return doubling_delay(failures, _FIRST_DELAY_SEC, _MAX_DELAY_SEC)


async def park(
    sink: DeadLetterSink,
    reason: str,
    record: ParkedRecord,
    *,
    stop: asyncio.Event | None = None,
) -> bool:
    """Dead-letter ``record``, trying again after every failure (with :func:`retry_delay`)
    until it is durable (``True``) or ``stop`` is set (``False``: not parked, so the message
    is not complete)."""
    failures = 0
    while True:
        try:
            await sink.dead_letter(reason, record)
            return True
        except Exception as exc:
            failures += 1
            delay = retry_delay(failures)
            _log.warning(
                "dead-lettering failed; retrying",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                error=f"{type(exc).__name__}: {exc}",
                failures=failures,
                retry_in=delay,
            )
        if stop is None:
            await asyncio.sleep(delay)
            continue
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            continue
        return False
