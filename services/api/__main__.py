"""``python -m services.api``: the REST API on ``ApiSettings.host:port`` (default 8900).

Settings come from the environment (``INDEXIFY_*`` for the infrastructure,
``INDEXIFY_API_*`` for this service) and are built once here. uvicorn handles SIGTERM/SIGINT
gracefully: it stops accepting, finishes requests in flight and runs the app's shutdown.
"""

from __future__ import annotations

import sys

import uvicorn
from pydantic import ValidationError

from services.common.logging import configure_logging, get_logger
from services.common.settings import ApiSettings, InfraSettings

from .app import create_app


def main() -> int:
    try:
        infra = InfraSettings()
        api = ApiSettings()
    except ValidationError as exc:
        sys.stderr.write(f"invalid settings: {exc}\n")
        return 2
    configure_logging(infra.log_level, infra.log_format, service="api")
    get_logger("services.api").info("starting api", host=api.host, port=api.port)
    uvicorn.run(
        create_app(infra, api),
        host=api.host,
        port=api.port,
        log_config=None,  # our structlog configuration renders uvicorn's logs too
        access_log=api.access_log,
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
