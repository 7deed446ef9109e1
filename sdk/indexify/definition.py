"""The JSON-able description of a graph: what the server stores and the engine reads.

:meth:`GraphDefinition.problems` is the one validation of a graph: it returns every problem a
definition has (names, start node, edges and routes, cycles, reachability, routers, reducers,
options), each a :class:`.graph_rules.Problem` naming the function, the parameter and the fix.
The SDK runs it when a graph is built and the API when a graph is registered; the decorators
use the same small rule functions (:mod:`.graph_rules`). Only checks that need the live Python
objects (signatures, annotations) stay in ``graph.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from .batch import MAX_BATCH_SIZE, MAX_BATCH_WAIT_SEC
from .graph_rules import (
    Problem,
    batch_problem,
    cycles,
    encoder_problem,
    link_problem,
    name_problem,
    router_accumulates_problem,
)
from .image import ImageDefinition
from .placement import placement_key, required_labels
from .retry import RetryPolicy


class BatchDefinition(BaseModel):
    """A function's batching (:class:`indexify.Batch`): up to ``max_size`` tasks per call,
    a batch waits at most ``max_wait_sec`` to fill."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_size: int = Field(ge=1, le=MAX_BATCH_SIZE)
    max_wait_sec: float = Field(default=0.05, ge=0, le=MAX_BATCH_WAIT_SEC)


