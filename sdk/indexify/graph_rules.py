"""The rules of graph names and options, and the words of graph problems.

:meth:`.definition.GraphDefinition.problems` applies them to a whole definition; the
decorators (``functions.py``) use the rules of one name or option directly, so each rule is
written once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from .batch import MAX_BATCH_SIZE, MAX_BATCH_WAIT_SEC

__all__ = [
    "ENCODERS",
    "NAME_PATTERN",
    "NAME_RULE",
    "Problem",
    "batch_problem",
    "cycles",
    "describe_problems",
    "encoder_problem",
    "link_problem",
    "name_problem",
    "router_accumulates_problem",
    "timeout_problem",
]

#: Names become part of Kafka topic names, Redis keys and object keys.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,100}")
NAME_RULE = "1-100 letters, digits, '_' or '-'"
ENCODERS = ("auto", "json", "cloudpickle")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a graph: the message says what and how to fix it."""

    message: str
    function: str | None = None
    parameter: str | None = None

    def __str__(self) -> str:
        return self.message


def describe_problems(graph: str, problems: Sequence[Problem]) -> str:
    """One message for all of ``problems`` (a single problem is its own message)."""
    if len(problems) == 1:
        return problems[0].message
    lines = "\n".join(f"  {i}. {p.message}" for i, p in enumerate(problems, 1))
    return f"graph {graph!r} has {len(problems)} problems; fix each of them:\n{lines}"


# -- rules of one name or option (the decorators use them too) ------------------------------


def name_problem(name: object, what: str) -> Problem | None:
    """A graph, function or namespace name must be :data:`NAME_RULE`."""
    if isinstance(name, str) and NAME_PATTERN.fullmatch(name):
        return None
    return Problem(
        f"{what} name {name!r} cannot be used: names become part of Kafka topic names, so "
        f"use {NAME_RULE} (e.g. 'sum_numbers')",
        function=name if what == "function" and isinstance(name, str) else None,
        parameter="name",
    )


def encoder_problem(function: str, encoder: str) -> Problem | None:
    if encoder in ENCODERS:
        return None
    return Problem(
        f"function {function!r}: encoder={encoder!r} is unknown; use one of {ENCODERS}",
        function=function,
        parameter="encoder",
    )


def timeout_problem(function: str, timeout: float | None) -> Problem | None:
    """The same rule as ``NodeDefinition.timeout_sec``'s ``gt=0``, for the decorators."""
    if timeout is None or timeout > 0:
        return None
    return Problem(
        f"function {function!r}: timeout={timeout!r} must be a positive number of seconds",
        function=function,
        parameter="timeout",
    )


def batch_problem(function: str, max_size: object, max_wait: object) -> Problem | None:
    """A batch holds 1 to ``MAX_BATCH_SIZE`` tasks and waits 0 to ``MAX_BATCH_WAIT_SEC`` s
    for them (the same rule as ``BatchDefinition``'s bounds, for the decorators)."""
    if (
        not isinstance(max_size, int)
        or isinstance(max_size, bool)
        or not 1 <= max_size <= MAX_BATCH_SIZE
    ):
        return Problem(
            f"function {function!r}: Batch(max_size={max_size!r}) must be a whole number from "
            f"1 to {MAX_BATCH_SIZE} (the most tasks one call receives), e.g. Batch(max_size=32)",
            function=function,
            parameter="batch",
        )
    if (
        not isinstance(max_wait, int | float)
        or isinstance(max_wait, bool)
        or not 0 <= max_wait <= MAX_BATCH_WAIT_SEC
    ):
        return Problem(
            f"function {function!r}: Batch(max_wait={max_wait!r}) must be a number of seconds "
            f"from 0 to {MAX_BATCH_WAIT_SEC:g} (how long a batch waits to fill), e.g. "
            "Batch(max_size=32, max_wait=0.05)",
            function=function,
            parameter="batch",
        )
    return None


def router_accumulates_problem(function: str) -> Problem:
    return Problem(
        f"router {function!r} cannot accumulate: routers only choose the next functions; "
        "put accumulate= on an @indexify_function instead",
        function=function,
        parameter="accumulate",
    )


def link_problem(
    graph: str, kind: Literal["edge", "route"], source: str, source_kind: str
) -> Problem | None:
    """Edges leave functions, routes leave routers."""
    if kind == "edge" and source_kind == "router":
        return Problem(
            f"graph {graph!r}: {source!r} is a router; connect it with "
            f"g.route({source}, [...]) instead of add_edge",
            function=source,
        )
    if kind == "route" and source_kind != "router":
        return Problem(
            f"graph {graph!r}: {source!r} is not a router; decorate it with "
            "@indexify_router() or connect it with add_edge",
            function=source,
        )
    return None


def cycles(nodes: Iterable[str], children: Callable[[str], Iterator[str]]) -> list[list[str]]:
    """One cycle per back edge of a depth-first walk (``[a, b, a]``), without recursion."""
    done: set[str] = set()
    cycles: list[list[str]] = []
    for root in nodes:
        if root in done:
            continue
        path = [root]
        on_path = {root: 0}
        pending = [children(root)]
        while pending:
            child = next(pending[-1], None)
            if child is None:
                pending.pop()
                finished = path.pop()
                del on_path[finished]
                done.add(finished)
            elif child in on_path:
                cycles.append([*path[on_path[child] :], child])
            elif child not in done:
                on_path[child] = len(path)
                path.append(child)
                pending.append(children(child))
    return cycles
