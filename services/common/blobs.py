"""The MinIO adapter, and how several values are stored as one object.

Why it looks like this:

* ``minio.Minio`` is synchronous and thread-safe. So the core is the ``*_sync`` methods (the
  executor reads and stores a task's values with them, in a thread, for its worker
  processes, which hold no credentials); the async methods are one-line
  ``asyncio.to_thread`` wrappers for the services' event loops. The logic exists once.
* A task's outputs (a fan-out may return thousands) are packed into ONE object with
  cumulative byte offsets (:func:`pack`), so storing them is one PUT, and reading any slice of
  them (one downstream task's input) is one ranged GET (:func:`load_values`).
* Values up to ``settings.inline_limit_bytes`` travel inline in the Kafka message instead
  (:func:`store_values`): no MinIO round trip for small values.
* minio/urllib3 exceptions stop here: a missing object is :class:`NotFound`, an unreachable
  or failing server is :class:`PlatformUnavailable`.

A ``BlobStore`` holds an HTTP connection pool (and the credentials): it is never sent to a
worker process.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import certifi
import urllib3
from minio import Minio
from minio.credentials import Credentials
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.helpers import MIN_PART_SIZE

from indexify.data_objects import file_attributes
from indexify.encoding import Payload
from indexify.errors import EncodingError

from . import metrics
from .errors import NotFound, PlatformUnavailable, ServiceError
from .events import StoredValues
from .settings import InfraSettings

__all__ = [
    "OCTET_STREAM",
    "UNSIGNED_FROM_BYTES",
    "BlobStore",
    "load_values",
    "load_values_sync",
    "object_content_type",
    "pack",
    "plan_values",
    "store_values",
    "store_values_sync",
]

OCTET_STREAM = "application/octet-stream"
_MISSING = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject"})
_BUSY = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "XMinioServerNotInitialized"})


@contextmanager
def _minio_errors(what: str) -> Iterator[None]:
    """Translate minio/urllib3 failures while doing ``what`` into service errors."""
    try:
        yield
    except S3Error as exc:
        if exc.code not in _MISSING:  # a missing object is an answer, not a failure
            metrics.backend_error("minio")
        if exc.code in _MISSING:
            hint = (
                " (run `python -m services.common.bootstrap`)" if exc.code == "NoSuchBucket" else ""
            )
            raise NotFound(f"{what}: {exc.code}{hint}") from exc
        if exc.code in _BUSY:
            raise PlatformUnavailable(f"{what}: MinIO is busy ({exc.code}); retry later") from exc
        raise ServiceError(f"{what}: MinIO refused ({exc.code}: {exc.message})") from exc
    except (ServerError, InvalidResponseError, urllib3.exceptions.HTTPError, OSError) as exc:
        metrics.backend_error("minio")
        raise PlatformUnavailable(
            f"{what}: MinIO is unavailable ({exc}); it is retried later. Is it up "
            "(`make infra-up`)?"
        ) from exc
    except MinioException as exc:
        metrics.backend_error("minio")
        raise ServiceError(f"{what}: {exc}") from exc


def _http_pool() -> urllib3.PoolManager:
    """Like minio's default pool, but failing within seconds (not 5 minutes) when MinIO is
    down, and with room for the threads ``asyncio.to_thread`` runs concurrently."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=60.0),
        maxsize=32,
        cert_reqs="CERT_REQUIRED",
        ca_certs=certifi.where(),
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


#: Bodies from this size on are sent unsigned (see :class:`_Client`).
UNSIGNED_FROM_BYTES = 64 * 1024
#: The largest object written with one PUT (S3's limit), not as a multipart upload.
_MAX_SINGLE_PUT = 5 * 1024**3


