"""Redis access shared by the repositories: the one place where Redis errors are translated.

Every repository (:mod:`.graphs`, :mod:`.invocations`, :mod:`.task_claims`,
:mod:`.executor_registry`, :mod:`.delayed_queue`, :mod:`.progress`) is a
:class:`RedisRepository`: it runs its commands through :meth:`RedisRepository._call` (a
connection problem becomes :class:`PlatformUnavailable`, which callers retry) and its Lua
scripts through :meth:`RedisRepository._scripts` (reloaded if Redis lost its script cache).

Two clients share the work: the hot calls of every invocation (the Lua scripts, and the
reads of invocation state on each task and each GET) go through the lean
:class:`~.redis_link.RedisLink` (:meth:`RedisRepository._commands`, :meth:`_pipeline`);
everything else (pub/sub, scans over many keys, transactions, admin) through redis-py.
Both raise :mod:`redis.exceptions` types, translated here the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import metrics
from .errors import PlatformUnavailable
from .names import Names
from .redis_link import RedisLink

__all__ = ["REDIS_DOWN", "RedisRepository", "ms", "text", "unavailable"]

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
"""The errors that mean Redis cannot be reached right now (retry later)."""


def unavailable(exc: BaseException) -> PlatformUnavailable:
    metrics.backend_error("redis")
    return PlatformUnavailable(f"Redis is unavailable ({exc}); retry when it is back")


def ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


ScriptCall = tuple[Any, list[str], list[Any]]
"""One Lua script call: ``(script, keys, args)``, as :meth:`RedisRepository._pipeline` runs it."""


class RedisRepository:
    """Base of the repositories: the shared clients (redis-py's and the link) and the key
    names."""

    def __init__(self, redis: aioredis.Redis, names: Names, link: RedisLink) -> None:
        self._redis = redis
        self._link = link
        self.names = names

    async def _call(self, aw: Awaitable[Any]) -> Any:
        try:
            return await aw
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc

    async def _commands(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Run ``commands`` on the link in one round trip: their raw replies in order (no
        redis-py response callbacks: convert them yourself); the first error reply is
        raised, as a redis-py pipeline does."""
        replies = await self._link.execute(commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _command(self, *command: Any) -> Any:
        """:meth:`_commands` of one command, Redis errors translated (:meth:`_call`): its
        raw reply."""
        [reply] = await self._call(self._commands([command]))
        return reply

    async def _scripts(self, script: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run ``script`` once per ``(keys, args)`` in one pipeline (see :meth:`_pipeline`)."""
        return await self._pipeline([(script, keys, args) for keys, args in calls])

    async def _script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` once (see :meth:`_pipeline`): its answer."""
        return (await self._pipeline([(script, keys, args)]))[0]

    async def _pipeline(self, calls: list[ScriptCall]) -> list[Any]:
        """Run each ``(script, keys, args)`` on the link in one round trip (each call atomic
        on its own), answers in order. Calls refused with NOSCRIPT (script cache flushed) are
        re-run after loading their script, in one more round trip (SCRIPT LOAD, then the
        calls); no call runs twice (unless the link sends a batch again after losing its
        connection: see :mod:`.redis_link`)."""
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        load: list[Any] = []
        for _ in range(3):
            commands: list[tuple[Any, ...]] = [("SCRIPT", "LOAD", s.script) for s in load]
            for i in todo:
                script, keys, args = calls[i]
                commands.append(("EVALSHA", script.sha, len(keys), *keys, *args))
            answers = await self._link.execute(commands)
            for loaded in answers[: len(load)]:
                if isinstance(loaded, Exception):
                    raise loaded
            missing = []
            for i, answer in zip(todo, answers[len(load) :], strict=True):
                if isinstance(answer, NoScriptError):
                    missing.append(i)
                elif isinstance(answer, Exception):
                    raise answer
                else:
                    results[i] = answer
            if not missing:
                return results
            load = list({id(calls[i][0]): calls[i][0] for i in missing}.values())
            todo = missing
        raise ResponseError("NOSCRIPT: the script keeps disappearing from Redis")
