"""The cluster profile on several hosts of one machine (:class:`netns.Network`): three Kafka
brokers (hosts ``k1``-``k3``), the schedulers (``s1``, ``s2``), the executors (``e1``...) and a
private Redis and MinIO (host ``db``), each in a network namespace with an address of its own.
Brokers listen on and advertise their namespace's address. The API stays on the machine's side
of the bridge (the test's client reaches it on 127.0.0.1; it reaches the hosts through the
bridge). Cutting a host off takes its processes off the network without stopping them.
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path

from backends import Backends, missing
from kafka_cluster import NODES, Cluster
from netns import Network
from netns import problems as netns_problems

from services.common.logging import get_logger
from services.devstack import DevStack, ProcessSpec

BROKER_HOSTS = tuple(f"k{n}" for n in NODES)
SCHEDULER_HOSTS = ("s1", "s2")
EXECUTOR_HOSTS = ("e1", "e2", "e3")
BACKENDS_HOST = "db"
_log = get_logger(__name__)


class NetnsCluster:
    """Network, Redis + MinIO and three brokers, from ``__enter__`` to ``__exit__``."""

    def __init__(self, data_dir: Path, *, schedulers: int = 1, executors: int = 2) -> None:
        self.data_dir = data_dir
        self.schedulers = SCHEDULER_HOSTS[:schedulers]
        self.executors = EXECUTOR_HOSTS[:executors]
        self.network = Network([*BROKER_HOSTS, *self.schedulers, *self.executors, BACKENDS_HOST])
        self._exit = ExitStack()
        self.backends: Backends | None = None
        self.cluster: Cluster | None = None
        #: process name in a stack -> the host it runs on
        self.host_of: dict[str, str] = {}

    def __enter__(self) -> NetnsCluster:
        try:
            self._exit.enter_context(self.network)
            self.backends = Backends(
                self.network.addresses[BACKENDS_HOST],
                self.data_dir / "backends",
                netns=self.network.namespace(BACKENDS_HOST),
            )
            self._exit.callback(self.backends.stop)
            self.backends.spawn()  # starting while the brokers start
            self.cluster = Cluster(
                self.data_dir / "kafka",
                hosts=[self.network.addresses[h] for h in BROKER_HOSTS],
                namespaces=[self.network.namespace(h) for h in BROKER_HOSTS],
            )
            self._exit.callback(self._kill_brokers)
            self.cluster.run("start")
            self.backends.wait_ready()
        except BaseException:
            self._exit.close()
            raise
        _log.info(
            "netns cluster ready", bootstrap=self.cluster.bootstrap, prefix=self.network.prefix
        )
        return self

    def _kill_brokers(self) -> None:
        """SIGKILL: their data goes with them (a clean stop costs seconds per broker)."""
        assert self.cluster is not None
        for node in NODES:
            try:
                self.cluster.run("kill-node", node)
            except RuntimeError as exc:  # not running: nothing to do
                _log.info("broker not killed", node=node, reason=str(exc)[-200:])

    def __exit__(self, *exc: object) -> None:
        self._exit.close()  # brokers, then Redis and MinIO, then the network
        # the data goes, the logs stay (under the caller's directory)
        for data in (
            self.data_dir / "kafka" / "kafka-cluster",
            self.data_dir / "backends" / "redis",
            self.data_dir / "backends" / "minio",
        ):
            shutil.rmtree(data, ignore_errors=True)

    @property
    def env(self) -> dict[str, str]:
        """What points a stack at this cluster's Kafka, Redis and MinIO."""
        assert self.backends is not None and self.cluster is not None
        return {**self.backends.env, "INDEXIFY_KAFKA_BOOTSTRAP": self.cluster.bootstrap}

    def broker_host(self, node: int | str) -> str:
        return f"k{node}"

    def bootstrap(self, env: dict[str, str]) -> None:
        """The events and dead-letter topics and the bucket of the stack ``env`` describes."""
        assert self.cluster is not None
        self.cluster.bootstrap_topics({**env, **self.env})

    def start_services(self, stack: DevStack, *, concurrency: int = 2) -> None:
        """The API on the machine's side, each scheduler and executor on its own host; returns
        once the API answers."""
        stack.start(ProcessSpec("api", "services.api"))
        for index, host in enumerate(self.schedulers):
            name = "scheduler" if index == 0 else f"scheduler-{index + 1}"
            stack.start(self.network.spec(name, "services.scheduler", host))
            self.host_of[name] = host
        for index, host in enumerate(self.executors):
            name = f"executor-{index}"
            args = ["--concurrency", str(concurrency), "--id", name]
            stack.start(self.network.spec(name, "services.executor", host, args))
            self.host_of[name] = host
        stack.wait_healthy()

    def pid_host(self, stack: DevStack, pid: int) -> str:
        """The host of the stack's process ``pid``."""
        for name, running in stack.processes.items():
            if running.process.pid == pid:
                return self.host_of[name]
        raise LookupError(f"no process {pid} in the stack")


def problems() -> list[str]:
    """What this machine lacks for a :class:`NetnsCluster` (empty when nothing)."""
    found = netns_problems() + missing()
    cache = Path(os.environ.get("INDEXIFY_CACHE_DIR", str(Path.home() / ".cache" / "indexify")))
    if not any(cache.glob("kafka-*/lib/kafka_2.13-*.jar")):
        found.append("the Kafka jars (infra/kafka.sh install)")
    if sys.platform != "linux":
        found.append("not Linux")
    return found
