"""Invocation arguments against the start function's annotations (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from indexify import Graph, indexify_function
from services.api.arguments import ArgumentChecker


class Params(BaseModel):
    a: int
    label: str = "x"


@indexify_function()
def start(x: int, p: Params, names: list[str], anything: Any, ratio: float = 1.0) -> int:
    return x


def _definition() -> Any:
    return Graph(name="typed", start_node=start).definition()


def test_the_definition_carries_schemas_of_the_annotated_parameters_only() -> None:
    schemas = _definition().nodes["start"].parameter_schemas
    assert set(schemas) == {"x", "p", "names", "ratio"}
    assert schemas["x"] == {"type": "integer"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"x": 1, "p": {"a": 2}, "names": ["a"], "anything": object()},
        {"x": 1, "p": {"a": 2, "label": "y"}, "names": [], "anything": None, "ratio": 2},
    ],
)
def test_arguments_of_the_annotated_types_pass(kwargs: dict[str, Any]) -> None:
    assert ArgumentChecker().problems(_definition(), kwargs) is None


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"x": "abc"}, ["x:", "'abc' is not of type 'integer'"]),
        ({"x": [1, 2]}, ["x:", "not of type 'integer'"]),
        ({"p": {"a": "two"}}, ["p.a:", "not of type 'integer'"]),
        ({"p": {"label": "y"}}, ["p:", "'a' is a required property", "Params"]),
        ({"names": ["a", 3]}, ["names[1]:", "not of type 'string'"]),
    ],
)
def test_a_wrong_type_names_the_parameter_and_what_it_needs(
    kwargs: dict[str, Any], words: list[str]
) -> None:
    problem = ArgumentChecker().problems(_definition(), kwargs)
    assert problem is not None and "'start'" in problem
    for word in words:
        assert word in problem, problem
