"""structlog, configured once per process by a service's ``main()``.

Every log line is one event with fields: ISO timestamp, level, logger name, the service name,
whatever the handler bound with ``structlog.contextvars.bind_contextvars`` (invocation, task,
topic, partition, offset, ...), and the event's own key/values. ``fmt="json"`` renders one JSON
object per line for machines; ``"console"`` renders aligned key=value text for people.

Libraries that log through stdlib ``logging`` (aiokafka, urllib3, uvicorn) go through the same
renderer, so a process writes a single format. aiokafka is chatty at INFO (every rebalance,
every coordinator lookup), so it is held at WARNING unless our own level is stricter.
Credentials in URLs (``redis://:password@host``) are masked in every line
(:func:`redact_credentials`).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["LogFormat", "configure_logging", "get_logger", "redact_credentials"]

LogFormat = Literal["console", "json"]

#: Libraries whose INFO chatter is noise for us; held at WARNING at least.
_QUIET_LIBRARIES = ("aiokafka", "kafka", "urllib3", "asyncio")


class _AddService:
    """Adds ``service=<name>`` to every event, so merged logs say who wrote each line."""

    def __init__(self, service: str):
        self.service = service

    def __call__(self, logger: WrappedLogger, method_name: str, event: EventDict) -> EventDict:
        event.setdefault("service", self.service)
        return event


_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def redact_credentials(text: str) -> str:
    """``text`` with the secret of every URL's userinfo masked: ``redis://:pw@host`` ->
    ``redis://:***@host``, ``s3://user:pw@host`` -> ``s3://user:***@host``,
    ``http://token@host`` -> ``http://***@host``."""

    def mask(match: re.Match[str]) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        return f"{match['scheme']}{user + colon if colon else ''}***@"

    return _USERINFO.sub(mask, text) if "@" in text else text


def _redact(logger: WrappedLogger, method_name: str, event: EventDict) -> EventDict:
    """Mask URL credentials in every string field of every line (backend URLs are logged)."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact_credentials(value)
    return event


class _OurHandler(logging.StreamHandler[TextIO]):
    """Marks the handler we installed, so reconfiguring replaces it and nothing else
    (pytest's capture handlers, for one, must survive)."""


def configure_logging(level: str, fmt: LogFormat | str, service: str) -> None:
    """Configure structlog and stdlib logging for this process (call once, from ``main()``).

    ``fmt`` is ``"console"`` or ``"json"`` (``InfraSettings.log_format`` is validated to be
    one of them); calling again replaces the previous configuration.
    """
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _AddService(service),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        # Structured tracebacks without locals: locals would leak settings (secrets) and
        # user data into the logs.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        final: list[Processor] = [tracebacks, _redact, renderer]
    elif fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            exception_formatter=structlog.dev.plain_traceback,  # no locals (secrets), no rich
        )
        final = [_redact, renderer]
    else:
        raise ValueError(f"unknown log format {fmt!r}; use 'console' or 'json'")

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = _OurHandler(sys.stderr)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric_level, logging.WARNING))


def get_logger(name: str, **initial: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name`` (use ``__name__``), with ``initial`` fields bound."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **initial)
    return logger
