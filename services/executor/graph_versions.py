"""The registered graph versions an executor knows, read once.

:class:`.subscription.Subscription` reads every registered version whenever the graphs change
(to know which task topics to consume) and hands them here; the chain planner
(:mod:`.chains`) looks a version up here instead of asking Redis again. A version registered
since the last refresh is read from Redis on first use and kept. Versions are immutable, so
nothing here goes stale; one removed from the registry is simply no longer asked for.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.common.graphs import GraphRecord, GraphRepository

__all__ = ["GraphVersions"]

_Key = tuple[str, str, str]  # (namespace, graph, version)


class GraphVersions:
    """Graph records by ``(namespace, graph, version)``; see the module docstring."""

    def __init__(self, graphs: GraphRepository) -> None:
        self._graphs = graphs
        self._records: dict[_Key, GraphRecord] = {}

    def replace(self, records: Iterable[GraphRecord]) -> None:
        """Every registered version, as just read from Redis."""
        self._records = {(r.namespace, r.name, r.version): r for r in records}

    async def get(self, namespace: str, graph: str, version: str) -> GraphRecord | None:
        key = (namespace, graph, version)
        record = self._records.get(key)
        if record is None:
            record = await self._graphs.get_graph_version(namespace, graph, version)
            if record is not None:
                self._records[key] = record
        return record
