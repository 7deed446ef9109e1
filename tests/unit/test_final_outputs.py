"""Final outputs: what the client keeps of an answer (``FinalOutputs``) and what the API puts
in one (``last_functions``, ``_inline_values``): pure logic, no server."""

from __future__ import annotations

import base64
from typing import List, Union

from indexify import Graph, indexify_function, indexify_router
from indexify.engine import ValueRange
from indexify.final_outputs import FinalOutputs
from services.api.outputs import FINAL_BYTES, FINAL_VALUES, _inline_values, last_functions
from services.common.events import StoredValues


def item(data: bytes, content_type: str = "application/json") -> dict[str, str]:
    return {"id": "t:0", "content_type": content_type, "data": base64.b64encode(data).decode()}


# -- the client side ------------------------------------------------------------------------


def test_kept_values_are_handed_out_once_per_function() -> None:
    kept = FinalOutputs()
    kept.keep("g", "inv", {"a": [item(b"1")], "b": [item(b"2")]})
    assert kept.take("g", "inv", "a") == [item(b"1")]
    assert kept.take("g", "inv", "a") is None
    assert len(kept) == 1 and kept.bytes == len(item(b"2")["data"])
    assert kept.take("g", "inv", "b") == [item(b"2")]
    assert len(kept) == 0 and kept.bytes == 0
    assert kept.take("g", "other", "a") is None


def test_answers_without_values_or_of_another_shape_keep_nothing() -> None:
    kept = FinalOutputs()
    for values in (None, {}, [], {"a": "x"}, {"a": [{"data": "AA=="}]}, {"a": [{"x": 1}]}):
        kept.keep("g", "inv", values)
    assert len(kept) == 0


def test_the_oldest_invocations_go_beyond_the_count_or_the_bytes() -> None:
    kept = FinalOutputs(max_invocations=2, max_bytes=100)
    for inv in ("i1", "i2", "i3"):
        kept.keep("g", inv, {"a": [item(b"x")]})
    assert kept.take("g", "i1", "a") is None
    assert kept.take("g", "i3", "a") is not None
    kept.keep("g", "big", {"a": [item(b"y" * 60)]})  # 80 bytes of base64
    kept.keep("g", "big2", {"a": [item(b"z" * 60)]})
    assert kept.take("g", "big", "a") is None and kept.take("g", "big2", "a") is not None
    assert kept.bytes <= 100
    kept.keep("g", "huge", {"a": [item(b"w" * 200)]})  # alone over the bound: not kept
    assert len(kept) == 0 or kept.take("g", "huge", "a") is None


def test_forget_drops_one_invocation_or_a_whole_graph() -> None:
    kept = FinalOutputs()
    for graph, inv in (("g", "i1"), ("g", "i2"), ("h", "i1")):
        kept.keep(graph, inv, {"a": [item(b"1")]})
    kept.forget("g", "i1")
    assert kept.take("g", "i1", "a") is None and len(kept) == 2
    kept.forget("g")
    assert kept.take("g", "i2", "a") is None
    assert kept.take("h", "i1", "a") is not None
    assert kept.bytes == 0


# -- the API side ---------------------------------------------------------------------------


@indexify_function()
def first(x: int) -> int:
    return x


@indexify_function()
def low(x: int) -> int:
    return x


@indexify_function()
def high(x: int) -> int:
    return x


@indexify_function()
def after_low(x: int) -> int:
    return x


@indexify_router()
def pick(x: int) -> List[Union[low, high]]:  # type: ignore[valid-type]
    return [low] if x < 10 else [high]


def test_last_functions_are_those_nothing_follows_and_never_a_router() -> None:
    g = Graph(name="lf", start_node=first)
    g.add_edge(first, pick)
    g.route(pick, [low, high])
    g.add_edge(low, after_low)
    assert sorted(last_functions(g.definition())) == ["after_low", "high"]


def stored(*values: bytes) -> StoredValues:
    return StoredValues(content_types=("application/json",) * len(values), inline=values)


def test_inline_values_are_listed_in_index_order_with_their_ids() -> None:
    ranges = {
        "f": [
            ValueRange(task_id="t2", function="f", start=1, stop=2),
            ValueRange(task_id="t1", function="f", start=0, stop=1),
        ]
    }
    values = _inline_values(["f"], ranges, {"t1": stored(b"1"), "t2": stored(b"x", b"2")})
    assert values == {
        "f": [
            {"id": "t2:1", "content_type": "application/json", "data": "Mg=="},
            {"id": "t1:0", "content_type": "application/json", "data": "MQ=="},
        ]
    }


def test_values_in_minio_too_many_or_too_large_are_not_carried() -> None:
    one = {"f": [ValueRange(task_id="t", function="f", start=0, stop=1)]}
    in_minio = StoredValues(content_types=("application/json",), object_key="k", offsets=(0, 3))
    assert _inline_values(["f"], one, {"t": in_minio}) is None
    assert _inline_values(["f"], one, {}) is None  # recorded but not stored: read as usual
    assert _inline_values(["f"], one, {"t": stored(b"x" * (FINAL_BYTES + 1))}) is None
    many = {"f": [ValueRange(task_id="t", function="f", start=0, stop=FINAL_VALUES + 1)]}
    small = stored(*[b"1"] * (FINAL_VALUES + 1))
    assert _inline_values(["f"], many, {"t": small}) is None
    fits = {"f": [ValueRange(task_id="t", function="f", start=0, stop=FINAL_VALUES)]}
    assert len((_inline_values(["f"], fits, {"t": small}) or {})["f"]) == FINAL_VALUES
