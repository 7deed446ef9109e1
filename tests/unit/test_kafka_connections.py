"""How every Kafka connection notices an unreachable broker (``kafka_bus.watch_connections``),
without a broker: the socket options, the connect timeout, and aiokafka's hook point."""

from __future__ import annotations

import asyncio
import inspect
import socket
import sys
import time
from collections.abc import Iterator

import pytest
from aiokafka import client as aiokafka_client
from aiokafka.errors import KafkaConnectionError

from services.common import kafka_bus
from services.common.settings import InfraSettings


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``watch_connections`` as a service calls it, undone afterwards."""
    monkeypatch.setattr(aiokafka_client, "create_conn", aiokafka_client.create_conn)
    monkeypatch.setattr(kafka_bus, "_watch", None)
    monkeypatch.setattr(kafka_bus, "_unreachable_until", {})
    kafka_bus.watch_connections(
        InfraSettings(kafka_connect_timeout_ms=300, kafka_unreachable_ms=4_000)
    )
    yield


def test_aiokafka_opens_every_connection_through_the_replaced_name() -> None:
    """Bootstrap, leaders and coordinators: all through ``aiokafka.client.create_conn``."""
    for method in (
        aiokafka_client.AIOKafkaClient.bootstrap,
        aiokafka_client.AIOKafkaClient._get_conn,
    ):
        assert "await create_conn(" in inspect.getsource(method)


def test_watching_replaces_the_factory(watched: None) -> None:
    assert aiokafka_client.create_conn is kafka_bus._create_conn


@pytest.mark.skipif(sys.platform != "linux", reason="TCP_USER_TIMEOUT and keepalive: Linux")
def test_a_connection_is_broken_when_its_peer_acknowledges_nothing() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as sock,
    ):
        kafka_bus.detect_unreachable(sock, 4_000)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 4_000
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4


async def test_opening_a_connection_is_bounded(watched: None) -> None:
    """A broker that accepts the connection and never answers (as slow as a cut host's SYN):
    a connection error after the connect timeout, which aiokafka counts as a node not ready;
    the next attempts fail at once for the unreachable time (4 s here)."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        started = time.monotonic()
        with pytest.raises(KafkaConnectionError, match=r"within 0\.3 s"):
            await aiokafka_client.create_conn(host, port, request_timeout_ms=30_000)
        assert time.monotonic() - started < 5
        started = time.monotonic()
        with pytest.raises(KafkaConnectionError, match="not tried again yet"):
            await aiokafka_client.create_conn(host, port, request_timeout_ms=30_000)
        assert time.monotonic() - started < 0.2
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
