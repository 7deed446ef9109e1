"""Fault scenarios on a real stack: processes SIGKILLed, Kafka/Redis/MinIO restarted, messages
duplicated. Each test's docstring states its pass condition; every wait has a deadline.

Kafka, Redis and MinIO are shared by the whole test session: a test that stops one restarts
it in a ``finally`` block (the infra scripts wait until the server answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from workload import (
    Submitted,
    blob_graph,
    chain_graph,
    check_invariants,
    jobs_graph,
    map_reduce_graph,
    million_graph,
    slow_graph,
    slow_reduce_graph,
    wait_for,
)

from indexify import IndexifyClient, create_client
from indexify.errors import ApiError
from indexify.models import InvocationInfo
from services.common.events import SCHEMA_VERSION
from services.common.kafka_bus import KafkaBus, make_consumer
from services.common.names import Names
from services.common.settings import InfraSettings
from services.devstack import DevStack, ProcessSpec

pytestmark = pytest.mark.infra

_INFRA = Path(__file__).resolve().parents[2] / "infra"


def _infra(server: str, action: str) -> float:
    """``infra/<server>.sh <action>`` (waits for readiness on start); returns its duration."""
    started = time.monotonic()
    subprocess.run([str(_INFRA / f"{server}.sh"), action], check=True, timeout=240)
    return time.monotonic() - started


def _client(stack: DevStack, request: pytest.FixtureRequest) -> IndexifyClient:
    client = create_client(service_url=stack.url)
    request.addfinalizer(client.close)
    return client


def _executor(stack: DevStack, index: int, concurrency: int = 2, **env: str) -> None:
    name = f"executor-{index}"
    stack.start(
        ProcessSpec(
            name,
            "services.executor",
            ["--concurrency", str(concurrency), "--id", name],
            env=dict(env),
        )
    )


def _core(stack: DevStack) -> None:
    stack.start(ProcessSpec("api", "services.api"))
    stack.start(ProcessSpec("scheduler", "services.scheduler"))


def _markers(directory: Path, prefix: str) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(prefix + "-")]


def _count_by_x(directory: Path, prefix: str) -> dict[int, int]:
    counts: dict[int, int] = {}
    for path in _markers(directory, prefix):
        x = int(path.name.split("-")[1])
        counts[x] = counts.get(x, 0) + 1
    return counts


def _alive(stack: DevStack) -> list[str]:
    return [n for n, r in stack.processes.items() if r.process.poll() is None]


def _log(stack: DevStack, name: str) -> str:
    assert stack.log_dir is not None
    return (stack.log_dir / f"{name}.log").read_text(errors="replace")


def _jobs(
    stack: DevStack, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[IndexifyClient, Path]:
    """A client with ``fault_jobs`` registered, and an empty directory for its markers."""
    client = _client(stack, request)
    client.register_compute_graph(jobs_graph())
    markers = tmp_path / "markers"
    markers.mkdir()
    return client, markers


def _assert_jobs_exact(
    client: IndexifyClient, inv: str, markers: Path, n: int, tmp_path: Path
) -> None:
    """``fault_jobs`` with ``n`` jobs ran each ``step`` and ``after_step`` exactly once (no
    stored step re-ran), with the outputs of an in-process run."""
    assert _count_by_x(markers, "step") == {x: 1 for x in range(n)}, "a stored step re-ran"
    assert _count_by_x(markers, "after") == {10 * x: 1 for x in range(n)}
    reference = create_client(in_process=True, echo_output=False)
    reference.register_compute_graph(jobs_graph())
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    ref = reference.invoke_graph_with_object("fault_jobs", marker_dir=str(ref_dir), n=n)
    assert sorted(client.graph_outputs("fault_jobs", inv, "after_step")) == sorted(
        reference.graph_outputs("fault_jobs", ref, "after_step")
    )


def _wait_terminal(client: IndexifyClient, graph: str, inv: str, timeout: float) -> Any:
    """``wait_for_invocation``, asking again while the API answers 503 (Redis reconnecting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.wait_for_invocation(
                graph, inv, timeout=max(1.0, deadline - time.monotonic())
            )
        except ApiError as exc:
            if exc.status_code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # back off before asking again


# -- 1. executor dies after storing outputs, before its completion event -----------------------


def test_executor_dies_after_storing_outputs_no_duplicates(
    stack: DevStack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Failpoint ``INDEXIFY_EXECUTOR_FAILPOINT=exit_before_finish:step`` (a test hook) makes
    the only executor ``os._exit(1)`` after a ``step`` task stored its outputs and its result
    record, before publishing task.finished. The executor is restarted without it.
    Pass: the invocation succeeds; ``step`` ran exactly once (the redelivered task
    re-publishes the recorded result instead of running again); ``after_step`` ran exactly
    once; outputs equal the in-process run's. One input: with several, another element whose
    function finished but whose result was not recorded yet when the process exited runs
    again, rightly (nothing of it was kept), which would make the count depend on timing."""
    _core(stack)
    _executor(stack, 0, concurrency=1, INDEXIFY_EXECUTOR_FAILPOINT="exit_before_finish:step")
    stack.wait_healthy()
    client, markers = _jobs(stack, tmp_path, request)
    n = 1
    inv = client.invoke_graph_with_object("fault_jobs", marker_dir=str(markers), n=n)
    victim = stack.processes["executor-0"].process
    wait_for(lambda: victim.poll() is not None, 60, "the failpoint to end the executor")
    assert victim.returncode == 1
    died_at = time.monotonic()
    _executor(stack, 0, concurrency=1)  # same id, no failpoint

    info = client.wait_for_invocation("fault_jobs", inv, timeout=90)
    recovery = time.monotonic() - died_at
    assert info.status == "succeeded", info.error
    _assert_jobs_exact(client, inv, markers, n, tmp_path)
    republished = _log(stack, "executor-0").count("re-publishing it")
    assert republished >= 1, "the restarted executor should re-publish the recorded result"
    print(f"executor died at the failpoint; recovered in {recovery:.1f} s; {republished} recorded")


# -- 1b. the API dies between an invocation's first task and its created event ----------------


def test_api_dies_after_sending_the_first_task_invocation_still_completes(
    stack: DevStack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The API sends a new invocation's first task itself, then its ``invocation.created``
    (services/common/task_messages.py). Failpoint ``INDEXIFY_API_FAILPOINT=exit_after_start``
    makes it ``os._exit(1)`` between the two: the created event is never sent and the client's
    request fails. Pass: the invocation still runs to the end (its first result tells the
    scheduler it started), each step exactly once, with the outputs of an in-process run, and
    it is the only invocation of the graph."""
    stack.start(
        ProcessSpec("api", "services.api", env={"INDEXIFY_API_FAILPOINT": "exit_after_start"})
    )
    stack.start(ProcessSpec("scheduler", "services.scheduler"))
    _executor(stack, 0)
    stack.wait_healthy()
    client, markers = _jobs(stack, tmp_path, request)
    n = 3
    with pytest.raises(Exception):  # noqa: B017 - the connection drops: any client error
        client.invoke_graph_with_object("fault_jobs", marker_dir=str(markers), n=n)
    victim = stack.processes["api"].process
    wait_for(lambda: victim.poll() is not None, 30, "the failpoint to end the API")
    assert victim.returncode == 1
    died_at = time.monotonic()
    stack.start(ProcessSpec("api", "services.api"))
    stack.wait_healthy()

    def only_invocation() -> str | None:
        listed = client.invocations("fault_jobs")
        assert len(listed) <= 1, listed
        return listed[0].id if listed else None

    wait_for(lambda: only_invocation() is not None, 30, "the invocation to be listed")
    inv = only_invocation()
    assert inv is not None
    info = client.wait_for_invocation("fault_jobs", inv, timeout=90)
    recovery = time.monotonic() - died_at
    assert info.status == "succeeded", info.error
    _assert_jobs_exact(client, inv, markers, n, tmp_path)
    assert "failpoint exit_after_start hit" in _log(stack, "api")
    print(f"API died between first task and created event; invocation done {recovery:.1f} s on")


# -- 2. Kafka restarted during 200 invocations --------------------------------------------------


def test_kafka_restart_during_200_invocations(
    stack: DevStack, request: pytest.FixtureRequest
) -> None:
    """``infra/kafka.sh restart`` while 200 invocations are submitted.
    Pass: every accepted invocation (HTTP 200) ends succeeded with the outputs of an
    in-process run (``check_invariants``); refused ones (5xx during the outage) are allowed."""
    stack.start_default(executors=2)
    client = _client(stack, request)
    client.register_compute_graph(map_reduce_graph())
    reference = create_client(in_process=True, echo_output=False)
    reference.register_compute_graph(map_reduce_graph())
    warm = client.invoke_graph_with_object("chaos_map_reduce", n=2)  # everyone has joined
    assert client.wait_for_invocation("chaos_map_reduce", warm, timeout=60).status == "succeeded"
    submitted: list[Submitted] = []
    refused: list[str] = []
    outage: dict[str, float] = {}

    def restart() -> None:
        outage["start"] = time.monotonic()
        outage["took"] = _infra("kafka", "restart")

    restarter = threading.Thread(target=restart)
    try:
        for i in range(200):
            if i == 40:
                restarter.start()
            n = 3 + i % 7
            try:
                inv = client.invoke_graph_with_object("chaos_map_reduce", n=n)
            except ApiError as exc:
                refused.append(f"{exc.status_code}")
                continue
            submitted.append(Submitted("chaos_map_reduce", {"n": n}, inv))
    finally:
        if restarter.ident is not None:
            restarter.join(timeout=300)
        _infra("kafka", "start")  # a no-op when it runs; restarts it if the restart failed
    ready = time.monotonic()
    report = check_invariants(client, reference, submitted, timeout=240)
    drained = time.monotonic() - ready
    print(
        f"kafka restart took {outage['took']:.1f} s; accepted={len(submitted)} "
        f"refused={len(refused)} ({sorted(set(refused))}); drained {drained:.1f} s after the "
        f"broker was back; {report.summary()}"
    )
    assert report.ok, report.summary()
    assert report.succeeded == len(submitted)


# -- 3. Redis restarted during a reduction ------------------------------------------------------


def test_redis_restart_during_reduction(stack: DevStack, request: pytest.FixtureRequest) -> None:
    """A map of 2,000 (2 ms each) into a reducer; ``infra/redis.sh restart`` (AOF) while the
    map runs. Pass: the invocation succeeds and the reduced value is exactly sum(x*x)."""
    stack.start_default(executors=2, concurrency=2)
    client = _client(stack, request)
    client.register_compute_graph(slow_reduce_graph())
    n = 2000
    inv = client.invoke_graph_with_object("fault_slow_reduce", n=n)

    def mapped() -> int:
        try:
            return client.invocation_status("fault_slow_reduce", inv).outputs.get("slow_square", 0)
        except ApiError:
            return 0

    wait_for(lambda: mapped() >= 200, 120, "the map to be under way")
    at = mapped()
    try:
        took = _infra("redis", "restart")
    finally:
        _infra("redis", "start")
    back = time.monotonic()
    info = _wait_terminal(client, "fault_slow_reduce", inv, timeout=240)
    assert info.status == "succeeded", info.error
    (total,) = client.graph_outputs("fault_slow_reduce", inv, "slow_add")
    assert total.value == sum(x * x for x in range(n))
    print(
        f"redis restarted at {at}/{n} mapped (took {took:.1f} s); finished "
        f"{time.monotonic() - back:.1f} s later; total exact"
    )


# -- 4. MinIO stopped for 10 s ------------------------------------------------------------------


def test_minio_outage_is_waited_out(
    stack: DevStack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Invocations whose values (100 KB) go through MinIO; MinIO stopped for 10 s mid-run.
    Pass: every invocation succeeds with the right length, and the failed attempts during the
    outage are platform errors (retried without using the user's budget: retries=0)."""
    stack.start_default(executors=2)
    client = _client(stack, request)
    client.register_compute_graph(blob_graph())
    markers = tmp_path / "markers"
    markers.mkdir()
    size = 100_000
    invs = [
        client.invoke_graph_with_object("fault_blob", size=size, marker_dir=str(markers))
        for _ in range(5)
    ]
    wait_for(lambda: _markers(markers, "blob"), 30, "a blob task to start")
    more: list[str] = []
    try:
        _infra("minio", "stop")
        stopped = time.monotonic()
        # invocations accepted before the outage keep flowing into it
        deadline = stopped + 10
        while time.monotonic() < deadline:
            # the input (100 KB) goes to MinIO: refused (not accepted) while it is down
            with contextlib.suppress(ApiError):
                more.append(
                    client.invoke_graph_with_object(
                        "fault_blob", size=size, marker_dir=str(markers)
                    )
                )
            time.sleep(0.5)  # pacing of the submissions, not a synchronization
    finally:
        _infra("minio", "start")
    back = time.monotonic()
    platform = 0
    for inv in invs + more:
        info = client.wait_for_invocation("fault_blob", inv, timeout=180)
        assert info.status == "succeeded", info.error
        assert client.graph_outputs("fault_blob", inv, "blob_len") == [size]
        for task in info.tasks:
            for attempt in task.attempts:
                if attempt.outcome == "failure":
                    assert attempt.error is not None and attempt.error.kind == "platform", attempt
                    platform += 1
    print(
        f"minio down 10 s; {len(invs) + len(more)} invocations succeeded "
        f"{time.monotonic() - back:.1f} s after it was back; {platform} platform-error attempts"
    )


# -- 5. the same task delivered twice, also concurrently ----------------------------------------


async def _copy_task_message(infra: InfraSettings, topic_suffix: str) -> tuple[str, int, bytes]:
    """Read the first message of the task topic ending with ``topic_suffix``."""
    async with KafkaBus(infra) as bus:
        names = Names(infra.prefix)
        topics = [
            t
            for t in await bus.list_topics()
            if t.startswith(names.task_topic_prefix) and t.endswith(topic_suffix)
        ]
        assert len(topics) == 1, topics
        consumer = make_consumer(infra, group_id=f"{infra.prefix}.fault-reader", topics=topics)
        await consumer.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    record = records[0]
                    return record.topic, record.partition, record.value or b""
        finally:
            await consumer.stop()
    raise AssertionError(f"no message on {topic_suffix}")


async def _publish_copy(infra: InfraSettings, topic: str, partition: int, value: bytes) -> None:
    async with KafkaBus(infra) as bus:
        await bus.producer.send_and_wait(topic, value=value, partition=partition)


def test_duplicate_task_delivery_has_one_effect(
    stack: DevStack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A copy of a running task's TaskMessage is published to another partition of its topic
    (so another executor gets it while the first still runs it), and a second copy after the
    invocation finished. Pass: each step ran once (one marker per element), each downstream
    task ran once, one output each, the invocation succeeded. Two elements: the step of a
    fan-out of one is continued on the executor that ran ``jobs`` (a chain), and has no task
    message to copy."""
    stack.start_default(executors=2)
    client, markers = _jobs(stack, tmp_path, request)
    inv = client.invoke_graph_with_object("fault_jobs", marker_dir=str(markers), n=2, seconds=4.0)
    wait_for(lambda: _markers(markers, "step"), 30, "the step to start")
    infra = InfraSettings(prefix=stack.env["INDEXIFY_PREFIX"])
    topic, partition, value = asyncio.run(_copy_task_message(infra, ".fault_jobs.step"))
    other = (partition + 2) % infra.task_partitions
    asyncio.run(_publish_copy(infra, topic, other, value))
    info = client.wait_for_invocation("fault_jobs", inv, timeout=60)
    assert info.status == "succeeded", info.error
    asyncio.run(_publish_copy(infra, topic, partition, value))  # after the end: skipped
    wait_for(
        lambda: sum(_log(stack, n).count("task skipped") for n in ("executor-0", "executor-1")),
        30,
        "the late copy to be skipped",
    )
    waited = sum(_log(stack, n).count("task runs elsewhere") for n in ("executor-0", "executor-1"))
    assert _count_by_x(markers, "step") == {0: 1, 1: 1}, "a step ran twice"
    assert _count_by_x(markers, "after") == {0: 1, 10: 1}, "a downstream task ran twice"
    assert sorted(client.graph_outputs("fault_jobs", inv, "after_step")) == [1, 11]
    steps = [t for t in info.tasks if t.function == "step"]
    assert len(steps) == 2 and all(t.status == "succeeded" for t in steps)
    print(f"concurrent copy waited for the lease: {waited}; function ran once")


# -- 6. a reducer fed by 1,000 map outputs on 3 executors ---------------------------------------


def test_reducer_over_1000_outputs_on_3_executors(
    stack: DevStack, request: pytest.FixtureRequest
) -> None:
    """Pass: exactly one final reducer output, equal to sum(x*x for x < 1000), and the
    router's single downstream output; all outputs equal the in-process run's."""
    stack.start_default(executors=3)
    client = _client(stack, request)
    client.register_compute_graph(map_reduce_graph())
    reference = create_client(in_process=True, echo_output=False)
    reference.register_compute_graph(map_reduce_graph())
    started = time.monotonic()
    inv = client.invoke_graph_with_object("chaos_map_reduce", n=1000)
    report = check_invariants(
        client, reference, [Submitted("chaos_map_reduce", {"n": 1000}, inv)], timeout=120
    )
    assert report.ok, report.summary()
    (total,) = client.graph_outputs("chaos_map_reduce", inv, "add_up")
    assert total.value == sum(x * x for x in range(1000))
    ran_on = {
        a.executor
        for t in client.invocation_status("chaos_map_reduce", inv).tasks
        for a in t.attempts
    }
    print(f"1,000 -> 1 reduced in {time.monotonic() - started:.1f} s on {sorted(ran_on)}")


# -- 7. a long function while executors join and leave ------------------------------------------


async def _group_members(infra: InfraSettings, group: str) -> list[str]:
    async with KafkaBus(infra) as bus:
        (described,) = await bus.admin.describe_consumer_groups([group])
    text = repr(described)
    return sorted(set(re.findall(r"executor-executor-\d+", text)))


def test_long_function_while_executors_join_and_leave(
    stack: DevStack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A function runs 20 s (60 s in production terms; shortened to keep the suite short)
    while executors join (2), one is SIGKILLed and one leaves with SIGTERM, each causing a
    rebalance that may move its partition. Pass: the function started exactly once (no
    duplicate: a new owner of the partition waits for the running task's lease), the
    invocation succeeded with one attempt by executor-0, and executor-0 is still a member of
    the consumer group with a fresh heartbeat at the end."""
    _core(stack)
    _executor(stack, 0)
    stack.wait_healthy()
    client = _client(stack, request)
    client.register_compute_graph(slow_graph())
    markers = tmp_path / "markers"
    markers.mkdir()
    inv = client.invoke_graph_with_object("chaos_slow", seconds=20.0, marker_dir=str(markers))
    wait_for(lambda: list(markers.iterdir()), 30, "the long task to start")
    started = time.monotonic()
    infra = InfraSettings(prefix=stack.env["INDEXIFY_PREFIX"])
    group = f"{infra.prefix}.indexify-executors"

    def members() -> list[str]:
        return asyncio.run(_group_members(infra, group))

    _executor(stack, 1)
    _executor(stack, 2)
    wait_for(lambda: len(members()) == 3, 30, "executors 1 and 2 to join the group")
    stack.kill("executor-2")
    _executor(stack, 3)
    wait_for(lambda: "executor-executor-3" in members(), 30, "executor-3 to join")
    stack.kill("executor-1", sig=15)
    churn = time.monotonic() - started
    assert churn < 20, f"the churn ({churn:.1f} s) should happen while the function runs"

    info = client.wait_for_invocation("chaos_slow", inv, timeout=90)
    assert info.status == "succeeded", info.error
    assert len(list(markers.iterdir())) == 1, "the long function ran twice"
    (slow,) = [t for t in info.tasks if t.function == "slow_step"]
    assert [(a.executor, a.outcome) for a in slow.attempts] == [("executor-0", "success")]
    assert "executor-executor-0" in members()
    assert "executor-0" in _alive(stack)
    waits = sum(_log(stack, f"executor-{i}").count("task runs elsewhere") for i in (1, 2, 3))
    print(
        f"20 s function, churn over {churn:.1f} s; ran once on executor-0; "
        f"{waits} lease waits by new partition owners"
    )


# -- 8. a function that returns 1,000,000 items -------------------------------------------------


def test_million_outputs_fail_with_a_clear_error(
    stack: DevStack, request: pytest.FixtureRequest
) -> None:
    """Pass: the invocation ends failed with an error naming the per-task output limit and
    how to raise it or batch; every service process is still alive (no OOM crash); a normal
    invocation afterwards succeeds."""
    stack.start_default(executors=1)
    client = _client(stack, request)
    client.register_compute_graph(million_graph())
    started = time.monotonic()
    inv = client.invoke_graph_with_object("fault_million", n=1_000_000)
    info = client.wait_for_invocation("fault_million", inv, timeout=120)
    took = time.monotonic() - started
    assert info.status == "failed"
    assert info.error is not None
    assert "over the limit of 100000" in info.error.message, info.error.message
    assert "INDEXIFY_EXECUTOR_MAX_OUTPUTS_PER_TASK" in info.error.message
    assert sorted(_alive(stack)) == ["api", "executor-0", "scheduler"]
    ok = client.invoke_graph_with_object("fault_million", n=10)
    assert client.wait_for_invocation("fault_million", ok, timeout=60).status == "succeeded"
    print(f"1,000,000 outputs refused in {took:.1f} s: {info.error.message}")


# -- 9. cancellation ------------------------------------------------------------------------------


def test_cancel_mid_way_skips_queued_tasks(
    stack: DevStack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """20 one-second tasks on one executor with 2 workers; cancelled after 2 started.
    Pass: the invocation ends ``cancelled``; every task message is either one that started
    before the cancel took effect or is skipped by the executor ("invocation cancelled");
    far fewer than 20 ran."""
    _core(stack)
    _executor(stack, 0)
    stack.wait_healthy()
    client, markers = _jobs(stack, tmp_path, request)
    n = 20
    inv = client.invoke_graph_with_object("fault_jobs", marker_dir=str(markers), n=n, seconds=1.0)
    wait_for(lambda: len(_markers(markers, "step")) >= 2, 30, "two tasks to start")
    cancelled_at = time.monotonic()
    client.cancel_invocation("fault_jobs", inv)
    info = client.wait_for_invocation("fault_jobs", inv, timeout=30)
    took = time.monotonic() - cancelled_at
    assert info.status == "cancelled"

    def skipped() -> int:
        """Tasks the executor skipped: a line per single task, a line per chunk (tasks=N)."""
        count = 0
        for line in _log(stack, "executor-0").splitlines():
            if "invocation cancelled" not in line:
                continue
            found = re.search(r"\btasks=(\d+)", line)
            count += int(found.group(1)) if found and "tasks skipped" in line else 1
        return count

    wait_for(
        lambda: skipped() + len(_markers(markers, "step")) >= n,
        60,
        "every queued task to be skipped",
    )
    ran = len(_markers(markers, "step"))
    assert ran <= 6, f"{ran} tasks ran after the cancel"
    assert not _markers(markers, "after")
    statuses = {t.status for t in info.tasks if t.function == "step"}
    assert "cancelled" in statuses
    print(f"cancelled in {took:.2f} s; {ran}/{n} ran, {skipped()} skipped")


# -- chains continued on an executor --------------------------------------------------------


def _chain_invoked(
    stack: DevStack,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    seconds: float,
    **executor_env: str,
) -> tuple[IndexifyClient, Path, str]:
    """API, scheduler and one executor (one worker); a ``fault_chain`` invocation whose
    chained ``chain_b`` runs until ``<markers>/go`` exists (at most ``seconds``)."""
    _core(stack)
    _executor(stack, 0, concurrency=1, **executor_env)
    stack.wait_healthy()
    client = _client(stack, request)
    client.register_compute_graph(chain_graph())
    markers = tmp_path / "markers"
    markers.mkdir()
    inv = client.invoke_graph_with_object("fault_chain", dir=str(markers), seconds=seconds)
    return client, markers, inv


def _chain_started(
    stack: DevStack, tmp_path: Path, request: pytest.FixtureRequest, **executor_env: str
) -> tuple[IndexifyClient, Path, str]:
    """:func:`_chain_invoked`, returning once its chained ``chain_b`` is running."""
    client, markers, inv = _chain_invoked(stack, tmp_path, request, 60.0, **executor_env)
    wait_for(lambda: _markers(markers, "chain_b-0"), 30, "the chained step to start")
    return client, markers, inv


def _killed_in_chain_b(
    stack: DevStack, client: IndexifyClient, markers: Path, inv: str
) -> InvocationInfo:
    """SIGKILL executor-0 while chain_b runs, start executor-1, let chain_b's second run
    finish; asserts the invocation succeeded exactly: chain_a and chain_c ran once, chain_b
    twice (killed mid-run, run again). Its final status."""
    stack.kill("executor-0")
    _executor(stack, 1, concurrency=1)
    wait_for(lambda: len(_markers(markers, "chain_b-0")) >= 2, 90, "chain_b to run again")
    (markers / "go").write_text("")
    info = client.wait_for_invocation("fault_chain", inv, timeout=90)
    assert info.status == "succeeded", info.error
    assert client.graph_outputs("fault_chain", inv, "chain_c") == [11]
    assert len(_markers(markers, "chain_a-0")) == 1
    assert len(_markers(markers, "chain_b-0")) == 2
    assert len(_markers(markers, "chain_c-1")) == 1
    return info


def test_executor_killed_in_a_continued_chain_repeats_no_finished_step(
    stack: DevStack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """chain_a -> chain_b -> chain_c; the executor runs chain_b itself right after chain_a
    and is SIGKILLed while chain_b runs. Pass: the invocation succeeds with the exact
    output; chain_a ran once (its result was kept in the round trip that claimed chain_b,
    long before the kill: the redelivered task message re-publishes it), chain_c once;
    chain_b twice (killed mid-run, run again); every task has one successful attempt."""
    client, markers, inv = _chain_started(stack, tmp_path, request)
    assert _markers(markers, "chain_a-0") and not _markers(markers, "chain_c-1")
    info = _killed_in_chain_b(stack, client, markers, inv)
    tasks = {t.function: t for t in info.tasks}
    assert set(tasks) == {"chain_a", "chain_b", "chain_c"}
    for task in tasks.values():
        assert [a.outcome for a in task.attempts] == ["success"], task


def test_a_continued_result_after_a_cancel_is_rejected(
    stack: DevStack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The invocation is cancelled while its executor runs the chained chain_b. Pass: the
    executor stops the worker running chain_b (the chain ends there, it never asks for
    chain_c); the scheduler ignores the late results of chain_a and chain_b (the invocation
    stays cancelled, with no task of chain_b or chain_c), and chain_c never runs. (The
    executor holds a chain for up to a minute here, so only the cancel ends it.)"""
    client, markers, inv = _chain_started(
        stack, tmp_path, request, INDEXIFY_EXECUTOR_CHAIN_HOLD_SEC="60"
    )
    client.cancel_invocation("fault_chain", inv)
    assert client.wait_for_invocation("fault_chain", inv, timeout=30).status == "cancelled"

    def chain_stopped() -> bool:
        log = _log(stack, "executor-0")
        return any("its invocation was cancelled" in line for line in log.splitlines())

    wait_for(chain_stopped, 30, "the executor to stop the chained step")
    (markers / "go").write_text("")  # nothing runs on: no chain_c
    info = client.invocation_status("fault_chain", inv)
    assert info.status == "cancelled"
    assert {t.function for t in info.tasks} == {"chain_a"}
    assert not _markers(markers, "chain_c")
    assert client.graph_outputs("fault_chain", inv, "chain_b") == []


def test_executor_killed_in_a_hinted_chain_repeats_no_finished_step(
    stack: DevStack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The same kill, with chain_a started from its task hint (services/common/
    task_hints.py: the API published its message on Redis too, the executor started it before
    Kafka delivered it). Pass: as in the test above; the Kafka copy of chain_a's message,
    redelivered to the restarted executor, re-publishes chain_a's recorded result."""
    _core(stack)
    _executor(stack, 0, concurrency=1, INDEXIFY_LOG_LEVEL="DEBUG")
    stack.wait_healthy()
    client = _client(stack, request)
    client.register_compute_graph(chain_graph())
    ready = ("following task hints", "partitions=12")  # every partition of the 3 topics
    wait_for(lambda: all(s in _log(stack, "executor-0") for s in ready), 60, "hints followed")
    markers = tmp_path / "markers"
    markers.mkdir()
    inv = client.invoke_graph_with_object("fault_chain", dir=str(markers), seconds=60.0)
    wait_for(lambda: _markers(markers, "chain_b-0"), 30, "the chained step to start")
    started = [
        line
        for line in _log(stack, "executor-0").splitlines()
        if "task started" in line and "function=chain_a" in line
    ]
    assert len(started) == 1 and "offset=-1" in started[0], started  # from the hint
    _killed_in_chain_b(stack, client, markers, inv)
    assert "re-publishing it" in _log(stack, "executor-1")  # chain_a's, from its Kafka copy


def test_executor_dies_before_saving_the_end_its_chain_decided(
    stack: DevStack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """chain_a -> chain_b -> chain_c run on one executor, which would save the invocation's
    end itself (chain_c is a leaf: services/executor/finisher.py). The failpoint
    ``exit_before_finish:chain_c`` ends the process once the three results are recorded,
    before that save. Pass: the restarted executor re-publishes the recorded results (the
    redelivered task message finds chain_a's, the scheduler sends chain_b and chain_c, which
    find theirs), so the invocation succeeds with the exact output and each step ran once."""
    failpoint = {"INDEXIFY_EXECUTOR_FAILPOINT": "exit_before_finish:chain_c"}
    client, markers, inv = _chain_invoked(stack, tmp_path, request, 0.0, **failpoint)
    victim = stack.processes["executor-0"].process
    wait_for(lambda: victim.poll() is not None, 60, "the failpoint to end the executor")
    assert victim.returncode == 1
    assert "invocation finished here" not in _log(stack, "executor-0")
    assert client.invocation_status("fault_chain", inv).status != "succeeded"
    _executor(stack, 1, concurrency=1)

    info = client.wait_for_invocation("fault_chain", inv, timeout=90)
    assert info.status == "succeeded", info.error
    assert client.graph_outputs("fault_chain", inv, "chain_c") == [11]
    for step in ("chain_a-0", "chain_b-0", "chain_c-1"):
        assert len(_markers(markers, step)) == 1, f"{step} ran again"
    assert _log(stack, "executor-1").count("re-publishing it") >= 3  # one per step
    tasks = {t.function: t for t in info.tasks}
    assert set(tasks) == {"chain_a", "chain_b", "chain_c"}
    for task in tasks.values():
        assert [a.outcome for a in task.attempts] == ["success"], task


# -- dead letters ---------------------------------------------------------------------------------


async def _dead_letter_roundtrip(infra: InfraSettings, bad: bytes) -> list[Any]:
    names = Names(infra.prefix)
    async with KafkaBus(infra) as bus:
        for partition in range(infra.events_partitions):
            await bus.producer.send_and_wait(
                names.events_topic, value=bad, key=b"bad", partition=partition
            )
    consumer = make_consumer(
        infra, group_id=f"{infra.prefix}.dlq-reader", topics=[names.deadletter_topic]
    )
    await consumer.start()
    found: list[Any] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(found) < infra.events_partitions:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                found.extend(r.value for r in records)
    finally:
        await consumer.stop()
    return found


def test_unknown_schema_version_is_dead_lettered_and_partitions_flow(
    stack: DevStack, request: pytest.FixtureRequest
) -> None:
    """An event with ``schema_version: 99`` on every partition of the events topic.
    Pass: each lands on the dead-letter topic with a reason naming schema_version and the
    original bytes; invocations on every partition still succeed afterwards."""
    import json

    from services.common.events import DeadLetter

    stack.start_default(executors=1)
    client = _client(stack, request)
    client.register_compute_graph(map_reduce_graph())
    bad = json.dumps(
        {
            "type": "invocation.created",
            "schema_version": SCHEMA_VERSION + 98,
            "namespace": "default",
            "graph": "chaos_map_reduce",
            "invocation_id": "bad",
            "graph_version": "1",
            "input": {"content_types": [], "inline": []},
        }
    ).encode()
    infra = InfraSettings(prefix=stack.env["INDEXIFY_PREFIX"])
    letters = [
        DeadLetter.model_validate_json(v) for v in asyncio.run(_dead_letter_roundtrip(infra, bad))
    ]
    assert len(letters) == infra.events_partitions
    for letter in letters:
        assert letter.value == bad
        assert "schema_version" in letter.reason, letter.reason
    invs = [client.invoke_graph_with_object("chaos_map_reduce", n=3) for _ in range(16)]
    for inv in invs:
        assert client.wait_for_invocation("chaos_map_reduce", inv, timeout=60).status == (
            "succeeded"
        )
    print(f"dead letter reason: {letters[0].reason}")
