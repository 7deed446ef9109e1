"""``python -m services.scheduler``: run one scheduler process until SIGTERM or SIGINT.

Settings come from the environment (``INDEXIFY_*`` for the infrastructure,
``INDEXIFY_SCHEDULER_*`` for the scheduler). Start as many processes as the events topic has
partitions: they share the partitions through the consumer group.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import cast

from services.common import event_loop, memory, metrics
from services.common.errors import ServiceError
from services.common.logging import LogFormat, configure_logging, get_logger
from services.common.settings import (
    InfraSettings,
    InsecureSettings,
    SchedulerSettings,
    check_credentials,
)

from .service import Scheduler

_log = get_logger("services.scheduler")


async def serve(infra: InfraSettings, settings: SchedulerSettings) -> None:
    """Run until a signal asks to stop; the batch in hand is finished and committed first."""
    async with Scheduler(infra, settings) as scheduler:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, scheduler.stop)
        await scheduler.run()


def main() -> int:
    infra = InfraSettings()
    settings = SchedulerSettings()
    try:
        check_credentials(infra)
    except InsecureSettings as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    configure_logging(infra.log_level, cast(LogFormat, infra.log_format), service="scheduler")
    memory.retain_freed_memory(infra.malloc_retain_mb)
    try:
        metrics_server = metrics.serve(settings.metrics_port, settings.metrics_host)
    except metrics.MetricsPortUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        event_loop.run(serve(infra, settings))
    except ServiceError as exc:
        _log.error("scheduler failed", error=str(exc))
        return 1
    finally:
        if metrics_server is not None:
            metrics_server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
