"""Create what the services expect to exist: the events and dead-letter topics, the bucket.

The broker runs with ``auto.create.topics.enable=false`` so that every topic gets the partition
count we choose (the events topic's partitions are the scheduler's unit of scale). Idempotent:
run it on every ``make infra-up``. Per-function task topics are created when a graph is
registered, not here.

    python -m services.common.bootstrap     # settings from INDEXIFY_* environment variables
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

from .blobs import BlobStore
from .errors import ServiceError
from .kafka_bus import KafkaBus
from .logging import configure_logging, get_logger
from .names import Names
from .settings import InfraSettings

__all__ = ["BootstrapResult", "bootstrap", "main"]

_log = get_logger("services.common.bootstrap")  # not "__main__" under `python -m`


@dataclass(frozen=True)
class BootstrapResult:
    created_topics: frozenset[str]
    created_bucket: bool


async def bootstrap(settings: InfraSettings) -> BootstrapResult:
    """Ensure the events topic, the dead-letter topic and the bucket exist."""
    names = Names(settings.prefix)
    async with KafkaBus(settings, client_id=f"{settings.prefix}-bootstrap") as bus:
        created = await bus.ensure_topics(
            {names.events_topic: settings.events_partitions, names.deadletter_topic: 1}
        )
    created_bucket = await BlobStore(settings).ensure_bucket()
    return BootstrapResult(created_topics=frozenset(created), created_bucket=created_bucket)


def main() -> int:
    settings = InfraSettings()
    configure_logging(settings.log_level, settings.log_format, service="bootstrap")
    try:
        result = asyncio.run(bootstrap(settings))
    except ServiceError as exc:
        _log.error("bootstrap failed", error=str(exc))
        return 1
    _log.info(
        "bootstrap done",
        kafka=settings.kafka_bootstrap,
        created_topics=sorted(result.created_topics),
        bucket=settings.bucket,
        created_bucket=result.created_bucket,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
