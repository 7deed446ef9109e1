"""The executor's side of running a task: everything a worker needs in, everything it made out.

Worker processes hold no credentials (:mod:`.worker_wire`), so the executor does every read
and write for them. For each task it

1. gets the graph's code: cloudpickle bytes from MinIO (``Names.code_object``), kept in a
   small LRU cache of bytes here; a worker is sent them only while it does not hold that
   graph already (:class:`CodeSlots`, the executor's mirror of the worker's cache);
2. resolves the inputs: the message's :class:`StoredValues` (inline, or one ranged GET each;
   for the tasks of a chunk, :meth:`TaskData.prefetch` reads the ranges they take from
   one object with one GET of the covering range: a fan-out's elements are consecutive
   values of their parent's outputs object);
3. after the worker ran the function: stores the outputs (inline when small, else ONE object
   ``Names.outputs_object``, also kept in the executor's local :class:`.value_cache.ValueCache`,
   where the next step on this executor reads it instead of downloading it again) and any
   stdout/stderr (``Names.log_object``), and returns the :class:`TaskFinishedEvent` (the
   executor records a success in Redis, batched, before publishing it).

Failures are classified where they happen: MinIO unreachable while reading or writing is a
``platform`` error (retried without spending the user's budget); missing code or a malformed
message is ``permanent``.

The methods that read or write do blocking I/O: call them through ``asyncio.to_thread``,
unless :meth:`TaskData.request_is_local` / :meth:`TaskData.finish_is_local` say that this
one touches nothing but memory (inline values, cached code, no logs): a thread hop costs
more than such a call (it was a third of a chained step's time on the executor).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Sequence

from indexify.encoding import Payload
from indexify.engine import ErrorInfo, TaskFinished, ValueRange
from indexify.runtime import TaskResult
from services.common.blobs import BlobStore, load_values_sync, store_values_sync, unpack
from services.common.errors import NotFound, ServiceError
from services.common.events import StoredValues, TaskFinishedEvent, TaskMessage
from services.common.names import Names

from .value_cache import ValueCache
from .worker_wire import CodeKey, WorkRequest

__all__ = [
    "CodeSlots",
    "Prefetched",
    "TaskData",
    "TaskFailure",
    "code_key",
    "failure_event",
    "finished_event",
]

#: A covering range read for a chunk is at most this big, and at least half of it is used.
_PREFETCH_MAX_BYTES = 64 * 1024 * 1024
#: Covering ranges read for a chunk: object key -> (start, bytes).
Prefetched = dict[str, tuple[int, bytes]]
#: Graphs whose code one worker keeps unpickled (and this executor keeps as bytes).
CODE_CACHE_SIZE = 32


class TaskFailure(Exception):
    """Ends a task early with ``error`` (before or after its worker ran it)."""

    def __init__(self, error: ErrorInfo):
        super().__init__(error.message)
        self.error = error


def _platform(message: str, exc: BaseException) -> TaskFailure:
    return TaskFailure(
        ErrorInfo(kind="platform", type=type(exc).__name__, message=f"{message}: {exc}")
    )


def _permanent(message: str, exc: BaseException | None = None) -> TaskFailure:
    return TaskFailure(
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
    """The ``task.finished`` envelope around the engine's event for ``message``'s task
    (which records when the task's message was sent: its queue wait starts there)."""
    if not finished.queued_at:
        finished = finished.model_copy(update={"queued_at": message.at})
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


def code_key(message: TaskMessage) -> CodeKey:
    return (message.namespace, message.graph, message.graph_version)


class CodeSlots:
    """The executor's mirror of which graphs' code one worker process holds.

    The worker drops exactly what a request's ``forget`` names, so the two agree: a graph
    is sent (bytes) only when the worker does not hold it, and at most ``size`` are held.
    """

    def __init__(self, size: int = CODE_CACHE_SIZE) -> None:
        self.size = size
        self._keys: OrderedDict[CodeKey, None] = OrderedDict()

    def holds(self, key: CodeKey) -> bool:
        return key in self._keys

    def plan(self, key: CodeKey) -> tuple[bool, tuple[CodeKey, ...]]:
        """Whether a request for ``key`` must carry the code, and which keys to forget."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return False, ()
        forget = []
        while len(self._keys) >= self.size:
            forget.append(self._keys.popitem(last=False)[0])
        self._keys[key] = None  # the worker loads it with this request (or remembers why not)
        return True, tuple(forget)

    def update(self, key: CodeKey, cached: bool) -> None:
        """The worker's reply said whether it holds ``key`` now."""
        if not cached:
            self._keys.pop(key, None)


class TaskData:
    """Code, inputs and outputs of tasks, for one executor's workers (see the module doc)."""

    def __init__(
        self,
        blobs: BlobStore,
        names: Names,
        executor_id: str,
        *,
        max_outputs: int | None = None,
        values: ValueCache | None = None,
    ):
        self.blobs = blobs
        self.names = names
        self.executor_id = executor_id
        self.max_outputs = max_outputs
        self.values = values  # this executor's local copies of stored objects
        self._codes: OrderedDict[CodeKey, bytes] = OrderedDict()
        self._codes_lock = threading.Lock()

    # -- requests -------------------------------------------------------------------------

    def request(
        self, message: TaskMessage, slots: CodeSlots, prefetched: Prefetched | None = None
    ) -> WorkRequest:
        """The request running ``message`` on the worker whose cache ``slots`` mirrors;
        raises :class:`TaskFailure` when the code or an input cannot be read."""
        key = code_key(message)
        inputs = self._inputs(message, prefetched or {})
        code = None if slots.holds(key) else self.code(key)
        _, forget = slots.plan(key)
        return WorkRequest(
            task=message.task,
            code_key=key,
            code=code,
            inputs=inputs,
            forget=forget,
            timed=message.timeout_sec is not None,
        )

    def request_is_local(self, message: TaskMessage, slots: CodeSlots) -> bool:
        """Whether :meth:`request` for ``message`` needs no I/O: the worker or this cache
        holds the code, and every input travels inline."""
        key = code_key(message)
        if not slots.holds(key):
            with self._codes_lock:
                if key not in self._codes:
                    return False
        if message.accumulator is not None and message.accumulator.inline is None:
            return False
        return all(values.inline is not None for values in message.inputs)

    def finish_is_local(self, result: TaskResult) -> bool:
        """Whether :meth:`finish` of ``result`` needs no I/O: no logs to store, and the
        outputs (if any) travel inline."""
        if result.stdout or result.stderr:
            return False
        if not result.succeeded:
            return True
        size = sum(len(payload.data) for payload in result.outputs)
        return size <= self.blobs.settings.inline_limit_bytes

    def code(self, key: CodeKey) -> bytes:
        """The graph's code (cloudpickle bytes), from the cache here or MinIO."""
        with self._codes_lock:
            code = self._codes.get(key)
            if code is not None:
                self._codes.move_to_end(key)
                return code
        _, graph, version = key
        object_key = self.names.code_object(*key)
        try:
            code = self.blobs.get_sync(object_key)
        except NotFound as exc:
            raise _permanent(
                f"the code of graph {graph!r} version {version} is missing (object "
                f"{object_key}); register the graph again",
                exc,
            ) from exc
        except ServiceError as exc:
            raise _platform(f"cannot read the code of graph {graph!r}", exc) from exc
        with self._codes_lock:
            self._codes[key] = code
            while len(self._codes) > CODE_CACHE_SIZE:
                self._codes.popitem(last=False)
        return code

    # -- inputs ---------------------------------------------------------------------------

    def prefetch(self, messages: Sequence[TaskMessage]) -> Prefetched:
        """For the tasks of one chunk: the input ranges two or more of them take from one
        object, read with ONE GET of their covering range (when it is not mostly gaps).
        Best effort: a failed read leaves each task to read its own range (and report a
        failure as its own). Pass the result to :meth:`request`."""
        spans: dict[str, list[tuple[int, int]]] = {}
        for message in messages:
            for values in message.inputs:
                if values.inline is None and values.object_key and values.offsets:
                    spans.setdefault(values.object_key, []).append(
                        (values.offsets[0], values.offsets[-1])
                    )
        prefetched: Prefetched = {}
        for key, ranges in spans.items():
            start, end = min(r[0] for r in ranges), max(r[1] for r in ranges)
            used = sum(r[1] - r[0] for r in ranges)
            if len(ranges) < 2 or end - start > _PREFETCH_MAX_BYTES or 2 * used < end - start:
                continue
            try:
                prefetched[key] = (start, self.blobs.get_range_sync(key, start, end))
            except (ServiceError, ValueError):
                continue
        return prefetched

    def _load(self, values: StoredValues, prefetched: Prefetched) -> list[Payload]:
        """``values``' payloads: from a prefetched covering range, the local copy, else
        one ranged GET."""
        found = prefetched.get(values.object_key or "") if values.inline is None else None
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

    def _inputs(
        self, message: TaskMessage, prefetched: Prefetched
    ) -> dict[ValueRange, list[Payload]]:
        """Every input, read up front: a MinIO failure is a platform error (raised here),
        never mistaken for an error of the user's function."""
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
                loaded[value_range] = self._load(values, prefetched)
            except ServiceError as exc:
                raise _platform(
                    f"cannot read the inputs of {task.function!r} from task {value_range.task_id}",
                    exc,
                ) from exc
        return loaded

    # -- outputs and logs -----------------------------------------------------------------

    def finish(
        self, message: TaskMessage, result: TaskResult, *, input_read_sec: float | None = None
    ) -> TaskFinishedEvent:
        """Store what the worker made of ``message`` and return the event reporting it;
        never raises for failures of the task (they become the event). The event records
        ``input_read_sec`` (measured by the caller) and how long storing took."""
        task = message.task
        storing = time.monotonic()
        if self.max_outputs is not None and len(result.outputs) > self.max_outputs:
            error = ErrorInfo(
                kind="permanent",
                type="TooManyOutputs",
                message=f"function {task.function!r} returned {len(result.outputs)} "
                f"values, over the limit of {self.max_outputs} per task; return fewer, larger "
                "values (e.g. lists of items as one value each), or raise the executor's "
                "limit with INDEXIFY_EXECUTOR_MAX_OUTPUTS_PER_TASK",
            )
            return failure_event(message, error, self.executor_id, result.started_at)
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
            failure = _platform(f"cannot store the results of {task.function!r}", exc)
            return failure_event(message, failure.error, self.executor_id, result.started_at)
        finished = result.finished(task, self.executor_id).model_copy(
            update={
                "queued_at": message.at,
                "input_read_sec": input_read_sec,
                "output_write_sec": time.monotonic() - storing,
            }
        )
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
