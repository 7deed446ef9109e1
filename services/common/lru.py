"""A small least-recently-used cache: what a process keeps of things that never change once
known (a graph version's engine or definition, a start function's argument validators)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Lru"]

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class Lru(Generic[_K, _V]):
    """At most ``capacity`` entries; :meth:`put` drops the least recently used beyond that,
    and :meth:`get` counts as a use."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"an LRU cache holds at least one entry, not {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[_K, _V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: _K) -> _V | None:
        """The entry of ``key`` (now the most recently used), or None."""
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: _K, value: _V) -> _V:
        """Keep ``value`` as the most recently used entry; returns it."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return value

    def pop(self, key: _K) -> _V | None:
        """Remove and return the entry of ``key``, or None."""
        return self._entries.pop(key, None)
