"""The cluster profile on several hosts (``infra/netns.sh``: each broker, scheduler and executor
in a network namespace of its own, see ``netns_cluster.py``), with hosts cut off the network:
their processes keep running, but every packet to or from them vanishes, until restored.

Each test's pass condition: every invocation the API accepted ends ``succeeded`` with the
outputs of an in-process run (``check_invariants``: nothing lost, nothing duplicated). Each
prints how long the steady stream of invocations stayed disturbed after the cut and after the
restore (``flow.recovery``). The short executor scenario runs in ``make test``; the 30 s
broker cut is a ``chaos`` scenario (``make chaos CLUSTER=1``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.errors import KafkaError
from flow import SteadyLoad, recovery, timings, write_csv
from netns_cluster import NetnsCluster, problems
from workload import Submitted, assert_exact, map_reduce_graph, slow_graph

from indexify import IndexifyClient, create_client
from services.devstack import DevStack

pytestmark = [pytest.mark.infra, pytest.mark.timeout(420)]

#: how long the slow task runs: still running when its executor's host is cut
SLOW_SEC = 3.0
BROKER_CUT_SEC = 30.0


@pytest.fixture(scope="module")
def netns_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    missing = problems()
    if missing:
        message = "cannot run hosts in network namespaces here: " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with NetnsCluster(tmp_path_factory.mktemp("netns-cluster"), executors=2) as running:
        yield running


@pytest.fixture
def netns_stack(netns_cluster: NetnsCluster, tmp_path: Path) -> Iterator[DevStack]:
    env = {
        **netns_cluster.env,
        "INDEXIFY_PREFIX": f"n{uuid.uuid4().hex[:10]}",
        "INDEXIFY_EXECUTOR_SESSION_TIMEOUT_MS": "3000",
        "INDEXIFY_SCHEDULER_SESSION_TIMEOUT_MS": "3000",
        # the slow task leaves marker files in the test's tmp_path
        "INDEXIFY_EXECUTOR_WORKER_USER": "",
    }
    netns_cluster.bootstrap(env)
    with DevStack(env, log_dir=tmp_path / "logs") as running:
        netns_cluster.start_services(running)
        yield running
    # the cluster, Redis and MinIO are the module's own: they go with it, topics and all


def _client(stack: DevStack) -> IndexifyClient:
    client = create_client(service_url=stack.url)
    client.register_compute_graph(map_reduce_graph())
    client.register_compute_graph(slow_graph())
    warm = client.invoke_graph_with_object("chaos_map_reduce", n=2)
    assert client.wait_for_invocation("chaos_map_reduce", warm, timeout=90).status == "succeeded"
    return client


def _flowing(
    client: IndexifyClient, load: SteadyLoad, since: float, count: int
) -> Callable[[], bool]:
    """A probe: ``count`` invocations sent after ``since`` (``time.time()``) have succeeded."""
    done: set[str] = set()

    def probe() -> bool:
        for item in load.accepted_since(since):
            if len(done) >= count:
                break
            if item.invocation_id in done:
                continue
            info = client.invocation_status(item.graph, item.invocation_id)
            if info.status == "succeeded":
                done.add(item.invocation_id)
        return len(done) >= count

    return probe


def _check(stack: DevStack, submitted: list[Submitted]) -> str:
    return assert_exact(stack.url, submitted, [map_reduce_graph(), slow_graph()])


def test_executor_host_cut_off_mid_task(
    netns_cluster: NetnsCluster,
    netns_stack: DevStack,
    tmp_path: Path,
    await_condition: Callable[..., object],
) -> None:
    """Cut the host of the executor running a slow task off the network while invocations
    keep coming: the other executor takes its partitions after the session timeout and runs
    the task again; once restored, the cut executor's late results change nothing."""
    stack = netns_stack
    client = _client(stack)
    load = SteadyLoad(stack.url, rate=1.5)  # light: a loaded 2-core machine keeps up
    load.start()
    try:
        await_condition(_flowing(client, load, 0.0, 6), 60, "the load to flow", 0.5)
        markers = tmp_path / "markers"
        markers.mkdir()
        slow_args = {"seconds": SLOW_SEC, "marker_dir": str(markers)}
        slow = client.invoke_graph_with_object("chaos_slow", **slow_args)
        first = await_condition(lambda: sorted(markers.iterdir()), 60, "the slow task to start")
        assert isinstance(first, list)
        host = netns_cluster.pid_host(stack, int(first[0].read_text()))
        cut_at = time.time()
        netns_cluster.network.cut(host)
        try:
            info = client.wait_for_invocation("chaos_slow", slow, timeout=120)
            slow_done = time.time() - cut_at
            assert info.status == "succeeded", info
            await_condition(
                _flowing(client, load, cut_at, 5), 90, "the load to flow after the cut", 0.5
            )
        finally:
            restored_at = time.time()
            netns_cluster.network.restore(host)
        await_condition(
            _flowing(client, load, restored_at, 5), 90, "the load to flow after the restore", 0.5
        )
    finally:
        submitted = load.stop()
        client.close()
    cut_executor = next(n for n, h in netns_cluster.host_of.items() if h == host)
    assert stack.processes[cut_executor].process.poll() is None, f"{cut_executor} exited"
    summary = _check(stack, [*submitted, Submitted("chaos_slow", slow_args, slow)])
    ts = timings(stack.url, load.sent)
    write_csv(ts, tmp_path / "timings.csv", origin=cut_at)
    after_cut = recovery(ts, cut_at, before=restored_at)
    after_restore = recovery(ts, restored_at, since=restored_at, baseline_until=cut_at)
    print(
        f"executor host {host} ({cut_executor}) cut {restored_at - cut_at:.1f} s; slow task "
        f"done {slow_done:.1f} s after the cut; flow recovered {after_cut} after the cut, "
        f"{after_restore} after the restore; accepted={len(submitted)} "
        f"refused={len(load.sent) - len(submitted)}; {summary}"
    )


