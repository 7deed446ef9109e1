"""Run the whole stack (API, schedulers, executors) as local subprocesses.

Used by ``indexify-cli server-dev-mode`` (see :meth:`DevStack.supervise`), the end-to-end
tests, the benchmarks and the fault injection tests (which kill and restart processes with
:meth:`DevStack.kill` / ``restart``).
Kafka, Redis and MinIO must already run (``make infra-up``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis

from indexify.credentials import forget_api_key
from services.common.api_keys import provision_dev_key
from services.common.backoff import doubling_delay
from services.common.blobs import BlobStore
from services.common.kafka_bus import KafkaBus
from services.common.logging import get_logger
from services.common.settings import InfraSettings

#: A supervised process that stays up this long has its crash count reset.
STABLE_SEC = 60.0
_FIRST_RESTART_SEC = 1.0
_MAX_RESTART_SEC = 30.0
_log = get_logger(__name__)


def restart_delay(crashes: int) -> float:
    """How long to wait before restarting a process that exited ``crashes`` times in a
    row: 1 s doubling, at most 30 s."""
    return doubling_delay(crashes, _FIRST_RESTART_SEC, _MAX_RESTART_SEC)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: The setting that gives a service's process its own /metrics port.
METRICS_PORT_SETTINGS = {
    "services.scheduler": "INDEXIFY_SCHEDULER_METRICS_PORT",
    "services.executor": "INDEXIFY_EXECUTOR_METRICS_PORT",
}


@dataclass
class ProcessSpec:
    name: str
    module: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class _Running:
    spec: ProcessSpec
    process: subprocess.Popen[bytes]
    log: IO[bytes]


class DevStack:
    """Start API + scheduler(s) + executor(s) with one environment; stop them all."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        *,
        log_dir: Path | None = None,
        api_port: int | None = None,
    ) -> None:
        self.api_port = api_port or free_port()
        self.env = {**os.environ, **(env or {}), "INDEXIFY_API_PORT": str(self.api_port)}
        self.env.setdefault("INDEXIFY_API_HOST", "127.0.0.1")
        self.log_dir = log_dir
        self.processes: dict[str, _Running] = {}
        #: process name -> the port of its /metrics (schedulers and executors; a free port
        #: each, kept across restarts; the API serves /metrics at :attr:`url`)
        self.metrics_ports: dict[str, int] = {}
        #: the stack's admin key (None with INDEXIFY_API_INSECURE_NO_AUTH): saved in the
        #: credentials file for :attr:`url`, so clients of this stack need no configuration
        self.api_key = provision_dev_key(self.env, self.url)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def metrics_url(self, name: str) -> str:
        """Where process ``name`` serves its Prometheus metrics (the API: ``<url>/metrics``,
        which needs :attr:`auth_headers`)."""
        if name == "api":
            return f"{self.url}/metrics"
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    @property
    def auth_headers(self) -> dict[str, str]:
        """Headers for a raw HTTP request to this stack's API."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def start(self, spec: ProcessSpec) -> None:
        previous = self.processes.get(spec.name)
        if previous is not None:
            if previous.process.poll() is None:
                raise RuntimeError(f"{spec.name} is already running")
            previous.log.close()
        log: IO[bytes]
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = (self.log_dir / f"{spec.name}.log").open("ab")
        else:
            log = open(os.devnull, "wb")  # noqa: SIM115 - closed in stop()
        env = {**self.env, **spec.env}
        setting = METRICS_PORT_SETTINGS.get(spec.module)
        if setting is not None and setting not in spec.env:
            port = self.metrics_ports.get(spec.name) or free_port()
            self.metrics_ports[spec.name] = port
            env[setting] = str(port)
        process = subprocess.Popen(
            [sys.executable, "-m", spec.module, *spec.args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[spec.name] = _Running(spec, process, log)

    def start_default(self, *, executors: int = 1, concurrency: int = 2) -> None:
        """API, one scheduler and ``executors`` executors; waits until the API is healthy."""
        self.start(ProcessSpec("api", "services.api"))
        self.start(ProcessSpec("scheduler", "services.scheduler"))
        for index in range(executors):
            self.start(
                ProcessSpec(
                    f"executor-{index}",
                    "services.executor",
                    ["--concurrency", str(concurrency), "--id", f"executor-{index}"],
                )
            )
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, running in self.processes.items():
                if running.process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {running.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the API did not become healthy at {self.url} in {timeout} s")

    def supervise(
        self, poll_sec: float = 0.2, *, max_restarts: int | None = None
    ) -> tuple[str, int] | None:
        """Run until SIGINT/SIGTERM (returns None), restarting any process that exits, with
        backoff (:func:`restart_delay`: a process that keeps crashing is restarted less and
        less often; its count resets once it stays up :data:`STABLE_SEC`). Every exit and
        restart is logged. With ``max_restarts``, a process that exited more often than
        that in a row ends supervision instead: ``(its name, its exit code)``."""
        stop: list[int] = []
        previous = {
            sig: signal.signal(sig, lambda signum, _frame: stop.append(signum))
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        crashes: dict[str, int] = {}
        due: dict[str, float] = {}  # exited processes: when to start them again
        started = {name: time.monotonic() for name in self.processes}
        try:
            while not stop:
                now = time.monotonic()
                for name, running in self.processes.items():
                    if name in due:
                        if now >= due[name]:
                            del due[name]
                            _log.info("restarting service", service=name, restarts=crashes[name])
                            self.start(running.spec)
                            started[name] = now
                        continue
                    code = running.process.poll()
                    if code is None:
                        if now - started.get(name, now) >= STABLE_SEC:
                            crashes.pop(name, None)
                        continue
                    crashes[name] = crashes.get(name, 0) + 1
                    if max_restarts is not None and crashes[name] > max_restarts:
                        _log.error("service keeps exiting; giving up", service=name, code=code)
                        return name, code
                    delay = restart_delay(crashes[name])
                    _log.warning(
                        "service exited; restarting it", service=name, code=code, retry_in=delay
                    )
                    due[name] = now + delay
                time.sleep(poll_sec)
            return None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        running = self.processes[name]
        if running.process.poll() is None:
            os.killpg(running.process.pid, sig)
            running.process.wait(timeout=30)

    def restart(self, name: str) -> None:
        self.kill(name)
        self.start(self.processes[name].spec)

    def stop(self, timeout: float = 15.0) -> None:
        for running in self.processes.values():
            if running.process.poll() is None:
                os.killpg(running.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for running in self.processes.values():
            remaining = max(0.1, deadline - time.monotonic())
            try:
                running.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                os.killpg(running.process.pid, signal.SIGKILL)
                running.process.wait(timeout=10)
            running.log.close()
        if self.api_key is not None:
            forget_api_key(self.url, self.api_key)

    def __enter__(self) -> DevStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def purge_prefix(prefix: str) -> None:
    """Remove the topics, Redis keys and objects of ``prefix``: tests and benchmarks run
    each stack with a fresh prefix, and a long-lived dev broker (and Redis) slows down with
    every one left behind."""
    settings = InfraSettings(prefix=prefix)

    async def delete_topics() -> None:
        async with KafkaBus(settings) as bus:
            await bus.delete_topics(t for t in await bus.list_topics() if t.startswith(prefix))

    asyncio.run(delete_topics())
    client = redis.Redis.from_url(settings.redis_url)
    try:
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()
    BlobStore(settings).delete_prefix_sync(f"{prefix}/")
