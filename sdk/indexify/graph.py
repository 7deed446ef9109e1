"""``Graph``: functions connected by edges and router targets, validated as it is built."""

from __future__ import annotations

import inspect
import sys
import types
import typing
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import cloudpickle
from pydantic import TypeAdapter

from . import __version__
from .code_closure import CodeClosure
from .definition import GraphDefinition, NodeDefinition
from .errors import GraphValidationError
from .functions import check_name, node_class, signature_target, spec_of
from .placement import placement_key, required_labels

_BUILT_HERE: weakref.WeakValueDictionary[str, Graph] = weakref.WeakValueDictionary()


class Graph:
    """A workflow: ``Graph(name, start_node)``, then ``add_edge`` / ``add_edges`` / ``route``."""

    def __init__(self, name: str, start_node: Any, description: str | None = None) -> None:
        self.name = check_name(name, "graph")
        self.description = description or ""
        self.nodes: dict[str, Any] = {}
        self.edges: dict[str, list[str]] = {}
        self.routes: dict[str, list[str]] = {}
        self._hints: dict[str, dict[str, Any]] = {}
        self.start_node = self._add_node(start_node)
        self._definition: GraphDefinition | None = None
        self._shipped: list[types.ModuleType] = []
        _BUILT_HERE[self.name] = self

    @staticmethod
    def built_here(name: str) -> Graph | None:
        """The graph of that name last built in this process (while it is referenced): a
        client reads outputs with its classes, never with code downloaded from a server."""
        return _BUILT_HERE.get(name)

    # -- building -------------------------------------------------------------------------

    def _add_node(self, node: Any) -> str:
        spec = spec_of(node)
        existing = self.nodes.get(spec.name)
        if existing is not None and node_class(existing) is not node_class(node):
            raise GraphValidationError(
                f"graph {self.name!r}: two different functions are named {spec.name!r}; give one "
                "of them another name with @indexify_function(name=...)",
                function=spec.name,
                parameter="name",
            )
        if existing is None:
            self.nodes[spec.name] = node
            _check_signature(node, resolve=False)
        self._definition = None
        return spec.name

    def add_edge(self, from_node: Any, to_node: Any) -> Graph:
        """Send every output of ``from_node`` to ``to_node``."""
        return self.add_edges(from_node, [to_node])

    def add_edges(self, from_node: Any, to_nodes: Iterable[Any]) -> Graph:
        source = self._add_node(from_node)
        if spec_of(from_node).kind == "router":
            raise GraphValidationError(
                f"graph {self.name!r}: {source!r} is a router; connect it with "
                f"g.route({source}, [...]) instead of add_edge",
                function=source,
            )
        for to_node in to_nodes:
            target = self._add_node(to_node)
            targets = self.edges.setdefault(source, [])
            if target not in targets:
                targets.append(target)
        return self

    def route(self, from_node: Any, to_nodes: Sequence[Any]) -> Graph:
        """Let router ``from_node`` choose among ``to_nodes`` for each of its inputs."""
        source = self._add_node(from_node)
        if spec_of(from_node).kind != "router":
            raise GraphValidationError(
                f"graph {self.name!r}: {source!r} is not a router; decorate it with "
                "@indexify_router() or connect it with add_edge",
                function=source,
            )
        for to_node in to_nodes:
            target = self._add_node(to_node)
            targets = self.routes.setdefault(source, [])
            if target not in targets:
                targets.append(target)
        return self

    # -- validation and description -------------------------------------------------------

    def validate(self) -> None:
        """Check the whole graph; raises :class:`GraphValidationError` naming the fix."""
        for name, node in self.nodes.items():
            _check_signature(node, resolve=False)
            self.type_hints(name)
        for name, node in self.nodes.items():
            if spec_of(node).kind == "router":
                self._check_router(name, node)
        self._check_acyclic()
        self._check_reachable()

    def _check_router(self, name: str, node: Any) -> None:
        targets = self.routes.get(name, [])
        if not targets:
            raise GraphValidationError(
                f"graph {self.name!r}: router {name!r} has no targets; add them with "
                f"g.route({name}, [fn_a, fn_b])",
                function=name,
            )
        hints = self.type_hints(name)
        for fn in _functions_in_annotation(hints.get("return")):
            target = spec_of(fn).name
            if target not in targets:
                raise GraphValidationError(
                    f"graph {self.name!r}: router {name!r} may return {target!r} (its return "
                    f"annotation says so) but {target!r} is not one of its route targets "
                    f"{targets}; add it with g.route({name}, [..., {target}])",
                    function=name,
                    parameter="return",
                )

    def _children(self, name: str) -> list[str]:
        return self.edges.get(name, []) + self.routes.get(name, [])

    def _check_acyclic(self) -> None:
        state: dict[str, int] = {}

        def visit(node: str, path: list[str]) -> None:
            state[node] = 1
            for child in self._children(node):
                if state.get(child) == 1:
                    cycle = " -> ".join([*path[path.index(child) :], child])
                    raise GraphValidationError(
                        f"graph {self.name!r} has a cycle ({cycle}); graphs must be acyclic: "
                        f"remove one of these edges",
                        function=child,
                    )
                if child not in state:
                    visit(child, [*path, child])
            state[node] = 2

        for name in self.nodes:
            if name not in state:
                visit(name, [name])

    def _check_reachable(self) -> None:
        seen = {self.start_node}
        frontier = [self.start_node]
        while frontier:
            for child in self._children(frontier.pop()):
                if child not in seen:
                    seen.add(child)
                    frontier.append(child)
        unreachable = [name for name in self.nodes if name not in seen]
        if unreachable:
            raise GraphValidationError(
                f"graph {self.name!r}: {unreachable} cannot be reached from the start node "
                f"{self.start_node!r}; connect them with add_edge/route or remove them",
                function=unreachable[0],
            )

    def definition(self) -> GraphDefinition:
        """The validated, JSON-able description of the graph, with its content hash."""
        if self._definition is None:
            self.validate()
            closure = CodeClosure()
            nodes = {
                name: _node_definition(node).model_copy(
                    update={"code_hash": self._fingerprint(closure, name)[:16]}
                )
                for name, node in self.nodes.items()
            }
            start = nodes[self.start_node]
            nodes[self.start_node] = start.model_copy(
                update={"parameter_schemas": self._parameter_schemas(self.start_node)}
            )
            draft = GraphDefinition(
                name=self.name,
                description=self.description,
                start_node=self.start_node,
                nodes=nodes,
                edges={k: tuple(v) for k, v in self.edges.items() if v},
                routes={k: tuple(v) for k, v in self.routes.items() if v},
                python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
                sdk_version=__version__,
            )
            self._definition = draft.model_copy(update={"version": draft.content_version()})
            self._shipped = closure.shipped_modules()
        return self._definition

    def _parameter_schemas(self, name: str) -> dict[str, dict[str, Any]]:
        """JSON schemas of the parameters whose annotations pydantic can describe (an
        unannotated parameter, or one of a type JSON cannot carry, is not checked)."""
        schemas: dict[str, dict[str, Any]] = {}
        for parameter, hint in self.parameter_hints(name).items():
            if hint is None or hint is Any:
                continue
            try:
                schemas[parameter] = TypeAdapter(hint).json_schema(mode="validation")
            except Exception:
                continue
        return schemas

    def _fingerprint(self, closure: CodeClosure, name: str) -> str:
        node = self.nodes[name]
        accumulate = spec_of(node).accumulate
        extra = [accumulate] if accumulate is not None else []
        extra.extend(hint for _, hint in sorted(self.type_hints(name).items()))
        return closure.fingerprint(node_class(node), extra)

    @property
    def version(self) -> str:
        """Content hash: changes when the code or the structure of the graph changes."""
        return self.definition().version

    # -- code -----------------------------------------------------------------------------

    def serialize(self) -> bytes:
        """The graph's code, cloudpickled; every user module the code reaches
        (:mod:`.code_closure`) is pickled by value, so an executor needs none of the user's
        source tree."""
        self.definition()
        for name in self.nodes:
            self.type_hints(name)
        already = set(cloudpickle.list_registry_pickle_by_value())
        modules = [m for m in self._shipped if m.__name__ not in already]
        for module in modules:
            cloudpickle.register_pickle_by_value(module)
        try:
            return bytes(cloudpickle.dumps(self))
        finally:
            for module in modules:
                cloudpickle.unregister_pickle_by_value(module)

    @staticmethod
    def deserialize(data: bytes) -> Graph:
        graph = cloudpickle.loads(data)
        if not isinstance(graph, Graph):
            raise GraphValidationError("the serialized code is not an indexify Graph")
        return graph

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_definition"] = None
        state["_shipped"] = []  # module objects: recomputed with the definition
        return state

    # -- lookups used by runners ----------------------------------------------------------

    def function(self, name: str) -> Any:
        try:
            return self.nodes[name]
        except KeyError:
            raise GraphValidationError(
                f"graph {self.name!r} has no function {name!r}; it has {sorted(self.nodes)}",
                function=name,
            ) from None

    def type_hints(self, name: str) -> dict[str, Any]:
        """Resolved annotations of a function, kept with the graph when it is serialized.

        Resolving them here (not where the code runs) matters for modules that use
        ``from __future__ import annotations``: pickled code carries only the globals its
        body uses, so string annotations could not be resolved on an executor.
        """
        if name not in self._hints:
            self._hints[name] = _type_hints(self.function(name))
        return self._hints[name]

    def return_hint(self, name: str) -> Any:
        return self.type_hints(name).get("return")

    def parameter_hints(self, name: str) -> dict[str, Any]:
        hints = self.type_hints(name)
        return {p: hints.get(p) for p in _parameters(self.function(name))}

    def __repr__(self) -> str:
        return f"Graph(name={self.name!r}, nodes={list(self.nodes)})"


