"""GraphCache: graph records kept with the graphs epoch they were read at (the API's cache).

A fake repository stands in for Redis: it holds the current record of each graph, every
version, and the epoch that every registration and deletion bumps (as GraphRepository does).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from indexify import Graph, indexify_function
from services.common.graphs import GraphCache, GraphRecord, GraphRepository


@indexify_function()
def first(x: int) -> int:
    return x + 1


@indexify_function()
def second(x: int) -> int:
    return x * 2


def record(name: str = "g", *, two_steps: bool = False) -> GraphRecord:
    graph = Graph(name=name, start_node=first)
    if two_steps:
        graph.add_edge(first, second)
    definition = graph.definition()
    return GraphRecord(
        namespace="default",
        name=name,
        version=definition.version,
        created_at=1.0,
        definition=definition,
        code_key=f"code/{name}/{definition.version}",
    )


class FakeGraphs:
    """What GraphCache uses of GraphRepository, in memory, counting its reads."""

    def __init__(self) -> None:
        self.epoch = 0
        self.current: dict[tuple[str, str], GraphRecord] = {}
        self.versions: dict[tuple[str, str, str], GraphRecord] = {}
        self.reads = 0

    def register(self, r: GraphRecord) -> None:
        self.current[(r.namespace, r.name)] = r
        self.versions[(r.namespace, r.name, r.version)] = r
        self.epoch += 1

    def delete(self, namespace: str, name: str) -> None:
        self.current.pop((namespace, name), None)
        for key in [k for k in self.versions if k[:2] == (namespace, name)]:
            del self.versions[key]
        self.epoch += 1

    async def get_graph_at_epoch(self, namespace: str, name: str) -> tuple[Any, int]:
        self.reads += 1
        return self.current.get((namespace, name)), self.epoch

    async def get_graph_version_at_epoch(
        self, namespace: str, name: str, version: str
    ) -> tuple[Any, int]:
        self.reads += 1
        return self.versions.get((namespace, name, version)), self.epoch


def cache_of(fake: FakeGraphs, limit: int = 256) -> GraphCache:
    return GraphCache(cast(GraphRepository, fake), limit)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_current_is_kept_with_the_epoch_it_was_read_at() -> None:
    fake, v1 = FakeGraphs(), record()
    fake.register(v1)
    cache = cache_of(fake)
    assert cache.current("default", "g") is None
    assert run(cache.read_current("default", "g")) == (v1, 1)
    assert cache.current("default", "g") == (v1, 1)
    assert fake.reads == 1


def test_version_is_read_once_per_epoch() -> None:
    fake, v1 = FakeGraphs(), record()
    fake.register(v1)
    cache = cache_of(fake)
    assert run(cache.version("default", "g", v1.version, fake.epoch)) == v1
    assert run(cache.version("default", "g", v1.version, fake.epoch)) == v1
    assert fake.reads == 1
    run(cache.read_current("default", "g"))  # the current record is a version as well
    fake.reads = 0
    assert run(cache.version("default", "g", v1.version, fake.epoch)) == v1
    assert fake.reads == 0


def test_re_registration_moves_the_epoch_so_kept_records_are_read_again() -> None:
    fake, v1, v2 = FakeGraphs(), record(), record(two_steps=True)
    assert v1.version != v2.version
    fake.register(v1)
    cache = cache_of(fake)
    run(cache.read_current("default", "g"))
    fake.register(v2)  # by another API process: this cache is not told
    kept, kept_at = cache.current("default", "g") or (None, None)
    assert kept == v1 and kept_at != fake.epoch  # the caller sees the epoch moved ...
    assert run(cache.read_current("default", "g")) == (v2, fake.epoch)  # ... and reads again
    assert cache.current("default", "g") == (v2, fake.epoch)
    reads = fake.reads
    # a version kept at an older epoch is read again, then kept at the new one
    assert run(cache.version("default", "g", v1.version, fake.epoch)) == v1
    assert fake.reads == reads + 1  # v1 was kept at an older epoch: read again
    assert run(cache.version("default", "g", v1.version, fake.epoch)) == v1
    assert run(cache.version("default", "g", v2.version, fake.epoch)) == v2
    assert fake.reads == reads + 1  # both kept at this epoch now


def test_deletion_moves_the_epoch_and_drops_what_is_read_missing() -> None:
    fake, v1 = FakeGraphs(), record()
    fake.register(v1)
    cache = cache_of(fake)
    run(cache.read_current("default", "g"))
    assert run(cache.version("default", "g", v1.version, fake.epoch)) == v1
    fake.delete("default", "g")
    assert run(cache.version("default", "g", v1.version, fake.epoch)) is None
    assert run(cache.read_current("default", "g")) == (None, fake.epoch)
    assert cache.current("default", "g") is None
    fake.register(v1)  # registered again (same version): read again, kept again
    assert run(cache.version("default", "g", v1.version, fake.epoch)) == v1
    assert run(cache.read_current("default", "g")) == (v1, fake.epoch)


def test_forget_drops_a_graph_this_process_changed() -> None:
    fake, v1, other = FakeGraphs(), record(), record("other")
    fake.register(v1)
    fake.register(other)
    cache = cache_of(fake)
    run(cache.read_current("default", "g"))
    run(cache.read_current("default", "other"))
    cache.forget("default", "g")
    assert cache.current("default", "g") is None
    assert cache.current("default", "other") is not None
    reads = fake.reads
    run(cache.version("default", "g", v1.version, fake.epoch))
    assert fake.reads == reads + 1


def test_bounded() -> None:
    fake = FakeGraphs()
    records = [record(f"g{i}") for i in range(5)]
    for r in records:
        fake.register(r)
    cache = cache_of(fake, limit=3)
    for r in records:
        run(cache.read_current("default", r.name))
    kept = [r.name for r in records if cache.current("default", r.name) is not None]
    assert 0 < len(kept) <= 3 and kept[-1] == "g4"
