"""``python -m services.executor [--label k=v ...] [--concurrency N] [--image NAME] [--id ID]``

Settings come from ``INDEXIFY_*`` (:class:`InfraSettings`) and ``INDEXIFY_EXECUTOR_*``
(:class:`ExecutorSettings`) environment variables; the flags override them (``--label`` adds
to the labels of ``INDEXIFY_EXECUTOR_LABELS``). Runs until SIGTERM or Ctrl-C, then finishes
the running tasks, commits and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from services.common import event_loop, memory, metrics
from services.common.errors import PlatformUnavailable, ServiceError
from services.common.logging import configure_logging, get_logger
from services.common.settings import (
    ExecutorSettings,
    InfraSettings,
    InsecureSettings,
    check_credentials,
)

from .service import Executor
from .subscription import LabelError, parse_labels

_log = get_logger("services.executor")  # not "__main__" under `python -m`


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.executor",
        description="Run Indexify tasks: consume the task topics this executor's labels "
        "satisfy and run the functions in worker processes.",
    )
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label to advertise (repeatable), e.g. --label gpu=a100",
    )
    parser.add_argument("--concurrency", type=int, help="worker processes (tasks at once)")
    parser.add_argument("--image", help="the image this executor runs (label image=NAME)")
    parser.add_argument("--id", help="executor id (default: <hostname>-<random>)")
    return parser


def build_settings(argv: Sequence[str] | None = None) -> tuple[InfraSettings, ExecutorSettings]:
    """Settings from the environment, with the command line's flags on top."""
    args = _parser().parse_args(argv)
    infra = InfraSettings()
    settings = ExecutorSettings()
    overrides: dict[str, Any] = {}
    if args.label:
        overrides["labels"] = {**settings.labels, **parse_labels(args.label)}
    for name in ("concurrency", "image", "id"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if overrides:
        settings = ExecutorSettings.model_validate({**settings.model_dump(), **overrides})
    return infra, settings


async def serve(infra: InfraSettings, settings: ExecutorSettings) -> None:
    """Run one executor until SIGTERM/SIGINT. If Kafka or Redis does not answer at start
    (e.g. the broker is restarting), keep trying with backoff instead of exiting."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    delay = 0.5
    while not stop.is_set():
        executor = Executor(infra, settings)

        def request_stop(executor: Executor = executor) -> None:
            stop.set()
            executor.request_stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, request_stop)
        try:
            async with executor:
                await executor.run()
            return
        except PlatformUnavailable as exc:
            _log.warning("cannot start the executor; retrying", error=str(exc), delay=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 10.0)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        infra, settings = build_settings(argv)
    except (LabelError, ValidationError) as exc:
        print(f"invalid executor settings: {exc}", file=sys.stderr)
        return 2
    try:
        check_credentials(infra)
    except InsecureSettings as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    configure_logging(infra.log_level, infra.log_format, service="executor")
    memory.retain_freed_memory(infra.malloc_retain_mb)
    try:
        metrics_server = metrics.serve(settings.metrics_port, settings.metrics_host)
    except metrics.MetricsPortUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        event_loop.run(serve(infra, settings))
    except (ServiceError, LabelError) as exc:
        _log.error("executor failed", error=str(exc))
        return 1
    finally:
        if metrics_server is not None:
            metrics_server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
