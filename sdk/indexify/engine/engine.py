"""The execution engine: given a graph, an invocation's state and one event, decide what runs.

Pure code: no I/O, no clocks, no randomness. :meth:`Engine.handle` updates the state it is
given (the caller owns it) and returns the commands to carry out. The in-process runner and
the scheduler service are both thin loops around it, so both have the same semantics.

Rules:

* the start node gets the invocation's input; every output of a function goes to each of its
  successors (one task per output: a returned list fans out);
* a router's chosen targets each get the router's input;
* a reducer folds values into its accumulator in steps, one step in flight at a time, and
  finalizes (one output: the accumulator) once no ancestor can produce more values;
* a finished event for a task that is not waiting for that attempt is a duplicate: ignored;
* a cancelled invocation takes no more events, but the attempt a cancel stopped (its worker
  process killed: an error of type ``Cancelled``) is kept in its task's record, which is
  then ``cancelled`` (:func:`stopped_by_cancel`);
* a replay (``InvocationReplayed``) starts the next generation of the invocation on the
  engine's graph version, in place: the current computation goes to ``history``, every task
  is decided again. Task ids are content addresses: the function's name and code
  fingerprint and where its input came from (with the generation appended after ``~`` from
  the first replay on, so no generation's claims, results or records touch another's). A
  queued task whose content matches a success of an earlier generation can be reused
  (``TaskReused``: its caller looks that up, :func:`earlier_tasks`, and copies the stored
  values) instead of run;
  ``from_function`` and its descendants get a salt in their content, so they always run.
  Reducer steps never match (a step's values arrive in executor order), so a reducer and
  what follows it are recomputed;
* a failed task is retried per the function's policy (platform errors do not use the budget:
  the first is retried at once, the next ones back off up to PLATFORM_MAX_DELAY_SEC, so an
  outage of MinIO or Redis of a minute is waited out);
  when it gives up, that branch stops and the invocation ends failed once nothing else runs.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from ..definition import GraphDefinition
from ..retry import compute_backoff
from .model import (
    CANCELLED_ERROR_TYPE,
    INPUT_TASK_ID,
    Attempt,
    Command,
    Computation,
    ContinueDelivery,
    DeliveryContinued,
    EngineEvent,
    ErrorInfo,
    FinishInvocation,
    InvocationCancelled,
    InvocationCreated,
    InvocationReplayed,
    InvocationState,
    PendingDelivery,
    ReducerState,
    RunTask,
    Task,
    TaskFinished,
    TaskRecord,
    TaskReused,
    ValueRange,
    content_of,
    generation_of,
    in_generation,
)

DEFAULT_MAX_REDUCE_BATCH = 1000
MAX_PLATFORM_RETRIES = 20
PLATFORM_MAX_DELAY_SEC = 5.0


def platform_backoff(failures: int, rand: float) -> float:
    """Seconds before the retry after the ``failures``-th platform error of a task: 0 for the
    first (an executor died: run it elsewhere now), then 0.25 s doubling up to 5 s, +-20 %."""
    if failures <= 1:
        return 0.0
    base = min(0.25 * 2 ** (failures - 2), PLATFORM_MAX_DELAY_SEC)
    return base * (0.8 + 0.4 * rand)


def stopped_by_cancel(state: InvocationState, event: EngineEvent) -> bool:
    """Whether ``event`` reports the attempt a cancel of ``state`` stopped (the executor
    killed its worker process): the current attempt of a task that was queued when the
    cancel came (its record says ``queued``, or ``cancelled`` where the cancel saw the
    record), failed with an error of type ``Cancelled``, and not recorded yet. The engine
    records it; nothing else changes."""
    if state.status != "cancelled" or not isinstance(event, TaskFinished):
        return False
    if event.outcome != "failure" or event.error is None:
        return False
    if event.error.type != CANCELLED_ERROR_TYPE:
        return False
    record = state.tasks.get(event.task_id)
    return (
        record is not None
        and record.status in ("queued", "cancelled")
        and record.task.attempt == event.attempt
        and all(a.attempt != event.attempt for a in record.attempts)
    )


def task_id_for(function: str, origin: str) -> str:
    """Deterministic id: re-deciding the same step yields the same task (and storage keys)."""
    digest = hashlib.blake2b(f"{origin}|{function}".encode(), digest_size=8).hexdigest()
    return f"{function}-{digest}"


def function_of(task_id: str) -> str:
    """The function a task id names: ``square-1a2b...``, ``add_up-r3`` and their replays
    (``...~2``) -> ``square``, ``add_up`` (every id is ``<function>-<suffix>``)."""
    return task_id.rsplit("-", 1)[0]


def _take(values: list[ValueRange], room: int) -> list[ValueRange]:
    """Remove and return the first ``room`` values of ``values`` (a range cut in two if it
    straddles the limit)."""
    taken: list[ValueRange] = []
    while values and room > 0:
        head, rest = values[0].split(room)
        taken.append(head)
        room -= head.size
        if rest is None:
            values.pop(0)
        else:
            values[0] = rest
    return taken


def _attempt(
    event: TaskFinished, *, outcome: Literal["success", "failure", "cancelled"] | None = None
) -> Attempt:
    return Attempt(
        attempt=event.attempt,
        executor=event.executor,
        started_at=event.started_at,
        finished_at=event.finished_at,
        outcome=outcome or event.outcome,
        error=event.error,
        queued_at=event.queued_at,
        input_read_sec=event.input_read_sec,
        output_write_sec=event.output_write_sec,
    )


def _jitter_fraction(task_id: str, attempt: int) -> float:
    digest = hashlib.blake2b(f"{task_id}:{attempt}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") / 2**32


class Engine:
    """Decides what runs next for invocations of one graph version."""

    def __init__(
        self,
        definition: GraphDefinition,
        *,
        max_reduce_batch: int = DEFAULT_MAX_REDUCE_BATCH,
        max_fanout_slice: int | None = None,
    ) -> None:
        if max_reduce_batch < 1:
            raise ValueError("max_reduce_batch must be at least 1")
        if max_fanout_slice is not None and max_fanout_slice < 1:
            raise ValueError("max_fanout_slice must be at least 1 (or None: no slicing)")
        self.definition = definition
        self.max_reduce_batch = max_reduce_batch
        self.max_fanout_slice = max_fanout_slice
        self._reducers = [
            name for name in definition.topological_order() if definition.nodes[name].reducer
        ]

    def new_state(
        self, invocation_id: str, *, namespace: str = "default", created_at: float = 0.0
    ) -> InvocationState:
        return InvocationState(
            invocation_id=invocation_id,
            namespace=namespace,
            graph=self.definition.name,
            graph_version=self.definition.version,
            created_at=created_at,
        )

    # -- entry point -------------------------------------------------------------------------

    def handle(self, state: InvocationState, event: EngineEvent) -> list[Command]:
        """Apply ``event`` to ``state`` (in place) and return the commands to carry out."""
        commands: list[Command] = []
        if isinstance(event, InvocationReplayed):
            if event.generation <= state.generation:
                return []  # a duplicate (or overtaken by a later replay)
            self._next_generation(state, event)
            self._start(state, commands)
            self._pump_reducers(state, commands)
            self._maybe_finish(state, event, commands)
            return commands
        if state.terminal:
            if stopped_by_cancel(state, event):
                assert isinstance(event, TaskFinished)
                record = state.tasks[event.task_id]
                record.attempts.append(_attempt(event, outcome="cancelled"))
                record.status = "cancelled"
                record.error = event.error
            return []
        if isinstance(event, InvocationCreated):
            if state.status != "pending":
                return []
            self._start(state, commands)
        elif isinstance(event, TaskFinished):
            if not self._on_task_finished(state, event, commands):
                return []
        elif isinstance(event, TaskReused):
            if not self._on_task_reused(state, event, commands):
                return []
        elif isinstance(event, DeliveryContinued):
            if event.seq != state.continue_seq or not state.pending:
                return []  # a duplicate, or nothing left to deliver
            self._continue_delivery(state, commands)
        elif isinstance(event, InvocationCancelled):
            for record in state.tasks.values():
                if record.status == "queued":
                    record.status = "cancelled"
            state.count_task("queued", "cancelled", state.task_counts.get("queued", 0))
            state.outstanding = {}
            state.pending = []
            state.status = "cancelled"
            state.finished_at = event.at or None
            state.error = ErrorInfo(kind="permanent", message=event.reason, type="Cancelled")
            return [FinishInvocation(status="cancelled", error=state.error)]
        self._pump_reducers(state, commands)
        self._maybe_finish(state, event, commands)
        return commands

    def _start(self, state: InvocationState, out: list[Command]) -> None:
        state.status = "running"
        origin = ValueRange(task_id=INPUT_TASK_ID, function="", start=0, stop=1)
        start = self.definition.start_node
        self._deliver(state, start, [origin], origin_key=INPUT_TASK_ID, out=out)

    def _next_generation(self, state: InvocationState, event: InvocationReplayed) -> None:
        """Put the current computation in ``history`` and reset ``state`` to a new one on
        this engine's graph version (the id, input and history stay)."""
        state.history.append(
            Computation(
                generation=state.generation,
                graph_version=state.graph_version,
                started_at=state.started_at or state.created_at,
                finished_at=state.finished_at if state.terminal else (event.at or None),
                status=state.status if state.terminal else "superseded",
                from_function=state.from_function,
                outputs={fn: n for fn, n in state.output_counts.items() if n > 0},
                error=state.error,
            )
        )
        state.generation = event.generation
        state.graph_version = self.definition.version
        state.started_at = event.at
        state.from_function = event.from_function
        state.forced = []
        if event.from_function is not None:
            state.forced = sorted(
                {event.from_function}
                | {
                    name
                    for name in self.definition.nodes
                    if event.from_function in self.definition.ancestors(name)
                }
            )
        state.status = "pending"
        state.tasks = {}
        state.outstanding = {}
        state.outputs = {}
        state.reducers = {}
        state.pending = []
        state.continue_seq += 1  # a continue request of the replaced generation is stale
        state.failed_functions = []
        state.function_errors = {}
        state.task_counts = {}
        state.output_counts = {}
        state.error = None
        state.error_function = None
        state.finished_at = None
        state.reused = 0

    # -- task completion ---------------------------------------------------------------------

    def _on_task_reused(
        self, state: InvocationState, event: TaskReused, out: list[Command]
    ) -> bool:
        record = state.tasks.get(event.task_id)
        if record is None or record.status != "queued" or record.task.kind == "reduce":
            return False
        finished = TaskFinished(
            task_id=event.task_id,
            attempt=record.task.attempt,
            outcome="success",
            output_count=event.output_count,
            route=event.route,
        )
        if not self._on_task_finished(state, finished, out):
            return False
        record.reused_from = event.source
        record.attempts = []
        state.reused += 1
        return True

    def _on_task_finished(
        self, state: InvocationState, event: TaskFinished, out: list[Command]
    ) -> bool:
        record = state.tasks.get(event.task_id)
        if record is None or record.status != "queued" or record.task.attempt != event.attempt:
            return False  # unknown, already settled, or a stale attempt: a duplicate
        if generation_of(event.task_id) != state.generation:
            return False  # a task of a computation a replay replaced
        record.attempts.append(_attempt(event))
        task = record.task
        if event.outcome == "failure":
            error = event.error or ErrorInfo(kind="user", message="task failed without an error")
            if self._should_retry(record, error):
                retry = task.model_copy(update={"attempt": task.attempt + 1})
                record.task = retry
                delay = 0.0
                if error.kind == "platform":
                    delay = platform_backoff(
                        record.platform_failures, _jitter_fraction(task.id, retry.attempt)
                    )
                elif error.kind == "user":
                    node = self.definition.nodes[task.function]
                    # the tasks of a failed batch wait alike, so they are retried together
                    rand = 0.5 if node.batch else _jitter_fraction(task.id, retry.attempt)
                    delay = compute_backoff(node.retries, record.user_failures, rand)
                out.append(RunTask(task=retry, delay_sec=delay))
                return True
            record.status = "failed"
            record.error = error
            state.count_task("queued", "failed")
            self._settle(state, task.function)
            if task.function not in state.failed_functions:
                state.failed_functions.append(task.function)
            state.function_errors.setdefault(task.function, error)
            if state.error is None:
                state.error = error
                state.error_function = task.function
            if task.kind == "reduce":
                state.reducers[task.function].running = None
            return True

        record.status = "succeeded"
        record.output_count = event.output_count
        record.route = event.route
        state.count_task("queued", "succeeded")
        self._settle(state, task.function)
        if task.kind == "reduce":
            reducer = state.reducers[task.function]
            reducer.running = None
            reducer.accumulator = ValueRange(
                task_id=task.id, function=task.function, start=0, stop=1
            )
            reducer.reduced += task.input_count
        elif task.kind == "route":
            self._on_routed(state, record, event, out)
        elif event.output_count > 0:
            produced = ValueRange(
                task_id=task.id, function=task.function, start=0, stop=event.output_count
            )
            self._add_output(state, produced)
            for child in self.definition.successors(task.function):
                self._deliver(state, child, [produced], origin_key=content_of(task.id), out=out)
        return True

    def _should_retry(self, record: TaskRecord, error: ErrorInfo) -> bool:
        if error.kind == "permanent":
            return False
        if error.kind == "platform":
            record.platform_failures += 1
            return record.platform_failures <= MAX_PLATFORM_RETRIES
        record.user_failures += 1
        policy = self.definition.nodes[record.task.function].retries
        return record.user_failures <= policy.max_retries

    def _on_routed(
        self, state: InvocationState, record: TaskRecord, event: TaskFinished, out: list[Command]
    ) -> None:
        task = record.task
        allowed = self.definition.route_targets(task.function)
        chosen = list(dict.fromkeys(event.route or ()))
        unknown = [name for name in chosen if name not in allowed]
        if unknown:
            record.status = "failed"
            record.error = ErrorInfo(
                kind="permanent",
                type="RouteError",
                message=f"router {task.function!r} returned {unknown}, which are not among its "
                f"route targets {list(allowed)}; add them with g.route(...)",
            )
            state.count_task("succeeded", "failed")
            if task.function not in state.failed_functions:
                state.failed_functions.append(task.function)
            state.function_errors.setdefault(task.function, record.error)
            if state.error is None:
                state.error, state.error_function = record.error, task.function
            return
        for target in chosen:
            origin_key = f"{content_of(task.id)}>"
            self._deliver(state, target, list(task.inputs), origin_key=origin_key, out=out)

    # -- scheduling --------------------------------------------------------------------------

    def _deliver(
        self,
        state: InvocationState,
        target: str,
        values: list[ValueRange],
        *,
        origin_key: str,
        out: list[Command],
    ) -> None:
        node = self.definition.nodes[target]
        if node.reducer:
            reducer = state.reducers.setdefault(target, ReducerState())
            reducer.queue.extend(values)
            reducer.received += sum(v.size for v in values)
            return
        if self.max_fanout_slice is not None:
            total = sum(v.size for v in values)
            if total > self.max_fanout_slice or state.pending:
                # Big (or behind another big one): slice by slice, see _continue_delivery.
                first = not state.pending
                state.pending.append(
                    PendingDelivery(target=target, origin_key=origin_key, values=list(values))
                )
                if first:
                    self._continue_delivery(state, out)
                return
        self._create_tasks(state, target, values, origin_key, out)

    def _continue_delivery(self, state: InvocationState, out: list[Command]) -> None:
        """Create the tasks of the next ``max_fanout_slice`` pending elements, and ask to be
        called again (``ContinueDelivery``) while any are left: the scheduler sends that
        request to the back of the events topic, so other invocations' events are handled
        between the slices of a huge fan-out and no batch holds more than one slice."""
        room = self.max_fanout_slice or sum(p.size for p in state.pending)
        while state.pending and room > 0:
            pending = state.pending[0]
            taken = _take(pending.values, room)
            room -= sum(v.size for v in taken)
            if not pending.values:
                state.pending.pop(0)
            self._create_tasks(state, pending.target, taken, pending.origin_key, out)
        if state.pending:
            state.continue_seq += 1
            out.append(ContinueDelivery(seq=state.continue_seq))

    def _create_tasks(
        self,
        state: InvocationState,
        target: str,
        values: list[ValueRange],
        origin_key: str,
        out: list[Command],
    ) -> None:
        for value_range in values:
            for index in range(value_range.start, value_range.stop):
                task = self._new_task(
                    state.invocation_id,
                    target,
                    value_range.single(index),
                    origin_key,
                    generation=state.generation,
                    forced=target in state.forced,
                )
                self._queue(state, task, out)

    def _new_task(
        self,
        invocation_id: str,
        target: str,
        value: ValueRange,
        origin_key: str,
        *,
        generation: int = 0,
        forced: bool = False,
    ) -> Task:
        """The task of ``target`` for one value: its id depends only on the function's code
        and where the value came from (and, in a replay, its generation), so every path that
        decides this step (the scheduler, an executor continuing a chain) names it alike, and
        a replay can find the same step's result in the generation it replaces."""
        node = self.definition.nodes[target]
        origin = f"{origin_key}:{content_of(value.task_id)}:{value.start}|{node.code_hash}"
        if forced:
            origin += f"!{generation}"  # from_function: never the same as before
        return Task(
            id=in_generation(task_id_for(target, origin), generation),
            invocation_id=invocation_id,
            function=target,
            kind="route" if node.kind == "router" else "call",
            inputs=(value,),
        )

    def chained_task(self, task: Task, event: TaskFinished) -> Task | None:
        """The one task that follows from ``task``'s successful result alone, or None.

        A chain step: a call with exactly one output and exactly one successor, or a route
        choosing exactly one target, when that next function is not a reducer (a reducer's
        steps depend on the whole invocation's state) nor batched (executors assemble its
        batches from its task topic). The task is the one :meth:`handle`
        creates for the same result (same id, inputs and attempt), so an executor may run it
        at once and report both results together; the scheduler accepts the second as the
        result of the task the first one created. Never in a replay: the scheduler decides
        each step there (whether the step can reuse an earlier result)."""
        if event.outcome != "success" or event.task_id != task.id:
            return None
        if generation_of(task.id) != 0:
            return None
        if task.kind == "call":
            successors = self.definition.successors(task.function)
            if event.output_count != 1 or len(successors) != 1:
                return None
            target = successors[0]
            value = ValueRange(task_id=task.id, function=task.function, start=0, stop=1)
            origin_key = content_of(task.id)
        elif task.kind == "route":
            chosen = list(dict.fromkeys(event.route or ()))
            if len(chosen) != 1 or chosen[0] not in self.definition.route_targets(task.function):
                return None
            if len(task.inputs) != 1 or task.inputs[0].size != 1:
                return None
            target, value, origin_key = chosen[0], task.inputs[0], f"{content_of(task.id)}>"
        else:
            return None
        if self.definition.nodes[target].reducer or self.definition.nodes[target].batch:
            return None  # a reducer's steps need the state; a batch is assembled by executors
        return self._new_task(task.invocation_id, target, value, origin_key)

    def _queue(self, state: InvocationState, task: Task, out: list[Command]) -> None:
        if task.id in state.tasks:
            return  # already decided: deterministic ids make re-delivery a no-op
        state.tasks[task.id] = TaskRecord(task=task)
        state.count_task(None, "queued")
        state.outstanding[task.function] = state.outstanding.get(task.function, 0) + 1
        out.append(RunTask(task=task))

    @staticmethod
    def _add_output(state: InvocationState, produced: ValueRange) -> None:
        state.outputs.setdefault(produced.function, []).append(produced)
        state.output_counts[produced.function] = (
            state.output_counts.get(produced.function, 0) + produced.size
        )

    @staticmethod
    def _settle(state: InvocationState, function: str) -> None:
        remaining = state.outstanding.get(function, 0) - 1
        if remaining > 0:
            state.outstanding[function] = remaining
        else:
            state.outstanding.pop(function, None)

    def _pump_reducers(self, state: InvocationState, out: list[Command]) -> None:
        for name in self._reducers:  # topological: a finalized reducer may feed a later one
            reducer = state.reducers.get(name)
            if reducer is None or reducer.running is not None or reducer.finalized:
                continue
            if name in state.failed_functions:
                continue
            if reducer.queue:
                self._start_reduce_step(state, name, reducer, out)
            elif reducer.backlog:
                continue  # values wait outside this view: a later batch loads them
            elif self._inputs_complete(state, name):
                self._finalize(state, name, reducer, out)

    def _start_reduce_step(
        self, state: InvocationState, name: str, reducer: ReducerState, out: list[Command]
    ) -> None:
        batch = _take(reducer.queue, self.max_reduce_batch)
        reducer.step += 1
        step = f"r{reducer.step}"
        if state.generation:  # unique content: a step of one generation is never reused
            step = f"g{state.generation}{step}"
        task = Task(
            id=in_generation(f"{name}-{step}", state.generation),
            invocation_id=state.invocation_id,
            function=name,
            kind="reduce",
            inputs=tuple(batch),
            accumulator=reducer.accumulator,
        )
        reducer.running = task.id
        self._queue(state, task, out)

    def _inputs_complete(self, state: InvocationState, name: str) -> bool:
        ancestors = self.definition.ancestors(name)
        if any(state.outstanding.get(a) for a in ancestors):
            return False
        if any(p.target in ancestors for p in state.pending):
            return False
        if any(f in ancestors for f in state.failed_functions):
            return False
        for other in ancestors:
            upstream = state.reducers.get(other)
            if upstream is not None and not upstream.finalized:
                return False
        return True

    def _finalize(
        self, state: InvocationState, name: str, reducer: ReducerState, out: list[Command]
    ) -> None:
        reducer.finalized = True
        if reducer.accumulator is None:
            return  # received nothing: an empty fan-out reduces to no output
        final = reducer.accumulator
        self._add_output(state, final)
        for child in self.definition.successors(name):
            self._deliver(state, child, [final], origin_key=content_of(final.task_id), out=out)

    def _maybe_finish(self, state: InvocationState, event: EngineEvent, out: list[Command]) -> None:
        if state.outstanding or state.pending or state.status != "running":
            return
        for name, reducer in state.reducers.items():
            if name in state.failed_functions:
                continue
            waiting = reducer.queue or reducer.backlog
            if reducer.running is not None or (waiting and not state.failed_functions):
                return
        state.status = "failed" if state.failed_functions else "succeeded"
        at = getattr(event, "finished_at", 0.0) or getattr(event, "at", 0.0)
        state.finished_at = at or None
        out.append(
            FinishInvocation(
                status=state.status, error=state.error, error_function=state.error_function
            )
        )
