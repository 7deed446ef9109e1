"""The Kafka consumer wrapper without a broker: the fetch wait, the error map, the boundary."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import aiokafka.errors as kafka
import pytest
from aiokafka.consumer.fetcher import Fetcher

from services.common.errors import (
    CommitRejected,
    PayloadTooLarge,
    PlatformUnavailable,
    ServiceError,
)
from services.common.kafka_bus import kafka_errors
from services.common.kafka_consumer import BUSY_SEC, fetch_wait_ms

SERVICES = Path(__file__).resolve().parents[2] / "services"


@pytest.mark.parametrize(
    ("paused", "idle_sec", "expected"),
    [
        (False, float("inf"), 500),  # idle: the broker holds the fetch
        (False, BUSY_SEC + 0.1, 500),
        (True, float("inf"), 20),  # a resume must not wait for a long fetch in flight
        (False, 0.0, 100),  # records just came: the fetcher may hold more of them
        (False, BUSY_SEC - 0.1, 100),
        (True, 0.0, 20),
    ],
)
def test_fetch_wait_is_short_while_paused_busy_after_records_and_long_when_idle(
    paused: bool, idle_sec: float, expected: int
) -> None:
    wait = fetch_wait_ms(paused=paused, idle_sec=idle_sec, short_ms=20, busy_ms=100, long_ms=500)
    assert wait == expected


def test_aiokafka_fetcher_reads_the_wait_for_every_request() -> None:
    """The wrapper changes the wait through this private attribute (a newer aiokafka that
    drops it leaves every consumer on the short wait: correct, but costlier)."""
    assert "self._fetch_max_wait_ms" in inspect.getsource(Fetcher._get_actions_per_node)


def test_aiokafka_fetcher_wakes_through_the_future_the_wrapper_sets_on_resume() -> None:
    """``Consumer.resume`` wakes the fetcher's routine through these private names (a newer
    aiokafka that drops them leaves a resumed partition to the routine's timeout)."""
    assert "self._wait_consume_future" in inspect.getsource(Fetcher._fetch_requests_routine)
    assert "self._notify(self._wait_consume_future)" in inspect.getsource(Fetcher.seek_to)
    assert callable(Fetcher._notify)


def test_aiokafka_fetcher_keeps_the_fetches_out_in_the_set_the_wrapper_reads() -> None:
    """``Consumer.getmany`` wakes a fetcher with no fetch out (``Consumer._fetch_pending``):
    the routine adds each fetch to ``_pending_tasks`` and counts its broker in ``_in_flight``
    until the fetch's own callback runs (the race that let it sleep)."""
    source = inspect.getsource(Fetcher._fetch_requests_routine)
    assert "self._pending_tasks.add(task)" in source
    assert "self._in_flight.add(node_id)" in source
    assert "elif node_id in self._in_flight:" in inspect.getsource(Fetcher._get_actions_per_node)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (kafka.CommitFailedError("rebalanced"), CommitRejected),
        (kafka.KafkaConnectionError("down"), PlatformUnavailable),
        (kafka.KafkaTimeoutError(), PlatformUnavailable),
        (kafka.RebalanceInProgressError(), PlatformUnavailable),
        (kafka.NotLeaderForPartitionError(), PlatformUnavailable),  # retriable
        (ConnectionRefusedError(), PlatformUnavailable),
        (TimeoutError(), PlatformUnavailable),
        (kafka.MessageSizeTooLargeError(), PayloadTooLarge),
        (kafka.GroupAuthorizationFailedError(), ServiceError),
        (kafka.IllegalStateError("not subscribed"), ServiceError),
    ],
)
async def test_one_map_from_kafka_errors_to_ours(
    raised: BaseException, expected: type[ServiceError]
) -> None:
    with pytest.raises(ServiceError) as caught:
        async with kafka_errors("doing it"):
            raise raised
    assert type(caught.value) is expected
    assert caught.value.__cause__ is raised
    assert str(caught.value).startswith("doing it: ")


def _kafka_errors() -> list[type[kafka.KafkaError]]:
    found: list[type[kafka.KafkaError]] = []
    for value in vars(kafka).values():
        if not (isinstance(value, type) and issubclass(value, kafka.KafkaError)):
            continue
        if issubclass(value, kafka.BrokerResponseError) and not hasattr(value, "errno"):
            continue  # the abstract base of the broker's error codes
        found.append(value)
    return found


async def test_every_aiokafka_error_becomes_a_service_error() -> None:
    for error_class in _kafka_errors():
        try:
            error = error_class()
        except TypeError:  # needs arguments: not raised bare by aiokafka either
            continue
        with pytest.raises(ServiceError):
            async with kafka_errors("x"):
                raise error


def test_only_the_kafka_adapters_import_aiokafka() -> None:
    offenders = []
    for path in sorted(SERVICES.rglob("*.py")):
        if path.parent.name == "common" and path.name.startswith("kafka_"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name.split(".")[0] == "aiokafka" for name in names):
                offenders.append(str(path.relative_to(SERVICES.parent)))
    assert offenders == [], "use services.common.kafka_consumer / kafka_bus instead"
