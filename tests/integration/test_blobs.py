"""Contract tests of the MinIO adapter and value packing against the real server."""

from __future__ import annotations

from typing import Any

import pytest

from indexify.encoding import JSON, PICKLE, Payload
from services.common.blobs import (
    UNSIGNED_FROM_BYTES,
    BlobStore,
    load_values,
    load_values_sync,
    pack,
    store_values,
    store_values_sync,
)
from services.common.errors import NotFound, PlatformUnavailable, ServiceError
from services.common.events import StoredValues
from services.common.settings import InfraSettings

pytestmark = pytest.mark.timeout(60)


def _payloads(n: int, size: int = 100) -> list[Payload]:
    return [
        Payload(content_type=JSON if i % 2 else PICKLE, data=bytes([i % 256]) * (size + i))
        for i in range(n)
    ]


class _RangeSpy:
    """Records the ranged GETs a store makes (the server is still the real one)."""

    def __init__(self, store: BlobStore, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[tuple[str, int, int]] = []
        original = store.get_range_sync

        def get_range_sync(key: str, start: int, end: int) -> bytes:
            self.calls.append((key, start, end))
            return original(key, start, end)

        monkeypatch.setattr(store, "get_range_sync", get_range_sync)


async def test_put_get_range_exists_and_delete_prefix(
    blob_store: BlobStore, infra_settings: InfraSettings
) -> None:
    base = f"{infra_settings.prefix}/objects/"
    data = bytes(range(256)) * 10
    await blob_store.put(base + "a", data, "application/json")
    blob_store.put_sync(base + "b", b"bee")

    assert await blob_store.get(base + "a") == data
    assert blob_store.get_sync(base + "b") == b"bee"
    assert await blob_store.get_range(base + "a", 10, 20) == data[10:20]
    assert blob_store.get_range_sync(base + "a", 0, len(data)) == data
    assert await blob_store.get_range(base + "a", 5, 5) == b""
    assert await blob_store.exists(base + "a")
    assert not await blob_store.exists(base + "missing")

    assert await blob_store.delete_prefix(base) == 2
    assert not blob_store.exists_sync(base + "a")
    assert await blob_store.delete_prefix(base) == 0


def test_a_large_value_is_one_unsigned_put_and_reads_back_intact(
    blob_store: BlobStore, infra_settings: InfraSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 MB: over minio-py's 5 MiB multipart threshold and over UNSIGNED_FROM_BYTES. The
    server checks the signature of the headers; the bytes come back as written."""
    sent: list[tuple[str, str | None]] = []
    pool = blob_store._client._http  # the real connection pool, spied on
    original = pool.urlopen

    def urlopen(method: str, url: str, *args: object, **kwargs: object) -> object:
        headers: Any = kwargs.get("headers") or {}  # a mapping (urllib3's HTTPHeaderDict)
        sent.append((method, headers.get("x-amz-content-sha256")))
        return original(method, url, *args, **kwargs)

    monkeypatch.setattr(pool, "urlopen", urlopen)
    key = f"{infra_settings.prefix}/large"
    data = bytes(range(256)) * (12 * 1024 * 1024 // 256)
    blob_store.put_sync(key, data)
    small = f"{infra_settings.prefix}/small"
    blob_store.put_sync(small, b"x" * (UNSIGNED_FROM_BYTES - 1))
    puts = [header for method, header in sent if method == "PUT"]
    assert puts[0] == "UNSIGNED-PAYLOAD" and len(puts) == 2  # one request, not multipart
    assert puts[1] is not None and len(puts[1]) == 64  # small bodies stay signed (SHA-256)
    assert blob_store.get_sync(key) == data
    assert blob_store.get_range_sync(key, 5_000_000, 5_000_100) == data[5_000_000:5_000_100]


async def test_missing_object_is_not_found(
    blob_store: BlobStore, infra_settings: InfraSettings
) -> None:
    with pytest.raises(NotFound):
        await blob_store.get(f"{infra_settings.prefix}/nope")
    with pytest.raises(NotFound):
        blob_store.get_range_sync(f"{infra_settings.prefix}/nope", 0, 3)


async def test_range_past_the_end_is_an_error(
    blob_store: BlobStore, infra_settings: InfraSettings
) -> None:
    key = f"{infra_settings.prefix}/short"
    await blob_store.put(key, b"12345")
    with pytest.raises(ServiceError):
        await blob_store.get_range(key, 2, 10)
    with pytest.raises(ValueError):
        await blob_store.get_range(key, 3, 2)
    with pytest.raises(ValueError):
        await blob_store.delete_prefix("")


async def test_small_values_travel_inline(
    blob_store: BlobStore, infra_settings: InfraSettings
) -> None:
    payloads = _payloads(3, size=10)
    key = f"{infra_settings.prefix}/inline"

    values = await store_values(blob_store, payloads, key)

    assert values.inline is not None and values.object_key is None
    assert not await blob_store.exists(key), "nothing written to MinIO"
    assert await load_values(blob_store, values) == payloads
    assert load_values_sync(blob_store, values.slice(1, 2)) == payloads[1:2]


async def test_large_values_are_one_object_and_a_slice_is_one_ranged_get(
    blob_store: BlobStore, infra_settings: InfraSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(infra_settings.model_copy(update={"inline_limit_bytes": 100}))
    payloads = _payloads(8)
    key = f"{infra_settings.prefix}/outputs"

    values = await store_values(store, payloads, key)

    data, offsets = pack(payloads)
    assert values.object_key == key and values.offsets == offsets and values.inline is None
    assert await store.get(key) == data
    spy = _RangeSpy(store, monkeypatch)
    assert await load_values(store, values) == payloads
    assert await load_values(store, values.slice(2, 5)) == payloads[2:5]
    assert load_values_sync(store, values.slice(7, 8)) == payloads[7:8]
    assert load_values_sync(store, values.slice(3, 3)) == []
    assert spy.calls == [
        (key, 0, offsets[8]),
        (key, offsets[2], offsets[5]),
        (key, offsets[7], offsets[8]),
        (key, offsets[3], offsets[3]),
    ]


def test_sync_store_and_load_round_trip(
    blob_store: BlobStore, infra_settings: InfraSettings
) -> None:
    store = BlobStore(infra_settings.model_copy(update={"inline_limit_bytes": 0}))
    payloads = _payloads(4)
    values = store_values_sync(store, payloads, f"{infra_settings.prefix}/sync")
    assert values.object_key is not None
    assert load_values_sync(store, values) == payloads
    empty = store_values_sync(store, [], f"{infra_settings.prefix}/empty")
    assert empty.count == 0 and load_values_sync(store, empty) == []


def test_malformed_stored_values_are_refused(blob_store: BlobStore) -> None:
    values = StoredValues(content_types=(JSON, JSON), object_key="k", offsets=(0, 3))
    with pytest.raises(ServiceError, match="malformed"):
        load_values_sync(blob_store, values)


def test_unreachable_minio_is_platform_unavailable(infra_settings: InfraSettings) -> None:
    store = BlobStore(infra_settings.model_copy(update={"minio_endpoint": "127.0.0.1:1"}))
    with pytest.raises(PlatformUnavailable):
        store.get_sync("anything")
