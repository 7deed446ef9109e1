"""Live executors: each one's labels, worker slots and last heartbeat, in one Redis hash."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict

from .redis_calls import RedisRepository

__all__ = ["ExecutorInfo", "ExecutorRegistry"]


class ExecutorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    labels: dict[str, str]
    concurrency: int
    running: int = 0
    heartbeat_at: float


class ExecutorRegistry(RedisRepository):
    """Heartbeats of executors (``executors()`` lists the ones heard from recently)."""

    async def heartbeat(self, info: ExecutorInfo) -> None:
        await self._call(
            self._redis.hset(self.names.executors_key, info.id, info.model_dump_json())
        )

    async def remove_executor(self, executor_id: str) -> None:
        await self._call(self._redis.hdel(self.names.executors_key, executor_id))

    async def executors(self, max_age_sec: float = 30.0) -> list[ExecutorInfo]:
        raw = await self._call(self._redis.hgetall(self.names.executors_key))
        now = time.time()
        infos = [ExecutorInfo.model_validate_json(v) for v in raw.values()]
        return [i for i in infos if now - i.heartbeat_at <= max_age_sec]
