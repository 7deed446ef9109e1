"""The task hint frame: what the API publishes and executors read (no server)."""

import pytest

from services.common.events import MessageDecodeError
from services.common.task_hints import TaskHint, decode_hint, encode_hint


def test_a_hint_comes_back_as_it_was_framed() -> None:
    hint = TaskHint("p.tasks.any.default.g.f", 3, b"inv:f-1", b'{"type": "task"}')
    assert decode_hint(encode_hint(hint)) == hint
    empty = TaskHint("t", 0, b"", b"")
    assert decode_hint(encode_hint(empty)) == empty


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"junk", "shorter than its header"),
        (encode_hint(TaskHint("topic", 1, b"key", b""))[:-2], "shorter than its header says"),
        (b"\x00\x02\x00\x00\x00\x01\x00\x00\xff\xfe", "not UTF-8"),
    ],
)
def test_what_is_not_a_hint_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(MessageDecodeError, match=reason) as refused:
        decode_hint(data)
    assert refused.value.raw == data
