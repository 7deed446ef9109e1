"""Values are stored as JSON when JSON gives them back unchanged, and pickled otherwise."""

import datetime
import json
import math
from typing import Any, List, Optional

import cloudpickle
import pytest
from pydantic import BaseModel

from indexify import EncodingError
from indexify.encoding import (
    JSON,
    PICKLE,
    Payload,
    coerce,
    decode,
    element_hint,
    encode,
    encode_arguments,
)


class Item(BaseModel):
    name: str
    price: float = 0.0


class SpecialItem(Item):
    discount: float = 0.5


class Opaque:
    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.value == self.value

    def __hash__(self) -> int:
        return self.value


CASES = [
    # value, hint, content type
    (1, int, JSON),
    (1, None, JSON),
    (-2.5, float, JSON),
    ("text é", str, JSON),
    (True, bool, JSON),
    (None, None, JSON),
    ([1, 2, 3], list[int], JSON),
    ([1, "a", None], None, JSON),
    ({"a": 1, "b": [True]}, dict[str, Any], JSON),
    ({"a": {"b": "c"}}, None, JSON),
    (Item(name="x", price=1.5), Item, JSON),
    ([Item(name="x"), Item(name="y")], list[Item], JSON),
    ((1, "a"), tuple[int, str], JSON),
    ({1, 2}, set[int], JSON),
    ({"k": Item(name="v")}, dict[str, Item], JSON),
    (Item(name="x"), Optional[Item], JSON),  # noqa: UP045
    # JSON would not give these back unchanged: pickled
    (Item(name="x"), None, PICKLE),
    (SpecialItem(name="x"), Item, PICKLE),
    ((1, "a"), None, PICKLE),
    ((1, "a"), list[Any], PICKLE),
    ({1: "one"}, None, PICKLE),
    ({1, 2}, None, PICKLE),
    (b"bytes", None, PICKLE),
    (Opaque(3), Opaque, PICKLE),
    (datetime.date(2024, 1, 2), None, PICKLE),
    (float("inf"), float, PICKLE),
    (float("-inf"), None, PICKLE),
    ([1.0, float("inf")], list[float], PICKLE),
]


@pytest.mark.parametrize(("value", "hint", "content_type"), CASES)
def test_round_trip_keeps_value_and_type(value: Any, hint: Any, content_type: str) -> None:
    payload = encode(value, hint)
    assert payload.content_type == content_type
    decoded = decode(payload, hint)
    assert type(decoded) is type(value)
    assert decoded == value
    if content_type == JSON:
        json.loads(payload.data, parse_constant=reject)  # strict JSON, readable by anyone


def reject(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON")


def test_nan_is_pickled_and_comes_back_as_nan() -> None:
    payload = encode(float("nan"), float)
    assert payload.content_type == PICKLE
    assert math.isnan(decode(payload, float))


def test_json_payloads_are_plain_readable_json() -> None:
    assert encode({"a": [1, 2]}).data == b'{"a": [1, 2]}'
    assert json.loads(encode(Item(name="x"), Item).data) == {"name": "x", "price": 0.0}
    assert json.loads(encode((1, "a"), tuple[int, str]).data) == [1, "a"]


def test_json_is_decoded_with_the_hint() -> None:
    data = Payload(content_type=JSON, data=b'{"name": "x", "price": 2}')
    assert decode(data) == {"name": "x", "price": 2}
    assert decode(data, Item) == Item(name="x", price=2.0)
    pair = Payload(content_type=JSON, data=b"[1, 2]")
    assert decode(pair, tuple[int, int]) == (1, 2)
    assert decode(pair, list[int]) == [1, 2]


def test_coerce_leaves_values_that_do_not_fit_the_hint() -> None:
    assert coerce({"unexpected": 1}, Item) == {"unexpected": 1}
    assert coerce([1, 2], Item) == [1, 2]
    assert coerce(3, Item) == 3
    assert coerce({"name": "n"}, Item) == Item(name="n")


def test_encoder_choices() -> None:
    assert encode(1, int, encoder="cloudpickle").content_type == PICKLE
    assert decode(encode(1, int, encoder="cloudpickle")) == 1
    assert encode({"a": 1}, None, encoder="json").content_type == JSON
    with pytest.raises(EncodingError):
        encode(Opaque(1), Opaque, encoder="json")


def test_values_that_cannot_be_stored_raise_encoding_error() -> None:
    import threading

    with pytest.raises(EncodingError):
        encode(threading.Lock())


@pytest.mark.parametrize(
    "payload",
    [
        Payload(content_type="text/plain", data=b"1"),
        Payload(content_type=JSON, data=b"{not json"),
        Payload(content_type=PICKLE, data=b"not a pickle"),
    ],
    ids=["unknown-content-type", "bad-json", "bad-pickle"],
)
def test_undecodable_payloads_raise_encoding_error(payload: Payload) -> None:
    with pytest.raises(EncodingError):
        decode(payload)


def test_payload_length_is_its_size_in_bytes() -> None:
    assert len(encode("abc")) == 5  # "abc" with quotes
    assert len(Payload(content_type=PICKLE, data=cloudpickle.dumps(1))) > 0


@pytest.mark.parametrize(
    ("return_hint", "expected"),
    [
        (list[int], int),
        (List[int], int),
        (list[Item], Item),
        (Optional[list[str]], str),  # noqa: UP045
        (list[str] | None, str),
        (int, int),
        (Item, Item),
        (tuple[int, int], tuple[int, int]),
        (dict[str, int], dict[str, int]),
        (None, None),
    ],
)
def test_element_hint_is_the_type_of_one_output(return_hint: Any, expected: Any) -> None:
    assert element_hint(return_hint) == expected


# -- invocation arguments -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "hints"),
    [
        ({"a": 1, "s": "x", "f": 2.5, "none": None}, None),
        ({"item": Item(name="pen", price=2.0)}, {"item": Item}),
        ({"item": Item(name="pen")}, None),  # typed by its own class
        ({"items": [Item(name="a"), Item(name="b")]}, None),  # as list[Item]
        ({"pair": (1, "a")}, {"pair": tuple[int, str]}),
        ({"by_name": {"a": Item(name="a")}}, {"by_name": dict[str, Item]}),
    ],
)
def test_arguments_that_json_carries_travel_as_json(
    kwargs: dict[str, Any], hints: dict[str, Any] | None
) -> None:
    payload = encode_arguments(kwargs, hints)
    assert payload.content_type == JSON
    raw = json.loads(payload.data)
    declared = {"items": list[Item], **(hints or {})}  # what the start function would say
    assert {k: coerce(v, declared.get(k, type(kwargs[k]))) for k, v in raw.items()} == kwargs


@pytest.mark.parametrize(
    ("kwargs", "hints"),
    [
        ({"z": complex(1, 2)}, None),
        ({"thing": Opaque(3)}, None),
        ({"item": Item(name="pen")}, {"item": None}),  # unannotated: the object itself
        ({"n": 1, "x": math.inf}, None),
        ({"item": SpecialItem(name="a")}, {"item": Item}),  # a subclass JSON would lose
    ],
)
def test_one_argument_json_cannot_carry_pickles_them_all(
    kwargs: dict[str, Any], hints: dict[str, Any] | None
) -> None:
    payload = encode_arguments(kwargs, hints)
    assert payload.content_type == PICKLE
    assert decode(payload) == kwargs
