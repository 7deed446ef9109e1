"""Live executors: each one's labels, worker slots, local queues and last heartbeat, in one
Redis hash."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict

from .redis_calls import RedisRepository

__all__ = ["ExecutorInfo", "ExecutorRegistry", "QueuedTasks", "queued_by_function"]


class QueuedTasks(BaseModel):
    """Tasks of one function waiting on one executor for a worker (fetched or claimed, not
    started; for a batched function, those waiting in its open batch too)."""

    model_config = ConfigDict(extra="forbid")

    namespace: str
    graph: str
    function: str
    depth: int


class ExecutorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    labels: dict[str, str]
    concurrency: int
    running: int = 0
    heartbeat_at: float
    #: the functions with tasks waiting here, as of the heartbeat (none listed: nothing waits)
    queues: list[QueuedTasks] = []


def queued_by_function(executors: list[ExecutorInfo], namespace: str, graph: str) -> dict[str, int]:
    """How many tasks of each function of ``graph`` wait on the live ``executors``."""
    depth: dict[str, int] = {}
    for executor in executors:
        for queue in executor.queues:
            if queue.namespace == namespace and queue.graph == graph:
                depth[queue.function] = depth.get(queue.function, 0) + queue.depth
    return depth


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
