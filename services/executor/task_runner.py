"""What runs inside an executor worker process: one task message in, one finished event out.

A :class:`TaskRunner` lives as long as its worker process. For each task it

1. gets the graph's code: cloudpickle bytes from MinIO (``Names.code_object``), unpickled once
   per (namespace, graph, version) and kept in a small LRU cache with its ``FunctionRunner``;
2. resolves the inputs: the message's :class:`StoredValues` (inline, or one ranged GET each;
   for the tasks of a chunk, :meth:`TaskRunner.prefetched` reads the ranges they take from
   one object with one GET of the covering range: a fan-out's elements are consecutive
   values of their parent's outputs object);
3. runs the function with the SDK's ``FunctionRunner`` (the code the in-process client runs);
4. stores the outputs (inline when small, else ONE object ``Names.outputs_object``, also
   kept in the executor's local :class:`.value_cache.ValueCache`, where the next step on this
   executor reads it instead of downloading it again) and any
   stdout/stderr (``Names.log_object``), and returns the :class:`TaskFinishedEvent` (the
   executor records a success in Redis, batched, before publishing it).

Failures are classified where they happen: MinIO unreachable while reading or writing is a
``platform`` error (retried without spending the user's budget); code that cannot be unpickled
(another Python version, a missing module) or a malformed message is ``permanent``; anything
the function raised is a ``user`` error, as ``FunctionRunner`` reports it.

The runner is synchronous and does blocking I/O: it must never run on an event loop.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from indexify.encoding import Payload
from indexify.engine import ErrorInfo, TaskFinished, ValueRange
from indexify.graph import Graph
from indexify.runtime import FunctionRunner, TaskResult
from services.common.blobs import BlobStore, load_values_sync, store_values_sync, unpack
from services.common.errors import NotFound, ServiceError
from services.common.events import StoredValues, TaskFinishedEvent, TaskMessage
from services.common.names import Names
from services.common.settings import InfraSettings

from .value_cache import ValueCache

__all__ = ["TaskRunner", "failure_event"]

_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
#: A covering range read for a chunk is at most this big, and at least half of it is used.
_PREFETCH_MAX_BYTES = 64 * 1024 * 1024


class _TaskFailure(Exception):
    """Raised inside the runner to end a task early with ``error``."""

    def __init__(self, error: ErrorInfo):
        super().__init__(error.message)
        self.error = error


def _platform(message: str, exc: BaseException) -> _TaskFailure:
    return _TaskFailure(
        ErrorInfo(kind="platform", type=type(exc).__name__, message=f"{message}: {exc}")
    )


def _permanent(message: str, exc: BaseException | None = None) -> _TaskFailure:
    return _TaskFailure(
        ErrorInfo(
            kind="permanent",
            type=type(exc).__name__ if exc is not None else "InvalidTask",
            message=message,
            traceback="".join(traceback.format_exception(exc)) if exc is not None else "",
        )
    )


def failure_event(
    message: TaskMessage,
    error: ErrorInfo,
    executor: str,
    started_at: float,
    *,
    stdout_key: str | None = None,
    stderr_key: str | None = None,
) -> TaskFinishedEvent:
    """The event reporting that one attempt of ``message``'s task failed with ``error``."""
    result = TaskResult(error=error, started_at=started_at, finished_at=time.time())
    return finished_event(
        message, result.finished(message.task, executor), None, stdout_key, stderr_key
    )


def finished_event(
    message: TaskMessage,
    finished: TaskFinished,
    outputs: StoredValues | None,
    stdout_key: str | None,
    stderr_key: str | None,
) -> TaskFinishedEvent:
    """The ``task.finished`` envelope around the engine's event for ``message``'s task."""
    return TaskFinishedEvent(
        namespace=message.namespace,
        graph=message.graph,
        invocation_id=message.invocation_id,
        task_id=message.task.id,
        finished=finished,
        outputs=outputs,
        stdout_key=stdout_key,
        stderr_key=stderr_key,
    )


