"""Graphs and the invariant checker shared by the fault-injection tests and ``make chaos``."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Union

from pydantic import BaseModel

from indexify import Graph, IndexifyClient, indexify_function, indexify_router
from indexify.errors import InvocationNotFinishedError


class Total(BaseModel):
    value: int = 0


@indexify_function()
def numbers(n: int) -> List[int]:
    return list(range(n))


@indexify_function()
def square(x: int) -> int:
    return x * x


@indexify_function(accumulate=Total)
def add_up(total: Total, x: int) -> Total:
    return Total(value=total.value + x)


@indexify_router()
def parity(total: Total) -> List[Union[odd_total, even_total]]:
    return [odd_total] if total.value % 2 else [even_total]


@indexify_function()
def odd_total(total: Total) -> str:
    return f"odd:{total.value}"


@indexify_function()
def even_total(total: Total) -> str:
    return f"even:{total.value}"


def map_reduce_graph() -> Graph:
    """numbers -> square (map) -> add_up (reduce) -> parity router -> odd/even."""
    g = Graph(name="chaos_map_reduce", start_node=numbers)
    g.add_edge(numbers, square)
    g.add_edge(square, add_up)
    g.add_edge(add_up, parity)
    g.route(parity, [odd_total, even_total])
    return g


@indexify_function()
def slow_step(seconds: float, marker_dir: str) -> float:
    """Sleeps; leaves a marker naming the executor process so a test can kill it."""
    Path(marker_dir, f"started-{os.getpid()}-{os.getppid()}").write_text(str(os.getppid()))
    time.sleep(seconds)
    return seconds


@indexify_function()
def after_slow(seconds: float) -> str:
    return f"slept {seconds}"


def slow_graph() -> Graph:
    g = Graph(name="chaos_slow", start_node=slow_step)
    g.add_edge(slow_step, after_slow)
    return g


class Job(BaseModel):
    """One item of a fan-out that leaves a marker file per execution in ``dir``."""

    dir: str
    x: int
    seconds: float = 0.0


def _mark(job: Job, what: str) -> None:
    Path(job.dir, f"{what}-{job.x}-{uuid.uuid4().hex[:8]}").write_text(str(os.getppid()))


@indexify_function()
def chain_a(dir: str, seconds: float) -> Job:
    """The first step of a chain an executor continues itself (one output, one successor)."""
    job = Job(dir=dir, x=0, seconds=seconds)
    _mark(job, "chain_a")
    return job


@indexify_function()
def chain_b(job: Job) -> Job:
    """The chained step: runs until the test creates ``<dir>/go`` (at most ``seconds``), so
    a test can kill its executor or cancel the invocation meanwhile."""
    _mark(job, "chain_b")
    deadline = time.monotonic() + job.seconds
    while not Path(job.dir, "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return Job(dir=job.dir, x=job.x + 1, seconds=job.seconds)


@indexify_function()
def chain_c(job: Job) -> int:
    _mark(job, "chain_c")
    return job.x + 10


def chain_graph() -> Graph:
    """chain_a -> chain_b -> chain_c: continued on one executor after chain_a's task."""
    g = Graph(name="fault_chain", start_node=chain_a)
    g.add_edge(chain_a, chain_b)
    g.add_edge(chain_b, chain_c)
    return g


@indexify_function()
def jobs(marker_dir: str, n: int, seconds: float = 0.0) -> List[Job]:
    return [Job(dir=marker_dir, x=i, seconds=seconds) for i in range(n)]


@indexify_function()
def step(job: Job) -> Job:
    """Counts its executions (marker files), then sleeps ``job.seconds``."""
    _mark(job, "step")
    time.sleep(job.seconds)
    return Job(dir=job.dir, x=job.x * 10)


@indexify_function()
def after_step(job: Job) -> int:
    _mark(job, "after")
    return job.x + 1


def jobs_graph() -> Graph:
    """jobs -> step (map, counted) -> after_step (counted)."""
    g = Graph(name="fault_jobs", start_node=jobs)
    g.add_edge(jobs, step)
    g.add_edge(step, after_step)
    return g


@indexify_function()
def slow_numbers(n: int) -> List[int]:
    return list(range(n))


@indexify_function()
def slow_square(x: int) -> int:
    time.sleep(0.002)
    return x * x


@indexify_function(accumulate=Total)
def slow_add(total: Total, x: int) -> Total:
    return Total(value=total.value + x)


def slow_reduce_graph() -> Graph:
    g = Graph(name="fault_slow_reduce", start_node=slow_numbers)
    g.add_edge(slow_numbers, slow_square)
    g.add_edge(slow_square, slow_add)
    return g


