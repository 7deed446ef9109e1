"""The executor's chain continuation as pure logic: which next step it may run itself."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from indexify.definition import GraphDefinition, NodeDefinition
from indexify.engine import Engine, InvocationCreated, RunTask, TaskFinished
from services.common.events import StoredValues, TaskFinishedEvent, TaskMessage
from services.executor.chains import ChainRunner, chained_message
from services.executor.leases import Leases

LABELS = {"image": "default"}


def _definition(b: NodeDefinition) -> GraphDefinition:
    return GraphDefinition(
        name="g",
        start_node="a",
        nodes={"a": NodeDefinition(name="a"), "b": b},
        edges={"a": ("b",)},
        version="v1",
    )


def _first(engine: Engine) -> tuple[TaskMessage, TaskFinishedEvent]:
    state = engine.new_state("inv")
    [command] = engine.handle(state, InvocationCreated())
    assert isinstance(command, RunTask)
    task = command.task
    message = TaskMessage(
        namespace="default",
        graph="g",
        invocation_id="inv",
        task_id=task.id,
        graph_version="v1",
        task=task,
        inputs=(StoredValues(content_types=("application/json",), inline=(b"1",)),),
    )
    output = StoredValues(content_types=("application/json",), inline=(b"2",))
    finished = TaskFinished(
        task_id=task.id, attempt=task.attempt, outcome="success", output_count=1
    )
    event = TaskFinishedEvent(
        namespace="default",
        graph="g",
        invocation_id="inv",
        task_id=task.id,
        finished=finished,
        outputs=output,
    )
    return message, event


def test_the_next_step_takes_the_output_and_the_functions_timeout() -> None:
    engine = Engine(_definition(NodeDefinition(name="b", timeout_sec=7.0)))
    message, event = _first(engine)
    step = chained_message(engine, LABELS, message, event)
    assert step is not None
    assert step.task.function == "b" and step.task_id == step.task.id
    assert step.inputs == (event.outputs,)
    assert step.timeout_sec == 7.0
    assert (step.graph_version, step.invocation_id) == ("v1", "inv")


def test_a_step_placed_elsewhere_goes_through_the_scheduler() -> None:
    gpu = NodeDefinition(name="b", required_labels={"gpu": "h100"}, placement_key="gpu-h100")
    engine = Engine(_definition(gpu))
    message, event = _first(engine)
    assert chained_message(engine, LABELS, message, event) is None
    assert chained_message(engine, {**LABELS, "gpu": "h100"}, message, event) is not None


def test_a_failed_step_is_not_continued() -> None:
    engine = Engine(_definition(NodeDefinition(name="b")))
    message, event = _first(engine)
    failed = event.model_copy(
        update={
            "finished": event.finished.model_copy(update={"outcome": "failure"}),
            "outputs": None,
        }
    )
    assert chained_message(engine, LABELS, message, failed) is None


# -- the runner: the next step starts while its claim is asked --------------------------------


class _Claims:
    """TaskClaims' record_and_claim: answers ``verdict`` once the step it claims started."""

    def __init__(self, verdict: str, started: asyncio.Event) -> None:
        self.verdict = verdict
        self.started = started
        self.recorded: list[str] = []

    async def record_and_claim(
        self, results: Any, token: str, claim: Any, ttl_sec: float
    ) -> tuple[str, str]:
        await asyncio.wait_for(self.started.wait(), 5)  # the step did not wait for this
        self.recorded.extend(task_id for _, task_id, _ in results)
        return self.verdict, ""


class _Pool:
    """WorkerPool.run: the step's result once ``release`` is set."""

    def __init__(self, event: TaskFinishedEvent) -> None:
        self.event = event
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = False
        self.claimed: asyncio.Event | None = None
        self.claimed_at_start: bool | None = None

    async def run(
        self, message: TaskMessage, *, claimed: asyncio.Event | None = None
    ) -> TaskFinishedEvent:
        self.claimed, self.claimed_at_start = claimed, claimed is not None and claimed.is_set()
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finished = self.event.finished.model_copy(update={"task_id": message.task.id})
        return self.event.model_copy(update={"task_id": message.task.id, "finished": finished})


class _Planner:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def next_message(
        self, message: TaskMessage, event: TaskFinishedEvent
    ) -> TaskMessage | None:
        return chained_message(self.engine, LABELS, message, event)


async def _continue(verdict: str) -> tuple[list[Any], _Pool, _Claims]:
    engine = Engine(_definition(NodeDefinition(name="b")))
    message, event = _first(engine)
    pool = _Pool(event)
    claims = _Claims(verdict, pool.started)
    leases = Leases(claims, "executor-0", "token", ttl_sec=10)  # type: ignore[arg-type]
    runner = ChainRunner(
        _Planner(engine),  # type: ignore[arg-type]
        leases,
        pool,  # type: ignore[arg-type]
        stopping=lambda: False,
    )
    if verdict == "run":
        pool.release.set()
    results = await runner.continue_after(message, event, structlog.get_logger())
    assert not len(leases)  # nothing stays held
    return results, pool, claims


async def test_a_claimed_step_ran_while_the_claim_was_asked() -> None:
    results, pool, claims = await _continue("run")
    assert [r.event.finished.task_id.split("-")[0] for r in results] == ["a", "b"]
    assert claims.recorded == [results[0].event.finished.task_id]
    assert results[0].recorded and not results[1].recorded
    assert not pool.cancelled
    # the pool may put the step in a frame with others only once its claim took the lease
    assert pool.claimed is not None and pool.claimed.is_set()
    assert pool.claimed_at_start is False


async def test_a_step_whose_claim_does_not_take_the_lease_is_stopped_unreported() -> None:
    for verdict in ("skip", "wait", "result"):
        results, pool, claims = await _continue(verdict)
        assert len(results) == 1 and results[0].recorded  # the first step's result, kept
        assert claims.recorded == [results[0].event.finished.task_id]
        assert pool.cancelled  # the step started ahead of its claim was stopped
        assert pool.claimed is not None and not pool.claimed.is_set()
