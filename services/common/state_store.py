"""Redis, the system of record: one client shared by small repositories, one per owner.

``StateStore`` owns the connection pool and its lifecycle; the data lives in repositories
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
from .replays import ReplayRepository
from .settings import InfraSettings
from .task_claims import TaskClaims
from .task_hints import TaskHints

__all__ = ["DEFAULT_NAMESPACE", "ExecutorInfo", "GraphRecord", "StateStore"]

_MAX_CONNECTIONS = 64
_POOL_WAIT_SEC = 10.0


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
            socket_timeout=10,
            socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self.invocations = InvocationRepository(self._redis, self.names)
        self.graphs = GraphRepository(self._redis, self.names, self.invocations)
        self.claims = TaskClaims(self._redis, self.names)
        self.delayed = DelayedQueue(self._redis, self.names)
        self.replays = ReplayRepository(self._redis, self.names)
        self.registry = ExecutorRegistry(self._redis, self.names)
        self.progress = ProgressChannels(self._redis, self.names)
        self.hints = TaskHints(self._redis, self.names)

    async def __aenter__(self) -> StateStore:
        await self.ping()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
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