@pytest.mark.chaos
def test_broker_host_cut_off_for_30s(
    netns_cluster: NetnsCluster,
    netns_stack: DevStack,
    tmp_path: Path,
    await_condition: Callable[..., object],
) -> None:
    """Cut the broker leading most events partitions off the network for 30 s under a steady
    load: the other two fence it and take its leaderships (min ISR 2: writes go on), and the
    services, whose connections to it break within ``kafka_unreachable_ms``, follow them: the
    stream flows again during the cut, not after it. Restored, the broker catches up and
    rejoins every in-sync set."""
    stack = netns_stack
    cluster = netns_cluster.cluster
    assert cluster is not None
    client = _client(stack)
    events = f"{stack.env['INDEXIFY_PREFIX']}.events"
    leaders = cluster.leaders(events)
    victim = max(set(leaders.values()), key=list(leaders.values()).count)
    host = netns_cluster.broker_host(victim)
    load = SteadyLoad(stack.url, rate=2.0)
    load.start()
    try:
        await_condition(_flowing(client, load, 0.0, 15), 60, "the load to flow", 0.5)
        cut_at = time.time()
        netns_cluster.network.cut(host)
        cluster.unreachable.add(str(victim))
        try:

            def moved() -> bool:
                try:
                    return victim not in cluster.leaders(events).values()
                except KafkaError:  # metadata still naming the cut node: asked again
                    return False

            await_condition(moved, BROKER_CUT_SEC, f"node {victim}'s leaderships to move", 0.5)
            moved_after = time.time() - cut_at
            # the cut lasts its full length, whatever happened meanwhile
            await_condition(
                lambda: time.time() >= cut_at + BROKER_CUT_SEC, BROKER_CUT_SEC, "the cut's end"
            )
        finally:
            restored_at = time.time()
            netns_cluster.network.restore(host)
            cluster.unreachable.discard(str(victim))

        def in_sync() -> bool:
            try:
                return all(victim in isr for isr in cluster.in_sync(events).values())
            except KafkaError:
                return False

        await_condition(in_sync, 120, f"node {victim} back in every in-sync set", 0.5)
        caught_up = time.time() - restored_at
        await_condition(
            _flowing(client, load, restored_at, 10), 120, "the load to flow after the restore", 0.5
        )
    finally:
        submitted = load.stop()
        client.close()
    summary = _check(stack, submitted)
    ts = timings(stack.url, load.sent)
    write_csv(ts, tmp_path / "timings.csv", origin=cut_at)
    after_cut = recovery(ts, cut_at, before=restored_at)
    after_restore = recovery(ts, restored_at, since=restored_at, baseline_until=cut_at)
    during = [t for t in ts if t.at >= cut_at and t.end < restored_at]
    print(
        f"broker {victim} (host {host}, leader of {list(leaders.values()).count(victim)} of "
        f"{len(leaders)} events partitions) cut {restored_at - cut_at:.1f} s; leaderships "
        f"moved {moved_after:.1f} s after the cut; back in sync {caught_up:.1f} s after the "
        f"restore; "
        f"flow recovered {after_cut} after the cut, {after_restore} after the restore; "
        f"{sum(t.ok for t in during)} invocations sent during the cut ended during it; "
        f"accepted={len(submitted)} refused={len(load.sent) - len(submitted)}; {summary}"
    )
    # what a request in flight to the silent broker used to hold up until the restore
    assert after_cut.seconds < restored_at - cut_at, (
        f"the stream stalled for the whole cut: {after_cut}"
    )
