"""What crosses the socket between the executor and a worker process, and how it is framed.

The two directions are not equally trusted, so they use different formats:

* **executor → worker**: a :class:`WorkRequest` (or a list of them: a chunk; or ``None``:
  stop), pickled. The worker trusts its executor; the request carries everything the task
  needs (the graph's code bytes when the worker does not hold them yet, the input values),
  so the worker never talks to Kafka, Redis or MinIO and holds no credentials.
* **worker → executor**: a :class:`WorkReply`, never a pickle: the worker runs user code, and
  a pickle from it would run code in the executor, which holds the credentials. A reply is
  JSON validated by pydantic (``extra="forbid"``), followed by the raw bytes of the output
  values (the JSON gives their sizes), so large values cross without base64 or copies.

Frames: a request is ``!QQ`` (pickle length, bytes length) + pickle + the input values'
bytes; a reply is ``!QQ`` (JSON length, bytes length) + JSON + the output values' bytes. The
values travel outside the pickle and the JSON both ways: megabytes are written to the socket
as they are, not copied into a pickle first. A reply over :data:`MAX_REPLY_JSON_BYTES` /
:data:`MAX_REPLY_DATA_BYTES` is a broken worker (:class:`WireError`).
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from indexify.encoding import Payload
from indexify.engine import ErrorInfo, Task, ValueRange
from indexify.runtime import TaskResult

__all__ = [
    "MAX_REPLY_DATA_BYTES",
    "MAX_REPLY_JSON_BYTES",
    "REPLY_HEADER",
    "REQUEST_HEADER",
    "CodeKey",
    "WireError",
    "WorkReply",
    "WorkRequest",
    "check_reply_sizes",
    "decode_reply",
    "decode_request",
    "describe",
    "encode_reply",
    "encode_request",
    "result_reply",
]

#: (namespace, graph, version): one graph's code.
CodeKey = tuple[str, str, str]

REQUEST_HEADER = struct.Struct("!QQ")
REPLY_HEADER = struct.Struct("!QQ")
MAX_REPLY_JSON_BYTES = 256 * 1024 * 1024  # logs travel here: generous
MAX_REPLY_DATA_BYTES = 8 * 1024 * 1024 * 1024


class WireError(Exception):
    """A worker sent something that is not a valid reply (it is replaced)."""


@dataclass(frozen=True)
class WorkRequest:
    """One task for a worker: the code (unless the worker holds it), inputs already loaded."""

    task: Task
    code_key: CodeKey
    code: bytes | None
    inputs: dict[ValueRange, list[Payload]] = field(default_factory=dict)
    #: code keys the worker drops from its cache first (the executor mirrors that cache)
    forget: tuple[CodeKey, ...] = ()
    #: the worker says ``started`` when the function starts (its timeout begins there)
    timed: bool = False


#: A request's inputs on the wire: per range, (content type, size) of each value, in order.
_Sizes = dict[ValueRange, list[tuple[str, int]]]


def encode_request(request: WorkRequest | list[WorkRequest] | None) -> list[bytes]:
    """The pieces of one executor → worker frame (send them in order)."""
    blobs: list[bytes] = []

    def strip(one: WorkRequest) -> tuple[WorkRequest, _Sizes]:
        sizes: _Sizes = {}
        for value_range, payloads in one.inputs.items():
            sizes[value_range] = [(p.content_type, len(p.data)) for p in payloads]
            blobs.extend(p.data for p in payloads)
        return replace(one, inputs={}), sizes

    if isinstance(request, list):
        body: Any = [strip(one) for one in request]
    elif request is not None:
        body = strip(request)
    else:
        body = None
    data = pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL)
    header = REQUEST_HEADER.pack(len(data), sum(len(b) for b in blobs))
    return [header, data, *blobs]


def decode_request(body: bytes | bytearray, data: bytes) -> WorkRequest | list[WorkRequest] | None:
    """The request of a frame: its pickle and the values' bytes that followed it."""
    view = memoryview(data)
    start = 0

    def restore(one: WorkRequest, sizes: _Sizes) -> WorkRequest:
        nonlocal start
        inputs: dict[ValueRange, list[Payload]] = {}
        for value_range, values in sizes.items():
            payloads = inputs[value_range] = []
            for content_type, size in values:
                whole = start == 0 and size == len(data)
                chunk = data if whole else bytes(view[start : start + size])
                payloads.append(Payload(content_type=content_type, data=chunk))
                start += size
        return replace(one, inputs=inputs)

    message = pickle.loads(body)
    if isinstance(message, list):
        return [restore(*pair) for pair in message]
    return restore(*message) if message is not None else None


