"""Worker processes that run user functions, so the executor's event loop never does.

The pool keeps ``size`` worker processes (:mod:`.worker_process`: a scrubbed environment,
an unprivileged user where the OS allows, no credentials), each running one task at a time.
The executor does all the I/O for them (:mod:`.task_data`): it reads a task's code and
inputs, sends them over the worker's Unix socket pair (:mod:`.worker_wire`: pickles in, JSON
and raw bytes out, never a pickle from a worker), and stores the outputs and logs that come
back::

    executor                                      worker (services.executor.task_runner)
        read code (once per worker) and inputs
        ── WorkRequest (code?, inputs) ─────────►  load the code (once)
        ◄────────────────────────────── started ─  (only with a timeout, which starts here)
                                                   run the function
        ◄─────────── result (outputs, logs) ─────
        store outputs and logs, build the TaskFinishedEvent

A chunk (the elements of a fan-out, :meth:`WorkerPool.run_many`) is one round trip: its
inputs are read together (one GET of a covering range, :meth:`.task_data.TaskData.prefetch`),
the worker gets the list of requests, runs them one after another and streams each result
back as it completes, then an end marker. The per-task costs of a round trip (waiting for a
free worker, a wake-up of the worker and of the executor) are paid once per chunk::

        ── [WorkRequest, ...] ──────────────────►  for each: run it
        ◄────────────────────────────── result ─  (one per task, as each completes)
        ◄──────────────────────────── chunk-end ─

The executor's side is an asyncio stream: waiting for a worker never blocks the loop (and
needs no thread), so heartbeats, Kafka and other tasks go on while a function computes, and a
message of megabytes that arrives in pieces is simply read until its length is complete; only
the end of the stream (the process died) means a dead worker. MinIO reads and writes run in
threads. A task that runs past its ``timeout_sec`` gets its worker process killed and
replaced and reports a user error of type ``TimeoutError``; a worker that dies under a task
(segfault, OOM kill, ``os._exit``) or sends something that is not a reply is replaced too and
the task reports a ``platform`` error, retried without spending the user's budget. The
executor survives both. A worker that dies in the middle of a chunk keeps the results it
already sent; the tasks it had not finished report ``WorkerDied`` too. A cancel stops the
workers running the invocation's tasks (:meth:`WorkerPool.cancel`, asked by
:class:`.cancels.CancelWatch`): each is killed and replaced, and its task reports an error
of type ``Cancelled``.

The pool also owns the directory of the executor's :class:`.value_cache.ValueCache` (created
on start, private to the executor, removed on close): outputs stored here, read back by the
next step on this executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from indexify.engine import CANCELLED_ERROR_TYPE, ErrorInfo
from indexify.timeouts import timeout_message
from services.common.blobs import BlobStore
from services.common.concurrency import cancel_and_wait
from services.common.errors import ServiceError
from services.common.events import TaskFinishedEvent, TaskMessage
from services.common.logging import get_logger
from services.common.lru import Lru
from services.common.names import Names
from services.common.settings import InfraSettings

from .fairness import FairHandout
from .metrics import observe_task
from .task_data import TaskData, TaskFailure, failure_event
from .task_runner import CHUNK_TURN_SEC
from .value_cache import ValueCache, cache_directory
from .worker_process import WorkerDied, WorkerProcess, worker_identity
from .worker_wire import WireError, WorkReply, WorkRequest, describe

__all__ = ["CHUNK_TURN_SEC", "FRAME_TASKS", "QUICK_SEC", "WorkerPool", "WorkerStartError"]

_SETUP_TIMEOUT_SEC = 600.0  # loading the code of a task with a timeout
#: A run that gets a worker takes up to this many waiting tasks in all to it, in one frame.
FRAME_TASKS = 8
#: Only tasks of functions whose recent runs here took at most this long on average (and
#: without a timeout) share a frame: a frame's tasks run one after another.
QUICK_SEC = 0.005
_DURATION_WEIGHT = 0.2  # of a run's duration in its function's moving average
_FUNCTIONS_TIMED = 1024
_log = get_logger(__name__)


class WorkerStartError(ServiceError):
    """A worker process could not be started (it died or did not answer while starting)."""


def _owner(message: TaskMessage) -> str:
    """Workers are shared fairly between (invocation, function) pairs: a reducer's steps do
    not wait behind its own fan-out's chunks, nor a small invocation behind a big one."""
    return f"{message.invocation_id}/{message.task.function}"


