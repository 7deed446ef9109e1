"""Dead letters of any size or shape (pure planning), parking that never gives up, and the
supervisor's restart backoff."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass

import pytest

from services.common.dead_letters import (
    MAX_KEY_BYTES,
    MAX_REASON_CHARS,
    ParkedRecord,
    park,
    plan_dead_letter,
    restore,
    retry_delay,
)
from services.common.errors import PlatformUnavailable
from services.common.events import DeadLetter
from services.common.names import Names
from services.devstack import restart_delay

NAMES = Names("p")
BUDGET = 4096


@dataclass(frozen=True)
class _Record:
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    topic: str = "p.events"
    partition: int = 3
    offset: int = 41


def _plan(record: _Record, reason: str = "undecodable", budget: int = BUDGET):  # type: ignore[no-untyped-def]
    return plan_dead_letter(reason, record, NAMES, budget=budget, at=1.0)


def _obj(part: str) -> str:
    return NAMES.deadletter_object("p.events", 3, 41, part)


@pytest.mark.parametrize(
    ("key", "value", "headers"),
    [
        (b"inv-1", b"\x00\xffnot json", ()),  # garbage bytes
        (b"\xff\xfe\x00", b"{}", ()),  # a key that is not UTF-8
        (None, b"[1, 2]", ()),  # no key, JSON of the wrong type
        (b"k", b"", ()),  # empty value
        (b"k", b"x", (("trace", b"\xff"), ("empty", b""))),  # headers
    ],
)
def test_small_messages_are_kept_inline_and_round_trip(
    key: bytes | None, value: bytes, headers: tuple[tuple[str, bytes], ...]
) -> None:
    plan = _plan(_Record(key, value, headers))
    assert plan.objects == {}
    assert plan.kafka_key == key
    letter = DeadLetter.model_validate_json(plan.encoded)
    assert (letter.key, letter.value, letter.headers) == (key, value, headers)
    assert letter.value_size == len(value) and not letter.value_null
    assert (letter.value_object, letter.key_object, letter.headers_object) == (None, None, None)
    assert (letter.topic, letter.partition, letter.offset) == ("p.events", 3, 41)


def test_a_null_value_is_marked() -> None:
    letter = _plan(_Record(b"k", None)).letter
    assert letter.value_null and letter.value == b"" and letter.value_size == 0


def test_a_big_value_moves_to_an_object_and_the_letter_fits() -> None:
    value = bytes(range(256)) * 40  # 10 KiB: over the budget once base64
    plan = _plan(_Record(b"inv-1", value))
    assert plan.objects == {_obj("value"): value}
    assert len(plan.encoded) <= BUDGET
    letter = DeadLetter.model_validate_json(plan.encoded)
    assert letter.value == b"" and letter.value_object == _obj("value")
    assert letter.value_size == len(value)
    assert letter.key == b"inv-1" == plan.kafka_key


def test_a_huge_key_moves_too_and_is_not_the_letters_kafka_key() -> None:
    key = b"\xff" * (3 * BUDGET)
    plan = _plan(_Record(key, b"v" * 100))
    assert plan.kafka_key is None  # over MAX_KEY_BYTES
    assert plan.objects[_obj("key")] == key
    assert len(plan.encoded) <= BUDGET
    letter = plan.letter
    assert letter.key is None and letter.key_object == _obj("key")


def test_a_key_just_over_the_kafka_key_limit_stays_in_the_letter() -> None:
    key = b"k" * (MAX_KEY_BYTES + 1)
    plan = _plan(_Record(key, b"v"), budget=4 * MAX_KEY_BYTES)
    assert plan.kafka_key is None
    assert plan.letter.key == key and plan.objects == {}


def test_huge_headers_move_last_as_json() -> None:
    headers = (("a", b"\x00" * BUDGET), ("b", b"\xff"))
    plan = _plan(_Record(b"k", b"v", headers))
    stored = json.loads(plan.objects[_obj("headers")])
    assert [(n, base64.b64decode(v)) for n, v in stored] == list(headers)
    assert plan.letter.headers == () and plan.letter.headers_object == _obj("headers")
    assert plan.letter.value == b"v", "a small value stays inline"
    assert len(plan.encoded) <= BUDGET


def test_a_long_reason_is_cut() -> None:
    letter = _plan(_Record(b"k", b"v"), reason="x" * 100_000, budget=20_000).letter
    assert len(letter.reason) < MAX_REASON_CHARS + 40
    assert letter.reason.endswith("(100000 characters)")


def test_a_budget_too_small_for_the_bare_letter_is_refused() -> None:
    with pytest.raises(ValueError, match="budget"):
        _plan(_Record(b"k", b"v"), budget=50)


def test_letters_written_before_the_new_fields_still_decode() -> None:
    old = (
        b'{"type":"deadletter","schema_version":1,"reason":"r","topic":"t","partition":0,'
        b'"offset":5,"key":"aw==","value":"dg==","at":1.0}'
    )
    letter = DeadLetter.model_validate_json(old)
    assert (letter.key, letter.value, letter.value_object, letter.value_size) == (
        b"k",
        b"v",
        None,
        None,
    )


@pytest.mark.parametrize(
    ("failures", "delay"), [(0, 0.1), (1, 0.1), (2, 0.2), (4, 0.8), (8, 10.0), (50, 10.0)]
)
def test_dead_letter_retry_delay_doubles_to_a_cap(failures: int, delay: float) -> None:
    assert retry_delay(failures) == pytest.approx(delay)


@pytest.mark.parametrize(
    ("crashes", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (99, 30.0)]
)
def test_supervisor_restart_delay_doubles_to_a_cap(crashes: int, delay: float) -> None:
    assert restart_delay(crashes) == delay


# -- parking never gives up -----------------------------------------------------------------


class _FlakySink:
    """Fails ``failures`` times (as Kafka or MinIO being down would), then parks."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.parked: list[tuple[str, int]] = []

    async def dead_letter(self, reason: str, record: ParkedRecord) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise PlatformUnavailable("MinIO is unavailable")
        self.parked.append((reason, record.offset))


def test_park_retries_every_failure_until_the_letter_is_durable() -> None:
    sink = _FlakySink(failures=2)
    assert asyncio.run(park(sink, "bad", _Record(b"k", b"v"))) is True
    assert sink.parked == [("bad", 41)]


def test_park_gives_up_only_when_told_to_stop() -> None:
    async def run() -> bool:
        stop = asyncio.Event()
        stop.set()
        return await park(_FlakySink(failures=1), "bad", _Record(b"k", b"v"), stop=stop)

    assert asyncio.run(run()) is False, "not parked: the message stays unfinished"


@pytest.mark.parametrize(
    "record",
    [
        _Record(b"k", b"v", (("h", b"\xff"),)),
        _Record(b"\xff" * 3 * BUDGET, bytes(range(256)) * 40, (("a", b"\x00" * BUDGET),)),
        _Record(None, None),
    ],
)
def test_restore_gives_back_the_original_message(record: _Record) -> None:
    plan = _plan(record)
    letter = DeadLetter.model_validate_json(plan.encoded)

    async def read(key: str) -> bytes:
        return plan.objects[key]

    key, value, headers = asyncio.run(restore(letter, read))
    assert (key, value, tuple(headers)) == (record.key, record.value, record.headers)