@indexify_function()
def blob(size: int, marker_dir: str) -> str:
    """A value over the inline limit (64 KB): it goes through MinIO."""
    Path(marker_dir, f"blob-{uuid.uuid4().hex[:8]}").write_text("")
    return "x" * size


@indexify_function()
def blob_len(value: str) -> int:
    return len(value)


def blob_graph() -> Graph:
    g = Graph(name="fault_blob", start_node=blob)
    g.add_edge(blob, blob_len)
    return g


@indexify_function()
def million(n: int) -> List[int]:
    return list(range(n))


@indexify_function()
def million_next(x: int) -> int:
    return x


def million_graph() -> Graph:
    g = Graph(name="fault_million", start_node=million)
    g.add_edge(million, million_next)
    return g


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@indexify_function()
def link_inc(n: int) -> int:
    return n + 1


@indexify_function()
def link_double(x: int) -> int:
    return 2 * x


@indexify_router()
def link_route(x: int) -> List[Union[link_small, link_big]]:
    return [link_small] if x < 100 else [link_big]


@indexify_function()
def link_small(x: int) -> str:
    return f"small:{x}"


@indexify_function()
def link_big(x: int) -> str:
    return f"big:{x}"


def chain_mix_graph() -> Graph:
    """link_inc -> link_double -> link_route -> link_small | link_big: every step after the
    first is continued on the executor that ran the one before (chains and a route)."""
    g = Graph(name="chaos_chain", start_node=link_inc)
    g.add_edge(link_inc, link_double)
    g.add_edge(link_double, link_route)
    g.route(link_route, [link_small, link_big])
    return g


FUNCTIONS = {
    "chaos_map_reduce": ["numbers", "square", "add_up", "odd_total", "even_total"],
    "chaos_slow": ["slow_step", "after_slow"],
    "chaos_chain": ["link_inc", "link_double", "link_small", "link_big"],
}


@dataclass
class Submitted:
    graph: str
    kwargs: dict[str, Any]
    invocation_id: str


@dataclass
class InvariantReport:
    checked: int = 0
    succeeded: int = 0
    not_terminal: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.not_terminal or self.failed or self.mismatched)

    def summary(self) -> str:
        return (
            f"checked={self.checked} succeeded={self.succeeded} "
            f"not_terminal={len(self.not_terminal)} failed={len(self.failed)} "
            f"mismatched={len(self.mismatched)}"
            + (
                f" first problems: {(self.not_terminal + self.failed + self.mismatched)[:5]}"
                if not self.ok
                else ""
            )
        )


def check_invariants(
    remote: IndexifyClient,
    reference: IndexifyClient,
    submitted: list[Submitted],
    *,
    timeout: float = 180.0,
) -> InvariantReport:
    """Every accepted invocation is terminal; every succeeded one matches an in-process run."""
    report = InvariantReport()
    deadline = time.monotonic() + timeout
    expected_cache: dict[tuple[str, str], dict[str, list[Any]]] = {}
    for item in submitted:
        report.checked += 1
        try:
            info = remote.wait_for_invocation(
                item.graph, item.invocation_id, timeout=max(1.0, deadline - time.monotonic())
            )
        except (TimeoutError, InvocationNotFinishedError):
            report.not_terminal.append(item.invocation_id)
            continue
        if info.status not in ("succeeded", "failed", "cancelled"):
            report.not_terminal.append(item.invocation_id)
            continue
        if info.status != "succeeded":
            report.failed.append(f"{item.invocation_id}: {info.status} {info.error}")
            continue
        report.succeeded += 1
        key = (item.graph, repr(sorted(item.kwargs.items())))
        if key not in expected_cache:
            ref_id = reference.invoke_graph_with_object(item.graph, **item.kwargs)
            expected_cache[key] = {
                fn: reference.graph_outputs(item.graph, ref_id, fn) for fn in FUNCTIONS[item.graph]
            }
        for fn, expected in expected_cache[key].items():
            actual = remote.graph_outputs(item.graph, item.invocation_id, fn)
            if sorted(map(repr, actual)) != sorted(map(repr, expected)):
                report.mismatched.append(f"{item.invocation_id}:{fn}")
    return report


def assert_exact(url: str, submitted: list[Submitted], graphs: list[Graph]) -> str:
    """:func:`check_invariants` of ``submitted`` on the stack at ``url`` against in-process
    runs of ``graphs``: fails unless every one succeeded with the same outputs; returns the
    report's summary."""
    from indexify import create_client

    client = create_client(service_url=url)
    reference = create_client(in_process=True, echo_output=False)
    for graph in graphs:
        reference.register_compute_graph(graph)
    try:
        report = check_invariants(client, reference, submitted, timeout=240)
    finally:
        client.close()
    assert report.ok, report.summary()
    assert report.succeeded == len(submitted)
    return report.summary()
