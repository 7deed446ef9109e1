"""Which task topics an executor subscribes to: a pure function of labels and graph records."""

import time

import pytest

from indexify import Graph, Image, indexify_function
from services.common.graphs import GraphRecord
from services.common.names import Names
from services.executor.subscription import (
    LabelError,
    executor_labels,
    parse_labels,
    satisfied_topics,
    task_topics,
)

NAMES = Names("t")


@indexify_function()
def plain(x: int) -> int:
    return x


@indexify_function(placement_constraints={"gpu": "a100"})
def on_gpu(x: int) -> int:
    return x


@indexify_function(image=Image().name("vision"))
def in_vision_image(x: int) -> int:
    return x


@indexify_function(placement_constraints=["gpu=a100", "zone=eu"], image=Image().name("vision"))
def everything(x: int) -> int:
    return x


def _record(graph: Graph, namespace: str = "default") -> GraphRecord:
    definition = graph.definition()
    return GraphRecord(
        namespace=namespace,
        name=definition.name,
        version=definition.version,
        created_at=time.time(),
        definition=definition,
        code_key=NAMES.code_object(namespace, definition.name, definition.version),
    )


def _graph() -> Graph:
    g = Graph(name="g", start_node=plain)
    g.add_edge(plain, on_gpu)
    g.add_edge(plain, in_vision_image)
    g.add_edge(plain, everything)
    return g


RECORDS = [_record(_graph())]


def _topic(function: str) -> str:
    node = RECORDS[0].definition.nodes[function]
    return NAMES.task_topic(node.placement_key, "default", "g", function)


@pytest.mark.parametrize(
    ("labels", "functions"),
    [
        ({"image": "indexify-executor-default"}, {"plain"}),
        ({"image": "indexify-executor-default", "gpu": "a100"}, {"plain", "on_gpu"}),
        ({"image": "indexify-executor-default", "gpu": "h100"}, {"plain"}),
        ({"image": "vision"}, {"plain", "in_vision_image"}),
        ({"image": "vision", "gpu": "a100"}, {"plain", "on_gpu", "in_vision_image"}),
        (
            {"image": "vision", "gpu": "a100", "zone": "eu"},
            {"plain", "on_gpu", "in_vision_image", "everything"},
        ),
        ({}, {"plain"}),
    ],
)
def test_labels_select_exactly_the_satisfied_topics(
    labels: dict[str, str], functions: set[str]
) -> None:
    assert satisfied_topics(NAMES, labels, RECORDS) == {_topic(f) for f in functions}


def test_topics_carry_the_placement_key() -> None:
    assert _topic("plain") == "t.tasks.any.default.g.plain"
    assert _topic("on_gpu") == "t.tasks.gpu-a100.default.g.on_gpu"
    assert _topic("in_vision_image") == "t.tasks.image-vision.default.g.in_vision_image"


def test_every_function_of_every_record_has_one_topic() -> None:
    other_namespace = _record(_graph(), namespace="research")
    topics = task_topics(NAMES, [*RECORDS, other_namespace, RECORDS[0]])
    assert len(topics) == 8
    assert {t.namespace for t in topics} == {"default", "research"}
    gpu = next(t for t in topics if t.function == "on_gpu" and t.namespace == "default")
    assert dict(gpu.required) == {"gpu": "a100"}


def test_no_records_no_topics() -> None:
    assert satisfied_topics(NAMES, {"gpu": "a100"}, []) == frozenset()


def test_parse_labels() -> None:
    assert parse_labels(["gpu=a100", " zone = eu ", "k=v=w"]) == {
        "gpu": "a100",
        "zone": "eu",
        "k": "v=w",
    }
    for bad in ["gpu", "=a100", "gpu="]:
        with pytest.raises(LabelError, match="key=value"):
            parse_labels([bad])


def test_executor_labels_add_the_image() -> None:
    assert executor_labels("vision", {"gpu": "a100"}) == {"gpu": "a100", "image": "vision"}
    assert executor_labels("vision", {"image": "vision"}) == {"image": "vision"}
    with pytest.raises(LabelError, match="--image"):
        executor_labels("vision", {"image": "other"})
