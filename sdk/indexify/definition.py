"""The JSON-able description of a graph: what the server stores and the engine reads."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from .image import ImageDefinition
from .retry import RetryPolicy


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
    code_hash: str = ""
    """A fingerprint of the function's code (and its accumulator's), so the graph's version
    changes with the code: the SDK computes it, and it is part of what is versioned."""


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
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def argument_problems(self, kwargs: Iterable[str]) -> str | None:
        """Why the start node cannot be called with these keyword arguments (None if it can)."""
        start = self.nodes[self.start_node]
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
            f"graph {self.name!r}: {' and '.join(problems)}; start function {start.name!r} "
            f"takes {list(start.parameters)} (required: {list(start.required_parameters)})"
        )

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
