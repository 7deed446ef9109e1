"""Worker processes that run user functions, so the executor's event loop never does.

The pool keeps ``size`` worker processes, each running one task at a time. They are started
with the ``spawn`` method (a fork of a process running asyncio and aiokafka threads is not
safe) and talk to the executor over a Unix socket pair, one length-prefixed pickle per
message::

    executor                               worker (services.executor.task_runner)
        ── TaskMessage ──────────────────►  load code and inputs
        ◄───────────────────── "started" ─  (only with a timeout, which starts here)
                                            run the function, store outputs and logs
        ◄──────────── TaskFinishedEvent ──

A chunk (the elements of a fan-out, :meth:`WorkerPool.run_many`) is one round trip: the
worker gets the list of task messages, runs them one after another and streams each result
back as it completes, then an end marker. The per-task costs of a round trip (waiting for a
free worker, a wake-up of the worker and of the executor) are paid once per chunk::

        ── [TaskMessage, ...] ───────────►  for each: run it
        ◄──────────── TaskFinishedEvent ──  (one per task, as each completes)
        ◄─────────────────── "chunk-end" ─

The executor's side is an asyncio stream: waiting for a worker never blocks the loop (and
needs no thread), so heartbeats, Kafka and other tasks go on while a function computes, and a
message of megabytes (thousands of inline values) that arrives in pieces is simply read until
its length is complete; only the end of the stream (the process died) means a dead worker. A
task that runs past its
``timeout_sec`` gets its worker process killed and replaced and reports a user error of type
``TimeoutError``; a worker that dies under a task (segfault, OOM kill, ``os._exit``) is
replaced too and the task reports a ``platform`` error, retried without spending the user's
budget. The executor survives both. A worker that dies in the middle of a chunk keeps the
results it already sent; the tasks it had not finished report ``WorkerDied`` too.

Like every ``spawn`` user, a program that embeds the pool must guard its entry point with
``if __name__ == "__main__":`` (``python -m services.executor`` does).

The pool also owns the directory of its workers' shared :class:`.value_cache.ValueCache`
(created on start, removed on close): the outputs one worker stored, read back by another.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import pickle
import shutil
import signal
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from indexify.engine import ErrorInfo
from services.common.errors import ServiceError
from services.common.events import TaskFinishedEvent, TaskMessage
from services.common.logging import configure_logging, get_logger
from services.common.settings import InfraSettings

from .fairness import FairHandout
from .task_runner import TaskRunner, failure_event
from .value_cache import ValueCache, cache_directory

__all__ = ["WorkerPool", "WorkerStartError"]

_READY = "ready"
_STARTED = "started"
_CHUNK_END = "chunk-end"
CHUNK_TURN_SEC = 0.5  # a chunk's elements run on a worker this long before it yields
_SETUP_TIMEOUT_SEC = 600.0  # loading code and inputs of a task with a timeout
_log = get_logger(__name__)


class WorkerStartError(ServiceError):
    """A worker process could not be started (it died or did not answer while starting)."""


class _WorkerDied(Exception):
    def __init__(self, exitcode: int | None):
        super().__init__(f"exit code {exitcode}")
        self.exitcode = exitcode


#: Every message is its pickle's length (8 bytes, network order), then the pickle.
_HEADER = struct.Struct("!Q")


def _frame(message: Any) -> tuple[bytes, bytes]:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)), data


# -- inside the worker process ----------------------------------------------------------------


def _send_blocking(sock: socket.socket, message: Any) -> None:
    header, data = _frame(message)
    sock.sendall(header)
    sock.sendall(data)


def _receive_blocking(sock: socket.socket) -> Any:
    (size,) = _HEADER.unpack(_read_exactly(sock, _HEADER.size))
    return pickle.loads(_read_exactly(sock, size))


def _read_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view, done = memoryview(buffer), 0
    while done < size:
        count = sock.recv_into(view[done:])
        if count == 0:
            raise EOFError("the executor closed the socket")
        done += count
    return buffer


def _worker_main(
    sock: socket.socket,
    infra: InfraSettings,
    executor_id: str,
    max_outputs: int | None = None,
    values_dir: Path | None = None,
) -> None:
    """The worker process: run task messages from ``sock`` until ``None`` or end of stream."""
    # The executor decides when its workers stop: a Ctrl-C or SIGTERM sent to the whole
    # process group must not kill tasks it is still waiting for.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(infra.log_level, infra.log_format, service="executor-worker")
    values = ValueCache(values_dir) if values_dir is not None else None
    runner = TaskRunner(infra, executor_id, max_outputs=max_outputs, values=values)
    _send_blocking(sock, _READY)
    while True:
        try:
            message = _receive_blocking(sock)
        except (EOFError, OSError):
            return  # the executor is gone
        if message is None:
            return
        if isinstance(message, list):  # a chunk: no timeouts, results streamed one by one
            # A chunk's turn on the worker lasts about CHUNK_TURN_SEC: the executor then
            # claims the rest again (a cancel stops them) and the worker is shared fairly.
            turn_ends = time.monotonic() + CHUNK_TURN_SEC
            with runner.prefetched(message):
                for one in message:
                    _send_blocking(sock, _run_one(runner, one, _nothing, executor_id))
                    if time.monotonic() >= turn_ends:
                        break
            _send_blocking(sock, _CHUNK_END)
            continue
        # Only a task with a timeout needs to say when its function starts (one message less).
        on_start = (
            (lambda: _send_blocking(sock, _STARTED))
            if message.timeout_sec is not None
            else _nothing
        )
        _send_blocking(sock, _run_one(runner, message, on_start, executor_id))


def _run_one(
    runner: TaskRunner, message: TaskMessage, on_start: Callable[[], None], executor_id: str
) -> TaskFinishedEvent:
    started_at = time.time()
    try:
        return runner.run(message, on_start=on_start)
    except Exception as exc:  # a bug of ours, not of the user's code: keep the worker
        get_logger(__name__).exception("worker failed to run a task")
        error = ErrorInfo(
            kind="platform", type=type(exc).__name__, message=f"executor worker error: {exc}"
        )
        return failure_event(message, error, executor_id, started_at)


def _owner(message: TaskMessage) -> str:
    """Workers are shared fairly between (invocation, function) pairs: a reducer's steps do
    not wait behind its own fan-out's chunks, nor a small invocation behind a big one."""
    return f"{message.invocation_id}/{message.task.function}"