def _parameters(node: Any, *, required_only: bool = False) -> list[str]:
    target = signature_target(node)
    params = list(inspect.signature(target).parameters.values())
    if isinstance(node_class(node), type):
        params = params[1:]  # drop self
    return [
        p.name
        for p in params
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and not (required_only and p.default is not p.empty)
    ]


def _accepts_any_keyword(node: Any) -> bool:
    params = inspect.signature(signature_target(node)).parameters.values()
    return any(p.kind is p.VAR_KEYWORD for p in params)


def _type_hints(node: Any) -> dict[str, Any]:
    target = signature_target(node)
    try:
        return typing.get_type_hints(target)
    except NameError as exc:
        raise GraphValidationError(
            f"function {spec_of(node).name!r}: an annotation names something undefined ({exc}); "
            "define or import it before building the graph",
            function=spec_of(node).name,
        ) from exc
    except TypeError as exc:
        raise GraphValidationError(
            f"function {spec_of(node).name!r}: an annotation cannot be evaluated ({exc}); "
            "functions in router annotations must be written List[Union[a, b]], not a | b",
            function=spec_of(node).name,
        ) from exc


def _check_signature(node: Any, *, resolve: bool) -> None:
    spec = spec_of(node)
    target = signature_target(node)
    params = list(inspect.signature(target).parameters.values())
    if isinstance(node_class(node), type):
        params = params[1:]
    for param in params:
        if param.annotation is inspect.Parameter.empty:
            raise GraphValidationError(
                f"function {spec.name!r}: parameter {param.name!r} has no type annotation; "
                f"annotate it (e.g. `{param.name}: int`) so inputs can be decoded",
                function=spec.name,
                parameter=param.name,
            )
    if inspect.signature(target).return_annotation is inspect.Signature.empty:
        raise GraphValidationError(
            f"function {spec.name!r} has no return annotation; add one (e.g. `-> int`, "
            "`-> list[str]`, or `-> None` when it returns nothing)",
            function=spec.name,
            parameter="return",
        )
    positional = [p for p in params if p.kind not in (p.KEYWORD_ONLY, p.VAR_KEYWORD)]
    if spec.is_reducer and len(positional) < 2:
        raise GraphValidationError(
            f"reducer {spec.name!r} must take the accumulator and one value, e.g. "
            f"`def {spec.name}(acc: {getattr(spec.accumulate, '__name__', 'Acc')}, value: int)`",
            function=spec.name,
            parameter="accumulate",
        )
    if resolve:
        _type_hints(node)


