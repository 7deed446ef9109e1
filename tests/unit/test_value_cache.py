"""The executor's local copy of stored objects: ranges read back, bounds kept."""

from __future__ import annotations

from pathlib import Path

from services.executor.value_cache import ValueCache, cache_directory


def test_a_stored_object_is_read_back_by_range(tmp_path: Path) -> None:
    cache = ValueCache(tmp_path)
    cache.put("ns/g/inv/task-1/outputs", b"0123456789")
    assert cache.get_range("ns/g/inv/task-1/outputs", 2, 5) == b"234"
    assert cache.get_range("ns/g/inv/task-1/outputs", 0, 10) == b"0123456789"
    assert cache.hits == 2


def test_missing_or_shorter_objects_fall_back_to_the_durable_copy(tmp_path: Path) -> None:
    cache = ValueCache(tmp_path)
    assert cache.get_range("never/stored", 0, 3) is None
    cache.put("short", b"abc")
    assert cache.get_range("short", 0, 10) is None  # not the object the reader expects
    assert cache.hits == 0


def test_bounds_evict_the_oldest_and_skip_huge_objects(tmp_path: Path) -> None:
    cache = ValueCache(tmp_path, max_bytes=25, max_object_bytes=12)
    cache.put("huge", b"x" * 13)
    assert cache.get_range("huge", 0, 13) is None
    for i in range(3):
        cache.put(f"k{i}", bytes([i]) * 10)
    assert cache.get_range("k0", 0, 10) is None  # 30 bytes > 25: the oldest went
    assert cache.get_range("k2", 0, 10) == b"\x02" * 10
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".part-")]


def test_a_cache_directory_is_private_and_new() -> None:
    first, second = cache_directory("executor/1"), cache_directory("executor/1")
    try:
        assert first != second and first.is_dir() and "/" not in first.name
    finally:
        first.rmdir()
        second.rmdir()
