"""Replays in place, in-process: the shared scenarios (:mod:`tests.replay_cases`) and the
engine's rules for generations."""

from __future__ import annotations

from indexify import Graph, create_client, indexify_function
from indexify.engine import (
    Engine,
    InvocationCreated,
    InvocationReplayed,
    RunTask,
    TaskFinished,
    content_of,
    generation_of,
    in_generation,
)
from tests import replay_cases


def test_seed_update_and_rerun() -> None:
    replay_cases.seed_update_and_rerun(create_client(in_process=True), "seed_update")


def test_only_the_changed_step_reruns() -> None:
    replay_cases.only_changed_step_reruns(create_client(in_process=True), "only_changed")


def test_router_decisions_are_reused() -> None:
    replay_cases.router_decisions_are_reused(create_client(in_process=True), "routed_replay")


@indexify_function()
def one(x: int) -> int:
    return x + 1


@indexify_function()
def two(x: int) -> int:
    return x * 2


def _engine() -> Engine:
    return Engine(Graph("gens", start_node=one).add_edge(one, two).definition())


def _finish(task_id: str, outputs: int = 1) -> TaskFinished:
    return TaskFinished(task_id=task_id, outcome="success", output_count=outputs)


def test_task_ids_name_their_generation() -> None:
    assert generation_of("one-abc") == 0 and generation_of("one-abc~3") == 3
    assert content_of("one-abc~3") == "one-abc" == content_of("one-abc")
    assert in_generation("one-abc", 0) == "one-abc" and in_generation("one-abc", 2) == "one-abc~2"


def test_a_replay_starts_a_new_generation_and_ignores_the_old_one() -> None:
    engine = _engine()
    state = engine.new_state("inv")
    [first] = engine.handle(state, InvocationCreated())
    assert isinstance(first, RunTask) and generation_of(first.task.id) == 0
    # replayed while the first computation runs: it is superseded
    [again] = engine.handle(state, InvocationReplayed(generation=1, at=5.0))
    assert isinstance(again, RunTask)
    assert again.task.id == in_generation(first.task.id, 1)
    assert state.generation == 1 and state.history[0].status == "superseded"
    # the old generation's result is not this generation's
    assert engine.handle(state, _finish(first.task.id)) == []
    # a redelivered replay request is a duplicate
    assert engine.handle(state, InvocationReplayed(generation=1)) == []
    [nxt] = engine.handle(state, _finish(again.task.id))
    assert isinstance(nxt, RunTask) and generation_of(nxt.task.id) == 1
    # executors never continue a replay's chain themselves
    assert engine.chained_task(again.task, _finish(again.task.id)) is None
    assert engine.chained_task(first.task, _finish(first.task.id)) is not None


def test_from_function_salts_that_function_and_what_follows() -> None:
    engine = _engine()
    state = engine.new_state("inv")
    [first] = engine.handle(state, InvocationCreated())
    [second] = engine.handle(state, _finish(first.task.id))
    engine.handle(state, _finish(second.task.id))
    assert state.status == "succeeded"
    [replayed_one] = engine.handle(state, InvocationReplayed(generation=1, from_function="two"))
    assert content_of(replayed_one.task.id) == content_of(first.task.id)  # may be reused
    assert state.forced == ["two"]
    [replayed_two] = engine.handle(state, _finish(replayed_one.task.id))
    assert content_of(replayed_two.task.id) != content_of(second.task.id)  # always runs


def test_the_progress_bar_draws_only_on_a_terminal() -> None:
    import io

    from indexify.progress import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain, terminal = io.StringIO(), Terminal()
    for stream in (plain, terminal):
        bar = ProgressBar("replaying g", 4, stream)
        bar.update(1)
        bar.update(4, failed=1)
        bar.close()
    assert plain.getvalue() == ""
    assert terminal.getvalue().endswith("\rreplaying g [" + "#" * 30 + "] 4/4 (1 failed)\n")
    assert "[#######......................." in terminal.getvalue()
