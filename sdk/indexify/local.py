"""The in-process client: runs graphs in this process with the shared engine and runtime.

It behaves as the server does where a program can tell:

* **Versions.** Registering a graph whose version changed makes that version current; every
  invocation keeps the version it ran on, so its status, outputs and logs are read through
  that version's definition and code (an old invocation's functions may no longer exist in
  the current version), as the API does.
* **Timeouts.** A task of a function with ``timeout=`` that runs past it fails with a user
  error of type ``TimeoutError`` worded as the executor's, and is retried per ``retries=``
  like any failure. On the main thread of a Unix process a ``SIGALRM`` timer interrupts the
  function at the deadline; elsewhere the function runs in a thread that is abandoned at the
  deadline (see :mod:`indexify.timeouts`). Its stdout and stderr are lost, as when the
  executor kills the worker.
* **Replays.** ``rerun_invocation`` and ``rerun_graph`` compute invocations again in place,
  as the server does: a step whose function code and inputs are those of a success of the
  computation replaced reuses its outputs (no call), and the replaced computations' outputs
  stay readable with ``graph_outputs(..., generation=N)``. A replay runs to completion
  before the call returns.
* **Batches.** A batched function (:mod:`indexify.batch`) receives the calls of it ready at
  that step of the run (those queued when its first one is due), up to ``max_size`` per
  call; a batch that fails is retried together (its tasks' retries are due together).
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .client import DEFAULT_NAMESPACE, IndexifyClient
from .data_objects import File, file_input_problem
from .definition import GraphDefinition, NodeDefinition
from .encoding import Payload, encode
from .engine import (
    DEFAULT_MAX_REDUCE_BATCH,
    INPUT_TASK_ID,
    Command,
    Engine,
    EngineEvent,
    ErrorInfo,
    InvocationCancelled,
    InvocationCreated,
    InvocationReplayed,
    InvocationState,
    RunTask,
    Task,
    TaskRecord,
    TaskReused,
    ValueRange,
    earlier_tasks,
    generation_of,
)
from .errors import InvalidInputError, InvocationError, NotFoundError
from .functions import check_name
from .graph import Graph
from .models import GraphInfo, InvocationInfo, Replay, TaskLogs
from .progress import ProgressBar
from .runtime import FunctionRunner, Loader, TaskResult
from .timeouts import Expired, run_with_timeout, timeout_message

logger = logging.getLogger(__name__)


@dataclass
class _Registered:
    graph: Graph
    definition: GraphDefinition
    engine: Engine
    runner: FunctionRunner
    created_at: float


@dataclass(frozen=True)
class _Past:
    """A computation a replay replaced: what its outputs are and how to decode them."""

    registered: _Registered
    outputs: dict[str, list[ValueRange]]
    records: dict[str, TaskRecord]


@dataclass
class _Invocation:
    state: InvocationState
    graph_name: str
    input: Payload
    registered: _Registered
    """The graph version the invocation ran on (not necessarily the current one)."""
    payloads: dict[str, list[Payload]] = field(default_factory=dict)
    logs: dict[str, TaskLogs] = field(default_factory=dict)
    past: dict[int, _Past] = field(default_factory=dict)
    """The computations replays replaced, by generation."""


class LocalClient(IndexifyClient):
    """Runs every invocation to completion inside ``invoke_graph_with_object``."""

    def __init__(
        self,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        max_reduce_batch: int = 10_000,
        echo_output: bool = True,
    ) -> None:
        self.namespace = check_name(namespace, "namespace")
        self._namespaces: set[str] = {DEFAULT_NAMESPACE, namespace}
        self._graphs: dict[str, _Registered] = {}
        self._invocations: dict[str, _Invocation] = {}
        self._replays: dict[str, Replay] = {}
        self._max_reduce_batch = max_reduce_batch or DEFAULT_MAX_REDUCE_BATCH
        self._echo_output = echo_output

    # -- graphs -----------------------------------------------------------------------------

    def register_compute_graph(self, graph: Graph) -> GraphInfo:
        definition = graph.definition()
        current = self._graphs.get(graph.name)
        if current is None or current.definition.version != definition.version:
            self._graphs[graph.name] = _Registered(
                graph=graph,
                definition=definition,
                engine=Engine(definition, max_reduce_batch=self._max_reduce_batch),
                runner=FunctionRunner(graph),
                created_at=time.time(),
            )
        return self._info(self._graphs[graph.name])

    def _info(self, registered: _Registered) -> GraphInfo:
        return GraphInfo.of(self.namespace, registered.definition, registered.created_at)

    def _registered(self, name: str) -> _Registered:
        try:
            return self._graphs[name]
        except KeyError:
            raise NotFoundError(
                f"graph {name!r} is not registered in namespace {self.namespace!r}; "
                "call register_compute_graph(graph) first"
            ) from None

    def graphs(self) -> list[str]:
        return sorted(self._graphs)

    def graph(self, name: str) -> GraphInfo:
        return self._info(self._registered(name))

    def delete_graph(self, name: str) -> None:
        self._registered(name)
        del self._graphs[name]
        for inv_id in [i for i, inv in self._invocations.items() if inv.graph_name == name]:
            del self._invocations[inv_id]

    def namespaces(self) -> list[str]:
        return sorted(self._namespaces)

    def create_namespace(self, name: str) -> None:
        self._namespaces.add(check_name(name, "namespace"))

    # -- invocations ------------------------------------------------------------------------

    def invoke_graph_with_object(
        self, graph: str, block_until_done: bool = False, **kwargs: Any
    ) -> str:
        registered = self._registered(graph)
        problem = registered.definition.argument_problems(kwargs)
        if problem is not None:
            raise InvalidInputError(problem)
        return self._start(registered, graph, encode(kwargs))

    def _invoke_with_file(self, graph: str, file: File, block_until_done: bool) -> str:
        registered = self._registered(graph)
        problem = file_input_problem(registered.definition)
        if problem is not None:
            raise InvalidInputError(problem)
        return self._start(registered, graph, encode(file))

    def _start(self, registered: _Registered, graph: str, payload: Payload) -> str:
        invocation_id = uuid.uuid4().hex
        state = registered.engine.new_state(
            invocation_id, namespace=self.namespace, created_at=time.time()
        )
        invocation = _Invocation(
            state=state, graph_name=graph, input=payload, registered=registered
        )
        self._invocations[invocation_id] = invocation
        self._run(registered, invocation, InvocationCreated(at=time.time()))
        return invocation_id

    def _run(self, registered: _Registered, invocation: _Invocation, first: EngineEvent) -> None:
        engine, runner, state = registered.engine, registered.runner, invocation.state

        def load(value: ValueRange) -> list[Payload]:
            if value.task_id == INPUT_TASK_ID:
                return [invocation.input]
            return invocation.payloads.get(value.task_id, [])[value.start : value.stop]

        pending: deque[Command] = deque(engine.handle(state, first))
        while pending:
            command = pending.popleft()
            if not isinstance(command, RunTask):
                continue
            reused = self._reused(invocation, command.task)
            if reused is not None:
                pending.extend(engine.handle(state, reused))
                continue
            node = registered.definition.nodes[command.task.function]
            batch = _take_batch(command, node, pending)
            delay = max(run.delay_sec for run in batch)  # a failed batch retries together
            if delay:
                time.sleep(delay)
            tasks = [run.task for run in batch]
            results = _run_tasks(runner, tasks, load, node)
            if self._echo_output:  # a batch is one call: its output once
                sys.stdout.write(results[0].stdout)
                sys.stderr.write(results[0].stderr)
            for task, result in zip(tasks, results, strict=True):
                if result.succeeded:
                    invocation.payloads[task.id] = result.outputs
                invocation.logs[task.id] = TaskLogs(
                    task_id=task.id,
                    function=task.function,
                    stdout=result.stdout,
                    stderr=result.stderr,
                    traceback=result.error.traceback if result.error else "",
                )
                pending.extend(engine.handle(state, result.finished(task, "in-process")))
        if state.status == "failed" and state.error is not None:
            logger.warning(
                "invocation %s of %s failed in %s: %s",
                state.invocation_id,
                state.graph,
                state.error_function,
                state.error.message,
            )

    @staticmethod
    def _reused(invocation: _Invocation, task: Task) -> TaskReused | None:
        """``task``'s result in the computation its replay replaced, if that ran the same
        code on the same inputs and succeeded (its outputs now also stored as ``task``'s)."""
        state = invocation.state
        if state.generation == 0 or task.kind == "reduce" or task.attempt != 1:
            return None
        for source in earlier_tasks(task.id, state.generation):
            past = invocation.past.get(generation_of(source))
            record = past.records.get(source) if past is not None else None
            if (
                record is not None
                and record.status == "succeeded"
                and source in invocation.payloads
            ):
                break
        else:
            return None
        invocation.payloads[task.id] = invocation.payloads[source]
        return TaskReused(
            task_id=task.id, source=source, output_count=record.output_count, route=record.route
        )

    def _invocation(self, graph: str, invocation_id: str) -> _Invocation:
        self._registered(graph)
        invocation = self._invocations.get(invocation_id)
        if invocation is None or invocation.graph_name != graph:
            raise NotFoundError(f"graph {graph!r} has no invocation {invocation_id!r}")
        return invocation

    def invocation_status(self, graph: str, invocation_id: str) -> InvocationInfo:
        return InvocationInfo.from_state(self._invocation(graph, invocation_id).state)

    def invocations(self, graph: str) -> list[InvocationInfo]:
        self._registered(graph)
        return [
            InvocationInfo.from_state(inv.state, with_tasks=False)
            for inv in self._invocations.values()
            if inv.graph_name == graph
        ]

    def wait_for_invocation(
        self, graph: str, invocation_id: str, timeout: float = 300.0
    ) -> InvocationInfo:
        return self.invocation_status(graph, invocation_id)  # in-process runs finish at once

    def _function_of(
        self, graph: str, invocation_id: str, fn_name: str, generation: int | None = None
    ) -> tuple[_Invocation, _Registered]:
        """The invocation and the version its computation ``generation`` (None: the current
        one) ran on, if ``fn_name`` is a function of that version."""
        invocation = self._invocation(graph, invocation_id)
        registered = invocation.registered
        if generation is not None and generation != invocation.state.generation:
            past = invocation.past.get(generation)
            if past is None:
                raise NotFoundError(
                    f"invocation {invocation_id} has no computation {generation}; it has "
                    f"{sorted([*invocation.past, invocation.state.generation])}"
                )
            registered = past.registered
        definition = registered.definition
        if fn_name not in definition.nodes:
            raise NotFoundError(
                f"graph {graph!r} (version {definition.version}) has no function {fn_name!r}; "
                f"it has {sorted(definition.nodes)}"
            )
        return invocation, registered

    def graph_outputs(
        self, graph: str, invocation_id: str, fn_name: str, *, generation: int | None = None
    ) -> list[Any]:
        invocation, registered = self._function_of(graph, invocation_id, fn_name, generation)
        runner = registered.runner
        state = invocation.state
        if generation is not None and generation != state.generation:
            return [
                runner.decoded_output(fn_name, payload)
                for produced in invocation.past[generation].outputs.get(fn_name, [])
                for payload in invocation.payloads[produced.task_id][produced.start : produced.stop]
            ]
        if fn_name in state.failed_functions:
            failed = [r for r in state.tasks.values() if r.task.function == fn_name and r.error]
            error = failed[0].error if failed else state.error
            message = error.message if error else "failed"
            trace = f"\n{error.traceback}" if error and error.traceback else ""
            raise InvocationError(
                f"{fn_name!r} failed in invocation {invocation_id}: {message}{trace}",
                invocation_id=invocation_id,
            )
        values = []
        for produced in state.outputs.get(fn_name, []):
            for payload in invocation.payloads[produced.task_id][produced.start : produced.stop]:
                values.append(runner.decoded_output(fn_name, payload))
        return values

    def logs(self, graph: str, invocation_id: str, fn_name: str) -> list[TaskLogs]:
        invocation, _ = self._function_of(graph, invocation_id, fn_name)
        return [log for log in invocation.logs.values() if log.function == fn_name]

    def cancel_invocation(self, graph: str, invocation_id: str) -> None:
        invocation = self._invocation(graph, invocation_id)
        invocation.registered.engine.handle(invocation.state, InvocationCancelled())

    def delete_invocation(self, graph: str, invocation_id: str) -> None:
        self._invocation(graph, invocation_id)
        del self._invocations[invocation_id]

    def rerun_invocation(
        self, graph: str, invocation_id: str, *, from_function: str | None = None
    ) -> str:
        invocation = self._invocation(graph, invocation_id)
        registered = self._registered(graph)
        _check_from_function(registered.definition, from_function)
        self._replay(registered, invocation, from_function)
        return invocation_id

    def _replay(
        self, registered: _Registered, invocation: _Invocation, from_function: str | None
    ) -> None:
        state = invocation.state
        invocation.past[state.generation] = _Past(
            registered=invocation.registered,
            outputs={fn: list(ranges) for fn, ranges in state.outputs.items()},
            records=dict(state.tasks),
        )
        invocation.registered = registered
        event = InvocationReplayed(
            generation=state.generation + 1, from_function=from_function, at=time.time()
        )
        self._run(registered, invocation, event)

    def rerun_graph(
        self,
        graph: str,
        *,
        from_function: str | None = None,
        invocations: Sequence[str] | None = None,
        block_until_done: bool = True,
    ) -> Replay:
        registered = self._registered(graph)
        _check_from_function(registered.definition, from_function)
        if invocations is None:
            chosen = [inv for inv in self._invocations.values() if inv.graph_name == graph]
        else:
            chosen = [self._invocation(graph, inv) for inv in dict.fromkeys(invocations)]
        replay = Replay(
            id=uuid.uuid4().hex,
            namespace=self.namespace,
            graph=graph,
            graph_version=registered.definition.version,
            from_function=from_function,
            total=len(chosen),
        )
        bar = ProgressBar(f"replaying {graph}", replay.total)
        try:
            for invocation in chosen:
                self._replay(registered, invocation, from_function)
                replay.done += 1
                replay.failed += invocation.state.status == "failed"
                bar.update(replay.done, replay.failed)
        finally:
            bar.close()
        replay.status = "failed" if replay.failed else "succeeded"
        replay.finished_at = time.time()
        self._replays[replay.id] = replay
        return replay

    def replay(self, graph: str, replay_id: str) -> Replay:
        self._registered(graph)
        found = self._replays.get(replay_id)
        if found is None or found.graph != graph:
            raise NotFoundError(f"graph {graph!r} has no replay {replay_id!r}")
        return found

    def cancel_replay(self, graph: str, replay_id: str) -> Replay:
        return self.replay(graph, replay_id)  # in-process replays end before rerun_graph returns


def _check_from_function(definition: GraphDefinition, from_function: str | None) -> None:
    if from_function is not None and from_function not in definition.nodes:
        raise InvalidInputError(
            f"from_function={from_function!r} is not a function of graph {definition.name!r} "
            f"(version {definition.version}); it has {sorted(definition.nodes)}"
        )


def _take_batch(first: RunTask, node: NodeDefinition, pending: deque[Command]) -> list[RunTask]:
    """``first`` and, for a batched function, the other calls of it waiting in ``pending``
    (the inputs available at this step of the run), up to the batch's ``max_size``: taken
    out of ``pending`` in order, the rest left in theirs."""
    if node.batch is None or first.task.kind != "call":
        return [first]
    batch, rest = [first], deque[Command]()
    while pending:
        command = pending.popleft()
        if (
            len(batch) < node.batch.max_size
            and isinstance(command, RunTask)
            and command.task.function == first.task.function
            and command.task.kind == "call"
        ):
            batch.append(command)
        else:
            rest.append(command)
    pending.extend(rest)
    return batch


def _run_tasks(
    runner: FunctionRunner, tasks: list[Task], load: Loader, node: NodeDefinition
) -> list[TaskResult]:
    """Run ``tasks`` (one, or a batch of a batched function in one call), within the
    function's timeout if it has one (as the executor does): a batch that runs past it fails
    every task of it."""
    seconds = node.timeout_sec

    def run() -> list[TaskResult]:
        if len(tasks) == 1:
            return [runner.run(tasks[0], load)]
        return runner.run_batch([(task, load) for task in tasks])

    if seconds is None:
        return run()
    started_at = time.time()
    try:
        return run_with_timeout(run, seconds)
    except Expired as expired:
        message = timeout_message(tasks[0].function, seconds)
        note = "(the function runs on in an abandoned thread)\n" if expired.abandoned else ""
        trace = f"Traceback (most recent call last):\n{expired.where}TimeoutError: {message}\n"
        error = ErrorInfo(kind="user", type="TimeoutError", message=message, traceback=trace + note)
        return [
            TaskResult(error=error, started_at=started_at, finished_at=time.time()) for _ in tasks
        ]
