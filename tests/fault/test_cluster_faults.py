"""The stack on the cluster profile (``infra/kafka-cluster.sh``: three KRaft brokers,
replication factor 3, ``min.insync.replicas=2``) losing a broker or a scheduler under load.

Each test's pass condition: every invocation the API accepted ends ``succeeded`` with the
outputs of an in-process run (``check_invariants``), nothing lost and nothing duplicated.
The cluster runs beside the dev broker, on its own ports and in the test's own data directory;
Redis and MinIO are the ones ``make infra-up`` started.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka_cluster import Cluster
from workload import Submitted, assert_exact, map_reduce_graph

from indexify import create_client
from indexify.errors import ApiError
from services.devstack import DevStack, ProcessSpec

pytestmark = [pytest.mark.infra, pytest.mark.timeout(420)]

INVOCATIONS = 60


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, require_infra: None) -> Iterator[Cluster]:
    running = Cluster(tmp_path_factory.mktemp("kafka-cluster"))
    running.run("start")
    try:
        yield running
    finally:
        running.run("stop")


@pytest.fixture
def cluster_stack(
    cluster: Cluster, tmp_path: Path, cleanup: Callable[[str], None]
) -> Iterator[DevStack]:
    prefix = f"k{uuid.uuid4().hex[:10]}"
    env = {
        "INDEXIFY_PREFIX": prefix,
        "INDEXIFY_KAFKA_BOOTSTRAP": cluster.bootstrap,
        "INDEXIFY_EXECUTOR_SESSION_TIMEOUT_MS": "3000",
        "INDEXIFY_SCHEDULER_SESSION_TIMEOUT_MS": "3000",
    }
    cluster.bootstrap_topics(env)
    with DevStack(env, log_dir=tmp_path / "logs") as running:
        yield running
    cleanup(prefix)


def _submit_while(
    stack: DevStack, fault_at: int, fault: Callable[[], None]
) -> tuple[list[Submitted], list[str]]:
    """Submit :data:`INVOCATIONS` map-reduce invocations; ``fault`` runs in a thread once
    ``fault_at`` were submitted. Returns the accepted ones and the refusals."""
    client = create_client(service_url=stack.url)
    client.register_compute_graph(map_reduce_graph())
    warm = client.invoke_graph_with_object("chaos_map_reduce", n=2)
    assert client.wait_for_invocation("chaos_map_reduce", warm, timeout=90).status == "succeeded"
    submitted: list[Submitted] = []
    refused: list[str] = []
    injector = threading.Thread(target=fault)
    try:
        for i in range(INVOCATIONS):
            if i == fault_at:
                injector.start()
            n = 3 + i % 7
            try:
                inv = client.invoke_graph_with_object("chaos_map_reduce", n=n)
            except ApiError as exc:  # a 503 while a partition has no leader: never accepted
                refused.append(str(exc.status_code))
                continue
            submitted.append(Submitted("chaos_map_reduce", {"n": n}, inv))
    finally:
        if injector.ident is not None:
            injector.join(timeout=180)
        client.close()
    return submitted, refused


def _check(stack: DevStack, submitted: list[Submitted]) -> str:
    return assert_exact(stack.url, submitted, [map_reduce_graph()])


def test_partition_leader_killed_under_load(cluster: Cluster, cluster_stack: DevStack) -> None:
    """SIGKILL the broker leading most partitions of the events topic while invocations are
    submitted; the other two take over its partitions (replicas in sync: nothing lost)."""
    cluster_stack.start_default(executors=2)
    events = f"{cluster_stack.env['INDEXIFY_PREFIX']}.events"
    leaders = cluster.leaders(events)
    victim = max(set(leaders.values()), key=list(leaders.values()).count)
    killed: dict[str, float] = {}

    def kill() -> None:
        killed["at"] = time.monotonic()
        cluster.run("kill-node", str(victim))

    try:
        submitted, refused = _submit_while(cluster_stack, 15, kill)
        summary = _check(cluster_stack, submitted)
        drained = time.monotonic() - killed["at"]
        moved = cluster.leaders(events)
        assert victim not in moved.values(), f"node {victim} still leads partitions: {moved}"
        # every topic of the stack, the task topics the scheduler made too, has 3 replicas
        prefix = cluster_stack.env["INDEXIFY_PREFIX"]
        topics = cluster.topics(prefix + ".")
        assert any(".tasks." in t for t in topics), topics
        for topic in topics:
            replicas = {len(r) for _, r in cluster.partitions(topic).values()}
            assert replicas == {3}, f"{topic}: {replicas} replicas"
    finally:
        cluster.run("start-node", str(victim))  # back for the next test
    print(
        f"node {victim} (leader of {list(leaders.values()).count(victim)} of {len(leaders)} "
        f"events partitions) killed; accepted={len(submitted)} refused={len(refused)}; all "
        f"done {drained:.1f} s after the kill; {summary}"
    )


def test_one_of_two_schedulers_killed_under_load(cluster: Cluster, cluster_stack: DevStack) -> None:
    """Two schedulers share the events partitions; SIGKILL one under load: the other takes
    its partitions over (a rebalance after the session timeout) and finishes everything."""
    cluster_stack.start_default(executors=2)
    cluster_stack.start(ProcessSpec("scheduler-2", "services.scheduler"))
    killed: dict[str, float] = {}

    def kill() -> None:
        killed["at"] = time.monotonic()
        cluster_stack.kill("scheduler")

    submitted, refused = _submit_while(cluster_stack, 15, kill)
    summary = _check(cluster_stack, submitted)
    drained = time.monotonic() - killed["at"]
    assert not refused, f"a scheduler's death must not refuse invocations: {refused}"
    assert cluster_stack.processes["scheduler-2"].process.poll() is None
    print(f"scheduler killed; all {len(submitted)} done {drained:.1f} s after; {summary}")


def test_rolling_restart_of_all_three_brokers(cluster: Cluster, cluster_stack: DevStack) -> None:
    """Each broker in turn stopped (SIGTERM: a controlled shutdown hands its leaderships over)
    and started again, waiting for all three to be back, while invocations are submitted."""
    cluster_stack.start_default(executors=2)
    took: dict[str, float] = {}

    def roll() -> None:
        started = time.monotonic()
        for node in ("1", "2", "3"):
            cluster.run("stop-node", node)
            cluster.run("start-node", node)  # returns once the cluster shows 3 brokers again
        took["roll"] = time.monotonic() - started

    submitted, refused = _submit_while(cluster_stack, 10, roll)
    summary = _check(cluster_stack, submitted)
    print(
        f"rolling restart took {took['roll']:.1f} s; accepted={len(submitted)} "
        f"refused={len(refused)}; {summary}"
    )
