"""Where to draw a graph's functions: a layered layout, computed on the server.

A pure function of a :class:`~indexify.definition.GraphDefinition` (tested without servers):

1. **layers**: a node's layer is the longest path to it from the start node (a function's
   inputs all come from layers above it, so every edge points down); a node nothing reaches
   (a definition the API refused, kept for old versions) goes in layer 0;
2. **order within a layer**: by the mean position of its parents in the layers above (one
   barycentre sweep down, ties by name), which keeps most edges from crossing;
3. **coordinates**: layers top to bottom, each centred in the widest one.

Routers and reducers are kept as kinds (``router``, ``reducer``, ``function``), so the SVG
template can draw them with distinct shapes; an edge from a router is a ``route`` (a choice
made at run time) and drawn dashed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from indexify.definition import GraphDefinition

__all__ = ["DagLayout", "PlacedEdge", "PlacedNode", "layers", "layout"]

NodeKind = Literal["function", "router", "reducer"]

NODE_WIDTH = 180.0
NODE_HEIGHT = 48.0
GAP_X = 36.0
GAP_Y = 64.0
MARGIN = 16.0


@dataclass(frozen=True)
class PlacedNode:
    name: str
    kind: NodeKind
    layer: int
    x: float  # top left corner
    y: float
    start: bool = False
    accumulator: str | None = None

    @property
    def cx(self) -> float:
        return self.x + NODE_WIDTH / 2

    @property
    def cy(self) -> float:
        return self.y + NODE_HEIGHT / 2

    @property
    def width(self) -> float:
        return NODE_WIDTH

    @property
    def height(self) -> float:
        return NODE_HEIGHT


@dataclass(frozen=True)
class PlacedEdge:
    source: str
    target: str
    route: bool  # from a router: taken or not at run time
    path: str  # SVG path data, from the bottom of the source to the top of the target


@dataclass(frozen=True)
class DagLayout:
    nodes: tuple[PlacedNode, ...]
    edges: tuple[PlacedEdge, ...]
    width: float
    height: float

    def node(self, name: str) -> PlacedNode:
        for placed in self.nodes:
            if placed.name == name:
                return placed
        raise KeyError(name)


def _children(definition: GraphDefinition) -> dict[str, list[tuple[str, bool]]]:
    """Node -> its successors, each with whether it is a router's choice."""
    found: dict[str, list[tuple[str, bool]]] = {name: [] for name in definition.nodes}
    for targets, route in ((definition.edges, False), (definition.routes, True)):
        for source, names in targets.items():
            for target in names:
                if source in found and target in definition.nodes:
                    found[source].append((target, route))
    return found


def layers(definition: GraphDefinition) -> dict[str, int]:
    """Node -> its layer: the length of the longest path to it from the start node (0 for
    the start node and for nodes nothing reaches). The graph is acyclic (the API checks);
    a cycle nevertheless ends the walk rather than looping."""
    children = _children(definition)
    depth = {name: 0 for name in definition.nodes}
    # Longest paths by relaxing edges in a topological order (Kahn's, ties by name).
    parents_left = {name: 0 for name in definition.nodes}
    for kids in children.values():
        for target, _ in kids:
            parents_left[target] += 1
    ready = sorted(name for name, n in parents_left.items() if n == 0)
    while ready:
        name = ready.pop(0)
        for target, _ in children[name]:
            depth[target] = max(depth[target], depth[name] + 1)
            parents_left[target] -= 1
            if parents_left[target] == 0:
                ready.append(target)
                ready.sort()
    return depth


def _order(by_layer: Sequence[list[str]], parents: Mapping[str, list[str]]) -> list[list[str]]:
    """Each layer's nodes left to right: by the mean position of their parents."""
    ordered: list[list[str]] = []
    position: dict[str, float] = {}
    for names in by_layer:

        def weight(name: str) -> tuple[float, str]:
            placed = [position[p] for p in parents.get(name, []) if p in position]
            return (sum(placed) / len(placed) if placed else 0.0, name)

        row = sorted(names, key=weight)
        for index, name in enumerate(row):
            position[name] = float(index) - (len(row) - 1) / 2
        ordered.append(row)
    return ordered


def _kind(definition: GraphDefinition, name: str) -> NodeKind:
    node = definition.nodes[name]
    if node.kind == "router":
        return "router"
    return "reducer" if node.reducer else "function"


def _edge_path(source: PlacedNode, target: PlacedNode) -> str:
    x1, y1 = source.cx, source.y + NODE_HEIGHT
    x2, y2 = target.cx, target.y
    bend = max(GAP_Y / 2, (y2 - y1) / 2)
    return (
        f"M{x1:.1f},{y1:.1f} C{x1:.1f},{y1 + bend:.1f} {x2:.1f},{y2 - bend:.1f} {x2:.1f},{y2:.1f}"
    )


def layout(definition: GraphDefinition) -> DagLayout:
    """Where each node of ``definition`` goes, and the path of each edge (see the module
    docstring)."""
    depth = layers(definition)
    children = _children(definition)
    parents: dict[str, list[str]] = {name: [] for name in definition.nodes}
    for source, kids in children.items():
        for target, _ in kids:
            parents[target].append(source)
    count = max(depth.values(), default=-1) + 1
    by_layer: list[list[str]] = [[] for _ in range(count)]
    for name, layer in depth.items():
        by_layer[layer].append(name)
    rows = _order(by_layer, parents)
    widest = max((len(row) for row in rows), default=0)
    span = widest * NODE_WIDTH + max(widest - 1, 0) * GAP_X
    placed: dict[str, PlacedNode] = {}
    for layer, row in enumerate(rows):
        row_span = len(row) * NODE_WIDTH + max(len(row) - 1, 0) * GAP_X
        left = MARGIN + (span - row_span) / 2
        for index, name in enumerate(row):
            placed[name] = PlacedNode(
                name=name,
                kind=_kind(definition, name),
                layer=layer,
                x=left + index * (NODE_WIDTH + GAP_X),
                y=MARGIN + layer * (NODE_HEIGHT + GAP_Y),
                start=name == definition.start_node,
                accumulator=definition.nodes[name].accumulator,
            )
    edges = tuple(
        PlacedEdge(
            source=source,
            target=target,
            route=route,
            path=_edge_path(placed[source], placed[target]),
        )
        for source in sorted(children)
        for target, route in children[source]
    )
    nodes = tuple(placed[name] for row in rows for name in row)
    height = 2 * MARGIN + count * NODE_HEIGHT + max(count - 1, 0) * GAP_Y
    return DagLayout(nodes=nodes, edges=edges, width=span + 2 * MARGIN, height=height)