def _ignore(event: TaskFinishedEvent) -> None:
    pass


def _again(riders: list[_Rider]) -> None:
    """Riders whose tasks did not run (their frame ended first) wait for a worker again."""
    for rider in riders:
        if not rider.outcome.done():
            rider.outcome.set_result(_AGAIN)


def _cancelled(function: str) -> ErrorInfo:
    return ErrorInfo(
        kind="permanent",
        type=CANCELLED_ERROR_TYPE,
        message=f"the invocation was cancelled while {function!r} ran: its worker process "
        "was stopped",
    )


def _died(function: str, exitcode: int | None) -> str:
    return (
        f"the worker process running {function!r} died (exit code {exitcode}); "
        "the task is retried without counting against its retries"
    )


class _Again:
    """A rider's outcome when its task never ran in the frame: it waits for a worker again."""


_AGAIN = _Again()


@dataclass(eq=False)
class _Rider:
    """A task waiting for a worker that a run getting one may take along in its frame."""

    message: TaskMessage
    check: Callable[[], Awaitable[bool]] | None
    #: set once the task may run (a chain's next step: when its claim took the lease); a
    #: task in a frame cannot be stopped alone, so only such a task rides
    claimed: asyncio.Event | None
    outcome: asyncio.Future[TaskFinishedEvent | _Again | None]
    taken: bool = False