class NodeDefinition(BaseModel):
    """One function or router of a graph."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Literal["function", "router"] = "function"
    description: str = ""
    reducer: bool = False
    accumulator: str | None = None
    parameters: tuple[str, ...] = ()
    required_parameters: tuple[str, ...] = ()
    accepts_any_keyword: bool = False
    image: ImageDefinition | None = None
    placement_constraints: dict[str, str] = Field(default_factory=dict)
    required_labels: dict[str, str] = Field(default_factory=dict)
    placement_key: str = "any"
    retries: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_sec: float | None = Field(default=None, gt=0)
    encoder: str = "auto"
    parameter_schemas: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """The start node's parameters that JSON can carry: parameter -> JSON schema of its
    annotation (the API checks invocation arguments against them)."""
    batch: BatchDefinition | None = None
    """Set for a batched function: it receives a list of inputs (see :mod:`indexify.batch`).
    Left out of the version's content when unset, so graphs without batching keep the
    versions they had before the option existed."""
    code_hash: str = ""
    """A fingerprint of the function's code (and its accumulator's), so the graph's version
    changes with the code: the SDK computes it, and it is part of what is versioned."""

    def problems(self, key: str | None = None) -> list[Problem]:
        """Everything wrong with this node on its own (``key``: its key in ``nodes``)."""
        name = self.name
        found = [name_problem(name, "function"), encoder_problem(name, self.encoder)]
        if key is not None and key != name:
            found.append(
                Problem(
                    f"nodes[{key!r}] is named {name!r}; the key of a node must be its name",
                    function=key,
                    parameter="name",
                )
            )
        found.extend(self._reducer_problems())
        found.extend(self._batch_problems())
        found.extend(self._parameter_problems())
        found.extend(self._placement_problems())
        return [problem for problem in found if problem is not None]

    def _reducer_problems(self) -> Iterator[Problem]:
        name = self.name
        if self.reducer and self.kind == "router":
            yield router_accumulates_problem(name)
        if self.reducer and not self.accumulator:
            yield Problem(
                f"reducer {name!r} has no accumulator; set accumulator to the name of the "
                "class given to accumulate= (as Graph.definition() does)",
                function=name,
                parameter="accumulate",
            )
        if self.accumulator is not None and not self.reducer:
            yield Problem(
                f"function {name!r} has accumulator {self.accumulator!r} but is not a reducer; "
                "set reducer=true or drop the accumulator",
                function=name,
                parameter="accumulate",
            )
        if self.reducer and len(self.parameters) < 2:
            yield Problem(
                f"reducer {name!r} must take the accumulator and one value, e.g. "
                f"`def {name}(acc: {self.accumulator or 'Acc'}, value: int)`",
                function=name,
                parameter="accumulate",
            )

    def _batch_problems(self) -> Iterator[Problem]:
        batch, name = self.batch, self.name
        if batch is None:
            return
        size = batch_problem(name, batch.max_size, batch.max_wait_sec)
        if size is not None:
            yield size
        if self.kind == "router":
            yield Problem(
                f"router {name!r} cannot be batched: a router chooses the next functions per "
                "input; put batch= on an @indexify_function instead",
                function=name,
                parameter="batch",
            )
        elif self.reducer:
            yield Problem(
                f"reducer {name!r} cannot be batched: a reducer already takes its inputs one "
                "after another in one task; drop batch= or accumulate=",
                function=name,
                parameter="batch",
            )
        elif len(self.parameters) != 1 or self.accepts_any_keyword:
            yield Problem(
                f"batched function {name!r} must take exactly one parameter, the list of "
                f"inputs (it takes {list(self.parameters)}), e.g. "
                f"`def {name}(items: list[str]) -> list[int]`",
                function=name,
                parameter="batch",
            )

    def _parameter_problems(self) -> Iterator[Problem]:
        unknown = sorted(set(self.required_parameters) - set(self.parameters))
        if unknown:
            yield Problem(
                f"function {self.name!r}: required_parameters {unknown} are not in parameters "
                f"{list(self.parameters)}; list every required parameter among the parameters",
                function=self.name,
                parameter=unknown[0],
            )
        extra = sorted(set(self.parameter_schemas) - set(self.parameters))
        if extra and not self.accepts_any_keyword:
            yield Problem(
                f"function {self.name!r}: parameter_schemas describe {extra}, which are not "
                f"parameters {list(self.parameters)}; describe only its parameters",
                function=self.name,
                parameter=extra[0],
            )

    def _placement_problems(self) -> Iterator[Problem]:
        name = self.name
        labels = required_labels(
            self.image.name if self.image is not None else None, self.placement_constraints
        )
        if self.required_labels != labels:
            yield Problem(
                f"function {name!r}: required_labels {self.required_labels} do not follow from "
                f"its image and placement_constraints (expected {labels}); send the definition "
                "as Graph.definition() makes it",
                function=name,
                parameter="placement_constraints",
            )
        elif self.placement_key != placement_key(labels):
            yield Problem(
                f"function {name!r}: placement_key {self.placement_key!r} does not follow from "
                f"its required_labels (expected {placement_key(labels)!r}); send the "
                "definition as Graph.definition() makes it",
                function=name,
                parameter="placement_constraints",
            )


def argument_problem(graph: str, start: NodeDefinition, kwargs: Iterable[str]) -> str | None:
    """Why ``start`` cannot be called with these keyword arguments (None if it can)."""
    given = set(kwargs)
    unknown = [] if start.accepts_any_keyword else sorted(given - set(start.parameters))
    missing = sorted(set(start.required_parameters) - given)
    problems = []
    if unknown:
        problems.append(f"unknown argument(s) {unknown}")
    if missing:
        problems.append(f"missing required argument(s) {missing}")
    if not problems:
        return None
    return (
        f"graph {graph!r}: {' and '.join(problems)}; start function {start.name!r} "
        f"takes {list(start.parameters)} (required: {list(start.required_parameters)})"
    )


class GraphDefinition(BaseModel):
    """A whole graph: nodes, data edges and router targets, plus its content hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    start_node: str
    nodes: dict[str, NodeDefinition]
    edges: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    routes: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    version: str = ""
    python_version: str = ""
    sdk_version: str = ""

    _ancestors: dict[str, frozenset[str]] | None = PrivateAttr(default=None)
    _topological: tuple[str, ...] | None = PrivateAttr(default=None)

    def content_version(self) -> str:
        """The version this definition must carry: a hash of everything in it but the version
        (nodes with their code fingerprints, edges, routes, Python and SDK versions). The SDK
        and the server compute it the same way, so a version names exactly one content."""
        content = self.model_dump(mode="json", exclude={"version"})
        for node in content["nodes"].values():
            if node["batch"] is None:  # added later: unset, it leaves earlier versions alone
                del node["batch"]
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def argument_problems(self, kwargs: Iterable[str]) -> str | None:
        """Why the start node cannot be called with these keyword arguments (None if it can)."""
        return argument_problem(self.name, self.nodes[self.start_node], kwargs)

    # -- the graph rules --------------------------------------------------------------------

    def problems(self) -> list[Problem]:
        """Every problem of this definition, in a stable order (empty: it is valid).

        Linear in the size of the graph. ``version`` is not checked: the SDK validates a
        draft before it computes the version, and the API checks the version it is sent.
        """
        found: list[Problem] = []
        graph_name = name_problem(self.name, "graph")
        if graph_name is not None:
            found.append(graph_name)
        if not self.nodes:
            found.append(Problem(f"graph {self.name!r} has no functions; add at least one"))
        for key, node in self.nodes.items():
            found.extend(node.problems(key))
        if self.nodes and self.start_node not in self.nodes:
            found.append(
                Problem(
                    f"graph {self.name!r}: start node {self.start_node!r} is not one of its "
                    f"functions {sorted(self.nodes)}; name one of them as the start node",
                    function=self.start_node,
                )
            )
        start = self.nodes.get(self.start_node)
        if start is not None and start.batch is not None:
            found.append(
                Problem(
                    f"graph {self.name!r}: the start function {start.name!r} cannot be batched "
                    "(it receives an invocation's keyword arguments); batch a function after "
                    "it, or start the graph with a function that passes its input on",
                    function=start.name,
                    parameter="batch",
                )
            )
        found.extend(self._link_problems("edge", self.edges))
        found.extend(self._link_problems("route", self.routes))
        for name, node in self.nodes.items():
            if node.kind == "router" and not self.routes.get(name):
                found.append(
                    Problem(
                        f"graph {self.name!r}: router {name!r} has no targets; add them with "
                        f"g.route({name}, [fn_a, fn_b])",
                        function=name,
                    )
                )
        found.extend(self._cycle_problems())
        found.extend(self._reachability_problems())
        return found

    def _link_problems(
        self, kind: Literal["edge", "route"], links: Mapping[str, tuple[str, ...]]
    ) -> Iterator[Problem]:
        for source, targets in links.items():
            for endpoint in dict.fromkeys((source, *targets)):
                if endpoint not in self.nodes:
                    yield Problem(
                        f"graph {self.name!r}: {kind} {source!r} -> {list(targets)} names "
                        f"{endpoint!r}, which is not one of its functions {sorted(self.nodes)}; "
                        "add that function to the graph or remove it from the "
                        f"{kind}",
                        function=endpoint,
                    )
            node = self.nodes.get(source)
            if node is not None:
                wrong_kind = link_problem(self.name, kind, source, node.kind)
                if wrong_kind is not None:
                    yield wrong_kind
            repeated = sorted({t for t in targets if targets.count(t) > 1})
            if repeated:
                yield Problem(
                    f"graph {self.name!r}: {kind} {source!r} -> {list(targets)} lists "
                    f"{repeated} more than once; list each target once",
                    function=source,
                )

    def _known_children(self, name: str) -> Iterator[str]:
        return (child for child in self.children(name) if child in self.nodes)

    def _cycle_problems(self) -> Iterator[Problem]:
        for cycle in cycles(self.nodes, self._known_children):
            yield Problem(
                f"graph {self.name!r} has a cycle ({' -> '.join(cycle)}); graphs must be "
                "acyclic: remove one of these edges",
                function=cycle[-1],
            )

    def _reachability_problems(self) -> Iterator[Problem]:
        if self.start_node not in self.nodes:
            return
        seen = {self.start_node}
        frontier = [self.start_node]
        while frontier:
            for child in self._known_children(frontier.pop()):
                if child not in seen:
                    seen.add(child)
                    frontier.append(child)
        unreachable = [name for name in self.nodes if name not in seen]
        if unreachable:
            yield Problem(
                f"graph {self.name!r}: {unreachable} cannot be reached from the start node "
                f"{self.start_node!r}; connect them with add_edge/route or remove them",
                function=unreachable[0],
            )

    # -- reading the graph ------------------------------------------------------------------

    def successors(self, name: str) -> tuple[str, ...]:
        """Nodes that receive every output of ``name`` (routers use :meth:`route_targets`)."""
        return self.edges.get(name, ())

    def route_targets(self, name: str) -> tuple[str, ...]:
        return self.routes.get(name, ())

    def children(self, name: str) -> tuple[str, ...]:
        return self.successors(name) + self.route_targets(name)

    def ancestors(self, name: str) -> frozenset[str]:
        """Every node from which ``name`` can be reached (excluding ``name``)."""
        if self._ancestors is None:
            result: dict[str, set[str]] = {node: set() for node in self.nodes}
            for node in self.topological_order():
                for child in self.children(node):
                    result[child] |= result[node] | {node}
            self._ancestors = {node: frozenset(parents) for node, parents in result.items()}
        return self._ancestors[name]

    def topological_order(self) -> tuple[str, ...]:
        """Nodes ordered so that every node comes before the nodes it feeds."""
        if self._topological is None:
            order: list[str] = []
            seen: set[str] = set()

            def visit(node: str) -> None:
                if node in seen:
                    return
                seen.add(node)
                for child in self.children(node):
                    visit(child)
                order.append(node)

            for node in self.nodes:
                visit(node)
            self._topological = tuple(reversed(order))
        return self._topological
