"""The seed SDK's data object :class:`File`: bytes with a mime type and metadata.

A File is stored as its raw bytes, never pickled and never base64-encoded. What else it
carries travels in the payload's content type, the one piece of per-value metadata every
layer already keeps beside the bytes (``StoredValues.content_types``, the worker wire, the
outputs API)::

    <mime type>; indexify-file=1[; indexify-metadata=<base64url of the metadata's JSON>]
                                [; indexify-sha256=<base64url of a sha_256 given by hand>]

A File without a mime type is ``application/octet-stream; indexify-file=untyped``. The
metadata is bounded (:data:`MAX_METADATA_BYTES` of JSON), since it is repeated in every
message that points at the value. ``sha_256`` is computed from the data when it is not
given, and stored only when it was given and differs.

As a keyword argument of ``invoke_graph_with_object``, a File is JSON like any pydantic
model, its data base64 (``ser_json_bytes``); :func:`~indexify.encoding.coerce` decodes it back
(:data:`JSON_CONTEXT`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import mimetypes
import os
import re
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from .errors import EncodingError

if TYPE_CHECKING:
    from .definition import GraphDefinition

__all__ = [
    "FILE_METADATA_HEADER",
    "FILE_SCHEMA_MARK",
    "JSON_CONTEXT",
    "MAX_METADATA_BYTES",
    "File",
    "FileAttributes",
    "file_attributes",
    "file_content_type",
    "file_input_problem",
    "is_file_content_type",
]

MAX_METADATA_BYTES = 4096
"""A File's metadata is at most this many bytes of JSON (it travels in every message that
refers to the value)."""
FILE_SCHEMA_MARK = "x-indexify-file"
"""In the JSON schema of a File (so the API can tell a parameter that takes one)."""
JSON_CONTEXT: dict[str, bool] = {"indexify_json": True}
"""Validation context saying the data comes from JSON (bytes are base64 there)."""
OCTET_STREAM = "application/octet-stream"
FILE_METADATA_HEADER = "X-Indexify-File-Metadata"
"""HTTP header with a File's metadata as JSON (``invoke_file`` takes it, a raw output has it)."""

_MARK = "; indexify-file="
_TYPED, _UNTYPED = "1", "untyped"
_METADATA = "indexify-metadata"
_SHA256 = "indexify-sha256"
_MAX_MIME = 255
_MIME = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$")


class File(BaseModel):
    """A file as a function's input or output: ``data`` with an optional ``mime_type`` and
    JSON ``metadata``. ``sha_256`` is the data's SHA-256 (hex) unless given."""

    model_config = ConfigDict(ser_json_bytes="base64", json_schema_extra={FILE_SCHEMA_MARK: True})

    data: bytes
    mime_type: str | None = None
    metadata: dict[str, Any] | None = None
    sha_256: str | None = None

    @field_validator("data", mode="before")
    @classmethod
    def _data_from_json(cls, value: Any, info: ValidationInfo) -> Any:
        # Base64 in JSON only: in Python a str is its UTF-8 bytes, as in the original SDK
        # (``val_json_bytes="base64"`` would base64-decode it there too).
        context = info.context
        from_json = info.mode == "json" or (
            isinstance(context, dict) and context.get("indexify_json") is True
        )
        if isinstance(value, str) and from_json:
            try:
                return _b64decode(value, "File.data")
            except EncodingError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _digest(self) -> Self:
        if self.sha_256 is None:
            self.sha_256 = hashlib.sha256(self.data).hexdigest()
        return self

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str],
        metadata: dict[str, Any] | None = None,
        mime_type: str | None = None,
    ) -> File:
        """The file at ``path``; its mime type guessed from the name unless given."""
        with open(path, "rb") as f:
            data = f.read()
        guessed = mime_type or mimetypes.guess_type(os.fspath(path))[0]
        return cls(data=data, mime_type=guessed, metadata=metadata)