def _functions_in_annotation(hint: Any) -> list[Any]:
    """Indexify functions named in a router's return annotation (List[Union[a, b]], a | b)."""
    if hint is None:
        return []
    if getattr(node_class(hint), "__indexify_spec__", None) is not None:
        return [hint]
    found: list[Any] = []
    for arg in typing.get_args(hint):
        found.extend(_functions_in_annotation(arg))
    return found


def _node_definition(node: Any) -> NodeDefinition:
    spec = spec_of(node)
    required = required_labels(
        spec.image.definition().name if spec.image is not None else None,
        spec.placement_constraints,
    )
    return NodeDefinition(
        name=spec.name,
        kind=spec.kind,
        description=spec.description,
        reducer=spec.is_reducer,
        accumulator=spec.accumulate.__qualname__ if spec.accumulate is not None else None,
        parameters=tuple(_parameters(node)),
        required_parameters=tuple(_parameters(node, required_only=True)),
        accepts_any_keyword=_accepts_any_keyword(node),
        image=spec.image.definition() if spec.image is not None else None,
        placement_constraints=dict(spec.placement_constraints),
        required_labels=required,
        placement_key=placement_key(required),
        retries=spec.retries,
        timeout_sec=spec.timeout,
        encoder=spec.encoder,
    )
