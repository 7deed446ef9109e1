"""Graph validation: each mistake raises GraphValidationError naming the function and parameter.

No ``from __future__ import annotations`` here: functions defined inside tests must keep real
annotation objects so their hints resolve.
"""

import subprocess
import sys
import textwrap
from typing import Union

import pytest
from pydantic import BaseModel

from indexify import (
    Graph,
    GraphDefinition,
    GraphValidationError,
    IndexifyError,
    create_client,
    indexify_function,
    indexify_router,
)


class Total(BaseModel):
    value: int = 0


@indexify_function()
def numbers(n: int) -> list[int]:
    return list(range(n))


@indexify_function()
def double(x: int) -> int:
    return 2 * x


@indexify_function(accumulate=Total)
def add_up(total: Total, x: int) -> Total:
    return Total(value=total.value + x)


@indexify_function()
def describe(total: Total) -> str:
    return f"total={total.value}"


@indexify_function()
def shout(total: Total) -> str:
    return f"TOTAL={total.value}!"


@indexify_router()
def pick(total: Total) -> Union[describe, shout]:
    return describe if total.value % 2 == 0 else shout


def summing_graph(name: str = "summing") -> Graph:
    g = Graph(name, start_node=numbers, description="double and sum")
    g.add_edge(numbers, double)
    g.add_edge(double, add_up)
    g.add_edge(add_up, pick)
    g.route(pick, [describe, shout])
    return g


def raises(call, *, function: str | None, parameter: str | None) -> GraphValidationError:
    with pytest.raises(GraphValidationError) as info:
        call()
    assert isinstance(info.value, IndexifyError)
    assert (info.value.function, info.value.parameter) == (function, parameter)
    assert str(info.value)
    return info.value


# -- functions ------------------------------------------------------------------------------


def test_undecorated_function_is_refused() -> None:
    def plain(x: int) -> int:
        return x

    err = raises(lambda: Graph("g", start_node=plain), function="plain", parameter=None)
    assert "@indexify_function" in str(err)
    g = Graph("g", start_node=double)
    raises(lambda: g.add_edge(double, plain), function="plain", parameter=None)


def test_missing_parameter_annotation_names_the_parameter() -> None:
    @indexify_function()
    def untyped(x, y: int) -> int:  # type: ignore[no-untyped-def]
        return y

    err = raises(lambda: Graph("g", start_node=untyped), function="untyped", parameter="x")
    assert "annotation" in str(err)


def test_missing_return_annotation_is_refused() -> None:
    @indexify_function()
    def no_return(x: int):  # type: ignore[no-untyped-def]
        return x

    raises(lambda: Graph("g", start_node=no_return), function="no_return", parameter="return")


def test_class_based_function_needs_annotations_too() -> None:
    from indexify import IndexifyFunction

    class Untyped(IndexifyFunction):
        def run(self, x) -> int:  # type: ignore[no-untyped-def]
            return 1

    raises(lambda: Graph("g", start_node=Untyped), function="Untyped", parameter="x")


def test_router_annotation_naming_a_function_outside_its_targets() -> None:
    g = Graph("g", start_node=numbers).add_edge(numbers, double)
    g.add_edge(double, add_up).add_edge(add_up, pick).route(pick, [describe])
    err = raises(g.definition, function="pick", parameter="return")
    assert "shout" in str(err)


def test_router_without_targets() -> None:
    g = Graph("g", start_node=numbers).add_edge(numbers, double)
    g.add_edge(double, add_up).add_edge(add_up, pick)
    raises(g.definition, function="pick", parameter=None)


def test_add_edge_from_a_router_is_refused() -> None:
    g = Graph("g", start_node=pick)
    raises(lambda: g.add_edge(pick, describe), function="pick", parameter=None)


def test_route_from_a_plain_function_is_refused() -> None:
    g = Graph("g", start_node=double)
    raises(lambda: g.route(double, [describe]), function="double", parameter=None)


def test_two_different_functions_with_one_name() -> None:
    @indexify_function(name="double")
    def other_double(x: int) -> int:
        return x + x

    g = Graph("g", start_node=numbers).add_edge(numbers, double)
    raises(lambda: g.add_edge(numbers, other_double), function="double", parameter="name")


def test_adding_the_same_function_twice_is_fine() -> None:
    g = Graph("g", start_node=numbers).add_edge(numbers, double).add_edge(numbers, double)
    assert g.definition().edges == {"numbers": ("double",)}


