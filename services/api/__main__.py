"""``python -m services.api``: the REST API on ``ApiSettings.host:port`` (default 8900).

Settings come from the environment (``INDEXIFY_*`` for the infrastructure,
``INDEXIFY_API_*`` for this service) and are built once here. uvicorn handles SIGTERM/SIGINT
gracefully: it stops accepting, finishes requests in flight and runs the app's shutdown.
"""

from __future__ import annotations

import sys

import uvicorn
from pydantic import ValidationError

from services.common import event_loop, memory
from services.common.logging import configure_logging, get_logger
from services.common.settings import ApiSettings, InfraSettings, InsecureSettings, check_credentials

from .app import create_app
from .limits import header_timeout_protocol


def main() -> int:
    try:
        infra = InfraSettings()
        api = ApiSettings()
    except ValidationError as exc:
        sys.stderr.write(f"invalid settings: {exc}\n")
        return 2
    try:
        check_credentials(infra)
    except InsecureSettings as exc:
        sys.stderr.write(f"refusing to start: {exc}\n")
        return 2
    configure_logging(infra.log_level, infra.log_format, service="api")
    memory.retain_freed_memory(infra.malloc_retain_mb)
    get_logger("services.api").info("starting api", host=api.host, port=api.port)
    app = create_app(infra, api)
    event_loop.freeze_startup_objects()
    uvicorn.run(
        app,
        host=api.host,
        port=api.port,
        log_config=None,  # our structlog configuration renders uvicorn's logs too
        access_log=api.access_log,
        timeout_graceful_shutdown=10,
        # Slow or idle clients cannot hold connections: a request head must arrive within
        # header_timeout_sec, each body chunk within body_timeout_sec (ApiMiddleware),
        # idle keep-alive connections close after keep_alive_sec, and beyond max_connections
        # new requests get a 503 at once.
        http=header_timeout_protocol(api.header_timeout_sec),
        timeout_keep_alive=api.keep_alive_sec,
        limit_concurrency=api.max_connections,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
