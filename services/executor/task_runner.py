"""What runs inside an executor worker process: one request in, one result out.

The worker process is started by :class:`.worker_pool.WorkerPool` as
``python -m services.executor.task_runner --fd N`` with a scrubbed environment (no
``INDEXIFY_*`` settings, no secrets) and, when the executor runs as root, switches to an
unprivileged user (``--uid``/``--gid``, :mod:`.privileges`) before it reads anything. It
holds no credentials: each :class:`~.worker_wire.WorkRequest` carries the graph's code (when
this worker does not hold it yet) and the task's inputs, and the reply carries the outputs
and logs back; the executor reads and stores everything (:mod:`.task_data`).

A :class:`TaskRunner` lives as long as its worker process. For each request it

1. drops the graphs the executor says to forget, then unpickles the request's code once per
   (namespace, graph, version) and keeps its ``FunctionRunner`` (the executor mirrors this
   cache, so it sends each graph's bytes once per worker);
2. runs the function with the SDK's ``FunctionRunner`` (the code the in-process client runs)
   on the inputs the request carries (a list of requests of one batched function, which
   the executor assembled, is ONE call of it: :meth:`TaskRunner.run_batch`);
3. returns the :class:`TaskResult`.

Code that cannot be unpickled (another Python version, a missing module) is a ``permanent``
error; anything the function raised is a ``user`` error, as ``FunctionRunner`` reports it.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from indexify.encoding import Payload
from indexify.engine import ErrorInfo, Task, ValueRange
from indexify.graph import Graph
from indexify.runtime import FunctionRunner, TaskResult

from .privileges import drop_privileges
from .worker_wire import (
    REQUEST_HEADER,
    CodeKey,
    WorkReply,
    WorkRequest,
    decode_request,
    encode_reply,
    result_reply,
)

__all__ = ["CHUNK_TURN_SEC", "TaskRunner", "main"]

_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
CHUNK_TURN_SEC = 0.5  # a chunk's elements run on a worker this long before it yields


class TaskRunner:
    """Runs work requests; one per worker process (holds the unpickled graphs)."""

    def __init__(self) -> None:
        self._runners: dict[CodeKey, FunctionRunner] = {}
        self._broken: dict[CodeKey, ErrorInfo] = {}  # code that did not load, and why

    def run(self, request: WorkRequest, on_start: Callable[[], None] = lambda: None) -> TaskResult:
        """Run one request; never raises for failures of the task (they become the result).

        ``on_start`` is called right before the user's function runs (after the code is
        loaded): the pool starts the task's timeout there.
        """
        started_at = time.time()
        for key in request.forget:
            self._runners.pop(key, None)
            self._broken.pop(key, None)
        runner = self._runner(request)
        if isinstance(runner, ErrorInfo):
            return TaskResult(error=runner, started_at=started_at, finished_at=time.time())
        on_start()
        return _run_user_code(runner, request.task, request.inputs)

    def batch(self, requests: Sequence[WorkRequest]) -> bool:
        """Whether ``requests`` (a list the executor sent) are one batch: calls of one batched
        function of one graph version, run in ONE call (:meth:`run_batch`). The scheduler never
        chunks a batched function's tasks, so such a list is a batch the executor assembled."""
        first = requests[0]
        if any(
            r.code_key != first.code_key
            or r.task.function != first.task.function
            or r.task.kind != "call"
            for r in requests
        ):
            return False
        self._forget(requests)
        runner = self._runner(next((r for r in requests if r.code is not None), first))
        return isinstance(runner, FunctionRunner) and runner.batched(first.task.function)

    def run_batch(self, requests: Sequence[WorkRequest]) -> list[TaskResult]:
        """Run a batch (:meth:`batch`) in one call of its function: one result per request,
        in order; never raises for failures of the tasks (they become the results)."""
        started_at = time.time()
        self._forget(requests)
        runner = self._runner(next((r for r in requests if r.code is not None), requests[0]))
        if isinstance(runner, ErrorInfo):
            return [_failed(runner, started_at) for _ in requests]
        function = requests[0].task.function
        try:  # each task reads its own inputs: ids repeat across invocations
            return runner.run_batch([(r.task, _loader(r.inputs)) for r in requests])
        except BaseException as exc:  # SystemExit, KeyboardInterrupt from user code
            return [_failed(_exit_error(function, exc), started_at) for _ in requests]

    def _forget(self, requests: Sequence[WorkRequest]) -> None:
        for request in requests:
            for key in request.forget:
                self._runners.pop(key, None)
                self._broken.pop(key, None)

    def holds(self, key: CodeKey) -> bool:
        """Whether this worker keeps ``key``'s code (loaded, or known not to load)."""
        return key in self._runners or key in self._broken

    def _runner(self, request: WorkRequest) -> FunctionRunner | ErrorInfo:
        key = request.code_key
        runner = self._runners.get(key) or self._broken.get(key)
        if runner is not None:
            return runner
        _, graph_name, version = key
        if request.code is None:  # the executor's mirror of this cache is wrong: resend
            return ErrorInfo(
                kind="platform",
                type="CodeNotLoaded",
                message=f"the worker process does not hold the code of graph {graph_name!r} "
                f"version {version}; the task is retried (with the code)",
            )
        try:
            graph = Graph.deserialize(request.code)
        except Exception as exc:
            error = ErrorInfo(
                kind="permanent",
                type=type(exc).__name__,
                message=f"cannot load the code of graph {graph_name!r} version {version} "
                f"({type(exc).__name__}: {exc}); this executor runs Python {_PYTHON}: run an "
                "executor with the Python version and packages the graph was registered "
                "with, or register the graph again from this environment",
                traceback="".join(traceback.format_exception(exc)),
            )
            self._broken[key] = error
            return error
        self._runners[key] = FunctionRunner(graph)
        return self._runners[key]


