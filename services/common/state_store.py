"""Redis, the system of record: one client shared by small repositories, one per owner.

``StateStore`` owns the clients and their lifecycle: redis-py's connection pool, and the
:class:`~.redis_link.RedisLink` that carries the hot calls of every invocation (Lua scripts,
reads of invocation state) on one pipelining connection. The data lives in repositories
named by what they keep (each translates Redis errors the same way, :mod:`.redis_calls`):

* ``store.graphs``: namespaces, graphs and versions (:mod:`.graphs`);
* ``store.invocations``: invocation state in pieces, stored values, log pointers
  (:mod:`.invocations`);
* ``store.claims``: task claims, leases and recorded results (:mod:`.task_claims`);
* ``store.delayed``: parked retries (:mod:`.delayed_queue`);
* ``store.registry``: live executors (:mod:`.executor_registry`);
* ``store.progress``: progress pub/sub (:mod:`.progress`);
* ``store.hints``: first task messages' head start over pub/sub (:mod:`.task_hints`);
* ``store.replays``: invocation generations and backfills (:mod:`.replays`).

The Lua scripts are ``lua/*.lua``, loaded by name (:mod:`.scripts`).
"""

from __future__ import annotations

import os

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from .delayed_queue import DelayedQueue
from .executor_registry import ExecutorInfo, ExecutorRegistry
from .graphs import DEFAULT_NAMESPACE, GraphRecord, GraphRepository
from .invocations import InvocationRepository
from .names import Names
from .progress import ProgressChannels
from .redis_calls import REDIS_DOWN, unavailable
from .redis_link import RedisLink
from .replays import ReplayRepository
from .settings import InfraSettings
from .task_claims import TaskClaims
from .task_hints import TaskHints

__all__ = ["DEFAULT_NAMESPACE", "ExecutorInfo", "GraphRecord", "StateStore"]

_MAX_CONNECTIONS = 64
_POOL_WAIT_SEC = 10.0
_CONNECT_TIMEOUT_SEC = 5.0
_REPLY_TIMEOUT_SEC = 10.0


class StateStore:
    """The services' Redis: ``async with StateStore(settings) as store: store.graphs...``."""

    def __init__(self, settings: InfraSettings) -> None:
        self.names = Names(settings.prefix)
        # A burst of requests waits for a free connection (up to ``timeout``) instead of
        # failing with "Too many connections" as the default pool does past its limit. A
        # command on a pooled connection that Redis closed (it restarted) is sent again on a
        # new one: every call here is idempotent or guarded by a compare-and-set.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=_MAX_CONNECTIONS,
            timeout=_POOL_WAIT_SEC,
            socket_timeout=_REPLY_TIMEOUT_SEC,
            socket_connect_timeout=_CONNECT_TIMEOUT_SEC,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
        )
        self._redis = aioredis.Redis.from_pool(pool)
        # The same timeouts and retries as the pool's; connects on first use.
        self.link = RedisLink.from_url(
            settings.redis_url,
            name=f"{settings.prefix}-link-{os.getpid()}",
            connect_timeout=_CONNECT_TIMEOUT_SEC,
            reply_timeout=_REPLY_TIMEOUT_SEC,
            retries=2,
            backoff=ExponentialBackoff(cap=0.2, base=0.02),
        )
        redis, names, link = self._redis, self.names, self.link
        self.invocations = InvocationRepository(redis, names, link)
        self.graphs = GraphRepository(redis, names, link, self.invocations)
        self.claims = TaskClaims(redis, names, link)
        self.delayed = DelayedQueue(redis, names, link)
        self.replays = ReplayRepository(redis, names, link)
        self.registry = ExecutorRegistry(redis, names, link)
        self.progress = ProgressChannels(redis, names, link)
        self.hints = TaskHints(redis, names, link)

    async def __aenter__(self) -> StateStore:
        await self.ping()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.link.close()
        await self._redis.aclose()

    @property
    def redis(self) -> aioredis.Redis:
        """The raw client, for tools and tests (services go through the repositories)."""
        return self._redis

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc
