"""CoalescingTransport: a response's head and body leave in one send, nothing is lost."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

import httpx
import uvicorn

from services.api.limits import CoalescingTransport, header_timeout_protocol


class FakeTransport:
    def __init__(self) -> None:
        self.sends: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sends.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        self.sends.append(b"".join(lines))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def coalescing() -> tuple[CoalescingTransport, FakeTransport]:
    fake = FakeTransport()
    loop = asyncio.get_running_loop()
    return CoalescingTransport(cast(asyncio.Transport, fake), loop), fake


async def test_head_and_body_go_out_in_one_send() -> None:
    transport, fake = coalescing()
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert fake.sends == []
    assert transport.get_write_buffer_size() > 0
    transport.write(b"body")
    assert fake.sends == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    await asyncio.sleep(0)  # the end of the turn has nothing left to send
    assert fake.sends == [b"HTTP/1.1 200 OK\r\n\r\nbody"]


async def test_a_lone_write_goes_out_at_the_end_of_the_turn() -> None:
    transport, fake = coalescing()
    transport.write(b"head")
    await asyncio.sleep(0)
    assert fake.sends == [b"head"]
    transport.write(b"x" * 100_000)  # large: at once
    assert fake.sends == [b"head", b"x" * 100_000]


async def test_close_sends_what_is_held_first_and_the_rest_is_delegated() -> None:
    transport, fake = coalescing()
    transport.write(b"head")
    transport.close()
    assert fake.sends == [b"head"] and fake.closed
    transport.write(b"late")
    await asyncio.sleep(0)
    assert fake.sends == [b"head"]  # a closed transport gets nothing more
    assert transport.get_extra_info("peername") == "info:peername"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b"x" * 50_000 if scope["path"] == "/big" else b'{"ok":true}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def test_a_real_server_answers_keep_alive_and_closing_requests() -> None:
    port = _free_port()
    config = uvicorn.Config(
        _app, host="127.0.0.1", port=port, http=header_timeout_protocol(5.0), log_config=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(3):  # one connection, kept alive
                response = await client.get("/")
                assert response.json() == {"ok": True}
            assert len((await client.get("/big")).content) == 50_000
            closing = await client.get("/", headers={"Connection": "close"})
            assert closing.json() == {"ok": True}
            assert (await client.get("/")).json() == {"ok": True}  # a new connection
    finally:
        server.should_exit = True
        await task