def test_cycle_is_refused() -> None:
    @indexify_function()
    def ping(x: int) -> int:
        return x

    @indexify_function()
    def pong(x: int) -> int:
        return x

    g = Graph("g", start_node=ping).add_edge(ping, pong).add_edge(pong, ping)
    with pytest.raises(GraphValidationError) as info:
        g.definition()
    assert info.value.function in ("ping", "pong")
    assert "cycle" in str(info.value)


def test_self_loop_is_refused() -> None:
    g = Graph("g", start_node=double).add_edge(double, double)
    raises(g.definition, function="double", parameter=None)


def test_unreachable_node_is_refused() -> None:
    @indexify_function()
    def orphan(x: int) -> int:
        return x

    g = Graph("g", start_node=numbers).add_edge(numbers, double).add_edge(orphan, double)
    err = raises(g.definition, function="orphan", parameter=None)
    assert "reached" in str(err)


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["my graph", "my.graph", "", "a/b", "x" * 101, "é"])
def test_invalid_graph_names(name: str) -> None:
    raises(lambda: Graph(name, start_node=double), function=None, parameter="name")


@pytest.mark.parametrize("name", ["my fn", "my.fn", "a:b", "x" * 101])
def test_invalid_function_names(name: str) -> None:
    def fn(x: int) -> int:
        return x

    raises(lambda: indexify_function(name=name)(fn), function=name, parameter="name")


def test_function_named_with_a_dot_via_its_python_name() -> None:
    from indexify import IndexifyFunction

    with pytest.raises(GraphValidationError) as info:

        class Doubler(IndexifyFunction):
            name = "doubler.v2"

            def run(self, x: int) -> int:
                return 2 * x

    assert (info.value.function, info.value.parameter) == ("doubler.v2", "name")


@pytest.mark.parametrize("name", ["a", "A-b_C9", "sequence_summer", "x" * 100])
def test_valid_names(name: str) -> None:
    @indexify_function(name=name)
    def fn(x: int) -> int:
        return x

    assert Graph(name, start_node=fn).definition().nodes[name].name == name


# -- reducers -------------------------------------------------------------------------------


def test_reducer_with_one_parameter() -> None:
    @indexify_function(accumulate=Total)
    def lonely(total: Total) -> Total:
        return total

    raises(lambda: Graph("g", start_node=lonely), function="lonely", parameter="accumulate")


def test_accumulator_without_defaults_is_refused_at_decoration() -> None:
    class NoDefaults(BaseModel):
        value: int

    def reduce(acc: NoDefaults, x: int) -> NoDefaults:
        return acc

    raises(
        lambda: indexify_function(accumulate=NoDefaults)(reduce),
        function="reduce",
        parameter="accumulate",
    )


def test_router_cannot_accumulate() -> None:
    from indexify import IndexifyRouter

    with pytest.raises(GraphValidationError) as info:

        class Accumulating(IndexifyRouter):
            accumulate = Total

            def run(self, x: int) -> None:
                return None

    assert (info.value.function, info.value.parameter) == ("Accumulating", "accumulate")


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"retries": -1}, "retries"),
        ({"timeout": 0}, "timeout"),
        ({"encoder": "yaml"}, "encoder"),
        ({"placement_constraints": ["gpu"]}, "placement_constraints"),
        ({"image": "python:3.11"}, "image"),
    ],
)
def test_invalid_options_name_the_option(options: dict, parameter: str) -> None:
    def fn(x: int) -> int:
        return x

    raises(lambda: indexify_function(**options)(fn), function="fn", parameter=parameter)


# -- the definition -------------------------------------------------------------------------


def test_definition_is_json_and_round_trips() -> None:
    definition = summing_graph().definition()
    text = definition.model_dump_json()
    again = GraphDefinition.model_validate_json(text)
    assert again == definition
    assert again.model_dump() == definition.model_dump()
    assert again.start_node == "numbers"
    assert again.edges == {"numbers": ("double",), "double": ("add_up",), "add_up": ("pick",)}
    assert again.routes == {"pick": ("describe", "shout")}
    assert again.nodes["add_up"].reducer and again.nodes["add_up"].accumulator == "Total"
    assert again.nodes["pick"].kind == "router"
    assert again.nodes["double"].parameters == ("x",)
    assert again.nodes["add_up"].parameters == ("total", "x")
    assert again.description == "double and sum"


def test_version_is_stable_for_the_same_graph() -> None:
    first, second = summing_graph(), summing_graph()
    assert first.version == second.version == first.version
    assert len(first.version) == 16


