"""The programming model, end to end through ``create_client(in_process=True)``.

No ``from __future__ import annotations`` here: functions defined inside tests must keep real
annotation objects so their hints resolve.
"""

import signal
import threading
import time
from typing import Any, Optional, Union

import pytest
from pydantic import BaseModel

from indexify import (
    Graph,
    Image,
    IndexifyClient,
    IndexifyFunction,
    IndexifyRouter,
    InvalidInputError,
    InvocationError,
    NonRetryable,
    NotFoundError,
    RetryPolicy,
    create_client,
    indexify_function,
    indexify_router,
)
from indexify.functions import SPEC_ATTRIBUTE


class Total(BaseModel):
    value: int = 0


class Point:
    """Not JSON-able: stored with cloudpickle."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (other.x, other.y) == (self.x, self.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))


@indexify_function()
def numbers(n: int) -> list[int]:
    return list(range(n))


@indexify_function()
def double(x: int) -> int:
    return 2 * x


@indexify_function(accumulate=Total)
def add_up(total: Total, x: int) -> Total:
    return Total(value=total.value + x)


def run(client: IndexifyClient, graph: Graph, **kwargs: Any) -> str:
    client.register_compute_graph(graph)
    return client.invoke_graph_with_object(graph.name, **kwargs)


def test_decorated_functions_stay_directly_callable() -> None:
    assert numbers(3) == [0, 1, 2]
    assert double(21) == 42
    assert add_up(Total(value=1), 2) == Total(value=3)
    assert getattr(double, SPEC_ATTRIBUTE).name == "double"


def test_list_output_fans_out(client: IndexifyClient) -> None:
    g = Graph("fan_out", start_node=numbers).add_edge(numbers, double)
    inv = run(client, g, n=5)
    assert client.graph_outputs("fan_out", inv, "numbers") == [0, 1, 2, 3, 4]
    assert sorted(client.graph_outputs("fan_out", inv, "double")) == [0, 2, 4, 6, 8]
    status = client.invocation_status("fan_out", inv)
    assert status.status == "succeeded"
    assert status.outputs == {"numbers": 5, "double": 5}
    assert len([t for t in status.tasks if t.function == "double"]) == 5


def test_dict_output_is_spread_as_keyword_arguments(client: IndexifyClient) -> None:
    @indexify_function()
    def make_box(n: int) -> dict[str, int]:
        return {"height": n, "width": 3}

    @indexify_function()
    def area(width: int, height: int) -> int:
        return width * height

    g = Graph("boxes", start_node=make_box).add_edge(make_box, area)
    inv = run(client, g, n=4)
    assert client.graph_outputs("boxes", inv, "make_box") == [{"height": 4, "width": 3}]
    assert client.graph_outputs("boxes", inv, "area") == [12]


def test_dict_output_into_a_single_parameter_stays_a_dict(client: IndexifyClient) -> None:
    @indexify_function()
    def make_map(n: int) -> dict[str, int]:
        return {"a": n, "b": n + 1}

    @indexify_function()
    def keys(mapping: dict[str, int]) -> list[str]:
        return sorted(mapping)

    g = Graph("maps", start_node=make_map).add_edge(make_map, keys)
    assert client.graph_outputs("maps", run(client, g, n=1), "keys") == ["a", "b"]


def test_tuple_output_is_spread_as_positional_arguments(client: IndexifyClient) -> None:
    @indexify_function()
    def pair(n: int) -> tuple[int, str]:
        return n, "x"

    @indexify_function()
    def repeat(count: int, text: str) -> str:
        return text * count

    g = Graph("pairs", start_node=pair).add_edge(pair, repeat)
    inv = run(client, g, n=3)
    assert client.graph_outputs("pairs", inv, "pair") == [(3, "x")]
    assert client.graph_outputs("pairs", inv, "repeat") == ["xxx"]


def test_none_output_starts_nothing_downstream(client: IndexifyClient) -> None:
    ran: list[int] = []

    @indexify_function()
    def maybe(n: int) -> Optional[int]:  # noqa: UP045 - the seed's spelling
        return n if n > 0 else None

    @indexify_function()
    def after(x: int) -> int:
        ran.append(x)
        return x

    g = Graph("maybe", start_node=maybe).add_edge(maybe, after)
    inv = run(client, g, n=0)
    assert client.invocation_status("maybe", inv).status == "succeeded"
    assert client.graph_outputs("maybe", inv, "maybe") == []
    assert client.graph_outputs("maybe", inv, "after") == []
    assert ran == []
    inv = run(client, g, n=7)
    assert client.graph_outputs("maybe", inv, "after") == [7]
    assert ran == [7]


def test_reducer_is_called_once_per_value_from_defaults_with_one_final_output(
    client: IndexifyClient,
) -> None:
    calls: list[tuple[Total, int]] = []

    @indexify_function(accumulate=Total)
    def tally(total: Total, x: int) -> Total:
        calls.append((total.model_copy(), x))
        return Total(value=total.value + x)

    g = Graph("tally", start_node=numbers).add_edge(numbers, double).add_edge(double, tally)
    inv = run(client, g, n=6)
    assert client.graph_outputs("tally", inv, "tally") == [Total(value=30)]
    assert len(calls) == 6
    assert calls[0][0] == Total()
    assert sorted(x for _, x in calls) == [0, 2, 4, 6, 8, 10]


def test_reducer_over_ten_thousand_values_gives_the_exact_sum(client: IndexifyClient) -> None:
    @indexify_function()
    def downstream(total: Total) -> int:
        return total.value

    g = Graph("big_sum", start_node=numbers).add_edge(numbers, double)
    g.add_edge(double, add_up).add_edge(add_up, downstream)
    inv = run(client, g, n=10_000)
    assert client.graph_outputs("big_sum", inv, "add_up") == [Total(value=99_990_000)]
    assert client.graph_outputs("big_sum", inv, "downstream") == [99_990_000]


def test_reducer_in_small_batches_still_reduces_everything() -> None:
    client = create_client(in_process=True, max_reduce_batch=7)
    g = Graph("batched", start_node=numbers).add_edge(numbers, add_up)
    inv = run(client, g, n=100)
    assert client.graph_outputs("batched", inv, "add_up") == [Total(value=4950)]
    steps = [t for t in client.invocation_status("batched", inv).tasks if t.kind == "reduce"]
    assert len(steps) == 15


# -- routers --------------------------------------------------------------------------------

branch_calls: list[str] = []


@indexify_function()
def on_even(x: int) -> str:
    branch_calls.append(f"even:{x}")
    return f"{x} is even"


@indexify_function()
def on_odd(x: int) -> str:
    branch_calls.append(f"odd:{x}")
    return f"{x} is odd"


@indexify_router()
def parity(x: int) -> list[Union[on_even, on_odd]]:
    return [on_even] if x % 2 == 0 else [on_odd]


@indexify_function()
def identity(n: int) -> int:
    return n


def parity_graph() -> Graph:
    g = Graph("parity", start_node=identity).add_edge(identity, parity)
    return g.route(parity, [on_even, on_odd])


def test_router_routes_per_invocation(client: IndexifyClient) -> None:
    branch_calls.clear()
    client.register_compute_graph(parity_graph())
    even = client.invoke_graph_with_object("parity", n=4)
    odd = client.invoke_graph_with_object("parity", n=7)
    assert client.graph_outputs("parity", even, "on_even") == ["4 is even"]
    assert client.graph_outputs("parity", even, "on_odd") == []
    assert client.graph_outputs("parity", odd, "on_odd") == ["7 is odd"]
    assert client.graph_outputs("parity", odd, "on_even") == []
    assert client.graph_outputs("parity", odd, "parity") == []
    assert branch_calls == ["even:4", "odd:7"]


def test_router_routes_per_input_within_one_invocation(client: IndexifyClient) -> None:
    g = Graph("parity_map", start_node=numbers).add_edge(numbers, parity)
    g.route(parity, [on_even, on_odd])
    inv = run(client, g, n=5)
    assert sorted(client.graph_outputs("parity_map", inv, "on_even")) == [
        "0 is even",
        "2 is even",
        "4 is even",
    ]
    assert sorted(client.graph_outputs("parity_map", inv, "on_odd")) == ["1 is odd", "3 is odd"]


def test_router_may_return_nothing_or_a_single_function(client: IndexifyClient) -> None:
    @indexify_router()
    def gate(x: int) -> Optional[on_even]:  # noqa: UP045
        return on_even if x > 10 else None

    g = Graph("gate", start_node=identity).add_edge(identity, gate).route(gate, [on_even])
    assert client.graph_outputs("gate", run(client, g, n=3), "on_even") == []
    assert client.graph_outputs("gate", run(client, g, n=12), "on_even") == ["12 is even"]


def test_router_as_start_node_passes_the_invocation_arguments_on(
    client: IndexifyClient,
) -> None:
    @indexify_router()
    def first(x: int) -> Union[on_even, on_odd]:
        return on_even if x % 2 == 0 else on_odd

    g = Graph("routed_start", start_node=first).route(first, [on_even, on_odd])
    assert client.graph_outputs("routed_start", run(client, g, x=8), "on_even") == ["8 is even"]
    assert client.graph_outputs("routed_start", run(client, g, x=9), "on_odd") == ["9 is odd"]


@pytest.mark.parametrize("given", [Total(value=5), {"value": 5}], ids=["model", "json"])
def test_start_node_arguments_are_decoded_to_their_annotations(
    client: IndexifyClient, given: Any
) -> None:
    @indexify_function()
    def start(total: Total, scale: int = 2) -> int:
        assert isinstance(total, Total)
        return total.value * scale

    g = Graph("typed_start", start_node=start)
    assert client.graph_outputs("typed_start", run(client, g, total=given), "start") == [10]


# -- failures -------------------------------------------------------------------------------


def test_failing_function_fails_the_invocation_and_stops_downstream(
    client: IndexifyClient,
) -> None:
    ran: list[int] = []

    @indexify_function()
    def explode(x: int) -> int:
        raise ValueError(f"cannot handle {x}")

    @indexify_function()
    def after(x: int) -> int:
        ran.append(x)
        return x

    g = Graph("explodes", start_node=identity).add_edge(identity, explode)
    g.add_edge(explode, after)
    inv = run(client, g, n=3)

    status = client.invocation_status("explodes", inv)
    assert status.status == "failed"
    assert status.error_function == "explode"
    assert status.error is not None
    assert "cannot handle 3" in status.error.message
    assert status.error.type == "ValueError"
    assert "explode" in status.error.traceback
    assert "ValueError" in status.error.traceback
    with pytest.raises(InvocationError) as info:
        client.graph_outputs("explodes", inv, "explode")
    assert info.value.invocation_id == inv
    assert "cannot handle 3" in str(info.value)
    assert client.graph_outputs("explodes", inv, "identity") == [3]
    assert client.graph_outputs("explodes", inv, "after") == []
    assert ran == []
    (log,) = client.logs("explodes", inv, "explode")
    assert "cannot handle 3" in log.traceback


def test_wrong_invocation_arguments_are_refused_at_invoke(client: IndexifyClient) -> None:
    """As on the server (HTTP 400): nothing is started for arguments the start node rejects."""
    client.register_compute_graph(Graph("args", start_node=double))
    with pytest.raises(InvalidInputError) as refused:
        client.invoke_graph_with_object("args", y=1)
    assert "['y']" in str(refused.value) and "['x']" in str(refused.value)
    assert client.invocations("args") == []


def test_retries_until_success(client: IndexifyClient) -> None:
    attempts: list[int] = []

    @indexify_function(retries=RetryPolicy(max_retries=2, initial_delay_sec=0.01))
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return x + 1

    inv = run(client, Graph("flaky", start_node=flaky), x=1)
    status = client.invocation_status("flaky", inv)
    assert status.status == "succeeded"
    assert client.graph_outputs("flaky", inv, "flaky") == [2]
    (task,) = status.tasks
    assert task.attempt == 3
    assert [a.outcome for a in task.attempts] == ["failure", "failure", "success"]
    assert len(attempts) == 3


def test_retries_exhausted_fails(client: IndexifyClient) -> None:
    attempts: list[int] = []

    @indexify_function(retries=RetryPolicy(max_retries=1, initial_delay_sec=0.01))
    def always(x: int) -> int:
        attempts.append(x)
        raise ConnectionError("down")

    inv = run(client, Graph("always", start_node=always), x=1)
    assert client.invocation_status("always", inv).status == "failed"
    assert len(attempts) == 2


def test_non_retryable_skips_retries(client: IndexifyClient) -> None:
    attempts: list[int] = []

    @indexify_function(retries=RetryPolicy(max_retries=5, initial_delay_sec=0.01))
    def refuse(x: int) -> int:
        attempts.append(x)
        raise NonRetryable("this input can never work")

    inv = run(client, Graph("refuse", start_node=refuse), x=1)
    status = client.invocation_status("refuse", inv)
    assert status.status == "failed"
    assert status.error is not None and status.error.kind == "permanent"
    assert "never work" in status.error.message
    assert attempts == [1]
    (task,) = status.tasks
    assert len(task.attempts) == 1


# -- values keep their type -----------------------------------------------------------------


class Inner(BaseModel):
    label: str


class Outer(BaseModel):
    inner: Inner
    values: list[float]


VALUES = [
    pytest.param(Outer(inner=Inner(label="a"), values=[1.5]), Outer, [None], id="model"),
    pytest.param((1, "a", 2.5), tuple[int, str, float], [None], id="tuple"),
    pytest.param({"a": [1, 2], "b": []}, dict[str, list[int]], [None], id="dict"),
    pytest.param({1: "one"}, dict, [None], id="dict-int-keys"),
    pytest.param([Inner(label="x"), Inner(label="y")], list[Inner], [0, 1], id="list-of-models"),
    pytest.param(Point(1, 2), Point, [None], id="custom-class"),
    pytest.param(2.5, float, [None], id="float"),
    pytest.param("héllo", str, [None], id="str"),
    pytest.param({1, 2}, set[int], [None], id="set"),
    pytest.param(b"\x00bytes", bytes, [None], id="bytes"),
    pytest.param(float("nan"), float, [None], id="nan"),
]


@pytest.mark.parametrize(("value", "hint", "positions"), VALUES)
def test_outputs_decode_back_to_the_returned_type(
    client: IndexifyClient, value: Any, hint: Any, positions: list[int | None]
) -> None:
    def produce(n: int) -> Any:
        return value

    produce.__annotations__["return"] = hint
    g = Graph("typed", start_node=indexify_function()(produce))
    outputs = client.graph_outputs("typed", run(client, g, n=1), "produce")
    expected = [value if i is None else value[i] for i in positions]
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected, strict=True):
        assert type(got) is type(want)
        if want == want:  # nan != nan
            assert got == want
        else:
            assert got != got


def test_custom_class_reaches_the_next_function(client: IndexifyClient) -> None:
    @indexify_function()
    def make_point(n: int) -> Point:
        return Point(n, n + 1)

    @indexify_function()
    def norm(p: Point) -> int:
        return p.x + p.y

    g = Graph("points", start_node=make_point).add_edge(make_point, norm)
    assert client.graph_outputs("points", run(client, g, n=2), "norm") == [5]


# -- class-based functions ------------------------------------------------------------------


class Scale(IndexifyFunction):
    name = "scale"
    description = "multiplies by ten"

    def __init__(self) -> None:
        self.factor = 10

    def run(self, x: int) -> int:
        return x * self.factor


class Negate(IndexifyFunction):
    def run(self, x: int) -> int:
        return -x


class Summer(IndexifyFunction):
    accumulate = Total

    def run(self, total: Total, x: int) -> Total:
        return Total(value=total.value + x)


class SignRouter(IndexifyRouter):
    name = "sign_router"

    def run(self, x: int) -> Union[Scale, Negate]:
        return Scale if x >= 2 else Negate


def test_class_based_functions_and_routers(client: IndexifyClient) -> None:
    g = Graph("classes", start_node=numbers).add_edge(numbers, SignRouter)
    g.route(SignRouter, [Scale, Negate])
    g.add_edge(Scale, Summer).add_edge(Negate, Summer)
    definition = g.definition()
    assert set(definition.nodes) == {"numbers", "sign_router", "scale", "Negate", "Summer"}
    assert definition.nodes["scale"].description == "multiplies by ten"
    assert definition.nodes["Summer"].reducer
    assert definition.nodes["sign_router"].kind == "router"
    inv = run(client, g, n=4)
    assert sorted(client.graph_outputs("classes", inv, "scale")) == [20, 30]
    assert sorted(client.graph_outputs("classes", inv, "Negate")) == [-1, 0]
    assert client.graph_outputs("classes", inv, "Summer") == [Total(value=49)]
    assert Scale().run(3) == 30


# -- client surface -------------------------------------------------------------------------


def test_graphs_namespaces_and_status() -> None:
    client = create_client(in_process=True, namespace="team-a")
    assert client.namespaces() == ["default", "team-a"]
    client.create_namespace("team-b")
    assert client.namespaces() == ["default", "team-a", "team-b"]
    assert client.graphs() == []
    run(client, Graph("zeta", start_node=double), x=1)
    inv = run(client, Graph("alpha", start_node=numbers).add_edge(numbers, double), n=2)
    assert client.graphs() == ["alpha", "zeta"]
    info = client.graph("alpha")
    assert (info.name, info.namespace) == ("alpha", "team-a")
    assert info.version == info.definition.version
    status = client.invocation_status("alpha", inv)
    assert (status.id, status.graph, status.status) == (inv, "alpha", "succeeded")
    assert status.graph_version == info.version
    assert status.error is None
    assert [i.id for i in client.invocations("alpha")] == [inv]
    assert client.wait_for_invocation("alpha", inv).status == "succeeded"
    client.delete_graph("zeta")
    assert client.graphs() == ["alpha"]


def test_unknown_names_raise_not_found(client: IndexifyClient) -> None:
    inv = run(client, Graph("known", start_node=double), x=1)
    with pytest.raises(NotFoundError):
        client.invoke_graph_with_object("unknown", x=1)
    with pytest.raises(NotFoundError):
        client.graph_outputs("known", "no-such-invocation", "double")
    with pytest.raises(NotFoundError):
        client.graph_outputs("known", inv, "no_such_function")


def test_registering_an_unchanged_graph_keeps_its_version(client: IndexifyClient) -> None:
    first = client.register_compute_graph(parity_graph())
    second = client.register_compute_graph(parity_graph())
    assert first.version == second.version


def test_rerun_graph_gives_identical_outputs(client: IndexifyClient) -> None:
    g = Graph("rerun", start_node=numbers).add_edge(numbers, double).add_edge(double, add_up)
    client.register_compute_graph(g)
    invocations = [client.invoke_graph_with_object("rerun", n=n) for n in (3, 5)]
    before = [client.graph_outputs("rerun", inv, "add_up") for inv in invocations]
    replay = client.rerun_graph("rerun")
    assert (replay.status, replay.total, replay.done, replay.failed) == ("succeeded", 2, 2, 0)
    assert len(client.invocations("rerun")) == 2  # in place: no new invocations
    after = [client.graph_outputs("rerun", inv, "add_up") for inv in invocations]
    assert after == before == [[Total(value=6)], [Total(value=20)]]
    for inv in invocations:
        status = client.invocation_status("rerun", inv)
        assert (status.status, status.generation) == ("succeeded", 1)
        # nothing changed: every call is reused; the reducer's steps always run again
        ran = {t.function for t in status.tasks if t.reused_from is None}
        reused = [t for t in status.tasks if t.reused_from is not None]
        assert ran == {"add_up"}
        assert {t.function for t in reused} == {"numbers", "double"}
        assert status.reused == len(reused) > 0


def test_cancelling_a_finished_invocation_changes_nothing(client: IndexifyClient) -> None:
    inv = run(client, Graph("done", start_node=double), x=2)
    client.cancel_invocation("done", inv)
    assert client.invocation_status("done", inv).status == "succeeded"
    assert client.graph_outputs("done", inv, "double") == [4]


def test_logs_capture_what_a_function_printed(client: IndexifyClient) -> None:
    @indexify_function()
    def chatty(x: int) -> int:
        print(f"working on {x}")
        return x

    inv = run(client, Graph("chatty", start_node=chatty), x=5)
    (log,) = client.logs("chatty", inv, "chatty")
    assert log.stdout == "working on 5\n"
    assert log.traceback == ""


# -- images and placement -------------------------------------------------------------------


def test_image_and_placement_are_recorded_in_the_definition() -> None:
    image = (
        Image().name("gpu-image").base_image("python:3.11-slim").tag("1.2").run("pip install numpy")
    )

    @indexify_function(image=image, placement_constraints={"gpu": "a100", "zone": "eu"})
    def embed(x: int) -> int:
        return x

    @indexify_function(placement_constraints=["cpu=large"])
    def store(x: int) -> int:
        return x

    g = Graph("placed", start_node=embed).add_edge(embed, store).add_edge(store, double)
    nodes = g.definition().nodes
    assert nodes["embed"].image is not None
    assert nodes["embed"].image.name == "gpu-image"
    assert nodes["embed"].image.tag == "1.2"
    assert nodes["embed"].image.base_image == "python:3.11-slim"
    assert nodes["embed"].image.run_commands == ("pip install numpy",)
    assert nodes["embed"].placement_constraints == {"gpu": "a100", "zone": "eu"}
    assert nodes["embed"].required_labels == {"gpu": "a100", "image": "gpu-image", "zone": "eu"}
    assert nodes["store"].placement_constraints == {"cpu": "large"}
    assert nodes["store"].placement_key == "cpu-large"
    assert nodes["double"].image is None
    assert nodes["double"].placement_key == "any"
    keys = {n.placement_key for n in nodes.values()}
    assert len(keys) == 3
    assert all(key.replace("-", "").replace("_", "").isalnum() for key in keys)


# -- timeouts (as on the server: a user error of type TimeoutError, retried per retries=) ----

LONG_SLEEP = 30.0  # far beyond every timeout below: a test that waited for it would hang


def test_timeout_interrupts_the_function_and_fails_the_invocation(
    client: IndexifyClient,
) -> None:
    reached: list[int] = []
    handler_before = signal.getsignal(signal.SIGALRM)

    @indexify_function(timeout=0.5)
    def stuck(x: int) -> int:
        print("started")
        time.sleep(LONG_SLEEP)
        reached.append(x)
        return x

    started = time.monotonic()
    inv = run(client, Graph("stuck", start_node=stuck), x=1)
    assert time.monotonic() - started < LONG_SLEEP / 2  # sanity bound, not a benchmark

    assert reached == []  # interrupted inside the sleep: the line after it never ran
    status = client.invocation_status("stuck", inv)
    assert status.status == "failed"
    assert status.error_function == "stuck"
    error = status.error
    assert error is not None
    # the executor's words (tests/integration/test_executor.py checks the same on the server)
    assert (error.kind, error.type) == ("user", "TimeoutError")
    assert error.message == "function 'stuck' exceeded its timeout of 0.5 s"
    assert "time.sleep(LONG_SLEEP)" in error.traceback  # where it was at the deadline
    with pytest.raises(InvocationError) as failed:
        client.graph_outputs("stuck", inv, "stuck")
    assert failed.value.invocation_id == inv
    (task,) = status.tasks
    assert [a.outcome for a in task.attempts] == ["failure"]
    # the previous SIGALRM handler is back, and pytest-timeout's own timer still runs
    assert signal.getsignal(signal.SIGALRM) is handler_before
    if handler_before not in (signal.SIG_DFL, signal.SIG_IGN, None):
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0


def test_timeout_counts_against_retries(client: IndexifyClient) -> None:
    calls: list[int] = []

    @indexify_function(timeout=0.2, retries=RetryPolicy(max_retries=1, initial_delay_sec=0.01))
    def slow(x: int) -> int:
        calls.append(x)
        time.sleep(LONG_SLEEP)
        return x

    inv = run(client, Graph("slow", start_node=slow), x=7)
    status = client.invocation_status("slow", inv)
    assert status.status == "failed"
    assert calls == [7, 7]  # the first attempt and one retry, both interrupted
    (task,) = status.tasks
    assert task.attempt == 2
    assert [a.outcome for a in task.attempts] == ["failure", "failure"]
    assert status.error is not None and status.error.type == "TimeoutError"


def test_a_retry_after_a_timeout_may_succeed(client: IndexifyClient) -> None:
    calls: list[int] = []

    @indexify_function(timeout=0.2, retries=RetryPolicy(max_retries=2, initial_delay_sec=0.01))
    def warms_up(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            time.sleep(LONG_SLEEP)
        return x + 1

    @indexify_function()
    def after(x: int) -> int:
        return 10 * x

    inv = run(client, Graph("warms", start_node=warms_up).add_edge(warms_up, after), x=1)
    assert client.invocation_status("warms", inv).status == "succeeded"
    assert client.graph_outputs("warms", inv, "after") == [20]
    assert len(calls) == 2


def test_a_timeout_that_is_not_reached_changes_nothing(client: IndexifyClient) -> None:
    seen: dict[str, Any] = {}
    handler_before = signal.getsignal(signal.SIGALRM)

    @indexify_function()
    def untimed(x: int) -> int:
        seen["untimed"] = (signal.getsignal(signal.SIGALRM), threading.current_thread())
        print("no timeout here")
        return x + 1

    @indexify_function(timeout=30)
    def timed(x: int) -> int:
        seen["timed"] = threading.current_thread()
        return x * 2

    g = Graph("calm", start_node=untimed).add_edge(untimed, timed)
    inv = run(client, g, x=1)
    assert client.graph_outputs("calm", inv, "timed") == [4]
    # no timer and no thread for a function without a timeout; its logs are kept
    assert seen["untimed"] == (handler_before, threading.main_thread())
    assert seen["timed"] is threading.main_thread()  # interrupted by a signal, not a thread
    (log,) = client.logs("calm", inv, "untimed")
    assert log.stdout == "no timeout here\n"
    assert signal.getsignal(signal.SIGALRM) is handler_before


def test_off_the_main_thread_a_timed_out_function_is_abandoned() -> None:
    client = create_client(in_process=True)
    release = threading.Event()
    ran_on: list[threading.Thread] = []

    @indexify_function(timeout=0.2)
    def blocked(x: int) -> int:
        ran_on.append(threading.current_thread())
        release.wait(LONG_SLEEP)
        return x

    client.register_compute_graph(Graph("blocked", start_node=blocked))
    invocations: list[str] = []
    caller = threading.Thread(
        target=lambda: invocations.append(client.invoke_graph_with_object("blocked", x=1))
    )
    caller.start()
    caller.join(LONG_SLEEP / 2)
    release.set()  # let the abandoned thread end
    assert not caller.is_alive()
    (inv,) = invocations
    error = client.invocation_status("blocked", inv).error
    assert error is not None and (error.kind, error.type) == ("user", "TimeoutError")
    assert error.message == "function 'blocked' exceeded its timeout of 0.2 s"
    assert "release.wait(LONG_SLEEP)" in error.traceback
    assert "abandoned thread" in error.traceback
    (thread,) = ran_on
    assert thread is not caller
    thread.join(5)


# -- versions: an invocation is read through the version it ran on --------------------------


def test_old_invocations_are_read_through_their_own_version(client: IndexifyClient) -> None:
    @indexify_function()
    def first_step(x: int) -> Total:
        print("old code")
        return Total(value=x)

    @indexify_function()
    def shared(total: Total) -> Total:
        return Total(value=total.value + 1)

    old = Graph("renamed", start_node=first_step).add_edge(first_step, shared)
    old_inv = run(client, old, x=1)
    old_version = client.graph("renamed").version

    @indexify_function()
    def renamed_step(x: int) -> int:
        return x * 100

    @indexify_function(name="shared")
    def shared_now(x: int) -> int:  # same name, other type: read with each version's hints
        return x + 2

    new = Graph("renamed", start_node=renamed_step).add_edge(renamed_step, shared_now)
    new_inv = run(client, new, x=1)
    assert client.graph("renamed").version != old_version

    assert client.graph_outputs("renamed", old_inv, "first_step") == [Total(value=1)]
    assert client.graph_outputs("renamed", old_inv, "shared") == [Total(value=2)]
    assert client.graph_outputs("renamed", new_inv, "renamed_step") == [100]
    assert client.graph_outputs("renamed", new_inv, "shared") == [102]
    (log,) = client.logs("renamed", old_inv, "first_step")
    assert log.stdout == "old code\n"
    status = client.invocation_status("renamed", old_inv)
    assert (status.status, status.graph_version) == ("succeeded", old_version)
    client.cancel_invocation("renamed", old_inv)  # finished: nothing changes
    assert client.invocation_status("renamed", old_inv).status == "succeeded"
    # a rerun runs on the current version, as on the server
    rerun = client.rerun_invocation("renamed", old_inv)
    assert client.graph_outputs("renamed", rerun, "shared") == [102]


def test_a_function_missing_from_the_invocations_version_is_not_found(
    client: IndexifyClient,
) -> None:
    @indexify_function()
    def before(x: int) -> int:
        return x

    old_inv = run(client, Graph("moved", start_node=before), x=1)
    old_version = client.graph("moved").version

    @indexify_function()
    def later(x: int) -> int:
        return x

    run(client, Graph("moved", start_node=later), x=1)
    # the current version's function, and one in neither version: the server's 404 message
    for name in ("later", "nowhere"):
        with pytest.raises(NotFoundError) as missing:
            client.graph_outputs("moved", old_inv, name)
        assert str(missing.value) == (
            f"graph 'moved' (version {old_version}) has no function {name!r}; it has ['before']"
        )
        with pytest.raises(NotFoundError):
            client.logs("moved", old_inv, name)