def _nothing() -> None:
    pass


def _ignore(event: TaskFinishedEvent) -> None:
    pass


def _died(function: str, exitcode: int | None) -> str:
    return (
        f"the worker process running {function!r} died (exit code {exitcode}); "
        "the task is retried without counting against its retries"
    )


# -- in the executor --------------------------------------------------------------------------


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, message: Any) -> None:
        header, data = _frame(message)
        try:
            self.writer.write(header)
            self.writer.write(data)
            await self.writer.drain()  # a large message waits here, not in a blocked loop
        except (ConnectionError, RuntimeError) as exc:  # RuntimeError: transport closed
            raise _WorkerDied(None) from exc

    async def receive(self, timeout: float | None) -> Any:
        """The next message; ``TimeoutError`` after ``timeout`` s, ``_WorkerDied`` when the
        stream ended (the process is gone)."""

        async def read() -> Any:
            header = await self.reader.readexactly(_HEADER.size)
            (size,) = _HEADER.unpack(header)
            return pickle.loads(await self.reader.readexactly(size))

        try:
            return await asyncio.wait_for(read(), timeout)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise _WorkerDied(None) from exc

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()


class WorkerPool:
    """``size`` worker processes: ``async with WorkerPool(...) as pool: await pool.run(msg)``."""

    def __init__(
        self,
        infra: InfraSettings,
        executor_id: str,
        size: int,
        *,
        start_timeout_sec: float = 60.0,
        stop_timeout_sec: float = 5.0,
        max_outputs: int | None = None,
    ):
        if size < 1:
            raise ValueError(f"a worker pool needs at least one worker, got size={size}")
        self.infra = infra
        self.executor_id = executor_id
        self.size = size
        self.start_timeout_sec = start_timeout_sec
        self.stop_timeout_sec = stop_timeout_sec
        self.max_outputs = max_outputs
        self.values_dir: Path | None = None  # the workers' shared ValueCache, while started
        self._context = multiprocessing.get_context("spawn")
        self._workers: set[_Worker] = set()
        self._idle: FairHandout[_Worker] = FairHandout()
        self._spawners: set[asyncio.Task[None]] = set()
        self._closing = False
        self.busy = 0
        #: Round trips to workers (one per :meth:`run`, one per :meth:`run_many` chunk).
        self.dispatches = 0

    async def __aenter__(self) -> WorkerPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self.values_dir = cache_directory(self.executor_id)
        try:
            workers = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        except BaseException:
            await self.close()
            raise
        for worker in workers:
            self._idle.put_nowait(worker)
        _log.info("worker processes started", workers=self.size)

    # -- running tasks ------------------------------------------------------------------

    async def run(
        self,
        message: TaskMessage,
        still_wanted: Callable[[], Awaitable[bool]] | None = None,
    ) -> TaskFinishedEvent | None:
        """Run ``message`` on the next free worker; failures come back as the event.

        When the task had to wait for a worker, ``still_wanted`` is asked once one is free
        (e.g. the invocation was cancelled meanwhile): ``False`` returns None without running.
        Workers are shared fairly between invocations (:class:`.fairness.FairHandout`).
        """
        owner = _owner(message)
        check = still_wanted if self._idle.empty() else None
        worker = await self._acquire(owner, check)
        if worker is None:
            return None
        self.busy += 1
        try:
            return await self._run_on(worker, message)
        finally:
            self.busy -= 1
            self._idle.release(owner)

    async def _acquire(
        self, owner: str, check: Callable[[], Awaitable[bool]] | None
    ) -> _Worker | None:
        """The next free worker for ``owner`` (fairly, see :class:`.fairness.FairHandout`),
        once ``check`` (if given) said the work is still wanted; None (the worker handed
        back) when it is not. The caller releases ``owner`` when done with the worker."""
        worker = await self._idle.get(owner)
        if check is None:
            return worker
        try:
            wanted = await check()
        except BaseException:
            self._idle.put_nowait(worker)
            self._idle.release(owner)
            raise
        if not wanted:
            self._idle.put_nowait(worker)
            self._idle.release(owner)
            return None
        return worker

    async def run_many(
        self,
        messages: Sequence[TaskMessage],
        still_wanted: Callable[[Sequence[TaskMessage]], Awaitable[Sequence[TaskMessage]]]
        | None = None,
        on_result: Callable[[TaskFinishedEvent], None] | None = None,
        *,
        always_ask: bool = False,
    ) -> list[TaskFinishedEvent]:
        """Run ``messages`` one after another on ONE free worker, in one round trip.

        Each result is passed to ``on_result`` as soon as the worker reports it (the caller
        can publish it while the rest still run); all are returned, in order. If the worker
        dies mid-chunk, the results it sent stay, the task it was running gets a
        ``platform`` ``WorkerDied`` failure, and the tasks after it (which never ran) run on
        the next free worker. A chunk holds a worker for about :data:`CHUNK_TURN_SEC`, then
        waits for one again with its remaining tasks. When the chunk had to wait for a worker,
        ``still_wanted(messages)`` returns the ones to run (nothing wanted: returns ``[]``
        without running); with ``always_ask`` it is asked whenever a worker is free (the
        executor claims a chunk's tasks only then, so no lease is held while waiting). Tasks
        with a timeout must go through :meth:`run` (a timeout kills the worker, and with it
        every task of a chunk).
        """
        if any(m.timeout_sec is not None for m in messages):
            raise ValueError("run_many runs tasks without a timeout; run timed tasks with run()")
        if not messages:
            return []
        owner = _owner(messages[0])
        ask = still_wanted is not None and (always_ask or self._idle.empty())
        results: list[TaskFinishedEvent] = []
        todo: Sequence[TaskMessage] = messages
        while todo:

            async def wanted() -> bool:
                nonlocal todo
                assert still_wanted is not None
                todo = list(await still_wanted(todo))
                return bool(todo)

            worker = await self._acquire(owner, wanted if ask else None)
            if worker is None:
                break
            self.busy += 1
            try:
                todo = await self._run_chunk_on(worker, todo, on_result or _ignore, results)
            finally:
                self.busy -= 1
                self._idle.release(owner)
            # The chunk's turn ended, or the worker died under one task: the tasks after it
            # never ran, so they are not failures (a task that kills its worker must not drag
            # its siblings' retries down with it). They wait for a worker again, fairly
            # among the others, and (``always_ask``) are claimed again: a cancel stops them.
            ask = still_wanted is not None and always_ask
        return results

    async def _run_chunk_on(
        self,
        worker: _Worker,
        messages: Sequence[TaskMessage],
        on_result: Callable[[TaskFinishedEvent], None],
        results: list[TaskFinishedEvent],
    ) -> Sequence[TaskMessage]:
        """Run ``messages`` on ``worker``, appending their results; returns the ones that
        never ran: the chunk's turn ended (:data:`CHUNK_TURN_SEC`), or the worker died under
        an earlier one (which reports ``WorkerDied``)."""
        started_at = time.time()
        done = 0
        self.dispatches += 1
        try:
            await worker.send(list(messages))
            reply = await worker.receive(None)
            while reply != _CHUNK_END and done < len(messages):
                message = messages[done]
                if not isinstance(reply, TaskFinishedEvent) or reply.task_id != message.task.id:
                    raise ServiceError(f"unexpected reply from a worker process: {reply!r}")
                results.append(reply)
                done += 1
                on_result(reply)
                reply = await worker.receive(None)
        except (_WorkerDied, OSError):
            exitcode = await self._reap(worker)
            culprit = messages[done]  # the task it was running
            error = ErrorInfo(
                kind="platform",
                type="WorkerDied",
                message=_died(culprit.task.function, exitcode),
            )
            event = failure_event(culprit, error, self.executor_id, started_at)
            results.append(event)
            on_result(event)
            return messages[done + 1 :]
        except BaseException:  # cancelled (shutdown) or confused: the worker is mid-chunk
            self._replace(worker)
            raise
        if reply != _CHUNK_END:
            self._replace(worker)
            raise ServiceError(f"unexpected reply from a worker process: {reply!r}")
        self._idle.put_nowait(worker)
        return messages[done:]  # the turn ended before these ran

    async def _reap(self, worker: _Worker) -> int | None:
        """The exit code of a worker whose stream ended; it is replaced."""
        # The socket closes a moment before the process can be reaped: wait for its code.
        await asyncio.to_thread(worker.process.join, 1.0)
        exitcode = worker.process.exitcode
        self._replace(worker)
        return exitcode

    async def _run_on(self, worker: _Worker, message: TaskMessage) -> TaskFinishedEvent:
        started_at = time.time()
        function = message.task.function
        running = False
        self.dispatches += 1
        try:
            await worker.send(message)
            if message.timeout_sec is None:
                reply = await worker.receive(None)
            else:
                reply = await worker.receive(_SETUP_TIMEOUT_SEC)
                if reply == _STARTED:
                    running = True
                    reply = await worker.receive(message.timeout_sec)
        except TimeoutError:
            self._replace(worker)
            if running:
                error = ErrorInfo(
                    kind="user",
                    type="TimeoutError",
                    message=f"function {function!r} exceeded its timeout of "
                    f"{message.timeout_sec:g} s",
                )
            else:
                error = ErrorInfo(
                    kind="platform",
                    type="TimeoutError",
                    message=f"loading the code and inputs of {function!r} took over "
                    f"{_SETUP_TIMEOUT_SEC:g} s; is MinIO answering?",
                )
            return failure_event(message, error, self.executor_id, started_at)
        except (_WorkerDied, OSError):
            exitcode = await self._reap(worker)
            error = ErrorInfo(kind="platform", type="WorkerDied", message=_died(function, exitcode))
            return failure_event(message, error, self.executor_id, started_at)
        except BaseException:  # cancelled (shutdown): the worker is mid-task, retire it
            self._replace(worker)
            raise
        self._idle.put_nowait(worker)
        if not isinstance(reply, TaskFinishedEvent):
            raise ServiceError(f"unexpected reply from a worker process: {reply!r}")
        return reply

    # -- starting and replacing workers --------------------------------------------------

    async def _spawn(self) -> _Worker:
        parent_sock, child_sock = socket.socketpair()
        process = self._context.Process(
            target=_worker_main,
            args=(child_sock, self.infra, self.executor_id, self.max_outputs, self.values_dir),
            name=f"indexify-worker-{self.executor_id}",
        )
        try:
            await asyncio.to_thread(process.start)
        finally:
            child_sock.close()  # the child has its copy: the end of stream now means it died
        reader, writer = await asyncio.open_unix_connection(sock=parent_sock)
        worker = _Worker(process=process, reader=reader, writer=writer)
        self._workers.add(worker)
        try:
            reply = await worker.receive(self.start_timeout_sec)
        except (TimeoutError, _WorkerDied) as exc:
            await self._stop(worker, kill=True)
            raise WorkerStartError(
                f"a worker process did not start within {self.start_timeout_sec:g} s ({exc!r}); "
                "its stderr says why (is the executor's Python environment complete?)"
            ) from exc
        if reply != _READY:
            await self._stop(worker, kill=True)
            raise WorkerStartError(f"a worker process answered {reply!r} instead of ready")
        return worker

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` (it is mid-task or broken) and start another in the background."""
        with contextlib.suppress(OSError, ValueError):
            worker.process.kill()
        task = asyncio.create_task(self._respawn(worker))
        self._spawners.add(task)
        task.add_done_callback(self._spawners.discard)

    async def _respawn(self, old: _Worker) -> None:
        await self._stop(old, kill=True)
        delay = 0.5
        while not self._closing:
            try:
                worker = await self._spawn()
            except WorkerStartError as exc:
                _log.error("worker process failed to start; retrying", error=str(exc), delay=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if self._closing:
                await self._stop(worker, kill=False)
            else:
                self._idle.put_nowait(worker)
                _log.info("worker process replaced", pid=worker.process.pid)
            return

    async def _stop(self, worker: _Worker, *, kill: bool) -> None:
        process = worker.process
        if not kill:
            with contextlib.suppress(_WorkerDied, OSError, TimeoutError):
                await asyncio.wait_for(worker.send(None), self.stop_timeout_sec)
            await asyncio.to_thread(process.join, self.stop_timeout_sec)
        if process.is_alive():
            process.kill()
        await asyncio.to_thread(process.join, self.stop_timeout_sec)
        await worker.close()
        with contextlib.suppress(ValueError):
            process.close()
        self._workers.discard(worker)

    async def close(self) -> None:
        """Stop every worker: idle ones finish, busy ones (the caller gave up) are killed."""
        self._closing = True
        for task in list(self._spawners):
            task.cancel()
        await asyncio.gather(*self._spawners, return_exceptions=True)
        idle: set[_Worker] = set()
        while not self._idle.empty():
            idle.add(self._idle.get_nowait())
        await asyncio.gather(
            *(self._stop(w, kill=w not in idle) for w in list(self._workers)),
            return_exceptions=True,
        )
        if self.values_dir is not None:
            shutil.rmtree(self.values_dir, ignore_errors=True)
            self.values_dir = None
