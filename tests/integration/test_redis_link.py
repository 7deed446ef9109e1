"""The Redis link against the real Redis: order under concurrency, error replies in their
place, the NOSCRIPT reload, a connection killed mid-flight, Redis unreachable, a reply
that does not come, wrong credentials.

A reply that is late, or a call that is in flight when its connection is killed, is made with
BLPOP on a key of this test's own: it holds only the link's connection (the link's callers
never send it; here it is the probe). DEBUG SLEEP or CLIENT PAUSE would stop the Redis every
other test shares.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import pytest
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.errors import PlatformUnavailable
from services.common.redis_link import RedisLink
from services.common.settings import InfraSettings
from services.common.state_store import StateStore


async def _until(probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 10.0) -> Any:
    """Await ``probe`` until it answers something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not (value := await probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
    return value


@pytest.fixture
async def link(infra_settings: InfraSettings) -> AsyncIterator[RedisLink]:
    opened = RedisLink.from_url(infra_settings.redis_url, name=f"{infra_settings.prefix}-probe")
    yield opened
    await opened.close()


def _key(settings: InfraSettings, name: str) -> str:
    return f"{settings.prefix}:{name}"


async def _blocked_on(store: StateStore, name: str, command: str) -> int | None:
    """The id of the client named ``name`` while it waits in ``command``."""
    for client in await store.redis.client_list():
        if client.get("name") == name and client.get("cmd") == command:
            return int(client["id"])
    return None


async def test_replies_come_back_in_order_to_many_concurrent_callers(
    store: StateStore, infra_settings: InfraSettings
) -> None:
    link = store.link

    async def caller(i: int) -> None:
        key = _key(infra_settings, f"k{i}")
        for round_ in range(5):
            value = f"{i}-{round_}-é"
            replies = await link.execute([("SET", key, value), ("GET", key), ("ECHO", i)])
            assert replies == [b"OK", value.encode(), str(i).encode()]

    await asyncio.gather(*(caller(i) for i in range(300)))


async def test_a_cancelled_caller_leaves_the_others_their_own_replies(link: RedisLink) -> None:
    await link.execute([("PING",)])
    calls = [asyncio.create_task(link.execute([("ECHO", i)])) for i in range(200)]
    await asyncio.sleep(0)  # every batch is written: its reply is on its way
    for call in calls[::2]:
        call.cancel()
    answers = await asyncio.gather(*calls, return_exceptions=True)
    for i, answer in enumerate(answers):
        if i % 2:
            assert answer == [str(i).encode()]
        else:
            assert isinstance(answer, asyncio.CancelledError)
    assert await link.execute([("ECHO", "after")]) == [b"after"]


async def test_an_error_reply_stands_in_its_place_and_the_others_stand(
    link: RedisLink, infra_settings: InfraSettings
) -> None:
    key = _key(infra_settings, "text")
    replies = await link.execute(
        [("SET", key, "a"), ("INCR", key), ("GET", key), ("EVALSHA", "0" * 40, 0)]
    )
    assert replies[0] == b"OK" and replies[2] == b"a"
    assert type(replies[1]) is ResponseError and "not an integer" in str(replies[1])
    assert isinstance(replies[3], NoScriptError)
    assert await link.execute([("DEL", key)]) == [1]


async def test_a_script_redis_does_not_know_is_loaded_and_run_once(
    store: StateStore, infra_settings: InfraSettings
) -> None:
    """What a flushed script cache (Redis restarted) looks like to ``_pipeline``: a script
    no one loaded yet (its source is new) answers NOSCRIPT, is loaded and run, once."""
    source = f"return redis.call('INCR', KEYS[1]) -- {uuid4().hex}"
    script = store.redis.register_script(source)
    key = _key(infra_settings, "count")
    assert await store.redis.script_exists(script.sha) == [False]
    answers = await store.invocations._pipeline([(script, [key], []), (script, [key], [])])
    assert answers == [1, 2]
    assert await store.redis.get(key) == b"2"
    assert await store.redis.script_exists(script.sha) == [True]


async def test_a_call_in_flight_on_a_killed_connection_is_sent_again(
    store: StateStore, infra_settings: InfraSettings
) -> None:
    link, key = store.link, _key(infra_settings, "queue")
    call = asyncio.create_task(link.execute([("BLPOP", key, 30)]))
    first = await _until(lambda: _blocked_on(store, link.name, "blpop"), "the link's BLPOP")
    assert first == link.client_id
    await store.redis.client_kill_filter(_id=first)

    async def resent() -> int | None:
        found = await _blocked_on(store, link.name, "blpop")
        return found if found != first else None

    second = await _until(resent, "the BLPOP sent again on a new connection")
    assert not call.done()
    await store.redis.rpush(key, "value")
    assert await call == [[key.encode(), b"value"]]
    assert link.client_id == second


async def test_redis_unreachable_is_platform_unavailable_naming_the_address() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: nothing listens
    settings = InfraSettings(prefix=f"t{uuid4().hex[:10]}", redis_url=f"redis://127.0.0.1:{port}/0")
    store = StateStore(settings)
    try:
        with pytest.raises(PlatformUnavailable) as caught:
            await store.invocations.invocation_status("any")
    finally:
        await store.close()
    message = str(caught.value)
    assert f"Error connecting to Redis at 127.0.0.1:{port}" in message
    assert "retry when it is back" in message
    assert isinstance(caught.value.__cause__, RedisConnectionError)


async def test_a_late_reply_times_out_and_the_link_recovers(
    store: StateStore, infra_settings: InfraSettings
) -> None:
    link = RedisLink.from_url(
        infra_settings.redis_url, name=f"{infra_settings.prefix}-late", reply_timeout=0.3
    )
    try:
        await link.execute([("PING",)])
        first = link.client_id
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError, match=r"did not answer within 0\.3 s"):
            await link.execute([("BLPOP", _key(infra_settings, "never"), 30)])
        took = time.monotonic() - started
        assert 0.9 <= took < 5, took  # three tries (two retries) of 0.3 s, with backoff
        assert await link.execute([("PING",)]) == [b"PONG"]
        assert link.client_id not in (None, first)

        async def gone() -> bool:
            ids = {int(c["id"]) for c in await store.redis.client_list()}
            return first not in ids

        await _until(gone, "the timed-out connection to be closed")
    finally:
        await link.close()


async def test_wrong_credentials_are_refused_at_once_with_the_fix(
    infra_settings: InfraSettings,
) -> None:
    parts = urlsplit(infra_settings.redis_url)
    host = parts.netloc.rpartition("@")[2]
    url = urlunsplit(parts._replace(netloc=f":not-the-password@{host}"))
    link = RedisLink.from_url(url, name=f"{infra_settings.prefix}-wrong")
    try:
        started = time.monotonic()
        with pytest.raises(AuthenticationError) as caught:
            await link.execute([("PING",)])
        assert time.monotonic() - started < 1  # not retried
    finally:
        await link.close()
    assert "refused the link's credentials" in str(caught.value)
    assert "INDEXIFY_REDIS_PASSWORD" in str(caught.value)


async def test_a_closed_link_fails_its_calls(link: RedisLink) -> None:
    await link.execute([("PING",)])
    await link.close()
    with pytest.raises(RedisConnectionError, match="closed"):
        await link.execute([("PING",)])
