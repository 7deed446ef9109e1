"""What keeps a worker process from the executor's keys, without servers: the reply format
(never a pickle), the environment it gets, the user it becomes, the code cache mirror."""

from __future__ import annotations

import os
import pickle
import pwd
import tempfile
from pathlib import Path

import pytest

from indexify.encoding import Payload
from indexify.engine import ErrorInfo
from indexify.runtime import TaskResult
from services.executor.privileges import unreadable_path
from services.executor.task_data import CodeSlots
from services.executor.worker_process import WorkerIdentity, worker_environment, worker_identity
from services.executor.worker_wire import (
    MAX_REPLY_JSON_BYTES,
    REPLY_HEADER,
    WireError,
    check_reply_sizes,
    decode_reply,
    encode_reply,
    result_reply,
)


def _roundtrip(pieces: list[bytes]) -> tuple[bytes, bytes]:
    header, body, data = pieces
    json_size, data_size = REPLY_HEADER.unpack(header)
    assert (json_size, data_size) == (len(body), len(data))
    return body, data


def test_a_result_crosses_as_json_and_raw_bytes() -> None:
    outputs = [
        Payload(content_type="application/json", data=b"1"),
        Payload(content_type="application/octet-stream", data=b"\x00" * 1000),
    ]
    result = TaskResult(outputs=outputs, stdout="hi\n", started_at=1.0, finished_at=2.0)
    reply, data = result_reply("task-1", result, code_cached=True)
    body, data = _roundtrip(encode_reply(reply, data))
    decoded = decode_reply(body)
    assert (decoded.task_id, decoded.code_cached) == ("task-1", True)
    assert decoded.result(data) == result


def test_an_error_crosses_too() -> None:
    error = ErrorInfo(kind="user", type="ValueError", message="bad", traceback="tb")
    reply, data = result_reply("t", TaskResult(error=error), code_cached=False)
    body, data = _roundtrip(encode_reply(reply, data))
    assert decode_reply(body).result(data).error == error


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "body",
    [
        pickle.dumps(_Exploit()),  # a worker's pickle is never loaded
        b"not json",
        b'{"kind": "result", "task_id": "t", "surprise": 1}',
        b'{"kind": "shell"}',
    ],
)
def test_anything_but_a_valid_reply_is_a_wire_error(body: bytes) -> None:
    with pytest.raises(WireError):
        decode_reply(body)


def test_outputs_that_do_not_match_their_sizes_are_a_wire_error() -> None:
    reply, data = result_reply(
        "t", TaskResult(outputs=[Payload(content_type="x", data=b"abc")]), code_cached=True
    )
    with pytest.raises(WireError, match="but sent 2 bytes"):
        reply.result(data[:2])


def test_an_oversized_reply_is_refused_before_it_is_read() -> None:
    check_reply_sizes(10, 10)
    with pytest.raises(WireError, match="over the limits"):
        check_reply_sizes(MAX_REPLY_JSON_BYTES + 1, 0)


def test_the_worker_environment_holds_no_setting_or_secret() -> None:
    environ = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "INDEXIFY_MINIO_SECRET_KEY": "s3cret",
        "INDEXIFY_REDIS_URL": "redis://:pw@host/0",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "HOME": "/root",
    }
    env = worker_environment(environ, ["/opt/app", "/nonexistent"], WorkerIdentity())
    assert env["PATH"] == "/usr/bin" and env["LANG"] == "C.UTF-8"
    assert not any(name.startswith("INDEXIFY_") for name in env)
    assert "s3cret" not in str(env) and "aws" not in str(env) and "pw@" not in str(env)
    assert env["HOME"] != "/root"
    assert "/nonexistent" not in env["PYTHONPATH"]


def test_workers_keep_the_executors_user_unless_it_is_root() -> None:
    assert worker_identity("nobody", euid=1000) == WorkerIdentity()
    assert worker_identity("", euid=0) == WorkerIdentity()
    nobody = pwd.getpwnam("nobody")
    assert worker_identity("nobody", euid=0) == WorkerIdentity(nobody.pw_uid, nobody.pw_gid)
    assert worker_identity(str(nobody.pw_uid), euid=0).uid == nobody.pw_uid


def test_a_worker_user_that_cannot_be_used_says_which_setting_to_fix() -> None:
    with pytest.raises(ValueError, match="INDEXIFY_EXECUTOR_WORKER_USER"):
        worker_identity("no-such-user-here", euid=0)
    with pytest.raises(ValueError, match="root"):
        worker_identity("root", euid=0)
    with pytest.raises(ValueError, match="INDEXIFY_EXECUTOR_WORKER_GROUP"):
        worker_identity("nobody", "no-such-group-here", euid=0)


def test_a_private_parent_directory_is_found() -> None:
    with tempfile.TemporaryDirectory() as top:
        _check_private_parent(Path(top))


def _check_private_parent(top: Path) -> None:
    top.chmod(0o755)  # /tmp and this directory: open to all
    private = top / "private"
    inner = private / "lib"
    inner.mkdir(parents=True)
    private.chmod(0o700)
    inner.chmod(0o755)
    owner = os.stat(private)
    stranger = owner.st_uid + 12345, owner.st_gid + 12345
    assert unreadable_path(str(inner), *stranger) == str(private)
    assert unreadable_path(str(inner), owner.st_uid, owner.st_gid) is None
    private.chmod(0o755)
    assert unreadable_path(str(inner), *stranger) is None


def test_code_goes_to_a_worker_once_and_again_after_it_was_forgotten() -> None:
    slots = CodeSlots(size=2)
    a, b, c = ("ns", "a", "1"), ("ns", "b", "1"), ("ns", "c", "1")
    assert slots.plan(a) == (True, ())
    assert slots.plan(a) == (False, ())  # a chunk's later tasks: already on its way
    slots.update(a, cached=True)
    assert slots.plan(b) == (True, ())
    slots.plan(a)  # a is now the most recently used
    assert slots.plan(c) == (True, (b,))  # the least recently used is forgotten
    assert slots.holds(a) and slots.holds(c) and not slots.holds(b)
    slots.update(c, cached=False)  # the worker could not keep it: send it again next time
    assert slots.plan(c) == (True, ())
