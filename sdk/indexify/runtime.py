"""Running one task: decode inputs, call the user's function, encode outputs, capture errors.

Shared by the in-process runner and the executor's worker processes, so a function behaves the
same in both. Inputs are fetched through a loader (``ValueRange -> list[Payload]``), which is
where the two differ: memory in-process, inline data or MinIO on the server.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .data_objects import File
from .definition import NodeDefinition, argument_problem
from .encoding import Payload, coerce, decode, encode
from .engine.model import ErrorInfo, Task, TaskFinished, ValueRange
from .errors import EncodingError, NonRetryable
from .functions import make_callable, node_class, spec_of
from .graph import Graph

Loader = Callable[[ValueRange], list[Payload]]


@dataclass
class TaskResult:
    """What running a task produced; ``error`` is set when it failed."""

    outputs: list[Payload] = field(default_factory=list)
    route: tuple[str, ...] | None = None
    error: ErrorInfo | None = None
    stdout: str = ""
    stderr: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.error is None

    def finished(self, task: Task, executor: str) -> TaskFinished:
        """The engine event reporting this result of ``task``."""
        return TaskFinished(
            task_id=task.id,
            attempt=task.attempt,
            outcome="success" if self.succeeded else "failure",
            output_count=len(self.outputs),
            route=self.route,
            error=self.error,
            executor=executor,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )


class _PermanentError(Exception):
    """Input that can never succeed (undecodable, unknown route): no retry helps."""


class BatchResultError(_PermanentError):
    """A batched function returned something other than one result per input."""


class FunctionRunner:
    """Runs the tasks of one graph; caches class-based function instances."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._callables: dict[str, Callable[..., Any]] = {}
        self._hints: dict[str, Any] = {}
        self._params: dict[str, tuple[list[str], set[str]]] = {}
        self._start: NodeDefinition | None = None

    # -- hints and signatures -----------------------------------------------------------

    def output_hint(self, function: str) -> Any:
        """The declared type of one output of ``function``."""
        if function not in self._hints:
            self._hints[function] = self.graph.output_hint(function)
        return self._hints[function]

    def _callable(self, function: str) -> Callable[..., Any]:
        if function not in self._callables:
            self._callables[function] = make_callable(self.graph.function(function))
        return self._callables[function]

    def _signature(self, function: str) -> tuple[list[str], set[str]]:
        if function not in self._params:
            params = list(inspect.signature(self._callable(function)).parameters.values())
            names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            required = {
                p.name
                for p in params
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            }
            self._params[function] = (names, required)
        return self._params[function]

    # -- decoding -----------------------------------------------------------------------

    def decode_input(self, value: ValueRange, payload: Payload) -> Any:
        if value.function == "":
            return self._decode_kwargs(payload)
        return decode(payload, self.output_hint(value.function))

    def _decode_kwargs(self, payload: Payload) -> dict[str, Any] | File:
        """The start function's keyword arguments, or the File it was invoked with."""
        kwargs = decode(payload)
        if isinstance(kwargs, File):
            return kwargs
        if not isinstance(kwargs, dict):
            raise _PermanentError(
                f"the invocation input must be an object of keyword arguments, got "
                f"{type(kwargs).__name__}"
            )
        start = self.graph.start_node
        hints = self.graph.parameter_hints(start)
        problem = argument_problem(self.graph.name, self._start_definition(), kwargs)
        if problem is not None:
            raise _PermanentError(problem)
        if payload.content_type != "application/json":
            return kwargs
        decoded = {}
        for key, raw in kwargs.items():
            decoded[key] = coerce(raw, hints.get(key))
        return decoded

    def _start_definition(self) -> NodeDefinition:
        """What :func:`argument_problem` needs of the start function (the rule the SDK and
        the API apply), from its signature here: no code closure is computed."""
        if self._start is None:
            start = self.graph.start_node
            names, required = self._signature(start)
            params = inspect.signature(self._callable(start)).parameters.values()
            self._start = NodeDefinition(
                name=start,
                parameters=tuple(names),
                required_parameters=tuple(name for name in names if name in required),
                accepts_any_keyword=any(p.kind is p.VAR_KEYWORD for p in params),
            )
        return self._start

    def decoded_output(self, function: str, payload: Payload) -> Any:
        return decode(payload, self.output_hint(function))

    # -- running ------------------------------------------------------------------------

    def batched(self, function: str) -> bool:
        """Whether ``function`` takes a batch of inputs (:mod:`indexify.batch`)."""
        return spec_of(self.graph.function(function)).batch is not None

    def run(self, task: Task, load: Loader) -> TaskResult:
        """Run ``task``; never raises for errors in user code or inputs. A task of a batched
        function is a batch of one."""
        if task.kind == "call" and self.batched(task.function):
            (result,) = self.run_batch([(task, load)])
            return result
        result = TaskResult(started_at=time.time())
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                if task.kind == "reduce":
                    self._reduce(task, load, result)
                elif task.kind == "route":
                    self._route(task, load, result)
                else:
                    self._call_function(task, load, result)
        except (_PermanentError, EncodingError) as exc:
            result.error = ErrorInfo(
                kind="permanent", type=type(exc).__name__, message=str(exc), traceback=""
            )
        except NonRetryable as exc:
            result.error = _user_error(exc, kind="permanent")
        except Exception as exc:
            result.error = _user_error(exc, kind="user")
        result.stdout, result.stderr = out.getvalue(), err.getvalue()
        result.finished_at = time.time()
        if result.error is not None:
            result.outputs = []
        return result

    def run_batch(self, batch: Sequence[tuple[Task, Loader]]) -> list[TaskResult]:
        """Run the tasks of one batched function in ONE call of it, each with the loader of
        its own inputs (tasks of different invocations may have the same ids: ids are
        deterministic per invocation); never raises for errors in user code or inputs.
        The function gets the tasks' inputs as one list and returns
        one result per input, in order; each result becomes its own task's outputs. A task
        whose input cannot be decoded fails alone (permanently); the call failing (it raised,
        or returned a list of the wrong length) fails every task of the batch. Every task
        gets the call's stdout and stderr."""
        started_at = time.time()
        results = [TaskResult(started_at=started_at) for _ in batch]
        function = batch[0][0].function if batch else ""
        if any(task.function != function or task.kind != "call" for task, _ in batch):
            raise ValueError(f"a batch holds calls of one function; got {list(batch)}")
        values: list[Any] = []
        members: list[TaskResult] = []  # the results of the tasks whose inputs decoded
        for (task, load), result in zip(batch, results, strict=True):
            try:
                (value,) = self._load_values(task.inputs, load)
            except (_PermanentError, EncodingError) as exc:
                result.error = _permanent(exc)
            else:
                values.append(value)
                members.append(result)
        out, err = io.StringIO(), io.StringIO()
        if members:
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    returned = self._callable(function)(values)
                    self._check_batch_result(function, returned, len(values))
                    for result, item in zip(members, returned, strict=True):
                        try:
                            result.outputs = self._encode_outputs(function, item)
                        except EncodingError as exc:
                            result.error = _permanent(exc)
            except (_PermanentError, EncodingError) as exc:
                for result in members:
                    result.error = _permanent(exc)
            except NonRetryable as exc:
                for result in members:
                    result.error = _user_error(exc, kind="permanent")
            except Exception as exc:
                for result in members:
                    result.error = _user_error(exc, kind="user")
        finished_at = time.time()
        for result in results:
            result.stdout, result.stderr = out.getvalue(), err.getvalue()
            result.finished_at = finished_at
            if result.error is not None:
                result.outputs = []
        return results

    @staticmethod
    def _check_batch_result(function: str, returned: Any, expected: int) -> None:
        if not isinstance(returned, list):
            raise BatchResultError(
                f"batched function {function!r} returned {type(returned).__name__}; it must "
                f"return a list with one result per input ({expected} inputs)"
            )
        if len(returned) != expected:
            raise BatchResultError(
                f"batched function {function!r} returned {len(returned)} results for "
                f"{expected} inputs; it must return exactly one result per input, in order"
            )

    def _load_values(self, values: tuple[ValueRange, ...], load: Loader) -> list[Any]:
        decoded: list[Any] = []
        for value in values:
            payloads = load(value)
            if len(payloads) != value.size:
                raise _PermanentError(
                    f"expected {value.size} stored values of task {value.task_id}, "
                    f"found {len(payloads)}"
                )
            decoded.extend(self.decode_input(value, p) for p in payloads)
        return decoded

    def _invoke(self, function: str, value: Any, *, leading: tuple[Any, ...] = ()) -> Any:
        fn = self._callable(function)
        names, required = self._signature(function)
        free = names[len(leading) :]
        spreads = isinstance(value, dict) and value and set(value) <= set(free)
        if spreads and required - set(names[: len(leading)]) <= set(value):
            return fn(*leading, **value)
        if isinstance(value, tuple):
            return fn(*leading, *value)
        return fn(*leading, value)

    def _call_start(self, function: str, value: dict[str, Any] | File) -> Any:
        """The start function gets the invocation's keyword arguments, or its single
        positional argument: the File of ``invoke_graph_with_file``."""
        if isinstance(value, File):
            return self._callable(function)(value)
        return self._callable(function)(**value)

    def _call_function(self, task: Task, load: Loader, result: TaskResult) -> None:
        (value,) = self._load_values(task.inputs, load)
        if task.inputs[0].function == "":
            output = self._call_start(task.function, value)
        else:
            output = self._invoke(task.function, value)
        result.outputs = self._encode_outputs(task.function, output)

    def _encode_outputs(self, function: str, output: Any) -> list[Payload]:
        if output is None:
            return []
        items = output if isinstance(output, list) else [output]
        hint = self.output_hint(function)
        encoder = spec_of(self.graph.function(function)).encoder
        return [encode(item, hint, encoder=encoder) for item in items]

    def _route(self, task: Task, load: Loader, result: TaskResult) -> None:
        (value,) = self._load_values(task.inputs, load)
        if task.inputs[0].function == "":
            choice = self._call_start(task.function, value)
        else:
            choice = self._invoke(task.function, value)
        result.route = tuple(self._route_names(task.function, choice))

    def _route_names(self, router: str, choice: Any) -> list[str]:
        if choice is None:
            return []
        items = choice if isinstance(choice, list | tuple) else [choice]
        names = []
        for item in items:
            if isinstance(item, str):
                names.append(item)
                continue
            try:
                names.append(spec_of(node_class(item)).name)
            except Exception:
                raise _PermanentError(
                    f"router {router!r} returned {item!r}; a router returns an indexify "
                    "function, a list of them, or None"
                ) from None
        return names

    def _reduce(self, task: Task, load: Loader, result: TaskResult) -> None:
        spec = spec_of(self.graph.function(task.function))
        assert spec.accumulate is not None
        if task.accumulator is None:
            acc = spec.accumulate()
        else:
            (acc,) = self._load_values((task.accumulator,), load)
        for value in self._load_values(task.inputs, load):
            acc = self._invoke(task.function, value, leading=(acc,))
        result.outputs = [encode(acc, self.output_hint(task.function), encoder=spec.encoder)]


def _permanent(exc: Exception) -> ErrorInfo:
    return ErrorInfo(kind="permanent", type=type(exc).__name__, message=str(exc), traceback="")


def _user_error(exc: BaseException, *, kind: str) -> ErrorInfo:
    return ErrorInfo(
        kind="permanent" if kind == "permanent" else "user",
        type=type(exc).__name__,
        message=str(exc) or type(exc).__name__,
        traceback="".join(traceback.format_exception(exc)),
    )
