"""How values are stored: JSON when the value survives a JSON round trip, cloudpickle otherwise.

Every value is stored as a :class:`Payload` (bytes plus a content type). JSON payloads are
decoded with a *type hint* (the producing function's return annotation), so a pydantic model,
a tuple or a list of models comes back as the type the function returned. A value whose JSON
form would not decode back to an equal value of the same type is pickled instead. A
:class:`~indexify.data_objects.File` is stored as its raw bytes, whatever the encoder, with
its mime type and metadata in the content type (:mod:`indexify.data_objects`).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import types
import typing
from typing import Any

import cloudpickle
from pydantic import BaseModel, ConfigDict, TypeAdapter

from .data_objects import JSON_CONTEXT, File, file_attributes, file_content_type
from .errors import EncodingError

JSON = "application/json"
PICKLE = "application/x-cloudpickle"
CONTENT_TYPES = (JSON, PICKLE)
_PRIMITIVES = (str, int, float, bool, type(None))


class Payload(BaseModel):
    """Encoded bytes of one value and how to read them."""

    model_config = ConfigDict(frozen=True)

    content_type: str
    data: bytes

    def __len__(self) -> int:
        return len(self.data)


@functools.lru_cache(maxsize=512)
def _adapter(hint: Any) -> TypeAdapter[Any]:
    return TypeAdapter(hint)


def _cached_adapter(hint: Any) -> TypeAdapter[Any] | None:
    try:
        return _adapter(hint)
    except TypeError:  # unhashable hint: build uncached
        try:
            return TypeAdapter(hint)
        except Exception:
            return None
    except Exception:
        return None


def _is_plain_hint(hint: Any) -> bool:
    return hint is None or hint is Any or hint is object or hint is inspect.Parameter.empty


def encode(value: Any, hint: Any = None, *, encoder: str = "auto") -> Payload:
    """Encode ``value``; ``hint`` is the declared type it will be decoded with."""
    if isinstance(value, File):
        return Payload(content_type=file_content_type(value), data=value.data)
    if encoder == "cloudpickle":
        return _pickle(value)
    if type(value) in _PRIMITIVES and not (isinstance(value, float) and not math.isfinite(value)):
        return Payload(content_type=JSON, data=json.dumps(value).encode())
    data = _try_json(value, hint)
    if data is not None:
        return Payload(content_type=JSON, data=data)
    if encoder == "json":
        raise EncodingError(
            f"value of type {type(value).__name__} cannot be stored as JSON; "
            "use encoder='auto' or 'cloudpickle' for this function"
        )
    return _pickle(value)


def encode_arguments(kwargs: dict[str, Any], hints: dict[str, Any] | None = None) -> Payload:
    """An invocation's keyword arguments: a JSON object when every argument survives JSON
    typed by its parameter's annotation (``hints``, the start function's), else one pickle.

    JSON needs none of the caller's modules to be read (an executor rebuilds models from the
    graph's own annotations), and it is the only form the API accepts from keys that may not
    deploy code. Without ``hints`` (a graph registered elsewhere), an argument is checked
    against its own type (a list of models against ``list[Model]``).
    """
    parts: list[bytes] = []
    for name, value in kwargs.items():
        hint = hints[name] if hints is not None and name in hints else _hint_of(value)
        data = _argument_json(value, hint)
        if data is None:
            return _pickle(kwargs)
        parts.append(json.dumps(name).encode() + b":" + data)
    return Payload(content_type=JSON, data=b"{" + b",".join(parts) + b"}")


def _argument_json(value: Any, hint: Any) -> bytes | None:
    if type(value) in _PRIMITIVES and not (isinstance(value, float) and not math.isfinite(value)):
        return json.dumps(value).encode()
    if _is_plain_hint(hint):
        return _try_json(value, hint)
    adapter = _cached_adapter(hint)
    if adapter is None:
        return None
    try:
        data = adapter.dump_json(value)
        decoded = coerce(json.loads(data), hint)
    except Exception:
        return None
    return data if type(decoded) is type(value) and decoded == value else None


def _hint_of(value: Any) -> Any:
    """A type for ``value`` as an annotation would give it: ``list[Model]`` for a list of
    models (all elements of one type), ``dict[str, T]``, else the value's own type."""
    kind = type(value)
    if kind in (list, tuple, set, frozenset) and value:
        element_types = {type(v) for v in value}
        if len(element_types) == 1:
            (element,) = element_types
            return kind[element, ...] if kind is tuple else kind[element]
    if kind is dict and value and all(type(k) is str for k in value):
        value_types = {type(v) for v in value.values()}
        if len(value_types) == 1:
            return dict[str, value_types.pop()]  # type: ignore[misc]
    return kind


def _try_json(value: Any, hint: Any) -> bytes | None:
    try:
        if _is_plain_hint(hint) or not _mentions_models_or_tuples(hint):
            data = json.dumps(value, allow_nan=False).encode()
        else:
            adapter = _cached_adapter(hint)
            if adapter is None:
                return None
            data = adapter.dump_json(value)
        decoded = decode(Payload(content_type=JSON, data=data), hint)
    except Exception:
        return None
    if type(decoded) is type(value) and decoded == value:
        return data
    return None


def _mentions_models_or_tuples(hint: Any) -> bool:
    if isinstance(hint, type):
        return issubclass(hint, BaseModel | tuple) or hint in (set, frozenset)
    origin = typing.get_origin(hint)
    if origin in (tuple, set, frozenset):
        return True
    return any(_mentions_models_or_tuples(arg) for arg in typing.get_args(hint))


def _pickle(value: Any) -> Payload:
    try:
        return Payload(content_type=PICKLE, data=cloudpickle.dumps(value))
    except Exception as exc:
        raise EncodingError(
            f"value of type {type(value).__name__} can be stored neither as JSON nor with "
            f"cloudpickle ({exc}); return plain data or a pydantic model"
        ) from exc


def decode(payload: Payload, hint: Any = None) -> Any:
    """Decode a payload back to a Python value, typed by ``hint`` for JSON payloads."""
    if payload.content_type == PICKLE:
        try:
            return cloudpickle.loads(payload.data)
        except Exception as exc:
            raise EncodingError(f"cannot unpickle a stored value: {exc}") from exc
    attributes = file_attributes(payload.content_type)
    if attributes is not None:
        return File(data=payload.data, **attributes._asdict())
    if payload.content_type != JSON:
        raise EncodingError(
            f"unknown content type {payload.content_type!r}; expected one of {CONTENT_TYPES}"
        )
    try:
        raw = json.loads(payload.data)
    except ValueError as exc:
        raise EncodingError(f"stored value is not valid JSON: {exc}") from exc
    return coerce(raw, hint)


def coerce(raw: Any, hint: Any) -> Any:
    """Turn JSON data into ``hint`` (a model, a tuple...); leave it as it is if it does not fit."""
    if type(raw) in _PRIMITIVES or _is_plain_hint(hint):
        return raw
    adapter = _cached_adapter(hint)
    if adapter is None:
        return raw
    try:
        return adapter.validate_python(raw, context=JSON_CONTEXT)
    except Exception:
        return raw


def element_hint(return_hint: Any) -> Any:
    """The hint of one output of a function whose return annotation is ``return_hint``.

    A returned list fans out, so each output of ``-> list[int]`` is an ``int``.
    """
    origin = typing.get_origin(return_hint)
    if origin in (list, typing.List):  # noqa: UP006 - both spellings appear in user code
        args = typing.get_args(return_hint)
        return args[0] if args else None
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(return_hint) if a is not type(None)]
        if len(members) == 1:
            return element_hint(members[0])
    return return_hint