class _Client(Minio):
    """``minio.Minio`` that does not sign large request bodies over plain HTTP.

    Over HTTP, minio-py signs every body with its SHA-256 (``x-amz-content-sha256``); for a
    10 MB value that costs more CPU than the rest of its PUT (60 ms on a loaded 2-core
    machine). Over HTTPS it already sends ``UNSIGNED-PAYLOAD``, which S3 and MinIO accept
    either way: the headers are still signed, TCP checks the bytes, MinIO keeps its own
    checksums. Bodies of :data:`UNSIGNED_FROM_BYTES` or more go unsigned here too."""

    def _build_headers(
        self,
        host: str,
        headers: dict[str, Any] | None = None,
        body: bytes | None = None,
        creds: Credentials | None = None,
    ) -> tuple[dict[str, Any], datetime]:
        if creds is None or body is None or len(body) < UNSIGNED_FROM_BYTES:
            return super()._build_headers(host, headers, body, creds)
        built, date = super()._build_headers(host, headers, b"", creds)  # hashes nothing
        built["Content-Length"] = str(len(body))
        built["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
        return built, date


class BlobStore:
    """Objects in ``settings.bucket``. The constructor does no I/O."""

    def __init__(self, settings: InfraSettings):
        self.settings = settings
        self.bucket = settings.bucket
        self._client = _Client(
            settings.minio_endpoint,
            access_key=settings.minio_access_key,
            secret_key=settings.minio_secret_key,
            secure=settings.minio_secure,
            http_client=_http_pool(),
        )

    # -- the sync core (executor worker processes call these directly) ----------------------

    def ensure_bucket_sync(self) -> bool:
        """Create the bucket if it is missing; ``True`` if this call created it."""
        with _minio_errors(f"creating bucket {self.bucket}"):
            if self._client.bucket_exists(self.bucket):
                return False
            try:
                self._client.make_bucket(self.bucket)
            except S3Error as exc:
                if exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    return False  # another process won the race
                raise
            return True

    def put_sync(self, key: str, data: bytes, content_type: str = OCTET_STREAM) -> None:
        with _minio_errors(f"writing object {key} ({len(data)} bytes)"):
            self._client.put_object(
                self.bucket,
                key,
                io.BytesIO(data),
                length=len(data),
                content_type=content_type,
                # one PUT (not a multipart upload of 5 MiB parts: four requests for 10 MB)
                part_size=max(MIN_PART_SIZE, min(len(data), _MAX_SINGLE_PUT)),
            )

    def get_sync(self, key: str) -> bytes:
        return self._read(key, 0, None)

    def get_range_sync(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object, in one ranged GET."""
        if not 0 <= start <= end:
            raise ValueError(f"invalid byte range [{start}, {end}) of object {key}")
        if start == end:
            return b""  # a zero-length GET would mean "everything" to minio
        data = self._read(key, start, end - start)
        if len(data) != end - start:
            raise ServiceError(
                f"object {key} is shorter than expected: asked for bytes [{start}, {end}), "
                f"got {len(data)}"
            )
        return data

    def _read(self, key: str, offset: int, length: int | None) -> bytes:
        with _minio_errors(f"reading object {key}"):
            response = self._client.get_object(self.bucket, key, offset=offset, length=length or 0)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def exists_sync(self, key: str) -> bool:
        try:
            with _minio_errors(f"looking up object {key}"):
                self._client.stat_object(self.bucket, key)
        except NotFound:
            return False
        return True

    def delete_prefix_sync(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix``; return how many."""
        if not prefix:
            raise ValueError("refusing to delete with an empty prefix (the whole bucket)")
        with _minio_errors(f"deleting objects under {prefix}"):
            names = [
                obj.object_name
                for obj in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if obj.object_name is not None
            ]
            if not names:
                return 0
            errors = list(self._client.remove_objects(self.bucket, map(DeleteObject, names)))
        if errors:
            raise ServiceError(f"deleting objects under {prefix}: {errors[0]} (+{len(errors) - 1})")
        return len(names)

    # -- async wrappers (for the services' event loops) -------------------------------------

    async def ensure_bucket(self) -> bool:
        return await asyncio.to_thread(self.ensure_bucket_sync)

    async def put(self, key: str, data: bytes, content_type: str = OCTET_STREAM) -> None:
        await asyncio.to_thread(self.put_sync, key, data, content_type)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self.get_sync, key)

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        return await asyncio.to_thread(self.get_range_sync, key, start, end)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.exists_sync, key)

    async def delete_prefix(self, prefix: str) -> int:
        return await asyncio.to_thread(self.delete_prefix_sync, prefix)


