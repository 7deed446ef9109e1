"""The small LRU cache the services keep engines, definitions and validators in."""

from __future__ import annotations

import pytest

from services.common.lru import Lru


def test_put_drops_the_least_recently_used_beyond_the_capacity() -> None:
    cache: Lru[str, int] = Lru(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a use: "b" is now the oldest
    cache.put("c", 3)
    assert "b" not in cache and cache.get("b") is None
    assert (cache.get("a"), cache.get("c"), len(cache)) == (1, 3, 2)


def test_put_returns_the_value_and_replaces_an_entry() -> None:
    cache: Lru[str, list[int]] = Lru(1)
    kept = cache.put("a", [1])
    assert kept == [1] and cache.get("a") is kept
    cache.put("a", [2])
    assert cache.get("a") == [2] and len(cache) == 1


def test_a_cache_holds_at_least_one_entry() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Lru(0)


def test_pop_removes_an_entry() -> None:
    cache: Lru[str, int] = Lru(2)
    cache.put("a", 1)
    assert cache.pop("a") == 1 and "a" not in cache and len(cache) == 0
    assert cache.pop("a") is None
