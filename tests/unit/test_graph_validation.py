"""Graph validation: each mistake raises GraphValidationError naming the function and parameter.

The graph rules live in one place, ``GraphDefinition.problems()``: the SDK applies them when a
graph is built and the API when one is registered; every problem is reported at once.

No ``from __future__ import annotations`` here: functions defined inside tests must keep real
annotation objects so their hints resolve.
"""

import itertools
import subprocess
import sys
import textwrap
import time
from typing import Any, Optional, Union

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
from indexify.graph_rules import Problem
from services.api.validation import check_name as api_check_name
from services.api.validation import parse_definition
from services.common.errors import BadRequest
from services.common.names import Names


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


@pytest.mark.parametrize("name", ["my graph", "my.graph", "", "a/b", "x" * 101, "é", "abc\n"])
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


# -- the graph rules of a definition (shared by the SDK and the API) ------------------------


def valid_json() -> dict[str, Any]:
    return summing_graph().definition().model_dump(mode="json")


def changed(**changes: Any) -> GraphDefinition:
    """The summing graph's definition with top-level fields replaced."""
    return GraphDefinition.model_validate({**valid_json(), **changes})


def with_node(key: str, /, **fields: Any) -> GraphDefinition:
    """The summing graph's definition with fields of one node replaced (or a node added)."""
    raw = valid_json()
    raw["nodes"][key] = {**raw["nodes"].get(key, {"name": key}), **fields}
    return GraphDefinition.model_validate(raw)


def located(problems: list[Problem]) -> list[tuple[str | None, str | None]]:
    return [(p.function, p.parameter) for p in problems]


def test_a_built_definition_has_no_problems() -> None:
    assert summing_graph().definition().problems() == []