# -- several values in one object (pure) ----------------------------------------------------


def pack(payloads: Sequence[Payload]) -> tuple[bytes, tuple[int, ...]]:
    """Concatenate the payloads' bytes; offsets are cumulative, ``len(payloads) + 1`` long."""
    offsets = [0]
    for payload in payloads:
        offsets.append(offsets[-1] + len(payload.data))
    return b"".join(p.data for p in payloads), tuple(offsets)


def object_content_type(payloads: Sequence[Payload]) -> str:
    """The object's content type: a File's mime type when it is the object's only value (a
    File is stored as its raw bytes, so the object is the file), else octet-stream."""
    if len(payloads) == 1:
        try:
            attributes = file_attributes(payloads[0].content_type)
        except EncodingError:
            return OCTET_STREAM
        if attributes is not None and attributes.mime_type:
            return attributes.mime_type
    return OCTET_STREAM


def plan_values(
    payloads: Sequence[Payload], object_key: str, inline_limit: int
) -> tuple[StoredValues, bytes | None]:
    """How to store ``payloads``: the :class:`StoredValues` to send, and the object's bytes
    to write under ``object_key`` first (``None`` when the values travel inline)."""
    content_types = tuple(p.content_type for p in payloads)
    if sum(len(p.data) for p in payloads) <= inline_limit:
        return StoredValues(
            content_types=content_types, inline=tuple(p.data for p in payloads)
        ), None
    data, offsets = pack(payloads)
    return StoredValues(content_types=content_types, object_key=object_key, offsets=offsets), data


def _byte_range(values: StoredValues) -> tuple[str, int, int]:
    """The object and the ``[start, end)`` range holding every value of ``values``."""
    offsets = values.offsets
    if values.object_key is None or offsets is None or len(offsets) != values.count + 1:
        raise ServiceError(
            f"malformed StoredValues: {values.count} content types need an object key and "
            f"{values.count + 1} offsets, got key={values.object_key!r} offsets={offsets!r}"
        )
    return values.object_key, offsets[0], offsets[-1]


def unpack(values: StoredValues, data: bytes) -> list[Payload]:
    """Split ``data`` (the bytes of :func:`_byte_range`) back into payloads."""
    assert values.offsets is not None
    base = values.offsets[0]
    bounds = zip(values.offsets, values.offsets[1:], strict=False)
    return [
        Payload(content_type=ct, data=data[start - base : end - base])
        for ct, (start, end) in zip(values.content_types, bounds, strict=True)
    ]


# -- storing and loading --------------------------------------------------------------------


def store_values_sync(
    store: BlobStore,
    payloads: Sequence[Payload],
    object_key: str,
    *,
    keep: Callable[[str, bytes], None] | None = None,
) -> StoredValues:
    """Store ``payloads`` inline (small) or as one object under ``object_key`` (large);
    ``keep(object_key, data)`` is given the object once it is stored (a local copy)."""
    values, data = plan_values(payloads, object_key, store.settings.inline_limit_bytes)
    if data is not None:
        store.put_sync(object_key, data, object_content_type(payloads))
        if keep is not None:
            keep(object_key, data)
    return values


def load_values_sync(store: BlobStore, values: StoredValues) -> list[Payload]:
    """The payloads of ``values``; reads only their byte range, in one GET."""
    if values.inline is not None:
        return values.inline_payloads()
    key, start, end = _byte_range(values)
    return unpack(values, store.get_range_sync(key, start, end))


async def store_values(
    store: BlobStore, payloads: Sequence[Payload], object_key: str
) -> StoredValues:
    values, data = plan_values(payloads, object_key, store.settings.inline_limit_bytes)
    if data is not None:
        await store.put(object_key, data, object_content_type(payloads))
    return values


async def load_values(store: BlobStore, values: StoredValues) -> list[Payload]:
    if values.inline is not None:
        return values.inline_payloads()
    key, start, end = _byte_range(values)
    return unpack(values, await store.get_range(key, start, end))