class WorkReply(BaseModel):
    """One worker → executor message: ``ready``, ``started``, ``chunk-end`` or a ``result``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["ready", "started", "result", "chunk-end"]
    task_id: str = ""
    #: the worker holds the request's code now (the executor's mirror of its cache follows)
    code_cached: bool = False
    content_types: tuple[str, ...] = ()
    sizes: tuple[int, ...] = Field(default=(), description="bytes of each output, in order")
    route: tuple[str, ...] | None = None
    error: ErrorInfo | None = None
    stdout: str = ""
    stderr: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0

    def result(self, data: bytes) -> TaskResult:
        """The :class:`TaskResult` this reply reports; ``data`` holds the outputs' bytes."""
        if len(self.sizes) != len(self.content_types) or sum(self.sizes) != len(data):
            raise WireError(
                f"a worker reported {len(self.content_types)} outputs with sizes "
                f"{list(self.sizes)[:5]}... but sent {len(data)} bytes"
            )
        outputs, start = [], 0
        for content_type, size in zip(self.content_types, self.sizes, strict=True):
            outputs.append(Payload(content_type=content_type, data=data[start : start + size]))
            start += size
        return TaskResult(
            outputs=outputs,
            route=self.route,
            error=self.error,
            stdout=self.stdout,
            stderr=self.stderr,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )


def result_reply(task_id: str, result: TaskResult, *, code_cached: bool) -> tuple[WorkReply, bytes]:
    """The reply reporting ``result`` of task ``task_id``, and the bytes that follow it."""
    reply = WorkReply(
        kind="result",
        task_id=task_id,
        code_cached=code_cached,
        content_types=tuple(p.content_type for p in result.outputs),
        sizes=tuple(len(p.data) for p in result.outputs),
        route=result.route,
        error=result.error,
        stdout=result.stdout,
        stderr=result.stderr,
        started_at=result.started_at,
        finished_at=result.finished_at,
    )
    return reply, b"".join(p.data for p in result.outputs)


def encode_reply(reply: WorkReply, data: bytes = b"") -> list[bytes]:
    """The pieces of one worker → executor frame (send them in order)."""
    body = reply.model_dump_json().encode()
    return [REPLY_HEADER.pack(len(body), len(data)), body, data]


def check_reply_sizes(json_size: int, data_size: int) -> None:
    if json_size > MAX_REPLY_JSON_BYTES or data_size > MAX_REPLY_DATA_BYTES:
        raise WireError(
            f"a worker announced a reply of {json_size} + {data_size} bytes, over the limits "
            f"({MAX_REPLY_JSON_BYTES} + {MAX_REPLY_DATA_BYTES})"
        )


def decode_reply(body: bytes) -> WorkReply:
    """Validate a reply's JSON; anything else is a :class:`WireError`."""
    try:
        return WorkReply.model_validate_json(body)
    except ValueError as exc:
        raise WireError(f"a worker sent an invalid reply: {exc}") from exc


def describe(message: Any) -> str:
    """A short text for logs and errors about an unexpected message."""
    text = repr(message)
    return text if len(text) <= 200 else text[:200] + "..."
