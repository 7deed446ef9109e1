"""Graphs and the invariant checker shared by the fault-injection tests and ``make chaos``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Union

from pydantic import BaseModel

from indexify import Graph, IndexifyClient, indexify_function, indexify_router


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


FUNCTIONS = {
    "chaos_map_reduce": ["numbers", "square", "add_up", "odd_total", "even_total"],
    "chaos_slow": ["slow_step", "after_slow"],
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
        except TimeoutError:
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
