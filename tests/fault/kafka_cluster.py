"""Three Kafka brokers of ``infra/kafka-cluster.sh`` for the cluster fault tests and
``make chaos CLUSTER=1``: started in a data directory of the caller's, on free ports."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra_scripts import run_script

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "kafka-cluster.sh"
NODES = ("1", "2", "3")


def _free_block(size: int) -> int:
    """A base port with ``size`` free ports after it."""
    for _ in range(200):
        base = random.randrange(20_000, 40_000, 2)
        try:
            for port in range(base, base + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no block of free ports for the Kafka cluster")


class Cluster:
    """Three brokers started by ``infra/kafka-cluster.sh`` in a data directory of the test's."""

    def __init__(
        self,
        data_dir: Path,
        *,
        hosts: Sequence[str] | None = None,
        namespaces: Sequence[str] | None = None,
    ) -> None:
        """``hosts``: each node's own address (default: all on 127.0.0.1); ``namespaces``:
        the network namespace each node runs in (``netns.Network``)."""
        self.env = {
            **os.environ,
            "INDEXIFY_DATA_DIR": str(data_dir),
            "INDEXIFY_KAFKA_CLUSTER_PORT": str(_free_block(6)),
            "INDEXIFY_PYTHON": sys.executable,
            "INDEXIFY_STOP_TIMEOUT": "10",
        }
        if hosts is not None:
            self.env["INDEXIFY_KAFKA_CLUSTER_HOSTS"] = ",".join(hosts)
        if namespaces is not None:
            self.env["INDEXIFY_KAFKA_CLUSTER_NETNS"] = ",".join(namespaces)
        #: nodes an admin request must not go through (cut off the network: a connection to
        #: them would hang until its timeout instead of failing over)
        self.unreachable: set[str] = set()

    def run(self, *args: str) -> str:
        return run_script(SCRIPT, args, self.env, timeout=180)

    @property
    def bootstrap(self) -> str:
        return self.run("bootstrap")

    def _admin(self) -> AIOKafkaAdminClient:
        """An admin client that goes through the reachable nodes only; with a node cut off, a
        short request timeout: a request sent to it fails soon instead of hanging 40 s."""
        from aiokafka.admin import AIOKafkaAdminClient

        nodes = self.bootstrap.split(",")
        reachable = [a for n, a in zip(NODES, nodes, strict=True) if n not in self.unreachable]
        if not self.unreachable:
            return AIOKafkaAdminClient(bootstrap_servers=",".join(reachable))
        return AIOKafkaAdminClient(bootstrap_servers=",".join(reachable), request_timeout_ms=3000)

    def _describe(self, topic: str) -> list[dict[str, Any]]:
        async def ask() -> list[dict[str, Any]]:
            admin = self._admin()
            await admin.start()
            try:
                (described,) = await admin.describe_topics([topic])
            finally:
                await admin.close()
            return list(described["partitions"])

        return asyncio.run(ask())

    def partitions(self, topic: str) -> dict[int, tuple[int, list[int]]]:
        """partition -> (the node id leading it, its replicas)."""
        return {p["partition"]: (p["leader"], p["replicas"]) for p in self._describe(topic)}

    def in_sync(self, topic: str) -> dict[int, list[int]]:
        """partition -> the node ids of its in-sync replicas."""
        return {p["partition"]: sorted(p["isr"]) for p in self._describe(topic)}

    def leaders(self, topic: str) -> dict[int, int]:
        return {partition: leader for partition, (leader, _) in self.partitions(topic).items()}

    def topics(self, prefix: str) -> list[str]:
        async def ask() -> list[str]:
            admin = self._admin()
            await admin.start()
            try:
                return [t for t in await admin.list_topics() if t.startswith(prefix)]
            finally:
                await admin.close()

        return asyncio.run(ask())

    def bootstrap_topics(self, env: dict[str, str]) -> None:
        """The events and dead-letter topics of the stack ``env`` describes, on this cluster."""
        subprocess.run(
            [sys.executable, "-m", "services.common.bootstrap"],
            env={**os.environ, **env, "INDEXIFY_KAFKA_BOOTSTRAP": self.bootstrap},
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=120,
        )