class FileAttributes(NamedTuple):
    """What a File's content type says besides the data."""

    mime_type: str | None
    metadata: dict[str, Any] | None
    sha_256: str | None


def is_file_content_type(content_type: str) -> bool:
    return _MARK in content_type


def file_content_type(file: File) -> str:
    """The content type a File is stored under (see the module doc); raises
    :class:`EncodingError` for a mime type or metadata that cannot be stored."""
    mime = file.mime_type
    if mime is not None and (
        len(mime) > _MAX_MIME or not _MIME.fullmatch(mime) or "indexify-" in mime.lower()
    ):
        raise EncodingError(
            f"File.mime_type {mime[:80]!r} is not a media type: use printable ASCII of at most "
            f"{_MAX_MIME} characters such as 'application/pdf', or None"
        )
    parts = [mime or OCTET_STREAM, _MARK[2:] + (_TYPED if mime else _UNTYPED)]
    if file.metadata is not None:
        try:
            encoded = json.dumps(file.metadata, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise EncodingError(
                f"File.metadata must be JSON (strings, numbers, lists, dicts): {exc}"
            ) from exc
        if len(encoded) > MAX_METADATA_BYTES:
            raise EncodingError(
                f"File.metadata is {len(encoded)} bytes of JSON, over the "
                f"{MAX_METADATA_BYTES} byte limit; keep metadata small and put large data in "
                "the file itself or in another output"
            )
        parts.append(f"{_METADATA}={_b64encode(encoded)}")
    if file.sha_256 is not None and file.sha_256 != hashlib.sha256(file.data).hexdigest():
        parts.append(f"{_SHA256}={_b64encode(file.sha_256.encode())}")
    return "; ".join(parts)


def file_attributes(content_type: str) -> FileAttributes | None:
    """The attributes stored in a File's content type; None if it is not a File's."""
    mime, mark, rest = content_type.partition(_MARK)
    if not mark:
        return None
    flag, *params = (p.strip() for p in rest.split(";"))
    metadata: dict[str, Any] | None = None
    sha_256: str | None = None
    for param in params:
        name, _, value = param.partition("=")
        if name == _METADATA:
            try:
                loaded = json.loads(_b64decode(value, "the File's metadata"))
            except ValueError as exc:
                raise EncodingError(f"a stored File's metadata is not JSON: {exc}") from exc
            if not isinstance(loaded, dict):
                raise EncodingError("a stored File's metadata is not a JSON object")
            metadata = loaded
        elif name == _SHA256:
            sha_256 = _b64decode(value, "the File's sha_256").decode("ascii", "replace")
    return FileAttributes(mime if flag != _UNTYPED else None, metadata, sha_256)


def file_input_problem(definition: GraphDefinition) -> str | None:
    """Why the graph's start function cannot take a File as its single argument (the input of
    ``invoke_graph_with_file``), or None: it needs a first parameter, no other required one,
    and (if that parameter's annotation is known) a type that admits a File."""
    start = definition.nodes[definition.start_node]
    fix = (
        f"give {start.name!r} one parameter annotated `File` (from indexify import File), or "
        "invoke it with invoke_graph_with_object"
    )
    if not start.parameters:
        return f"graph {definition.name!r}: start function {start.name!r} takes no argument; {fix}"
    first = start.parameters[0]
    others = sorted(set(start.required_parameters) - {first})
    if others:
        return (
            f"graph {definition.name!r}: start function {start.name!r} also requires {others}, "
            f"but a file invocation passes only the File (as {first!r}); {fix}"
        )
    schema = start.parameter_schemas.get(first)
    if schema is not None and FILE_SCHEMA_MARK not in json.dumps(schema):
        expected = schema.get("title") or schema.get("type") or "another type"
        return (
            f"graph {definition.name!r}: parameter {first!r} of start function {start.name!r} "
            f"takes {expected}, not a File; {fix}"
        )
    return None


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str, what: str) -> bytes:
    """Standard or URL-safe base64, with or without padding."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EncodingError(f"{what} is not valid base64: {exc}") from exc
