"""The benchmark graphs: the seed's map-reduce, a map-reduce with a per-element step (the
peer benchmark's W1), a 3-function chain, a large payload pipeline."""

from typing import List, Union

from pydantic import BaseModel

from indexify import Graph, indexify_function, indexify_router


@indexify_function()
def generate_sequence(a: int) -> list[int]:
    return list(range(a))


class Sum(BaseModel):
    val: int = 0


@indexify_function(accumulate=Sum)
def sum_all_numbers(sum: Sum, val: int) -> Sum:
    return Sum(val=sum.val + val)


@indexify_function()
def squared(sum: Sum) -> int:
    return sum.val * sum.val


@indexify_function()
def tripled(sum: Sum) -> int:
    return sum.val * sum.val * sum.val


@indexify_router()
def dynamic_router(val: Sum) -> List[Union[squared, tripled]]:  # type: ignore[valid-type]
    return [squared] if val.val % 2 else [tripled]


def map_reduce_graph(name: str = "bench_sequence_summer", description: str = "") -> Graph:
    """The README's graph: generate_sequence -> sum_all_numbers (a reducer) -> dynamic_router
    -> squared | tripled (also drawn by the UI's tests)."""
    g = Graph(name=name, start_node=generate_sequence, description=description)
    g.add_edge(generate_sequence, sum_all_numbers)
    g.add_edge(sum_all_numbers, dynamic_router)
    g.route(dynamic_router, [squared, tripled])
    return g


@indexify_function()
def step_one(x: int) -> int:
    return x + 1


@indexify_function()
def step_two(x: int) -> int:
    return x * 2


@indexify_function()
def step_three(x: int) -> int:
    return x - 3


def chain_graph() -> Graph:
    g = Graph(name="bench_chain", start_node=step_one)
    g.add_edge(step_one, step_two)
    g.add_edge(step_two, step_three)
    return g


@indexify_function()
def make_blob(size: int) -> bytes:
    return b"x" * size


@indexify_function()
def blob_length(data: bytes) -> int:
    return len(data)


def payload_graph() -> Graph:
    g = Graph(name="bench_payload", start_node=make_blob)
    g.add_edge(make_blob, blob_length)
    return g


@indexify_function()
def w1_sequence(n: int) -> list[int]:
    return list(range(n))


@indexify_function()
def w1_square(x: int) -> int:
    return x * x


class Total(BaseModel):
    val: int = 0


@indexify_function(accumulate=Total)
def w1_total(acc: Total, x: int) -> Total:
    return Total(val=acc.val + x)


def fan_out_graph() -> Graph:
    """W1: a fan-out of n elements, one ``w1_square`` task per element, into a reducer."""
    g = Graph(name="bench_w1", start_node=w1_sequence)
    g.add_edge(w1_sequence, w1_square)
    g.add_edge(w1_square, w1_total)
    return g