def test_version_changes_when_code_changes() -> None:
    def make(body_returns_double: bool) -> Graph:
        if body_returns_double:

            @indexify_function()
            def step(x: int) -> int:
                return x * 2

        else:

            @indexify_function()
            def step(x: int) -> int:
                return x * 3

        return Graph("versioned", start_node=step)

    assert make(True).version == make(True).version
    assert make(True).version != make(False).version


def test_version_changes_when_structure_changes() -> None:
    plain = Graph("g", start_node=numbers).add_edge(numbers, double)
    wider = Graph("g", start_node=numbers).add_edge(numbers, double).add_edge(numbers, add_up)
    assert plain.version != wider.version


def test_version_changes_when_the_accumulator_changes() -> None:
    def make(default: int) -> Graph:
        class Acc(BaseModel):
            value: int = default
            extra: str = "x" * default

        @indexify_function(accumulate=Acc)
        def fold(acc: Acc, x: int) -> Acc:
            return acc

        return Graph("g", start_node=numbers).add_edge(numbers, fold)

    assert make(1).version != make(2).version


def test_definition_is_cached_until_the_graph_changes() -> None:
    g = Graph("g", start_node=numbers)
    first = g.definition()
    assert g.definition() is first
    g.add_edge(numbers, double)
    assert g.definition() is not first
    assert g.definition().edges == {"numbers": ("double",)}


# -- serialization --------------------------------------------------------------------------


def outputs_of(graph: Graph, n: int) -> tuple[list, list, list]:
    client = create_client(in_process=True)
    client.register_compute_graph(graph)
    inv = client.invoke_graph_with_object(graph.name, n=n)
    assert client.invocation_status(graph.name, inv).status == "succeeded"
    functions = ("add_up", "describe", "shout")
    return tuple(client.graph_outputs(graph.name, inv, fn) for fn in functions)


def test_serialize_round_trip_gives_a_runnable_graph() -> None:
    original = summing_graph()
    copy = Graph.deserialize(original.serialize())
    assert copy is not original
    assert copy.definition() == original.definition()
    assert copy.version == original.version
    for n in (3, 4):
        assert outputs_of(copy, n) == outputs_of(original, n)
    assert outputs_of(copy, 4) == ([Total(value=12)], ["total=12"], [])


def test_deserialize_refuses_other_objects() -> None:
    import cloudpickle

    raises(lambda: Graph.deserialize(cloudpickle.dumps([1])), function=None, parameter=None)


def test_serialized_graph_runs_in_a_process_without_the_test_module(tmp_path) -> None:
    path = tmp_path / "graph.pkl"
    path.write_bytes(summing_graph().serialize())
    script = textwrap.dedent(
        f"""
        import pathlib
        from indexify import Graph, create_client
        graph = Graph.deserialize(pathlib.Path({str(path)!r}).read_bytes())
        client = create_client(in_process=True)
        client.register_compute_graph(graph)
        inv = client.invoke_graph_with_object(graph.name, n=4)
        print(graph.version, client.graph_outputs(graph.name, inv, "describe"))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [summing_graph().version, "['total=12']"]


FUTURE_MODULE = """
from __future__ import annotations

from typing import List

from pydantic import BaseModel

from indexify import Graph, indexify_function


class Acc(BaseModel):
    total: int = 0


@indexify_function()
def spread(n: int) -> List[int]:
    return list(range(n))


@indexify_function(accumulate=Acc)
def add(acc: Acc, x: int) -> Acc:
    return Acc(total=acc.total + x)


def build() -> Graph:
    return Graph(name="future_graph", start_node=spread).add_edge(spread, add)
"""


def test_string_annotations_survive_serialization(tmp_path, monkeypatch) -> None:
    """A workflow module using `from __future__ import annotations` runs where its module is
    absent: the graph carries resolved annotations, not strings naming missing globals."""
    (tmp_path / "future_workflow.py").write_text(FUTURE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import future_workflow  # type: ignore[import-not-found]

    path = tmp_path / "graph.pkl"
    path.write_bytes(future_workflow.build().serialize())
    (tmp_path / "future_workflow.py").unlink()
    script = textwrap.dedent(
        f"""
        import pathlib
        from indexify import Graph, create_client
        graph = Graph.deserialize(pathlib.Path({str(path)!r}).read_bytes())
        client = create_client(in_process=True)
        client.register_compute_graph(graph)
        inv = client.invoke_graph_with_object(graph.name, n=5)
        print(client.graph_outputs(graph.name, inv, "add")[0].total)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd="/", timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["10"]