@pytest.mark.parametrize(
    ("definition", "function", "parameter", "words"),
    [
        (lambda: changed(name="my graph"), None, "name", ["'my graph'", "letters"]),
        (lambda: changed(nodes={}), None, None, ["no functions"]),
        (lambda: changed(start_node="missing"), "missing", None, ["start node", "missing"]),
        (lambda: with_node("double", name="dbl"), "double", "name", ["nodes['double']"]),
        (lambda: with_node("bad.fn", name="bad.fn"), "bad.fn", "name", ["'bad.fn'"]),
        (
            lambda: changed(edges={**valid_json()["edges"], "numbers": ["double", "ghost"]}),
            "ghost",
            None,
            ["edge 'numbers'", "'ghost'"],
        ),
        (
            lambda: changed(routes={"pick": ["describe", "shout", "phantom"]}),
            "phantom",
            None,
            ["route 'pick'", "'phantom'"],
        ),
        (
            lambda: changed(edges={**valid_json()["edges"], "pick": ["describe"]}),
            "pick",
            None,
            ["is a router", "g.route"],
        ),
        (
            lambda: changed(routes={**valid_json()["routes"], "double": ["describe"]}),
            "double",
            None,
            ["not a router"],
        ),
        (
            lambda: changed(routes={"pick": ["describe", "shout", "shout"]}),
            "pick",
            None,
            ["more than once"],
        ),
        (lambda: changed(routes={}), "pick", None, ["router 'pick' has no targets"]),
        (
            lambda: changed(edges={**valid_json()["edges"], "add_up": ["pick", "double"]}),
            "double",
            None,
            ["cycle (double -> add_up -> double)"],
        ),
        (lambda: with_node("orphan"), "orphan", None, ["['orphan'] cannot be reached"]),
        (
            lambda: with_node("pick", reducer=True, accumulator="Total", parameters=["a", "b"]),
            "pick",
            "accumulate",
            ["router 'pick' cannot accumulate"],
        ),
        (lambda: with_node("add_up", accumulator=None), "add_up", "accumulate", ["accumulator"]),
        (lambda: with_node("double", accumulator="Total"), "double", "accumulate", ["reducer"]),
        (
            lambda: with_node("add_up", parameters=["total"], required_parameters=["total"]),
            "add_up",
            "accumulate",
            ["accumulator and one value"],
        ),
        (
            lambda: with_node("double", required_parameters=["x", "y"]),
            "double",
            "y",
            ["required_parameters ['y']"],
        ),
        (
            lambda: with_node("numbers", parameter_schemas={"m": {"type": "integer"}}),
            "numbers",
            "m",
            ["parameter_schemas describe ['m']"],
        ),
        (lambda: with_node("double", encoder="yaml"), "double", "encoder", ["'yaml'"]),
        (
            lambda: with_node("double", placement_key="gpu-a100"),
            "double",
            "placement_constraints",
            ["placement_key 'gpu-a100'"],
        ),
        (
            lambda: with_node("double", placement_constraints={"gpu": "a100"}),
            "double",
            "placement_constraints",
            ["required_labels"],
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_each_rule_names_the_function_and_the_fix(
    definition: Any, function: str | None, parameter: str | None, words: list[str]
) -> None:
    problems = definition().problems()
    matching = [p for p in problems if (p.function, p.parameter) == (function, parameter)]
    assert matching, problems
    for word in words:
        assert any(word in p.message for p in matching), (word, problems)


def test_options_the_schema_refuses_are_refused_when_parsed() -> None:
    raw = valid_json()
    raw["nodes"]["double"]["timeout_sec"] = -5
    raw["nodes"]["numbers"]["retries"] = {"max_retries": -1}
    with pytest.raises(ValueError) as info:
        GraphDefinition.model_validate(raw)
    assert "timeout_sec" in str(info.value) and "max_retries" in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    raw = valid_json()
    raw["name"] = "bad name"
    raw["edges"] = {**raw["edges"], "add_up": ["pick", "ghost"], "double": ["add_up", "numbers"]}
    raw["nodes"]["double"]["encoder"] = "yaml"
    raw["nodes"]["orphan"] = {"name": "orphan"}
    problems = GraphDefinition.model_validate(raw).problems()
    assert located(problems) == [
        (None, "name"),
        ("double", "encoder"),
        ("ghost", None),
        ("numbers", None),  # the cycle numbers -> double -> numbers
        ("orphan", None),
    ]
    assert "cycle (numbers -> double -> numbers)" in problems[3].message


def test_cycles_and_reachability_are_linear_and_need_no_recursion() -> None:
    size = 20_000
    names = [f"n{i}" for i in range(size)]
    edges = {a: [b] for a, b in itertools.pairwise(names)} | {names[-1]: ["n1"]}
    definition = GraphDefinition.model_validate(
        {
            "name": "long",
            "start_node": "n0",
            "nodes": {n: {"name": n} for n in names},
            "edges": edges,
        }
    )
    began = time.perf_counter()
    problems = definition.problems()
    assert time.perf_counter() - began < 5
    assert located(problems) == [("n1", None)]
    assert problems[0].message.count(" -> ") == size - 1


def test_building_a_graph_reports_every_problem_in_one_error() -> None:
    @indexify_function()
    def ping(x: int) -> int:
        return x

    @indexify_function()
    def pong(x: int) -> int:
        return x

    @indexify_function()
    def orphan(x: int) -> int:
        return x

    g = Graph("g", start_node=ping).add_edge(ping, pong).add_edge(pong, ping)
    g.add_edge(orphan, pong)
    assert located(g.problems()) == [("ping", None), ("orphan", None)]
    err = raises(g.definition, function="ping", parameter=None)
    assert "has 2 problems" in str(err)
    assert "cycle (ping -> pong -> ping)" in str(err)
    assert "['orphan'] cannot be reached" in str(err)


def test_one_function_with_several_missing_annotations_lists_them_all() -> None:
    @indexify_function()
    def untyped(x, y):  # type: ignore[no-untyped-def]
        return y

    err = raises(lambda: Graph("g", start_node=untyped), function="untyped", parameter="x")
    assert "has 3 problems" in str(err)
    assert "'y'" in str(err) and "return annotation" in str(err)


def test_graph_problems_combine_code_and_definition_rules() -> None:
    @indexify_function()
    def orphan(total: Total) -> str:
        return ""

    g = summing_graph()
    g.routes["pick"] = ["describe"]  # as if routed before shout was annotated
    g.add_edge(orphan, shout)
    problems = g.problems()
    assert located(problems) == [("pick", "return"), ("shout", None)]
    assert "may return 'shout'" in problems[0].message
    assert "['shout', 'orphan'] cannot be reached" in problems[1].message


# -- a router's targets against its annotation, at g.route() ---------------------------------


def test_route_refuses_a_target_the_annotation_does_not_name() -> None:
    g = Graph("g", start_node=numbers).add_edge(numbers, double)
    g.add_edge(double, add_up).add_edge(add_up, pick)
    err = raises(lambda: g.route(pick, [describe, double]), function="pick", parameter="return")
    assert "'double'" in str(err) and "annotation" in str(err)
    assert "pick" not in g.routes and "describe" not in g.nodes  # the graph did not change
    g.route(pick, [describe]).route(pick, [shout])  # targets may be added in several calls
    assert g.definition().routes == {"pick": ("describe", "shout")}


def test_route_checks_optional_and_class_based_annotations() -> None:
    from indexify import IndexifyRouter

    @indexify_router()
    def maybe(total: Total) -> Optional[describe]:  # noqa: UP045
        return None

    class Chooser(IndexifyRouter):
        def run(self, total: Total) -> list[Union[describe, shout]]:
            return [describe]

    base = Graph("g", start_node=add_up)
    raises(
        lambda: base.add_edge(add_up, maybe).route(maybe, [shout]),
        function="maybe",
        parameter="return",
    )
    base.route(maybe, [describe])
    other = Graph("h", start_node=add_up).add_edge(add_up, Chooser)
    raises(lambda: other.route(Chooser, [double]), function="Chooser", parameter="return")
    assert other.route(Chooser, [describe, shout]).definition().routes["Chooser"]


def test_route_allows_any_target_when_the_annotation_names_no_function() -> None:
    @indexify_router()
    def by_name(total: Total) -> list[str]:
        return ["describe"]

    g = Graph("g", start_node=add_up).add_edge(add_up, by_name).route(by_name, [describe])
    assert g.definition().routes == {"by_name": ("describe",)}


# -- the API applies the same rules -----------------------------------------------------------


def test_the_api_reports_the_same_problems_in_one_bad_request() -> None:
    raw = valid_json()
    raw["edges"] = {**raw["edges"], "numbers": ["double", "ghost"], "double": ["add_up", "numbers"]}
    definition = GraphDefinition.model_validate(raw)
    with pytest.raises(BadRequest) as info:
        parse_definition(raw, Names("t"), "default")
    detail = str(info.value)
    assert "has 2 problems" in detail
    for problem in definition.problems():
        assert problem.message in detail


def test_the_api_adds_its_own_rules_to_the_graph_rules() -> None:
    raw = {**valid_json(), "version": ""}
    raw["routes"] = {}
    with pytest.raises(BadRequest) as info:
        parse_definition(raw, Names("t" * 230), "default")
    detail = str(info.value)
    assert "router 'pick' has no targets" in detail  # a graph rule
    assert "version ''" in detail  # the API's: the version Graph.definition() sets
    assert "over Kafka's 249" in detail  # the API's: topic names under its prefix
    assert parse_definition(valid_json(), Names("t"), "default") == changed()


def test_sdk_and_api_share_the_name_rule() -> None:
    with pytest.raises(GraphValidationError) as sdk:
        Graph("bad name", start_node=double)
    with pytest.raises(BadRequest) as api:
        api_check_name("bad name", "graph")
    assert str(sdk.value) == str(api.value)
    assert api_check_name("good-name_1", "namespace") == "good-name_1"


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
