"""Fixtures for tests against the real Kafka, Redis and MinIO (started by `make infra-up`).

Every test gets a fresh name prefix (``infra_settings``), so its topics, Redis keys and
objects never collide with another test's or another run's. If the servers do not answer,
the tests are skipped locally and FAIL in CI (env ``CI`` set): CI must never go green by
skipping its integration suite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from services.common.blobs import BlobStore
from services.common.kafka_bus import KafkaBus
from services.common.settings import InfraSettings
from services.common.state_store import StateStore

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this directory needs the servers: mark it ``infra``."""
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.infra)


@pytest.fixture(autouse=True)
def _require_infra(require_infra: None) -> None:
    """Checked once per session (tests/conftest.py), applied to every test in this directory."""


@pytest.fixture(autouse=True)
def _api_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apps built here accept requests without API keys (``ApiSettings()`` reads this), so
    the API's tests are about what they test; ``test_auth.py`` builds its app with keys."""
    monkeypatch.setenv("INDEXIFY_API_INSECURE_NO_AUTH", "1")


@pytest.fixture
def infra_settings() -> InfraSettings:
    """Settings with a fresh prefix: this test's own topics, keys and objects."""
    return InfraSettings(prefix=f"t{uuid4().hex[:10]}")


@pytest.fixture
async def kafka_bus(infra_settings: InfraSettings) -> AsyncIterator[KafkaBus]:
    """A started bus; the test's topics (``<prefix>.*``) are deleted afterwards."""
    async with KafkaBus(infra_settings) as bus:
        yield bus
        own = {t for t in await bus.list_topics() if t.startswith(f"{infra_settings.prefix}.")}
        await bus.delete_topics(own)


@pytest.fixture
def blob_store(infra_settings: InfraSettings) -> Iterator[BlobStore]:
    """A store whose bucket exists; the test's objects (``<prefix>/``) are deleted afterwards."""
    store = BlobStore(infra_settings)
    store.ensure_bucket_sync()
    yield store
    store.delete_prefix_sync(f"{infra_settings.prefix}/")


@pytest.fixture
async def store(infra_settings: InfraSettings) -> AsyncIterator[StateStore]:
    """An open state store; the test's keys (``<prefix>:*``) are deleted afterwards."""
    async with StateStore(infra_settings) as opened:
        yield opened
        keys = [k async for k in opened.redis.scan_iter(match=f"{infra_settings.prefix}:*")]
        if keys:
            await opened.redis.delete(*keys)
