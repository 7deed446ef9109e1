"""Checks made by ``indexify-cli server-dev-mode`` before it starts anything.

Kafka, Redis and MinIO must already answer (``make infra-up``); they are checked with a plain
socket connect, and the message says what to run when one is missing. The processes themselves
are run by ``services.devstack.DevStack``.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlparse

__all__ = ["infra_endpoints", "unreachable"]


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, default_port
    return host.strip("[]") or "127.0.0.1", int(port)


def infra_endpoints(settings: Any) -> list[tuple[str, str, int]]:
    """(name, host, port) of Kafka, Redis and MinIO as the settings name them."""
    kafka = _host_port(settings.kafka_bootstrap.split(",")[0], 9092)
    redis_url = urlparse(settings.redis_url)
    redis = (redis_url.hostname or "127.0.0.1", redis_url.port or 6379)
    minio = _host_port(settings.minio_endpoint, 443 if settings.minio_secure else 80)
    return [("Kafka", *kafka), ("Redis", *redis), ("MinIO", *minio)]


def unreachable(endpoints: list[tuple[str, str, int]], timeout: float = 2.0) -> list[str]:
    problems = []
    for name, host, port in endpoints:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError:
            problems.append(
                f"{name} is not reachable at {host}:{port}: run `make infra-up` (or start it) first"
            )
    return problems
