"""Replays in Redis: one invocation's next generation, and backfills of a whole graph.

A replay computes an invocation again in place (see :mod:`indexify.engine.engine`): whoever
asks for one takes the invocation's next generation number (``HINCRBY generations`` on its
hash, so two requests never get the same one and a redelivered event is a duplicate for the
scheduler) and marks it ``pending`` (``status``; the scheduler's next save of the state writes
the real one), then publishes ``invocation.replay``.

A backfill (:class:`~indexify.models.Replay`) is kept as a hash with the ids it covers
(fixed at creation: invocations made later are not in it) and the ones in flight with their
generation; schedulers drive the running ones (:mod:`services.scheduler.replays`), one at a
time each, under a lease.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from indexify.models import Replay

from .redis_calls import RedisRepository, ms, text

__all__ = ["ReplayRepository"]

_GENERATIONS_FIELD = "generations"


class ReplayRepository(RedisRepository):
    """Generations of invocations, and the backfills of graphs."""

    async def next_generations(self, invocation_ids: Sequence[str]) -> list[int]:
        """Take the next generation of each invocation and mark it ``pending`` (one round
        trip). Only for invocations that exist."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for inv in invocation_ids:
                pipe.hincrby(self.names.invocation_key(inv), _GENERATIONS_FIELD, 1)
                pipe.hset(self.names.invocation_key(inv), "status", "pending")
            rows = await self._call(pipe.execute())
        return [int(rows[i]) for i in range(0, len(rows), 2)]

    async def restore_status(self, invocation_id: str, status: str) -> None:
        """Undo the ``pending`` mark of a replay that could not be published."""
        await self._call(
            self._redis.hset(self.names.invocation_key(invocation_id), "status", status)
        )

    # -- backfills -------------------------------------------------------------------------

    async def create(self, replay: Replay, invocation_ids: Sequence[str]) -> None:
        names = self.names
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                names.replay_key(replay.id),
                mapping={"record": replay.model_dump_json(), "cursor": 0, "done": 0, "failed": 0},
            )
            if invocation_ids:
                pipe.rpush(names.replay_ids_key(replay.id), *invocation_ids)
            pipe.zadd(
                names.graph_replays_key(replay.namespace, replay.graph),
                {replay.id: replay.created_at},
            )
            pipe.sadd(names.active_replays_key, replay.id)
            await self._call(pipe.execute())

    async def get(self, replay_id: str) -> Replay | None:
        return (await self._get_many([replay_id]))[0]

    async def list_for_graph(self, namespace: str, graph: str, limit: int = 100) -> list[Replay]:
        ids = await self._call(
            self._redis.zrevrange(self.names.graph_replays_key(namespace, graph), 0, limit - 1)
        )
        return [r for r in await self._get_many([text(i) for i in ids]) if r is not None]

    async def _get_many(self, replay_ids: Sequence[str]) -> list[Replay | None]:
        """Each replay with its counters (None: unknown), in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for replay_id in replay_ids:
                pipe.hmget(
                    self.names.replay_key(replay_id), ["record", "done", "failed", "cancelled"]
                )
            rows = await self._call(pipe.execute())
        found: list[Replay | None] = []
        for row in rows:
            if row[0] is None:
                found.append(None)
                continue
            replay = Replay.model_validate_json(row[0])
            replay.done, replay.failed = int(row[1] or 0), int(row[2] or 0)
            if row[3] is not None and replay.status == "running":
                replay.status = "cancelled"
            found.append(replay)
        return found

    async def cancel(self, replay_id: str) -> None:
        """Ask the replay to stop: its driver requests no more invocations."""
        await self._call(
            self._redis.hsetnx(self.names.replay_key(replay_id), "cancelled", time.time())
        )

    async def active(self) -> list[str]:
        return sorted(
            text(i) for i in await self._call(self._redis.smembers(self.names.active_replays_key))
        )

    async def lease(self, replay_id: str, token: str, ttl_sec: float) -> bool:
        """Take or renew the lease on driving the replay (False: another process has it)."""
        key = self.names.replay_lease_key(replay_id)
        if await self._call(self._redis.set(key, token, nx=True, px=ms(ttl_sec))):
            return True
        holder = await self._call(self._redis.get(key))
        if holder is not None and text(holder) == token:
            await self._call(self._redis.pexpire(key, ms(ttl_sec)))
            return True
        return False

    async def release(self, replay_id: str, token: str) -> None:
        key = self.names.replay_lease_key(replay_id)
        holder = await self._call(self._redis.get(key))
        if holder is not None and text(holder) == token:
            await self._call(self._redis.delete(key))

    async def progress(self, replay_id: str) -> tuple[int, bool, dict[str, int]]:
        """``(cursor, cancelled, in flight: invocation id -> generation requested)``."""
        names = self.names
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(names.replay_key(replay_id), ["cursor", "cancelled"])
            pipe.hgetall(names.replay_inflight_key(replay_id))
            head, inflight = await self._call(pipe.execute())
        return (
            int(head[0] or 0),
            head[1] is not None,
            {text(k): int(v) for k, v in inflight.items()},
        )

    async def next_ids(self, replay_id: str, cursor: int, count: int) -> list[str]:
        raw = await self._call(
            self._redis.lrange(self.names.replay_ids_key(replay_id), cursor, cursor + count - 1)
        )
        return [text(r) for r in raw]

    async def start(self, replay_id: str, cursor: int, requested: dict[str, int]) -> None:
        """Record the invocations just given their generations as in flight, and the cursor
        past them (before their events are published: a driver that dies before publishing
        leaves them in flight, and the next one publishes them again)."""
        names = self.names
        async with self._redis.pipeline(transaction=True) as pipe:
            if requested:
                mapping = {inv: str(generation) for inv, generation in requested.items()}
                pipe.hset(names.replay_inflight_key(replay_id), mapping=mapping)  # type: ignore[arg-type]
            pipe.hset(names.replay_key(replay_id), "cursor", cursor)
            await self._call(pipe.execute())

    async def ended(
        self, replay_id: str, invocation_ids: Iterable[str], failed: int, *, gone: int = 0
    ) -> None:
        """Count invocations whose replayed generation ended (``failed`` of them failed),
        and ``gone`` ones deleted before their turn."""
        ids = list(invocation_ids)
        if not ids and not gone:
            return
        names = self.names
        async with self._redis.pipeline(transaction=True) as pipe:
            if ids:
                pipe.hdel(names.replay_inflight_key(replay_id), *ids)
            pipe.hincrby(names.replay_key(replay_id), "done", len(ids) + gone)
            if failed:
                pipe.hincrby(names.replay_key(replay_id), "failed", failed)
            await self._call(pipe.execute())

    async def finish(self, replay: Replay) -> None:
        """Record the replay's end and stop driving it."""
        names = self.names
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(names.replay_key(replay.id), "record", replay.model_dump_json())
            pipe.srem(names.active_replays_key, replay.id)
            pipe.delete(names.replay_inflight_key(replay.id))
            await self._call(pipe.execute())
