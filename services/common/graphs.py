"""Namespaces, graphs and their versions in Redis.

A registered version is immutable; the graph's current version is the one invocations use.
Every registration or deletion bumps an epoch that executors watch to resubscribe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict

from indexify.definition import GraphDefinition

from .names import Names
from .redis_calls import RedisRepository
from .redis_link import RedisLink

if TYPE_CHECKING:
    from .invocations import InvocationRepository

__all__ = ["DEFAULT_NAMESPACE", "GraphCache", "GraphRecord", "GraphRepository"]

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
        self,
        redis: aioredis.Redis,
        names: Names,
        link: RedisLink,
        invocations: InvocationRepository,
    ) -> None:
        super().__init__(redis, names, link)
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

    async def get_graph_at_epoch(self, namespace: str, name: str) -> tuple[GraphRecord | None, int]:
        """:meth:`get_graph` and the graphs epoch, in one round trip. The epoch is read
        first: a change after it bumps it past what is returned, so a record kept with
        its epoch is current for as long as the epoch is still that one."""
        return await self._at_epoch(self.names.graphs_key(namespace), name)

    async def get_graph_version_at_epoch(
        self, namespace: str, name: str, version: str
    ) -> tuple[GraphRecord | None, int]:
        """:meth:`get_graph_version` and the graphs epoch, as :meth:`get_graph_at_epoch`."""
        return await self._at_epoch(self.names.graph_versions_key(namespace, name), version)

    async def _at_epoch(self, key: str, field: str) -> tuple[GraphRecord | None, int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self.names.graphs_epoch_key)
            pipe.hget(key, field)
            epoch, raw = await self._call(pipe.execute())
        return (self._graph_record(raw) if raw else None), int(epoch or 0)


_Entry = tuple[GraphRecord, int]


class GraphCache:
    """Graph records kept with the graphs epoch they were read at, for a reader that learns
    the epoch in round trips it makes anyway (the API reads it with an invocation's state,
    or in the transaction that creates one): a kept record is current while the epoch is
    the one it was kept with, since every registration and deletion bumps it
    (:meth:`GraphRepository._set_current`, :meth:`GraphRepository.delete_graph`).

    * :meth:`current`: the graph's current version as last read, and its epoch; the caller
      checks that epoch afterwards and reads again (:meth:`read_current`) if it moved.
    * :meth:`version`: a version read at exactly ``epoch``, else read now.
    """

    def __init__(self, graphs: GraphRepository, limit: int = _GRAPH_RECORDS_CACHED) -> None:
        self._graphs = graphs
        self._limit = limit
        self._current: dict[tuple[str, str], _Entry] = {}
        self._versions: dict[tuple[str, str, str], _Entry] = {}

    def current(self, namespace: str, name: str) -> _Entry | None:
        """The graph's current record as last read, with its epoch (unchecked)."""
        return self._current.get((namespace, name))

    async def read_current(self, namespace: str, name: str) -> tuple[GraphRecord | None, int]:
        """The graph's current record read now (None: not registered), and the epoch."""
        record, epoch = await self._graphs.get_graph_at_epoch(namespace, name)
        if record is None:
            self._current.pop((namespace, name), None)
        else:
            self._keep(self._current, (namespace, name), (record, epoch))
            self._keep(self._versions, (namespace, name, record.version), (record, epoch))
        return record, epoch

    async def version(
        self, namespace: str, name: str, version: str, epoch: int
    ) -> GraphRecord | None:
        """Version ``version`` of the graph as of ``epoch`` (an epoch the caller just read):
        the kept record if it was kept at that epoch, else read now."""
        key = (namespace, name, version)
        found = self._versions.get(key)
        if found is not None and found[1] == epoch:
            return found[0]
        record, read_at = await self._graphs.get_graph_version_at_epoch(namespace, name, version)
        if record is None:
            self._versions.pop(key, None)
        else:
            self._keep(self._versions, key, (record, read_at))
        return record

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is kept of a graph this process just changed (registered, deleted):
        the epoch would tell, this saves finding out."""
        self._current.pop((namespace, name), None)
        for key in [k for k in self._versions if k[0] == namespace and k[1] == name]:
            del self._versions[key]

    def _keep(self, entries: dict[Any, _Entry], key: Any, entry: _Entry) -> None:
        if key not in entries and len(entries) >= self._limit:
            entries.clear()
        entries[key] = entry
