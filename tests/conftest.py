"""Shared fixtures: the real-server check used by integration, end-to-end and fault tests, and
the one way tests await a condition (``await_condition``).

If Kafka, Redis or MinIO do not answer, tests that need them are skipped locally and FAIL in CI
(env ``CI`` set): CI must never go green by skipping its integration suite.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
import redis
import urllib3
from minio import Minio

from services.common.settings import InfraSettings
from services.devstack import purge_prefix

_HINT = "run `make infra-up` (or infra/up.sh) to start Kafka, Redis and MinIO"
_T = TypeVar("_T")


def wait_until(
    probe: Callable[[], _T | None], timeout: float, what: str, interval: float = 0.05
) -> _T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def await_condition() -> Callable[..., object]:
    """``await_condition(probe, timeout, what)``: poll until truthy, fail at the deadline."""
    return wait_until


def infra_problems(settings: InfraSettings) -> list[str]:
    """What does not answer (empty when all three servers are up)."""
    problems: list[str] = []
    host, _, port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as exc:
        problems.append(f"Kafka at {settings.kafka_bootstrap}: {exc}")
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        problems.append(f"Redis at {settings.redis_url}: {exc}")
    try:
        Minio(
            settings.minio_endpoint,
            access_key=settings.minio_access_key,
            secret_key=settings.minio_secret_key,
            secure=settings.minio_secure,
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=2, read=5), retries=urllib3.Retry(total=0)
            ),
        ).list_buckets()
    except Exception as exc:  # any failure means "not usable"; the message says which
        problems.append(f"MinIO at {settings.minio_endpoint}: {exc}")
    return problems


@pytest.fixture(scope="session")
def require_infra() -> None:
    """Skip (locally) or fail (in CI) when the real servers are not running."""
    problems = infra_problems(InfraSettings())
    if not problems:
        return
    message = "servers not answering: " + "; ".join(problems) + f" -- {_HINT}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def cleanup() -> Callable[[str], None]:
    """``cleanup(prefix)`` removes a prefix's topics, Redis keys and objects: each test's
    stack uses a fresh prefix, and a long-lived dev broker slows down with every topic left."""
    return purge_prefix


@pytest.fixture(scope="session", autouse=True)
def _own_credentials_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The dev stacks started by tests save their admin keys in a credentials file of this
    session (the SDK finds them there), never in the user's own; a key in the caller's
    environment would override them, so it is dropped."""
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("indexify-config") / "credentials.json"
        patch.setenv("INDEXIFY_CREDENTIALS_FILE", str(path))
        patch.delenv("INDEXIFY_API_KEY", raising=False)
        patch.delenv("INDEXIFY_API_ADMIN_KEY_SHA256", raising=False)
        patch.delenv("INDEXIFY_API_INSECURE_NO_AUTH", raising=False)
        yield
