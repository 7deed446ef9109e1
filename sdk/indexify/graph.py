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
from .definition import BatchDefinition, GraphDefinition, NodeDefinition
from .encoding import element_hint
from .errors import GraphValidationError
from .functions import (
    batch_signature_problems,
    check_name,
    node_class,
    signature_target,
    spec_of,
)
from .graph_rules import Problem, describe_problems, link_problem
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
            self._refuse([*_signature_problems(node), *_node_definition(node).problems()])
            self.nodes[spec.name] = node
        self._definition = None
        return spec.name

    def _refuse(self, problems: Sequence[Problem]) -> None:
        """Raise one :class:`GraphValidationError` listing every problem (if any); its
        ``function`` and ``parameter`` are those of the first."""
        if problems:
            first = problems[0]
            raise GraphValidationError(
                describe_problems(self.name, problems),
                function=first.function,
                parameter=first.parameter,
            )

    def add_edge(self, from_node: Any, to_node: Any) -> Graph:
        """Send every output of ``from_node`` to ``to_node``."""
        return self.add_edges(from_node, [to_node])

    def add_edges(self, from_node: Any, to_nodes: Iterable[Any]) -> Graph:
        source = self._add_node(from_node)
        wrong_kind = link_problem(self.name, "edge", source, spec_of(from_node).kind)
        self._refuse([wrong_kind] if wrong_kind is not None else [])
        for to_node in to_nodes:
            target = self._add_node(to_node)
            targets = self.edges.setdefault(source, [])
            if target not in targets:
                targets.append(target)
        return self

    def route(self, from_node: Any, to_nodes: Sequence[Any]) -> Graph:
        """Let router ``from_node`` choose among ``to_nodes`` for each of its inputs.

        Each target must be one the router's return annotation names (when it names
        functions); checked here, before the graph changes."""
        source = self._add_node(from_node)
        wrong_kind = link_problem(self.name, "route", source, spec_of(from_node).kind)
        self._refuse([wrong_kind] if wrong_kind is not None else [])
        to_nodes = list(to_nodes)
        annotated = self._annotated_targets(source)
        if annotated:
            self._refuse(
                [
                    Problem(
                        f"graph {self.name!r}: router {source!r} cannot route to {target!r}: its "
                        f"return annotation names only {annotated}; add {target} to the "
                        f"annotation (e.g. `-> List[Union[{', '.join([*annotated, target])}]]`) "
                        "or leave it out of the targets",
                        function=source,
                        parameter="return",
                    )
                    for target in dict.fromkeys(spec_of(node).name for node in to_nodes)
                    if target not in annotated
                ]
            )
        for to_node in to_nodes:
            target = self._add_node(to_node)
            targets = self.routes.setdefault(source, [])
            if target not in targets:
                targets.append(target)
        return self

    # -- validation and description -------------------------------------------------------

    def validate(self) -> None:
        """Check the whole graph; raises :class:`GraphValidationError` listing every problem."""
        self._checked_draft()

    def problems(self) -> list[Problem]:
        """Every problem of the graph: those of its code (signatures, annotations) and those
        of its definition (:meth:`GraphDefinition.problems`, the rules the API applies too)."""
        return self._draft()[1]

    def _draft(self) -> tuple[GraphDefinition, list[Problem]]:
        """The definition without code fingerprints and schemas, and every problem."""
        problems: list[Problem] = []
        for name, node in self.nodes.items():
            problems.extend(_signature_problems(node))
            try:
                self.type_hints(name)
            except GraphValidationError as exc:
                problems.append(Problem(str(exc), exc.function, exc.parameter))
                continue
            if spec_of(node).kind == "router":
                problems.extend(self._router_annotation_problems(name))
            if spec_of(node).batch is not None:
                problems.extend(
                    batch_signature_problems(
                        name,
                        signature_target(node),
                        self.type_hints(name),
                        method=isinstance(node_class(node), type),
                    )
                )
        draft = self._graph_definition(
            {name: _node_definition(node) for name, node in self.nodes.items()}
        )
        problems.extend(draft.problems())
        return draft, problems

    def _checked_draft(self) -> GraphDefinition:
        draft, problems = self._draft()
        self._refuse(problems)
        return draft

    def _graph_definition(self, nodes: dict[str, NodeDefinition]) -> GraphDefinition:
        return GraphDefinition(
            name=self.name,
            description=self.description,
            start_node=self.start_node,
            nodes=nodes,
            edges={k: tuple(v) for k, v in self.edges.items() if v},
            routes={k: tuple(v) for k, v in self.routes.items() if v},
            python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
            sdk_version=__version__,
        )

    def _annotated_targets(self, router: str) -> list[str]:
        """Names of the functions a router's return annotation names (may be none)."""
        hint = self.type_hints(router).get("return")
        return list(dict.fromkeys(spec_of(fn).name for fn in _functions_in_annotation(hint)))

    def _router_annotation_problems(self, name: str) -> list[Problem]:
        """Every function a router's annotation names must be one of its targets (a router
        without targets is a definition problem, reported there)."""
        targets = self.routes.get(name, [])
        if not targets:
            return []
        return [
            Problem(
                f"graph {self.name!r}: router {name!r} may return {target!r} (its return "
                f"annotation says so) but {target!r} is not one of its route targets "
                f"{targets}; add it with g.route({name}, [..., {target}])",
                function=name,
                parameter="return",
            )
            for target in self._annotated_targets(name)
            if target not in targets
        ]

    def definition(self) -> GraphDefinition:
        """The validated, JSON-able description of the graph, with its content hash."""
        if self._definition is None:
            checked = self._checked_draft()
            closure = CodeClosure()
            nodes = {
                name: node.model_copy(update={"code_hash": self._fingerprint(closure, name)[:16]})
                for name, node in checked.nodes.items()
            }
            start = nodes[self.start_node]
            nodes[self.start_node] = start.model_copy(
                update={"parameter_schemas": self._parameter_schemas(self.start_node)}
            )
            draft = self._graph_definition(nodes)
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

    def output_hint(self, name: str) -> Any:
        """The declared type of one output of ``name``. A returned list fans out: each
        output of ``-> list[int]`` is an ``int``. A batched function returns one result per
        input, each treated as an unbatched function's return: each output of a batched
        ``-> list[int]`` is an ``int``, and of ``-> list[list[int]]`` too (each fans out)."""
        hint = self.return_hint(name)
        if spec_of(self.function(name)).batch is not None:
            hint = element_hint(hint)
        return element_hint(hint)

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


def _signature_problems(node: Any) -> list[Problem]:
    """What the definition cannot show: annotations missing from the signature (the
    definition's own rules, such as a reducer's arity, are in :meth:`NodeDefinition.problems`)."""
    spec = spec_of(node)
    target = signature_target(node)
    params = list(inspect.signature(target).parameters.values())
    if isinstance(node_class(node), type):
        params = params[1:]
    problems = [
        Problem(
            f"function {spec.name!r}: parameter {param.name!r} has no type annotation; "
            f"annotate it (e.g. `{param.name}: int`) so inputs can be decoded",
            function=spec.name,
            parameter=param.name,
        )
        for param in params
        if param.annotation is inspect.Parameter.empty
    ]
    if inspect.signature(target).return_annotation is inspect.Signature.empty:
        problems.append(
            Problem(
                f"function {spec.name!r} has no return annotation; add one (e.g. `-> int`, "
                "`-> list[str]`, or `-> None` when it returns nothing)",
                function=spec.name,
                parameter="return",
            )
        )
    return problems


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
        batch=BatchDefinition(max_size=spec.batch.max_size, max_wait_sec=spec.batch.max_wait)
        if spec.batch is not None
        else None,
    )
