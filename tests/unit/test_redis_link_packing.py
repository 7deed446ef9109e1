"""The Redis link's pure parts: arguments packed as redis-py packs them, URLs read as redis-py
reads them (no server here; tests/integration/test_redis_link.py has the real one)."""

from __future__ import annotations

import enum
import ssl
from typing import Any

import pytest
from redis._parsers.encoders import Encoder
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from services.common.redis_link import LinkTarget, RedisLink, encode_arg, pack_command


class _Colour(enum.IntEnum):
    RED = 1


class _Name(str):
    pass


ARGS: list[Any] = [
    "plain",
    "é ünïcode ✓",
    "",
    _Name("a str subclass"),
    b"\x00\xffraw",
    memoryview(b"view"),
    bytearray(b"array"),
    0,
    -17,
    10**30,
    _Colour.RED,
    0.1,
    1 / 3,
    -0.0,
    1e20,
    5e-324,
    float("inf"),
]


def _redis_py_packed(args: tuple[Any, ...]) -> bytes:
    """What redis-py's own asyncio connection writes for ``args``."""
    return b"".join(bytes(part) for part in Connection().pack_command(*args))


@pytest.mark.parametrize("value", ARGS, ids=repr)
def test_an_argument_is_encoded_as_redis_py_encodes_it(value: Any) -> None:
    assert bytes(encode_arg(value)) == bytes(Encoder("utf-8", "strict", False).encode(value))


@pytest.mark.parametrize("value", ARGS, ids=repr)
def test_a_command_is_packed_as_redis_py_packs_it(value: Any) -> None:
    command = ("HSET", "key", value, "tail")
    assert pack_command(command) == _redis_py_packed(command)


def test_a_whole_command_of_every_type_is_packed_as_redis_py_packs_it() -> None:
    command = ("EVALSHA", "0" * 40, 2, *ARGS)
    assert pack_command(command) == _redis_py_packed(command)
    assert pack_command(list(command)) == pack_command(command)


@pytest.mark.parametrize("value", [True, None, object(), [1], {"a": 1}], ids=repr)
def test_an_argument_redis_py_refuses_is_refused(value: Any) -> None:
    with pytest.raises(DataError, match="Convert to a bytes, string, int or float"):
        pack_command(("SET", "key", value))


def test_a_url_is_read_as_redis_py_reads_it() -> None:
    target = LinkTarget.from_url("redis://:p%40ss@cache:6380/2")
    assert (target.host, target.port, target.db, target.password) == ("cache", 6380, 2, "p@ss")
    assert target.username is None and target.tls is None and target.path is None
    assert str(target) == "cache:6380"

    user = LinkTarget.from_url("redis://alice:secret@127.0.0.1")
    assert (user.username, user.password, user.port, user.db) == ("alice", "secret", 6379, 0)

    unix = LinkTarget.from_url("unix://:pw@/run/redis.sock?db=3")
    assert (unix.path, unix.db, unix.password) == ("/run/redis.sock", 3, "pw")
    assert str(unix) == "unix:/run/redis.sock"


def test_tls_urls_verify_the_server_unless_told_not_to() -> None:
    strict = LinkTarget.from_url("rediss://redis.example.com:6380/0").tls
    assert strict is not None
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname

    lax = LinkTarget.from_url("rediss://redis.example.com/0?ssl_cert_reqs=none").tls
    assert lax is not None
    assert lax.verify_mode == ssl.CERT_NONE and not lax.check_hostname


def test_an_option_the_link_does_not_read_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"\(socket_timeout\): remove them"):
        LinkTarget.from_url("redis://127.0.0.1:6379/0?socket_timeout=3")


def test_a_client_name_with_a_space_is_refused() -> None:
    with pytest.raises(ValueError, match="no spaces"):
        RedisLink(LinkTarget(), name="two words")
