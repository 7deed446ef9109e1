"""Namespaces, graphs and their versions in Redis.

A registered version is immutable; the graph's current version is the one invocations use.
Every registration or deletion bumps an epoch that executors watch to resubscribe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict

from indexify.definition import GraphDefinition

from .names import Names
from .redis_calls import RedisRepository

if TYPE_CHECKING:
    from .invocations import InvocationRepository

__all__ = ["DEFAULT_NAMESPACE", "GraphRecord", "GraphRepository"]

DEFAULT_NAMESPACE = "default"
_GRAPH_RECORDS_CACHED = 256


class GraphRecord(BaseModel):
    """A registered graph version: its definition and where its code is stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str
    name: str
    version: str
    description: str = ""
    created_at: float
    definition: GraphDefinition
    code_key: str
    code_sha256: str = ""
    """SHA-256 of the code as uploaded: a version's code never changes (empty: recorded
    before versions were immutable)."""


class GraphRepository(RedisRepository):
    """Namespaces, graphs and versions (deleting a graph deletes its invocations)."""

    def __init__(
        self, redis: aioredis.Redis, names: Names, invocations: InvocationRepository
    ) -> None:
        super().__init__(redis, names)
        self._invocations = invocations
        self._graph_records: dict[bytes, GraphRecord] = {}

    async def create_namespace(self, namespace: str) -> bool:
        return bool(await self._call(self._redis.sadd(self.names.namespaces_key, namespace)))

    async def namespaces(self) -> list[str]:
        members = await self._call(self._redis.smembers(self.names.namespaces_key))
        return sorted({DEFAULT_NAMESPACE, *(m.decode() for m in members)})

    async def namespace_exists(self, namespace: str) -> bool:
        if namespace == DEFAULT_NAMESPACE:
            return True
        return bool(await self._call(self._redis.sismember(self.names.namespaces_key, namespace)))

    async def put_graph(self, record: GraphRecord) -> tuple[GraphRecord, bool]:
        """Store a graph version and make it current; an unchanged version keeps its record.
        Returns (current, is_new)."""
        current = await self.get_graph(record.namespace, record.name)
        if current is not None and current.version == record.version:
            return current, False
        await self._set_current(record, record.model_dump_json())
        return record, True

    async def add_version(self, record: GraphRecord) -> tuple[GraphRecord, bool]:
        """Record a new version (not yet current) unless it exists: versions are immutable,
        so of two uploads of one version the first wins. Returns (stored, is_new)."""
        added = await self._call(
            self._redis.hsetnx(
                self.names.graph_versions_key(record.namespace, record.name),
                record.version,
                record.model_dump_json(),
            )
        )
        if added:
            return record, True
        stored = await self.get_graph_version(record.namespace, record.name, record.version)
        return (stored or record), False

    async def make_current(self, record: GraphRecord) -> bool:
        """Make a recorded version the graph's current one; False if it already was."""
        current = await self.get_graph(record.namespace, record.name)
        if current is not None and current.version == record.version:
            return False
        await self._set_current(record, record.model_dump_json())
        return True

    async def _set_current(self, record: GraphRecord, raw: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self.names.graphs_key(record.namespace), record.name, raw)
        pipe.hset(self.names.graph_versions_key(record.namespace, record.name), record.version, raw)
        pipe.incr(self.names.graphs_epoch_key)
        await self._call(pipe.execute())

    async def get_graph(self, namespace: str, name: str) -> GraphRecord | None:
        raw = await self._call(self._redis.hget(self.names.graphs_key(namespace), name))
        return self._graph_record(raw) if raw else None

    def _graph_record(self, raw: bytes) -> GraphRecord:
        """Parse a stored record once: every invoke reads its graph's record, and a
        definition is worth parsing once per process, not once per request. Keyed by the
        stored bytes, so a re-registered graph is parsed again."""
        record = self._graph_records.get(raw)
        if record is None:
            if len(self._graph_records) >= _GRAPH_RECORDS_CACHED:
                self._graph_records.clear()
            record = self._graph_records[raw] = GraphRecord.model_validate_json(raw)
        return record

    async def get_graph_version(
        self, namespace: str, name: str, version: str
    ) -> GraphRecord | None:
        raw = await self._call(
            self._redis.hget(self.names.graph_versions_key(namespace, name), version)
        )
        return GraphRecord.model_validate_json(raw) if raw else None

    async def list_graphs(self, namespace: str) -> list[GraphRecord]:
        raw = await self._call(self._redis.hgetall(self.names.graphs_key(namespace)))
        records = [GraphRecord.model_validate_json(v) for v in raw.values()]
        return sorted(records, key=lambda r: r.name)

    async def all_graphs(self) -> list[GraphRecord]:
        records: list[GraphRecord] = []
        for namespace in await self.namespaces():
            records.extend(await self.list_graphs(namespace))
        return records

    async def all_versions(self) -> list[GraphRecord]:
        """Every registered version of every graph (:meth:`all_graphs` lists only the current
        versions), in one round trip after listing the graphs."""
        current = await self.all_graphs()
        pipe = self._redis.pipeline(transaction=False)
        for record in current:
            pipe.hvals(self.names.graph_versions_key(record.namespace, record.name))
        rows = await self._call(pipe.execute())
        records = {(r.namespace, r.name, r.version): r for r in current}
        for row in rows:
            for raw in row:
                record = GraphRecord.model_validate_json(raw)
                records.setdefault((record.namespace, record.name, record.version), record)
        return list(records.values())

    async def delete_graph(self, namespace: str, name: str) -> list[str]:
        """Remove a graph and its invocation index; returns the invocation ids it had."""
        ids = await self._invocations.list_invocations(namespace, name, limit=None)
        states = await self._invocations.load_invocations(ids)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(self.names.graphs_key(namespace), name)
        pipe.delete(self.names.graph_versions_key(namespace, name))
        pipe.delete(self.names.invocations_key(namespace, name))
        for inv in ids:
            state = states[inv][0] if inv in states else None
            pipe.delete(*self._invocations.invocation_keys(inv, state))
        pipe.incr(self.names.graphs_epoch_key)
        await self._call(pipe.execute())
        return ids

    async def graphs_epoch(self) -> int:
        raw = await self._call(self._redis.get(self.names.graphs_epoch_key))
        return int(raw or 0)