@dataclass
class _Prepared:
    """One message of a chunk: its request, or the event of its failure to prepare."""

    message: TaskMessage
    request: WorkRequest | None = None
    failure: TaskFinishedEvent | None = None
    read_sec: float | None = None  # how long reading its inputs (and code) took


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
        worker_user: str = "nobody",
        worker_group: str = "",
    ):
        if size < 1:
            raise ValueError(f"a worker pool needs at least one worker, got size={size}")
        self.infra = infra
        self.executor_id = executor_id
        self.size = size
        self.start_timeout_sec = start_timeout_sec
        self.stop_timeout_sec = stop_timeout_sec
        self.max_outputs = max_outputs
        self.identity = worker_identity(worker_user, worker_group)
        self.values_dir: Path | None = None  # the executor's ValueCache, while started
        self.data: TaskData | None = None  # while started
        self._workers: set[WorkerProcess] = set()
        self._idle: FairHandout[WorkerProcess, _Rider] = FairHandout()
        self._spawners: set[asyncio.Task[None]] = set()
        self._closing = False
        #: busy worker -> the invocations of the tasks it runs
        self._serving: dict[WorkerProcess, set[str]] = {}
        #: killed by a cancel (of that invocation), not replaced yet
        self._stopped: dict[WorkerProcess, str] = {}
        #: (namespace, graph, function) -> moving average of its runs' seconds here
        self._durations: Lru[tuple[str, str, str], float] = Lru(_FUNCTIONS_TIMED)
        self.busy = 0
        #: Round trips to workers (one per :meth:`run` or frame, one per :meth:`run_many`
        #: chunk).
        self.dispatches = 0
        #: Tasks that rode along in another run's frame.
        self.riders = 0

    async def __aenter__(self) -> WorkerPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self.values_dir = cache_directory(self.executor_id)
        self.data = TaskData(
            BlobStore(self.infra),
            Names(self.infra.prefix),
            self.executor_id,
            max_outputs=self.max_outputs,
            values=ValueCache(self.values_dir),
        )
        try:
            workers = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        except BaseException:
            await self.close()
            raise
        for worker in workers:
            self._idle.put_nowait(worker)
        _log.info(
            "worker processes started",
            workers=self.size,
            uid=self.identity.uid if self.identity.uid is not None else "executor's",
        )

    # -- running tasks ------------------------------------------------------------------

    @property
    def idle_workers(self) -> int:
        """How many workers are free now (tasks asked to run would start at once)."""
        return self._idle.available()

    def serving(self) -> set[str]:
        """The invocations whose tasks run on workers now."""
        return set().union(*self._serving.values())

    def cancel(self, invocation_id: str) -> int:
        """Stop the workers running tasks of ``invocation_id`` (it was cancelled): each is
        killed (then replaced) and its task reports an error of type ``Cancelled``.
        Returns how many were stopped."""
        stopped = 0
        for worker, serving in list(self._serving.items()):
            if invocation_id in serving and worker not in self._stopped:
                self._stopped[worker] = invocation_id
                worker.kill()
                stopped += 1
                _log.info(
                    "worker process stopped: its invocation was cancelled",
                    invocation=invocation_id,
                    pid=worker.pid,
                )
        return stopped

    async def run(
        self,
        message: TaskMessage,
        still_wanted: Callable[[], Awaitable[bool]] | None = None,
        *,
        always_ask: bool = False,
        claimed: asyncio.Event | None = None,
    ) -> TaskFinishedEvent | None:
        """Run ``message`` on the next free worker; failures come back as the event.

        When the task had to wait for a worker (or ``always_ask``), ``still_wanted`` is asked
        once one is free (e.g. the invocation was cancelled meanwhile): ``False`` returns
        None without running. Workers are shared fairly between invocations
        (:class:`.fairness.FairHandout`).

        Quick tasks share round trips while they wait: the run that gets a worker takes up
        to :data:`FRAME_TASKS` - 1 waiting tasks along (each asked ``still_wanted`` first,
        together), and the worker runs them one after another in one frame, as a chunk's
        (:data:`QUICK_SEC`; never a task with a timeout, nor one whose ``claimed`` is not
        set yet: a task of a frame cannot be stopped alone). A task that never ran in its
        frame (the worker died under an earlier one, or its turn ended) waits again.
        """
        owner = _owner(message)
        check = still_wanted if always_ask or self._idle.empty() else None
        while True:
            rider = None
            if self._quick(message):
                loop = asyncio.get_running_loop()
                rider = _Rider(message, check, claimed, loop.create_future())
            worker = await self._acquire(owner, check, rider)
            if rider is not None and rider.taken:
                outcome = await self._ride(owner, rider)
                if isinstance(outcome, _Again):
                    check = still_wanted  # it waited: ask again when a worker is free
                    continue
                return outcome
            if worker is None:
                return None
            riders = self._take_riders() if rider is not None else []
            if riders:
                return await self._lead(worker, owner, message, riders)
            self.busy += 1
            self._serving[worker] = {message.invocation_id}
            try:
                event = await self._run_on(worker, message)
                self._observe(message, event)
                return event
            finally:
                self._serving.pop(worker, None)
                self.busy -= 1
                self._idle.release(owner)

    async def _acquire(
        self,
        owner: str,
        check: Callable[[], Awaitable[bool]] | None,
        rider: _Rider | None = None,
    ) -> WorkerProcess | None:
        """The next free worker for ``owner`` (fairly, see :class:`.fairness.FairHandout`),
        once ``check`` (if given) said the work is still wanted; None (the worker handed
        back) when it is not, or when another run took ``rider`` along (``rider.taken``).
        The caller releases ``owner`` when done with the worker (or the ride)."""
        if rider is None:
            worker = await self._idle.get(owner)
        else:
            try:
                got = await self._idle.get_or_ride(owner, rider)
            except asyncio.CancelledError:
                if rider.taken:  # taken along just before the cancel: the frame drops it
                    rider.outcome.cancel()
                    self._idle.release(owner)
                raise
            if got is None:
                return None
            worker = got
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

    # -- frames: quick tasks taken along ---------------------------------------------------

    def _quick(self, message: TaskMessage) -> bool:
        """Whether ``message`` may share a frame (:data:`QUICK_SEC`): no timeout, not part
        of a batch, every input inline (a frame reads nothing from MinIO, holds no large
        value), and its function quick here."""
        if message.timeout_sec is not None or message.batch is not None:
            return False
        if any(values.inline is None for values in message.inputs):
            return False
        if message.accumulator is not None and message.accumulator.inline is None:
            return False
        task = message.task
        average = self._durations.get((message.namespace, message.graph, task.function))
        return average is not None and average <= QUICK_SEC

    def _can_ride(self, rider: _Rider) -> bool:
        return (rider.claimed is None or rider.claimed.is_set()) and self._quick(rider.message)

    def _take_riders(self) -> list[_Rider]:
        riders = self._idle.take_along(self._can_ride, FRAME_TASKS - 1)
        for rider in riders:
            rider.taken = True
        return riders

    async def _ride(self, owner: str, rider: _Rider) -> TaskFinishedEvent | _Again | None:
        """The outcome of a task another run took along (see :meth:`_lead`)."""
        try:
            return await rider.outcome
        except asyncio.CancelledError:
            rider.outcome.cancel()  # not sent yet: the frame leaves it out; else ignored
            raise
        finally:
            self._idle.release(owner)

    async def _lead(
        self, worker: WorkerProcess, owner: str, message: TaskMessage, riders: list[_Rider]
    ) -> TaskFinishedEvent:
        """Run ``message`` and the ``riders`` still wanted in one frame on ``worker``; each
        rider's outcome is set (its event, None when not wanted, or :data:`_AGAIN`)."""
        aboard: dict[tuple[str, str], _Rider] = {}
        try:
            asked = [r for r in riders if r.check is not None]
            answers = await asyncio.gather(
                *(r.check() for r in asked if r.check is not None), return_exceptions=True
            )
            verdicts = dict(zip(map(id, asked), answers, strict=True))
            for rider in riders:
                answer = verdicts.get(id(rider), True)
                if rider.outcome.done():  # cancelled meanwhile
                    continue
                if isinstance(answer, BaseException):
                    rider.outcome.set_exception(answer)
                elif not answer:
                    rider.outcome.set_result(None)
                else:
                    aboard[(rider.message.invocation_id, rider.message.task.id)] = rider
        except BaseException:  # cancelled while asking: nothing ran yet
            _again(riders)
            self._idle.put_nowait(worker)
            self._idle.release(owner)
            raise
        frame = [message, *(r.message for r in aboard.values() if not r.outcome.done())]
        self.riders += len(frame) - 1
        own: list[TaskFinishedEvent] = []

        def deliver(event: TaskFinishedEvent) -> None:
            rider = aboard.get((event.invocation_id, event.task_id or ""))
            if rider is None:
                own.append(event)
            elif not rider.outcome.done():
                rider.outcome.set_result(event)

        self.busy += 1
        self._serving[worker] = {m.invocation_id for m in frame}
        try:
            await self._run_chunk_on(worker, frame, deliver, [])
        finally:
            self._serving.pop(worker, None)
            self.busy -= 1
            self._idle.release(owner)
            _again(list(aboard.values()))  # those that never ran (or it was cancelled)
        # first in its frame, it always ends with an event: its result, or the failure of its
        # preparation or of its worker (the frame raises only when cancelled)
        (event,) = own
        return event

    def _observe(self, message: TaskMessage, event: TaskFinishedEvent) -> None:
        """Count the run (metrics) and keep its function's moving average (frames)."""
        observe_task(message, event)
        finished = event.finished
        seconds = max(0.0, finished.finished_at - finished.started_at)
        key = (message.namespace, message.graph, message.task.function)
        average = self._durations.get(key)
        if average is not None:
            seconds = average + _DURATION_WEIGHT * (seconds - average)
        self._durations.put(key, seconds)

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
            self._serving[worker] = {todo[0].invocation_id}
            try:
                todo = await self._run_chunk_on(worker, todo, on_result or _ignore, results)
            finally:
                self._serving.pop(worker, None)
                self.busy -= 1
                self._idle.release(owner)
            # The chunk's turn ended, or the worker died under one task: the tasks after it
            # never ran, so they are not failures (a task that kills its worker must not drag
            # its siblings' retries down with it). They wait for a worker again, fairly
            # among the others, and (``always_ask``) are claimed again: a cancel stops them.
            ask = still_wanted is not None and always_ask
        return results

    # -- one worker round trip ----------------------------------------------------------

    def _data(self) -> TaskData:
        if self.data is None:
            raise ServiceError("the worker pool is not started (use `async with WorkerPool`)")
        return self.data

    async def _prepared(
        self, worker: WorkerProcess, messages: Sequence[TaskMessage]
    ) -> list[_Prepared]:
        """:meth:`_prepare`, on the event loop when it touches only memory (a thread hop
        costs more than such a call), else in a thread."""
        store = self._data()
        if all(store.request_is_local(m, worker.codes) for m in messages):
            return self._prepare(worker, messages)
        return await asyncio.to_thread(self._prepare, worker, messages)

    def _prepare(self, worker: WorkerProcess, messages: Sequence[TaskMessage]) -> list[_Prepared]:
        """Requests for ``messages`` on ``worker`` (may do blocking I/O: see :meth:`_prepared`)."""
        data = self._data()
        prefetched = data.prefetch(messages) if len(messages) > 1 else None
        prepared = []
        for message in messages:
            reading = time.monotonic()
            try:
                request = data.request(message, worker.codes, prefetched)
            except TaskFailure as failure:
                event = failure_event(message, failure.error, self.executor_id, time.time())
                prepared.append(_Prepared(message, failure=event))
            else:
                read_sec = time.monotonic() - reading
                prepared.append(_Prepared(message, request=request, read_sec=read_sec))
        return prepared

    async def _finish(
        self, worker: WorkerProcess, item: _Prepared, reply: WorkReply, data: bytes
    ) -> TaskFinishedEvent:
        """The event for ``item`` from its worker's ``reply`` (outputs stored first)."""
        request, message = item.request, item.message
        assert request is not None
        if reply.kind != "result" or reply.task_id != message.task.id:
            raise WireError(f"unexpected reply from a worker process: {describe(reply)}")
        worker.codes.update(request.code_key, reply.code_cached)
        result = reply.result(data)
        store = self._data()
        if store.finish_is_local(result):
            return store.finish(message, result, input_read_sec=item.read_sec)
        return await asyncio.to_thread(store.finish, message, result, input_read_sec=item.read_sec)

    async def _run_chunk_on(
        self,
        worker: WorkerProcess,
        messages: Sequence[TaskMessage],
        on_result: Callable[[TaskFinishedEvent], None],
        results: list[TaskFinishedEvent],
    ) -> Sequence[TaskMessage]:
        """Run ``messages`` on ``worker``, appending their results; returns the ones that
        never ran: the chunk's turn ended (:data:`CHUNK_TURN_SEC`), or the worker died under
        an earlier one (which reports ``WorkerDied``)."""
        started_at = time.time()
        self.dispatches += 1
        pending: deque[_Prepared] = deque()

        def emit(message: TaskMessage, event: TaskFinishedEvent) -> None:
            self._observe(message, event)
            results.append(event)
            on_result(event)

        def flush_failures() -> None:  # messages that failed before reaching the worker
            while pending and pending[0].request is None:
                failed = pending.popleft()
                assert failed.failure is not None
                emit(failed.message, failed.failure)

        try:
            pending.extend(await self._prepared(worker, messages))
            requests = [p.request for p in pending if p.request is not None]
            flush_failures()
            if requests:
                await worker.send(requests)
                reply, data = await worker.receive(None)
                while reply.kind != "chunk-end" and pending:
                    item = pending.popleft()
                    emit(item.message, await self._finish(worker, item, reply, data))
                    flush_failures()
                    reply, data = await worker.receive(None)
                if reply.kind != "chunk-end":
                    raise WireError(f"unexpected reply from a worker process: {describe(reply)}")
        except (WorkerDied, WireError, OSError) as exc:
            stopped_for = self._stopped.get(worker)  # the invocation a cancel stopped it for
            exitcode = await self._reap(worker)
            if not pending:  # every task reported: only the end marker went wrong
                return []
            culprit = pending.popleft().message  # the task it was running
            message = _died(culprit.task.function, exitcode)
            if isinstance(exc, WireError):
                message = f"{exc}; the worker process was replaced"
            error = ErrorInfo(kind="platform", type="WorkerDied", message=message)
            if stopped_for == culprit.invocation_id:
                error = _cancelled(culprit.task.function)
            emit(culprit, failure_event(culprit, error, self.executor_id, started_at))
            return [p.message for p in pending]
        except BaseException:  # cancelled (shutdown) or confused: the worker is mid-chunk
            self._replace(worker)
            raise
        for item in pending:  # the turn ended before these ran: code they carried never
            if item.request is not None and item.request.code is not None:  # reached it
                worker.codes.update(item.request.code_key, cached=False)
        self._release(worker)
        return [p.message for p in pending]

    async def _reap(self, worker: WorkerProcess) -> int | None:
        """The exit code of a worker whose stream ended; it is replaced."""
        # The socket closes a moment before the process can be reaped: wait for its code.
        exitcode = await worker.join(1.0)
        self._replace(worker)
        return exitcode

    def _release(self, worker: WorkerProcess) -> None:
        """``worker`` is done with its task: idle again, unless a cancel stopped it meanwhile
        (it answered before it was killed): then it is replaced."""
        if worker in self._stopped:
            self._replace(worker)
        else:
            self._idle.put_nowait(worker)

    async def _run_on(self, worker: WorkerProcess, message: TaskMessage) -> TaskFinishedEvent:
        started_at = time.time()
        function = message.task.function
        running = False
        self.dispatches += 1
        try:
            (prepared,) = await self._prepared(worker, [message])
            if prepared.request is None:
                assert prepared.failure is not None
                self._release(worker)
                return prepared.failure
            await worker.send(prepared.request)
            if message.timeout_sec is None:
                reply, data = await worker.receive(None)
            else:
                reply, data = await worker.receive(_SETUP_TIMEOUT_SEC)
                if reply.kind == "started":
                    running = True
                    reply, data = await worker.receive(message.timeout_sec)
            event = await self._finish(worker, prepared, reply, data)
        except TimeoutError:
            self._replace(worker)
            if running:
                error = ErrorInfo(
                    kind="user",
                    type="TimeoutError",
                    message=timeout_message(function, message.timeout_sec or 0.0),
                )
            else:
                error = ErrorInfo(
                    kind="platform",
                    type="TimeoutError",
                    message=f"loading the code of {function!r} took over {_SETUP_TIMEOUT_SEC:g} s",
                )
            return failure_event(message, error, self.executor_id, started_at)
        except (WorkerDied, WireError, OSError) as exc:
            stopped = worker in self._stopped
            exitcode = await self._reap(worker)
            if stopped:
                return failure_event(message, _cancelled(function), self.executor_id, started_at)
            text = _died(function, exitcode)
            if isinstance(exc, WireError):
                text = f"{exc}; the worker process was replaced"
            error = ErrorInfo(kind="platform", type="WorkerDied", message=text)
            return failure_event(message, error, self.executor_id, started_at)
        except BaseException:  # cancelled (shutdown): the worker is mid-task, retire it
            self._replace(worker)
            raise
        self._release(worker)
        return event

    # -- starting and replacing workers --------------------------------------------------

    async def _spawn(self) -> WorkerProcess:
        try:
            worker = await WorkerProcess.start(
                self.identity,
                self.infra.log_level,
                self.infra.log_format,
                malloc_retain_mb=self.infra.malloc_retain_mb,
            )
        except OSError as exc:
            raise WorkerStartError(f"cannot start a worker process: {exc}") from exc
        self._workers.add(worker)
        try:
            reply, _ = await worker.receive(self.start_timeout_sec)
        except (TimeoutError, WorkerDied, WireError) as exc:
            await self._stop(worker, kill=True)
            raise WorkerStartError(
                f"a worker process did not start within {self.start_timeout_sec:g} s ({exc!r}); "
                "its stderr says why (is the executor's Python environment complete, and "
                "readable by the worker user?)"
            ) from exc
        if reply.kind != "ready":
            await self._stop(worker, kill=True)
            raise WorkerStartError(f"a worker process answered {reply.kind!r} instead of ready")
        return worker

    def _replace(self, worker: WorkerProcess) -> None:
        """Kill ``worker`` (it is mid-task or broken) and start another in the background."""
        self._stopped.pop(worker, None)
        worker.kill()
        task = asyncio.create_task(self._respawn(worker))
        self._spawners.add(task)
        task.add_done_callback(self._spawners.discard)

    async def _respawn(self, old: WorkerProcess) -> None:
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
                _log.info("worker process replaced", pid=worker.pid)
            return

    async def _stop(self, worker: WorkerProcess, *, kill: bool) -> None:
        if not kill:
            with contextlib.suppress(WorkerDied, OSError, TimeoutError):
                await asyncio.wait_for(worker.send(None), self.stop_timeout_sec)
            await worker.join(self.stop_timeout_sec)
        if worker.alive():
            worker.kill()
        await worker.join(self.stop_timeout_sec)
        await worker.close()
        self._workers.discard(worker)

    async def close(self) -> None:
        """Stop every worker: idle ones finish, busy ones (the caller gave up) are killed."""
        self._closing = True
        await cancel_and_wait(list(self._spawners))
        idle: set[WorkerProcess] = set()
        while not self._idle.empty():
            idle.add(self._idle.get_nowait())
        await asyncio.gather(
            *(self._stop(w, kill=w not in idle) for w in list(self._workers)),
            return_exceptions=True,
        )
        if self.values_dir is not None:
            shutil.rmtree(self.values_dir, ignore_errors=True)
            self.values_dir = None