def _run_user_code(
    runner: FunctionRunner, task: Task, inputs: dict[ValueRange, list[Payload]]
) -> TaskResult:
    """``FunctionRunner.run``, which reports exceptions; a ``sys.exit()`` in user code (which
    it lets through) is a user error too, not the end of the worker."""
    started_at = time.time()
    try:
        return runner.run(task, _loader(inputs))
    except BaseException as exc:  # SystemExit, KeyboardInterrupt from user code
        error = _exit_error(task.function, exc)
        return TaskResult(error=error, started_at=started_at, finished_at=time.time())


def _loader(inputs: dict[ValueRange, list[Payload]]) -> Callable[[ValueRange], list[Payload]]:
    def load(value_range: ValueRange) -> list[Payload]:
        return inputs.get(value_range, [])

    return load


def _failed(error: ErrorInfo, started_at: float) -> TaskResult:
    return TaskResult(error=error, started_at=started_at, finished_at=time.time())


def _exit_error(function: str, exc: BaseException) -> ErrorInfo:
    return ErrorInfo(
        kind="user",
        type=type(exc).__name__,
        message=f"function {function!r} raised {type(exc).__name__}: {exc}",
        traceback="".join(traceback.format_exception(exc)),
    )


# -- the worker process -------------------------------------------------------------------


#: A reply up to this size is joined and sent at once.
_JOINED_BYTES = 64 * 1024


