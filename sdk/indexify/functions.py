"""The ``@indexify_function`` / ``@indexify_router`` decorators and class-based functions.

A decorated function stays the user's function: it can be called directly (to unit-test it),
and it carries a frozen :class:`FunctionSpec` under ``__indexify_spec__``. Class-based functions
subclass :class:`IndexifyFunction` or :class:`IndexifyRouter`, set options as class attributes
and implement ``run``; the class is instantiated once per worker process.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, overload

from pydantic import BaseModel

from .batch import Batch
from .errors import GraphValidationError
from .graph_rules import (
    Problem,
    batch_problem,
    encoder_problem,
    name_problem,
    router_accumulates_problem,
    timeout_problem,
)
from .image import Image
from .placement import ConstraintsInput, normalize_constraints
from .retry import RetryPolicy, as_policy

SPEC_ATTRIBUTE = "__indexify_spec__"

FunctionKind = Literal["function", "router"]
F = TypeVar("F", bound=Callable[..., Any])


def check_name(name: str, what: str) -> str:
    """``name`` if it follows the name rule (:func:`.definition.name_problem`), else
    :class:`GraphValidationError`."""
    _refuse(name_problem(name, what))
    return name


def _refuse(problem: Problem | None) -> None:
    if problem is not None:
        raise GraphValidationError(
            problem.message, function=problem.function, parameter=problem.parameter
        )


@dataclass(frozen=True)
class FunctionSpec:
    """Everything the platform needs to know about a function, fixed at decoration time."""

    name: str
    kind: FunctionKind
    description: str = ""
    image: Image | None = None
    accumulate: type[Any] | None = None
    placement_constraints: Mapping[str, str] = field(default_factory=dict)
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    encoder: str = "auto"
    batch: Batch | None = None

    @property
    def is_reducer(self) -> bool:
        return self.accumulate is not None


def _build_spec(
    target: Any,
    kind: FunctionKind,
    *,
    name: str | None,
    description: str | None,
    image: Image | None,
    accumulate: type[Any] | None,
    placement_constraints: ConstraintsInput,
    retries: int | RetryPolicy | None,
    timeout: float | None,
    encoder: str,
    batch: Batch | None = None,
) -> FunctionSpec:
    fn_name = check_name(name or target.__name__, "function")
    if image is not None and not isinstance(image, Image):
        raise GraphValidationError(
            f"function {fn_name!r}: image= must be an indexify.Image, got {type(image).__name__}",
            function=fn_name,
            parameter="image",
        )
    _refuse(encoder_problem(fn_name, encoder))
    _refuse(timeout_problem(fn_name, timeout))
    if batch is not None:
        _check_batch(fn_name, target, kind, batch, accumulate)
    if accumulate is not None:
        if kind == "router":
            _refuse(router_accumulates_problem(fn_name))
        _check_accumulator(fn_name, accumulate)
    try:
        policy = as_policy(retries)
    except ValueError as exc:
        raise GraphValidationError(
            f"function {fn_name!r}: retries={retries!r} is invalid ({exc}); use a count 0-100 or "
            "an indexify.RetryPolicy",
            function=fn_name,
            parameter="retries",
        ) from exc
    return FunctionSpec(
        name=fn_name,
        kind=kind,
        description=description or inspect.getdoc(target) or "",
        image=image,
        accumulate=accumulate,
        placement_constraints=normalize_constraints(placement_constraints, function=fn_name),
        retries=policy,
        timeout=timeout,
        encoder=encoder,
        batch=batch,
    )


def _check_batch(
    fn_name: str, target: Any, kind: FunctionKind, batch: Any, accumulate: type[Any] | None
) -> None:
    """What can be said of ``batch=`` at decoration time: the option itself, the kind of
    function, and its annotations when they resolve here (else when the graph is built)."""
    if not isinstance(batch, Batch):
        raise GraphValidationError(
            f"function {fn_name!r}: batch= takes an indexify.Batch, e.g. "
            f"batch=Batch(max_size=32, max_wait=0.05), got {batch!r}",
            function=fn_name,
            parameter="batch",
        )
    _refuse(batch_problem(fn_name, batch.max_size, batch.max_wait))
    if kind == "router" or accumulate is not None:
        what = "a router" if kind == "router" else "a reducer (accumulate=)"
        _refuse(
            Problem(
                f"function {fn_name!r} cannot be batched: it is {what}; only plain "
                "@indexify_function functions take batch=",
                function=fn_name,
                parameter="batch",
            )
        )
    fn = signature_target(target)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # a forward reference: checked when the graph is built
        return
    problems = batch_signature_problems(fn_name, fn, hints, method=isinstance(target, type))
    _refuse(problems[0] if problems else None)


def _is_list(hint: Any) -> bool:
    return hint is list or typing.get_origin(hint) is list


def batch_signature_problems(
    fn_name: str, fn: Callable[..., Any], hints: Mapping[str, Any], *, method: bool
) -> list[Problem]:
    """A batched function receives ``list[T]`` and returns ``list[R]``: its one parameter
    and its return must be annotated as lists (``method``: ``fn`` is ``run``, with ``self``)."""
    params = list(inspect.signature(fn).parameters.values())[1 if method else 0 :]
    problems = []
    if len(params) == 1 and not _is_list(hints.get(params[0].name)):
        name = params[0].name
        problems.append(
            Problem(
                f"batched function {fn_name!r}: parameter {name!r} must be annotated as a "
                f"list (it receives one input per task of the batch), e.g. `{name}: list[str]`",
                function=fn_name,
                parameter=name,
            )
        )
    if "return" in hints and not _is_list(hints["return"]):
        problems.append(
            Problem(
                f"batched function {fn_name!r} must be annotated to return a list (one "
                "result per input, in order), e.g. `-> list[int]`",
                function=fn_name,
                parameter="return",
            )
        )
    return problems


def _check_accumulator(fn_name: str, accumulate: Any) -> None:
    if not isinstance(accumulate, type):
        raise GraphValidationError(
            f"function {fn_name!r}: accumulate= takes a class (e.g. a pydantic model with "
            f"defaults), got {accumulate!r}",
            function=fn_name,
            parameter="accumulate",
        )
    try:
        accumulate()
    except Exception as exc:
        raise GraphValidationError(
            f"function {fn_name!r}: the accumulator {accumulate.__name__} must be constructible "
            f"with no arguments (give every field a default): {exc}",
            function=fn_name,
            parameter="accumulate",
        ) from exc


def _decorator(kind: FunctionKind, **options: Any) -> Callable[[F], F]:
    def wrap(fn: F) -> F:
        if not callable(fn) or isinstance(fn, type):
            raise GraphValidationError(
                f"@indexify_{kind} decorates a plain function; for classes subclass "
                f"Indexify{kind.capitalize()} and implement run()"
            )
        spec = _build_spec(fn, kind, **options)
        setattr(fn, SPEC_ATTRIBUTE, spec)
        return fn

    return wrap


@overload
def indexify_function(fn: F, /) -> F: ...


@overload
def indexify_function(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    image: Image | None = None,
    accumulate: type[Any] | None = None,
    placement_constraints: ConstraintsInput = None,
    retries: int | RetryPolicy | None = None,
    timeout: float | None = None,
    encoder: str = "auto",
    batch: Batch | None = None,
) -> Callable[[F], F]: ...


def indexify_function(
    fn: Any = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    image: Image | None = None,
    accumulate: type[Any] | None = None,
    placement_constraints: ConstraintsInput = None,
    retries: int | RetryPolicy | None = None,
    timeout: float | None = None,
    encoder: str = "auto",
    batch: Batch | None = None,
) -> Any:
    """Make a function a graph node. ``accumulate=Model`` makes it a durable reducer;
    ``batch=Batch(max_size=...)`` makes it receive lists of inputs (:mod:`indexify.batch`)."""
    decorator = _decorator(
        "function",
        name=name,
        description=description,
        image=image,
        accumulate=accumulate,
        placement_constraints=placement_constraints,
        retries=retries,
        timeout=timeout,
        encoder=encoder,
        batch=batch,
    )
    return decorator(fn) if fn is not None else decorator


@overload
def indexify_router(fn: F, /) -> F: ...


@overload
def indexify_router(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    image: Image | None = None,
    placement_constraints: ConstraintsInput = None,
    retries: int | RetryPolicy | None = None,
    timeout: float | None = None,
    encoder: str = "auto",
) -> Callable[[F], F]: ...


def indexify_router(
    fn: Any = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    image: Image | None = None,
    placement_constraints: ConstraintsInput = None,
    retries: int | RetryPolicy | None = None,
    timeout: float | None = None,
    encoder: str = "auto",
) -> Any:
    """Make a function a router: it returns the next function(s) to run, or None."""
    decorator = _decorator(
        "router",
        name=name,
        description=description,
        image=image,
        accumulate=None,
        placement_constraints=placement_constraints,
        retries=retries,
        timeout=timeout,
        encoder=encoder,
    )
    return decorator(fn) if fn is not None else decorator


class _ClassFunction:
    """Shared base of class-based functions: options are class attributes, work is ``run``."""

    kind: ClassVar[FunctionKind] = "function"
    name: ClassVar[str | None] = None
    description: ClassVar[str | None] = None
    image: ClassVar[Image | None] = None
    accumulate: ClassVar[type[Any] | None] = None
    placement_constraints: ClassVar[ConstraintsInput] = None
    retries: ClassVar[int | RetryPolicy | None] = None
    timeout: ClassVar[float | None] = None
    encoder: ClassVar[str] = "auto"
    batch: ClassVar[Batch | None] = None

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__name__ in ("IndexifyFunction", "IndexifyRouter") or cls.run is _ClassFunction.run:
            return
        spec = _build_spec(
            cls,
            cls.kind,
            name=cls.name or cls.__name__,
            description=cls.description,
            image=cls.image,
            accumulate=cls.accumulate,
            placement_constraints=cls.placement_constraints,
            retries=cls.retries,
            timeout=cls.timeout,
            encoder=cls.encoder,
            batch=cls.batch,
        )
        setattr(cls, SPEC_ATTRIBUTE, spec)


class IndexifyFunction(_ClassFunction):
    """Subclass, set options as class attributes, and implement ``run``."""

    kind: ClassVar[FunctionKind] = "function"


class IndexifyRouter(_ClassFunction):
    """Subclass and implement ``run`` returning the next function(s), or None."""

    kind: ClassVar[FunctionKind] = "router"


def spec_of(node: Any) -> FunctionSpec:
    """The spec of a decorated function or function class; a clear error otherwise."""
    target = type(node) if isinstance(node, _ClassFunction) else node
    spec = getattr(target, SPEC_ATTRIBUTE, None)
    if not isinstance(spec, FunctionSpec):
        label = getattr(node, "__name__", repr(node))
        raise GraphValidationError(
            f"{label!r} is not an Indexify function: decorate it with @indexify_function() or "
            "@indexify_router(), or subclass IndexifyFunction / IndexifyRouter",
            function=str(label),
        )
    return spec


def node_class(node: Any) -> Any:
    """The decorated object for a node (the class for class-based functions)."""
    return type(node) if isinstance(node, _ClassFunction) else node


def signature_target(node: Any) -> Callable[..., Any]:
    """The function whose signature and annotations describe the node's inputs and output."""
    target = node_class(node)
    if isinstance(target, type) and issubclass(target, _ClassFunction):
        run: Callable[..., Any] = target.run
        return run
    fn: Callable[..., Any] = target
    return fn


def make_callable(node: Any) -> Callable[..., Any]:
    """What to call to run the node: the function, or ``run`` of a fresh instance."""
    target = node_class(node)
    if isinstance(target, type) and issubclass(target, _ClassFunction):
        instance = node if isinstance(node, _ClassFunction) else target()
        bound: Callable[..., Any] = instance.run
        return bound
    fn: Callable[..., Any] = target
    return fn


def is_model_class(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)
