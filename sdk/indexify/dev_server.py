"""The processes of ``indexify-cli server-dev-mode``: checks, start, signal forwarding, stop.

Kafka, Redis and MinIO must already answer (``make infra-up``); this module checks them with a
plain socket connect and says what to run when one is missing. It then starts the API, the
scheduler and the executors as ``python -m services.<name>`` subprocesses, forwards SIGINT and
SIGTERM to them, and stops them all as soon as one exits.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType
from typing import Any
from urllib.parse import urlparse

import httpx
from rich.console import Console

__all__ = ["DevServer", "infra_endpoints", "unreachable"]

_STOP_GRACE_SEC = 15.0


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


class DevServer:
    """The dev-mode processes; stops them all when one exits or a signal arrives."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.signal: int | None = None

    def start(self, name: str, module: str, *args: str) -> None:
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", module, *args], env=self.env, start_new_session=True
        )

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum

    def run(self, url: str, console: Console) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        ready = False
        try:
            while self.signal is None:
                for name, process in self.processes.items():
                    code = process.poll()
                    if code is not None:
                        console.print(f"[red]{name} exited with code {code}; stopping the rest")
                        return code or 1
                if not ready:
                    ready = _healthy(url)
                    if ready:
                        console.print(
                            f"[green]Indexify is ready at {url}[/] (UI {url}/ui, API docs "
                            f"{url}/docs); Ctrl-C stops it"
                        )
                time.sleep(0.2)
            console.print(f"stopping on {signal.Signals(self.signal).name}")
            return 0
        finally:
            self.stop(self.signal or signal.SIGTERM)

    def stop(self, sig: int) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, sig)
        deadline = time.monotonic() + _STOP_GRACE_SEC
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