class TaskRunner:
    """Runs task messages; one per worker process (holds a MinIO pool and a code cache)."""

    def __init__(
        self,
        infra: InfraSettings,
        executor_id: str,
        *,
        cache_size: int = 32,
        max_outputs: int | None = None,
        values: ValueCache | None = None,
    ):
        self.blobs = BlobStore(infra)
        self.max_outputs = max_outputs
        self.names = Names(infra.prefix)
        self.executor_id = executor_id
        self._cache_size = cache_size
        self._runners: OrderedDict[tuple[str, str, str], FunctionRunner] = OrderedDict()
        self._prefetched: dict[str, tuple[int, bytes]] = {}  # object key -> (start, bytes)
        self.values = values  # this executor's local copies of stored objects

    def run(
        self, message: TaskMessage, on_start: Callable[[], None] = lambda: None
    ) -> TaskFinishedEvent:
        """Run one task; never raises for failures of the task (they become the event).

        ``on_start`` is called right before the user's function runs (after code and inputs
        are loaded): the pool starts the task's timeout there.
        """
        started_at = time.time()
        try:
            runner = self._runner(message)
            loader = self._loader(message)
        except _TaskFailure as failure:
            return failure_event(message, failure.error, self.executor_id, started_at)
        on_start()
        result = _run_user_code(runner, message, loader)
        if self.max_outputs is not None and len(result.outputs) > self.max_outputs:
            error = ErrorInfo(
                kind="permanent",
                type="TooManyOutputs",
                message=f"function {message.task.function!r} returned {len(result.outputs)} "
                f"values, over the limit of {self.max_outputs} per task; return fewer, larger "
                "values (e.g. lists of items as one value each), or raise the executor's "
                "limit with INDEXIFY_EXECUTOR_MAX_OUTPUTS_PER_TASK",
            )
            return failure_event(message, error, self.executor_id, started_at)
        try:
            return self._finish(message, result)
        except _TaskFailure as failure:
            return failure_event(message, failure.error, self.executor_id, started_at)

    # -- code ---------------------------------------------------------------------------

    def _runner(self, message: TaskMessage) -> FunctionRunner:
        key = (message.namespace, message.graph, message.graph_version)
        runner = self._runners.get(key)
        if runner is not None:
            self._runners.move_to_end(key)
            return runner
        code_key = self.names.code_object(*key)
        try:
            code = self.blobs.get_sync(code_key)
        except NotFound as exc:
            raise _permanent(
                f"the code of graph {message.graph!r} version {message.graph_version} is "
                f"missing (object {code_key}); register the graph again",
                exc,
            ) from exc
        except ServiceError as exc:
            raise _platform(f"cannot read the code of graph {message.graph!r}", exc) from exc
        try:
            graph = Graph.deserialize(code)
        except Exception as exc:
            raise _permanent(
                f"cannot load the code of graph {message.graph!r} version "
                f"{message.graph_version} ({type(exc).__name__}: {exc}); this executor runs "
                f"Python {_PYTHON}: run an executor with the Python version and packages the "
                "graph was registered with, or register the graph again from this environment",
                exc,
            ) from exc
        runner = FunctionRunner(graph)
        self._runners[key] = runner
        while len(self._runners) > self._cache_size:
            self._runners.popitem(last=False)
        return runner

    # -- inputs -------------------------------------------------------------------------

    @contextmanager
    def prefetched(self, messages: Sequence[TaskMessage]) -> Iterator[None]:
        """While running the tasks of one chunk: the input ranges two or more of them take
        from one object are read with ONE GET of their covering range (when it is not
        mostly gaps). Best effort: a failed read leaves each task to read its own range
        (and report a failure as its own)."""
        spans: dict[str, list[tuple[int, int]]] = {}
        for message in messages:
            for values in message.inputs:
                if values.inline is None and values.object_key and values.offsets:
                    spans.setdefault(values.object_key, []).append(
                        (values.offsets[0], values.offsets[-1])
                    )
        for key, ranges in spans.items():
            start, end = min(r[0] for r in ranges), max(r[1] for r in ranges)
            used = sum(r[1] - r[0] for r in ranges)
            if len(ranges) < 2 or end - start > _PREFETCH_MAX_BYTES or 2 * used < end - start:
                continue
            try:
                self._prefetched[key] = (start, self.blobs.get_range_sync(key, start, end))
            except (ServiceError, ValueError):
                continue
        try:
            yield
        finally:
            self._prefetched.clear()

    def _load(self, values: StoredValues) -> list[Payload]:
        """``values``' payloads: from a prefetched covering range, else one ranged GET."""
        found = self._prefetched.get(values.object_key or "") if values.inline is None else None
        offsets = values.offsets
        if found is not None and offsets is not None and len(offsets) == values.count + 1:
            base, data = found
            if base <= offsets[0] and offsets[-1] - base <= len(data):
                return unpack(values, data[offsets[0] - base : offsets[-1] - base])
        if values.inline is None and self.values is not None and values.object_key and offsets:
            local = self.values.get_range(values.object_key, offsets[0], offsets[-1])
            if local is not None:
                return unpack(values, local)
        return load_values_sync(self.blobs, values)

    def _loader(self, message: TaskMessage) -> Callable[[ValueRange], list[Payload]]:
        """Fetch every input up front, so a MinIO failure is a platform error (raised here)
        and not mistaken for an error of the user's function."""
        task = message.task
        if len(message.inputs) != len(task.inputs):
            raise _permanent(
                f"malformed task message: {len(task.inputs)} input ranges but "
                f"{len(message.inputs)} stored values"
            )
        pairs: list[tuple[ValueRange, StoredValues]] = list(
            zip(task.inputs, message.inputs, strict=True)
        )
        if task.accumulator is not None:
            if message.accumulator is None:
                raise _permanent("malformed task message: a reduce step without its accumulator")
            pairs.append((task.accumulator, message.accumulator))
        loaded: dict[ValueRange, list[Payload]] = {}
        for value_range, values in pairs:
            try:
                loaded[value_range] = self._load(values)
            except ServiceError as exc:
                raise _platform(
                    f"cannot read the inputs of {task.function!r} from task {value_range.task_id}",
                    exc,
                ) from exc

        def load(value_range: ValueRange) -> list[Payload]:
            return loaded.get(value_range, [])

        return load

    # -- outputs and logs ---------------------------------------------------------------

    def _finish(self, message: TaskMessage, result: TaskResult) -> TaskFinishedEvent:
        task = message.task
        try:
            stdout_key = self._put_log(message, "stdout", result.stdout)
            stderr_key = self._put_log(message, "stderr", result.stderr)
            outputs = None
            if result.succeeded:
                key = self.names.outputs_object(
                    message.namespace, message.graph, message.invocation_id, task.id
                )
                keep = self.values.put if self.values is not None else None
                outputs = store_values_sync(self.blobs, result.outputs, key, keep=keep)
        except ServiceError as exc:
            raise _platform(f"cannot store the results of {task.function!r}", exc) from exc
        finished = result.finished(task, self.executor_id)
        return finished_event(message, finished, outputs, stdout_key, stderr_key)

    def _put_log(self, message: TaskMessage, stream: str, text: str) -> str | None:
        if not text:
            return None
        key = self.names.log_object(
            message.namespace,
            message.graph,
            message.invocation_id,
            message.task.id,
            message.task.attempt,
            stream,
        )
        self.blobs.put_sync(key, text.encode("utf-8", "replace"), "text/plain; charset=utf-8")
        return key


def _run_user_code(
    runner: FunctionRunner, message: TaskMessage, loader: Callable[[ValueRange], list[Payload]]
) -> TaskResult:
    """``FunctionRunner.run``, which reports exceptions; a ``sys.exit()`` in user code (which
    it lets through) is a user error too, not the end of the worker."""
    started_at = time.time()
    try:
        return runner.run(message.task, loader)
    except BaseException as exc:  # SystemExit, KeyboardInterrupt from user code
        return TaskResult(
            error=ErrorInfo(
                kind="user",
                type=type(exc).__name__,
                message=f"function {message.task.function!r} raised {type(exc).__name__}: {exc}",
                traceback="".join(traceback.format_exception(exc)),
            ),
            started_at=started_at,
            finished_at=time.time(),
        )
