"""Replay (backfill) scenarios shared by the in-process tests and the stack tests: each takes
a client and a graph name, and asserts what a user of ``rerun_graph`` / ``rerun_invocation``
may rely on in either mode."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from indexify import (
    Graph,
    IndexifyClient,
    InvalidInputError,
    NotFoundError,
    indexify_function,
    indexify_router,
)
from indexify.errors import ApiError


class Obj(BaseModel):
    x: str


@indexify_function()
def update(x: Obj) -> Obj:
    return Obj(x=x.x + "b")


@indexify_function()
def update2(x: Obj) -> Obj:
    return Obj(x=x.x + "c")


def seed_update_and_rerun(client: IndexifyClient, name: str) -> None:
    """The seed's test_graph_update: after a new version and rerun_graph, the outputs under
    the old invocation id are the new version's."""
    client.register_compute_graph(Graph(name=name, start_node=update))
    inv = client.invoke_graph_with_object(name, block_until_done=True, x=Obj(x="a"))
    assert client.graph_outputs(name, inv, fn_name="update") == [Obj(x="ab")]

    client.register_compute_graph(Graph(name=name, start_node=update2))
    replay = client.rerun_graph(name)
    assert (replay.status, replay.total, replay.done, replay.failed) == ("succeeded", 1, 1, 0)
    assert client.graph_outputs(name, inv, fn_name="update2") == [Obj(x="ac")]
    status = client.invocation_status(name, inv)
    assert (status.status, status.generation) == ("succeeded", 1)
    assert status.graph_version == client.graph(name).version
    [past] = status.history
    assert (past.generation, past.status, past.outputs) == (0, "succeeded", {"update": 1})
    # the previous computation stays readable
    assert client.graph_outputs(name, inv, fn_name="update", generation=0) == [Obj(x="ab")]

    # more invocations, then back to the first version: each is replayed once
    last = ""
    for i in range(3):
        last = client.invoke_graph_with_object(name, block_until_done=True, x=Obj(x=f"{i}"))
    client.register_compute_graph(Graph(name=name, start_node=update))
    replay = client.rerun_graph(name)
    assert (replay.total, replay.done) == (4, 4)
    assert len(client.invocations(name)) == 4  # in place: no new invocations
    assert client.graph_outputs(name, last, fn_name="update") == [Obj(x="2b")]
    assert client.graph_outputs(name, inv, fn_name="update") == [Obj(x="ab")]
    assert client.invocation_status(name, inv).generation == 2
    assert client.invocation_status(name, last).generation == 1


def _chain(name: str, last_step_adds: int) -> Graph:
    @indexify_function(name="parse")
    def parse(text: str) -> int:
        return len(text)

    @indexify_function(name="scale")
    def scale(n: int) -> int:
        return n * 10

    if last_step_adds == 1:

        @indexify_function(name="finish")
        def finish(n: int) -> int:
            return n + 1

    else:

        @indexify_function(name="finish")
        def finish(n: int) -> int:
            return n + 2

    return Graph(name=name, start_node=parse).add_edge(parse, scale).add_edge(scale, finish)


def _ran(client: IndexifyClient, name: str, inv: str) -> dict[str, str]:
    """Function -> 'ran' or 'reused' for each task of the invocation's current computation."""
    return {
        t.function: "reused" if t.reused_from else "ran" for t in client.invocation_tasks(name, inv)
    }


def only_changed_step_reruns(client: IndexifyClient, name: str) -> None:
    """A 3-step chain where only the last step's code changed: the first two are reused."""
    client.register_compute_graph(_chain(name, 1))
    invs = [
        client.invoke_graph_with_object(name, block_until_done=True, text=t) for t in ("ab", "abcd")
    ]
    assert [client.graph_outputs(name, i, "finish") for i in invs] == [[21], [41]]

    client.register_compute_graph(_chain(name, 2))
    replay = client.rerun_graph(name)
    assert (replay.status, replay.done) == ("succeeded", 2)
    assert [client.graph_outputs(name, i, "finish") for i in invs] == [[22], [42]]
    for inv in invs:
        assert _ran(client, name, inv) == {"parse": "reused", "scale": "reused", "finish": "ran"}
        assert client.invocation_status(name, inv).reused == 2

    # from_function on an unchanged graph: that function and what follows run again
    replay = client.rerun_graph(name, from_function="scale")
    assert replay.status == "succeeded"
    for inv in invs:
        assert _ran(client, name, inv) == {"parse": "reused", "scale": "ran", "finish": "ran"}
    assert [client.graph_outputs(name, i, "finish") for i in invs] == [[22], [42]]

    # one invocation, nothing changed: everything is reused
    assert client.rerun_invocation(name, invs[0]) == invs[0]
    client.wait_for_invocation(name, invs[0], timeout=60)
    assert _ran(client, name, invs[0]) == {"parse": "reused", "scale": "reused", "finish": "reused"}
    assert client.graph_outputs(name, invs[0], "finish") == [22]
    assert client.invocation_status(name, invs[0]).generation == 3

    with pytest.raises((InvalidInputError, ApiError), match="no_such"):
        client.rerun_graph(name, from_function="no_such")

    # a selection: only the second invocation
    replay = client.rerun_graph(name, invocations=[invs[1]])
    assert (replay.status, replay.total, replay.done) == ("succeeded", 1, 1)
    assert client.invocation_status(name, invs[1]).generation == 3
    assert client.invocation_status(name, invs[0]).generation == 3  # from the rerun above
    with pytest.raises((NotFoundError, ApiError), match="no-such-invocation"):
        client.rerun_graph(name, invocations=["no-such-invocation"])


@indexify_function()
def measure(n: int) -> int:
    return n


@indexify_router()
def by_size(n: int) -> list[object]:
    return [small] if n < 10 else [large]


@indexify_function()
def small(n: int) -> str:
    return f"small {n}"


@indexify_function()
def large(n: int) -> str:
    return f"large {n}"


def router_decisions_are_reused(client: IndexifyClient, name: str) -> None:
    """A router whose code did not change keeps its decision; the branch reruns only when
    its own code changed."""
    graph = Graph(name=name, start_node=measure).route(by_size, [small, large])
    graph.add_edge(measure, by_size)
    client.register_compute_graph(graph)
    invs = [client.invoke_graph_with_object(name, block_until_done=True, n=n) for n in (3, 30)]
    replay = client.rerun_graph(name)
    assert replay.status == "succeeded"
    assert _ran(client, name, invs[0]) == {
        "measure": "reused",
        "by_size": "reused",
        "small": "reused",
    }
    assert client.graph_outputs(name, invs[1], "large") == ["large 30"]
