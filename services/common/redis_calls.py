"""Redis access shared by the repositories: the one place where Redis errors are translated.

Every repository (:mod:`.graphs`, :mod:`.invocations`, :mod:`.task_claims`,
:mod:`.executor_registry`, :mod:`.delayed_queue`, :mod:`.progress`) is a
:class:`RedisRepository`: it runs its commands through :meth:`RedisRepository._call` (a
connection problem becomes :class:`PlatformUnavailable`, which callers retry) and its Lua
scripts through :meth:`RedisRepository._scripts` (reloaded if Redis lost its script cache).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import metrics
from .errors import PlatformUnavailable
from .names import Names

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
    """Base of the repositories: the shared client and the key names."""

    def __init__(self, redis: aioredis.Redis, names: Names) -> None:
        self._redis = redis
        self.names = names

    async def _call(self, aw: Awaitable[Any]) -> Any:
        try:
            return await aw
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc

    async def _scripts(self, script: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run ``script`` once per ``(keys, args)`` in one pipeline (see :meth:`_pipeline`)."""
        return await self._pipeline([(script, keys, args) for keys, args in calls])

    async def _pipeline(self, calls: list[ScriptCall]) -> list[Any]:
        """Run each ``(script, keys, args)`` in one pipeline (one round trip; each call atomic
        on its own), answers in order. Calls refused with NOSCRIPT (script cache flushed) are
        re-run after loading their script; no call runs twice."""
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _ in range(3):
            async with self._redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    script, keys, args = calls[i]
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                answers = await pipe.execute(raise_on_error=False)
            missing = []
            for i, answer in zip(todo, answers, strict=True):
                if isinstance(answer, NoScriptError):
                    missing.append(i)
                elif isinstance(answer, Exception):
                    raise answer
                else:
                    results[i] = answer
            if not missing:
                return results
            for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
                script.sha = await self._redis.script_load(script.script)
            todo = missing
        raise ResponseError("NOSCRIPT: the script keeps disappearing from Redis")
