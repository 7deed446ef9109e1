"""A private Redis and MinIO on one address, for stacks whose services run in network namespaces
(the dev servers of ``make infra-up`` listen on 127.0.0.1 only, which no namespace reaches):
in a host of their own (a namespace of a :class:`netns.Network`, on their default ports), or on
an address of the machine (on free ports). A data directory of the caller's and credentials of
their own; :meth:`Backends.stop` ends them by PID (and so does the network's teardown, for
servers in its namespace, even when the test run that started them was killed)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import IO

import redis
import urllib3
from minio import Minio
from workload import wait_for

from services.common.logging import get_logger

_log = get_logger(__name__)

MINIO_BIN = Path(
    os.environ.get("INDEXIFY_CACHE_DIR", str(Path.home() / ".cache" / "indexify")), "bin", "minio"
)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def missing() -> list[str]:
    """What these servers need and this machine lacks (empty when both can start)."""
    problems = []
    if shutil.which("redis-server") is None:
        problems.append("redis-server (infra/redis.sh install)")
    if not MINIO_BIN.is_file():
        problems.append(f"{MINIO_BIN} (infra/minio.sh install)")
    return problems


class Backends:
    """Redis (AOF) and MinIO listening on ``host``, data in ``data_dir``; run in network
    namespace ``netns`` when given (``host`` being its address)."""

    def __init__(self, host: str, data_dir: Path, *, netns: str | None = None) -> None:
        self.host = host
        self.data_dir = data_dir
        self.netns = netns
        # a namespace of their own has every port free
        self.redis_port = 6379 if netns else free_port(host)
        self.minio_port = 9000 if netns else free_port(host)
        self.console_port = 9001 if netns else free_port(host)
        self.password = secrets.token_hex(16)
        self.access_key = f"indexify-{secrets.token_hex(4)}"
        self.secret_key = secrets.token_hex(16)
        self._processes: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}

    @property
    def env(self) -> dict[str, str]:
        """The settings that point services at these servers."""
        return {
            "INDEXIFY_REDIS_URL": f"redis://{self.host}:{self.redis_port}/0",
            "INDEXIFY_REDIS_PASSWORD": self.password,
            "INDEXIFY_MINIO_ENDPOINT": f"{self.host}:{self.minio_port}",
            "INDEXIFY_MINIO_ACCESS_KEY": self.access_key,
            "INDEXIFY_MINIO_SECRET_KEY": self.secret_key,
        }

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.data_dir / f"{name}.log").open("ab")
        if self.netns is not None:  # ip execs the server: the PID stays the server's
            argv = [shutil.which("ip") or "/usr/sbin/ip", "netns", "exec", self.netns, *argv]
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self._processes[name] = (process, log)

    def start(self, timeout: float = 60.0) -> None:
        """Start both and wait until they answer (on failure: stopped again)."""
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start both, not waiting for them (:meth:`wait_ready`)."""
        (self.data_dir / "redis").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "minio").mkdir(parents=True, exist_ok=True)
        self._spawn(
            "redis",
            [
                "redis-server",
                "--bind", self.host, "--port", str(self.redis_port),
                "--dir", str(self.data_dir / "redis"),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--requirepass", self.password, "--protected-mode", "yes",
            ],
        )  # fmt: skip
        self._spawn(
            "minio",
            [
                str(MINIO_BIN), "server", str(self.data_dir / "minio"),
                "--address", f"{self.host}:{self.minio_port}",
                "--console-address", f"{self.host}:{self.console_port}",
            ],
            {
                "MINIO_ROOT_USER": self.access_key,
                "MINIO_ROOT_PASSWORD": self.secret_key,
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
            },
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until both answer a real request; on failure (or timeout) both are stopped."""
        try:
            wait_for(self._ready, timeout, f"redis and minio on {self.host}")
        except BaseException:
            self.stop()
            raise
        _log.info("backends ready", host=self.host, redis=self.redis_port, minio=self.minio_port)

    def _ready(self) -> bool:
        for name, (process, _) in self._processes.items():
            if process.poll() is not None:
                log = (self.data_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {process.returncode}: {log}")
        try:
            client = redis.Redis(
                host=self.host, port=self.redis_port, password=self.password, socket_timeout=2
            )
            try:
                client.ping()
            finally:
                client.close()
            Minio(
                f"{self.host}:{self.minio_port}",
                access_key=self.access_key,
                secret_key=self.secret_key,
                secure=False,
                http_client=urllib3.PoolManager(
                    timeout=urllib3.Timeout(connect=2, read=5), retries=urllib3.Retry(total=0)
                ),
            ).list_buckets()
        except Exception:  # not up yet: polled again
            return False
        return True

    def stop(self, timeout: float = 15.0) -> None:
        for process, _ in self._processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, (process, log) in self._processes.items():
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _log.warning("backend did not stop; killing it", backend=name, pid=process.pid)
                process.kill()
                process.wait(timeout=10)
            log.close()
        self._processes.clear()