class _Connection:
    """The worker's end of the socket pair (blocking)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def send(self, reply: WorkReply, data: bytes = b"") -> None:
        pieces = encode_reply(reply, data)
        if sum(len(piece) for piece in pieces) <= _JOINED_BYTES:
            self.sock.sendall(b"".join(pieces))  # one system call, one wake-up of the executor
            return
        for piece in pieces:  # large values are not copied into one buffer
            if piece:
                self.sock.sendall(piece)

    def receive(self) -> Any:
        """The next request (a pickle: the executor is trusted, unlike what it runs)."""
        size, data_size = REQUEST_HEADER.unpack(self._read_exactly(REQUEST_HEADER.size))
        body = self._read_exactly(size)
        return decode_request(body, bytes(self._read_exactly(data_size)))

    def _read_exactly(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view, done = memoryview(buffer), 0
        while done < size:
            count = self.sock.recv_into(view[done:])
            if count == 0:
                raise EOFError("the executor closed the socket")
            done += count
        return buffer


def _reply(connection: _Connection, runner: TaskRunner, request: WorkRequest) -> None:
    """Run ``request`` and send its result (and ``started`` first, for a timed task)."""
    started_at = time.time()

    def on_start() -> None:
        if request.timed:  # only a task with a timeout needs it (one message less)
            connection.send(WorkReply(kind="started"))

    try:
        result = runner.run(request, on_start=on_start)
    except Exception as exc:  # a bug of ours, not of the user's code: keep the worker
        error = ErrorInfo(
            kind="platform", type=type(exc).__name__, message=f"executor worker error: {exc}"
        )
        result = TaskResult(error=error, started_at=started_at, finished_at=time.time())
    reply, data = result_reply(request.task.id, result, code_cached=runner.holds(request.code_key))
    connection.send(reply, data)


def _reply_batch(connection: _Connection, runner: TaskRunner, batch: list[WorkRequest]) -> None:
    """Run ``batch`` in one call and send each task's result, in order."""
    started_at = time.time()
    try:
        results = runner.run_batch(batch)
    except Exception as exc:  # a bug of ours, not of the user's code: keep the worker
        error = ErrorInfo(
            kind="platform", type=type(exc).__name__, message=f"executor worker error: {exc}"
        )
        results = [_failed(error, started_at) for _ in batch]
    for request, result in zip(batch, results, strict=True):
        cached = runner.holds(request.code_key)
        reply, data = result_reply(request.task.id, result, code_cached=cached)
        connection.send(reply, data)


def serve(connection: _Connection) -> None:
    """Run requests from the executor until ``None`` or the end of the stream."""
    runner = TaskRunner()
    connection.send(WorkReply(kind="ready"))
    while True:
        try:
            message = connection.receive()
        except (EOFError, OSError):
            return  # the executor is gone
        if message is None:
            return
        if isinstance(message, list) and runner.batch(message):  # one call, then each result
            _reply_batch(connection, runner, message)
            connection.send(WorkReply(kind="chunk-end"))
            continue
        if isinstance(message, list):  # a chunk: no timeouts, results streamed one by one
            # A chunk's turn on the worker lasts about CHUNK_TURN_SEC: the executor then
            # claims the rest again (a cancel stops them) and the worker is shared fairly.
            turn_ends = time.monotonic() + CHUNK_TURN_SEC
            for one in message:
                _reply(connection, runner, one)
                if time.monotonic() >= turn_ends:
                    break
            connection.send(WorkReply(kind="chunk-end"))
            continue
        _reply(connection, runner, message)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m services.executor.task_runner --fd N``: started by the worker pool only."""
    parser = argparse.ArgumentParser(description="an executor's worker process (internal)")
    parser.add_argument("--fd", type=int, required=True, help="the socket to the executor")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="console")
    parser.add_argument("--malloc-retain-mb", type=int, default=0, help="services.common.memory")
    parser.add_argument("--uid", type=int, help="switch to this user first (from root)")
    parser.add_argument("--gid", type=int, help="... and this group")
    args = parser.parse_args(argv)
    # The executor decides when its workers stop: a Ctrl-C or SIGTERM sent to the whole
    # process group must not kill tasks it is still waiting for.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.uid is not None:
        drop_privileges(args.uid, args.gid if args.gid is not None else args.uid)
    from services.common.event_loop import freeze_startup_objects
    from services.common.logging import configure_logging
    from services.common.memory import retain_freed_memory

    configure_logging(args.log_level, args.log_format, service="executor-worker")
    retain_freed_memory(args.malloc_retain_mb)  # a value's copies reuse pages (the executor's)
    freeze_startup_objects()  # user code's allocations are collected without scanning ours
    serve(_Connection(socket.socket(fileno=args.fd)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
